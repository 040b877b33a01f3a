"""Remember which shards were verified in full, across runs, processes and ranks.

Hashing a shard costs a read of every byte (about 300 MB/s on 2 cores, so an
hour per start for 1 TB of labels). A shard verified once is recorded here,
keyed by its real path, size, modification time and the sha256 its manifest
promises, so a `--resume` or a second student on the same labels skips it.
Any change to the file (a rewrite, a truncation, a `touch`) changes the key
and the shard is verified again. What the key cannot see is a change that
keeps size and modification time (bit rot under an unchanged inode): use
`kd verify` or `--verify full` where that matters.

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

from schemas import VERIFIED_SHARDS_CACHE as DEFAULT_CACHE


class VerifiedShards:
    """A directory of entries, one per (shard path, size, mtime, manifest sha256) verified."""

    def __init__(self, root: str | Path = DEFAULT_CACHE):
        self.root = Path(root).expanduser()

    def key(self, path: str | Path, sha256: str) -> str:
        st = os.stat(path)
        identity = [os.path.realpath(path), st.st_size, st.st_mtime_ns, sha256]
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
