"""Verify a shard in full the first time a process reads it (the default, `--verify lazy`).

Start-up checks only what is cheap and decisive (manifests, shard sizes and
attributes, ids and lengths from index.parquet, duplicate ids), so it does
not grow with the bytes of the label set. The content is verified here: when
a process (a DataLoader worker, an evaluation) first opens a shard, before
any of its samples is used, the shard is hashed against its manifest, every
value is scanned, and its ids and lengths are compared with what start-up
indexed. A failure stops the run naming the shard. A shard already recorded
in the verified-shard cache (`pipeline.store.verified_shards`) is not hashed
again, only compared; the cache's per-shard lock makes concurrent readers
(workers, ranks on one host) hash it once.

    >>> # reader = open_verified(source, expected, VerifiedShards("/tmp/cache"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store.fingerprint import prompt_hashes
from pipeline.store.manifest import Manifest
from pipeline.store.shard_reader import ShardContents, ShardReader
from pipeline.store.verified_shards import VerifiedShards
from pipeline.store.verify import verify_shard


class ShardVerificationError(ValueError):
    """A shard failed its full verification at first read; the message (one line) names it."""


@dataclass(frozen=True)
class ShardSource:
    """Where a label-set shard comes from: its file, its number and its output's manifest."""

    path: str
    index: int
    manifest: Manifest


@dataclass(frozen=True)
class Expected:
    """What start-up indexed of a shard's samples (from index.parquet), to hold the shard to."""

    lengths: np.ndarray
    prompt_lengths: np.ndarray
    label_counts: np.ndarray
    prompt_hashes: np.ndarray


def mismatch(contents: ShardContents, expected: Expected) -> str | None:
    """How the shard's own ids and lengths differ from what was indexed, or None."""
    if len(contents.ids) != len(expected.lengths):
        return f"holds {len(contents.ids)} samples, the index listed {len(expected.lengths)}"
    for name, got, want in (("lengths", contents.lengths, expected.lengths),
                            ("prompt lengths", contents.prompt_lengths, expected.prompt_lengths),
                            ("label rows", contents.label_counts, expected.label_counts)):
        if not np.array_equal(got, want):
            row = int(np.argmax(got != want))
            return f"sample {row}: {name} {int(got[row])}, the index said {int(want[row])}"
    hashes = prompt_hashes(contents.ids)
    if not np.array_equal(hashes, expected.prompt_hashes):
        row = int(np.argmax(hashes != expected.prompt_hashes))
        return f"sample {row}: id {contents.ids[row]!r} is not the one the index listed"
    return None


def open_verified(source: ShardSource, expected: Expected, cache: VerifiedShards) -> ShardReader:
    """The shard's reader once it is verified (hashed unless cached); raise naming it otherwise."""
    path = Path(source.path)
    sha256 = source.manifest.shards[source.index].sha256
    cache = VerifiedShards(cache.given, cache.verifier_version, source.manifest.schema_version)
    with cache.claim(path, sha256):
        cached = cache.has(path, sha256)
        problems, contents = verify_shard(path, source.index, source.manifest,
                                          checksum=not cached, values=not cached)
        if problems:
            p = problems[0]
            raise ShardVerificationError(f"{path}: {p.check}: {p.detail}; stopped before training "
                                         f"on it (run kd verify {path.parent})")
        differs = mismatch(contents, expected)
        if differs:
            raise ShardVerificationError(f"{path}: index: {differs}; stopped before training on "
                                         f"it (run kd verify {path.parent})")
        if not cached:
            cache.add(path, sha256)
    return ShardReader(path)
