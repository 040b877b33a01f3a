"""Remember which shards were verified in full, across runs, processes and ranks.

Hashing a shard costs a read of every byte (about 300 MB/s on 2 cores, so an
hour per start for 1 TB of labels). A shard verified once is recorded here,
keyed by its real path, size, modification time, the sha256 its manifest
promises, the verifier's version (`pipeline.store.verify.VERIFIER_VERSION`,
bumped with every new rule) and the shard's schema version, so a `--resume` or
a second student on the same labels skips it, and a build that checks more
verifies it again. Any change to the file (a rewrite, a truncation, a `touch`)
changes the key and the shard is verified again. What the key cannot see, and
so the cache does NOT catch, is a change of bytes that keeps size and
modification time (bit rot under an unchanged inode, or a deliberate edit
that restores the mtime): use `kd verify` or `--verify full` where that matters.

The folder is $KD_VERIFY_CACHE, else `~/.cache/offline-kd/verified-shards`,
read when the cache is first used (not when this module is imported).

An entry is an empty file named by the key's sha256, created atomically, so
concurrent writers never tear one. `claim(...)` takes an exclusive `flock` per
key, so when several processes (DataLoader workers, torchrun ranks on one
node) first open the same shard at once, one hashes it and the others wait
and find it recorded. flock is local to a host: ranks on other nodes keep
their own cache (a cache directory on NFS or Lustre gives no such guarantee,
only at most one extra hash per node).

    >>> import tempfile, pathlib
    >>> from pipeline.store.verified_shards import VerifiedShards
    >>> cache = VerifiedShards(tempfile.mkdtemp())
    >>> shard = pathlib.Path(tempfile.mkdtemp()) / "shard-00000.h5"; _ = shard.write_bytes(b"x")
    >>> cache.has(shard, "ab" * 32)
    False
    >>> cache.add(shard, "ab" * 32); cache.has(shard, "ab" * 32)
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from pipeline.store import verify as verify_rules
from schemas import SHARD_SCHEMA_VERSION, verified_shards_cache

DEFAULT_CACHE = ""
"""The default location: `schemas.verified_shards_cache()`, resolved at first use."""


class VerifiedShards:
    """A directory of entries, one per (shard path, size, mtime, manifest sha256, verifier
    version, schema version) verified."""

    def __init__(self, root: str | Path = DEFAULT_CACHE, verifier_version: int | None = None,
                 schema_version: int = SHARD_SCHEMA_VERSION):
        self.given, self._root = root, None
        # Read when built, so a bumped VERIFIER_VERSION applies to every cache made after it.
        self.verifier_version = (verify_rules.VERIFIER_VERSION if verifier_version is None
                                 else verifier_version)
        self.schema_version = schema_version

    @property
    def root(self) -> Path:
        if self._root is None:
            self._root = Path(self.given or verified_shards_cache()).expanduser()
        return self._root

    def key(self, path: str | Path, sha256: str) -> str:
        st = os.stat(path)
        identity = [os.path.realpath(path), st.st_size, st.st_mtime_ns, sha256,
                    self.verifier_version, self.schema_version]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def has(self, path: str | Path, sha256: str) -> bool:
        try:
            return (self.root / self.key(path, sha256)).is_file()
        except OSError:
            return False

    def add(self, path: str | Path, sha256: str) -> None:
        """Record a shard as verified; a cache that cannot be written only costs a later re-hash."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            entry = self.root / self.key(path, sha256)
            tmp = entry.with_name(f".{entry.name}.{os.getpid()}.tmp")
            tmp.touch()
            os.replace(tmp, entry)
        except OSError:
            pass

    @contextlib.contextmanager
    def claim(self, path: str | Path, sha256: str) -> Iterator[None]:
        """Hold the per-shard lock: one process at a time checks, hashes and records a shard."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fh = open(self.root / f"{self.key(path, sha256)}.lock", "a")
        except OSError:
            yield  # no lock without a writable cache: at worst two processes hash the same shard
            return
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
