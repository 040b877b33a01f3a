"""Check that several teacher outputs label the same samples, naming the first difference.

Outputs can be merged (`kd merge-labels`) only when they hold the same kept
sample ids with the same token ids and the same labelled positions, under the
same tokenizer and vocabulary; the order and sharding of the samples may differ.

    >>> from pipeline.store.output_alignment import first_manifest_difference
    >>> from pipeline.store.manifest import Manifest
    >>> a = Manifest(teacher="a", tokenizer_fingerprint="f", vocab_size=10, top_k=2, complete=True)
    >>> b = Manifest(teacher="b", tokenizer_fingerprint="g", vocab_size=10, top_k=2, complete=True)
    >>> first_manifest_difference({"A": a, "B": b})
    "B: tokenizer_fingerprint is 'g' but A has 'f'"
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.store.manifest import Manifest
from pipeline.store.shard_reader import ShardReader


class MisalignedOutputs(ValueError):
    """Outputs that do not label the same samples; the message names the first difference."""


SHARED_FIELDS = ("tokenizer_fingerprint", "vocab_size", "schema_version")


def first_manifest_difference(manifests: dict[str, Manifest]) -> str | None:
    """The first output (in order) that is incomplete or differs from the first in tokenizer,
    vocabulary or schema version; None when they agree."""
    (first, ref), *_ = manifests.items()
    for where, m in manifests.items():
        if not m.complete:
            return f"{where}: the run is not complete (resume it first)"
        for f in SHARED_FIELDS:
            if getattr(m, f) != getattr(ref, f):
                return f"{where}: {f} is {getattr(m, f)!r} but {first} has {getattr(ref, f)!r}"
    return None


class SampleLocator:
    """Where each kept sample of one output lies.

    Shards are mapped on demand and only the last `OPEN_SHARDS` stay mapped, so
    reading every sample in shard order keeps the pages of two shards resident,
    not of all of them. Outputs sharded alike (the same ids in the same shards and
    rows, as the same records scored with the same settings give) are read
    position by position (`sample_like`) without an index; otherwise the id index
    (sample id -> shard, row: a dict entry per sample) is built on first use."""

    OPEN_SHARDS = 2

    def __init__(self, out_dir: str | Path, manifest: Manifest):
        self.out = str(out_dir)
        self.paths = [Path(out_dir) / manifest.shards[i].name for i in sorted(manifest.shards)]
        self._open: OrderedDict[int, tuple[ShardReader, list[str]]] = OrderedDict()
        self._rows: dict[str, tuple[int, int]] | None = None

    def _opened(self, shard: int) -> tuple[ShardReader, list[str]]:
        if shard in self._open:
            self._open.move_to_end(shard)
        else:
            reader = ShardReader(self.paths[shard])
            self._open[shard] = (reader, reader.strings("samples/ids"))
            while len(self._open) > self.OPEN_SHARDS:
                self._open.popitem(last=False)
        return self._open[shard]

    def reader(self, shard: int) -> ShardReader:
        """The reader of shard number `shard` (in manifest order), mapped if it is not."""
        return self._opened(shard)[0]

    def ids(self, shard: int) -> list[str]:
        """The sample ids of shard number `shard`, in row order."""
        return self._opened(shard)[1]

    def order(self) -> Iterator[str]:
        """Every sample id, shard by shard."""
        for shard in range(len(self.paths)):
            yield from self.ids(shard)

    @property
    def rows(self) -> dict[str, tuple[int, int]]:
        """sample id -> (shard, row), built on first use."""
        if self._rows is None:
            self._rows = {sid: (shard, row) for shard in range(len(self.paths))
                          for row, sid in enumerate(self.ids(shard))}
        return self._rows

    def sample(self, sid: str) -> dict[str, Any]:
        shard, row = self.rows[sid]
        return self.reader(shard).sample(row)

    def sample_like(self, sid: str, shard: int, row: int) -> dict[str, Any]:
        """Sample `sid`, which another output holds at (shard, row): read there when this
        output holds it there too (no index), else through the index."""
        if shard < len(self.paths) and self.ids(shard)[row:row + 1] == [sid]:
            return self.reader(shard).sample(row)
        return self.sample(sid)


def sharded_alike(ref: SampleLocator, other: SampleLocator) -> bool:
    """Both outputs hold the same ids in the same shards and rows (one shard read at a time)."""
    return (len(ref.paths) == len(other.paths)
            and all(ref.ids(i) == other.ids(i) for i in range(len(ref.paths))))


def first_id_difference(ref: SampleLocator, other: SampleLocator) -> str | None:
    """The first sample id (in `ref`'s order, then `other`'s) that only one output holds."""
    if sharded_alike(ref, other):
        return None
    for sid in ref.order():
        if sid not in other.rows:
            return f"{other.out}: has no sample {sid!r} (first sample of {ref.out} it lacks)"
    for sid in other.order():
        if sid not in ref.rows:
            return f"{other.out}: has sample {sid!r}, which {ref.out} does not"
    return None


def sample_difference(sid: str, a: dict[str, Any], b: dict[str, Any], where_a: str,
                      where_b: str) -> str | None:
    """How sample `sid` differs between two outputs (tokens, then labelled positions), or None."""
    for name, what in (("token_ids", "token"), ("positions", "labelled position")):
        x, y = np.asarray(a[name]), np.asarray(b[name])
        if len(x) != len(y):
            return (f"sample {sid!r}: {len(y)} {what}s in {where_b}, {len(x)} in {where_a}")
        diff = np.flatnonzero(x != y)
        if len(diff):
            j = int(diff[0])
            return (f"sample {sid!r}: {what} {j} is {int(y[j])} in {where_b} but {int(x[j])} "
                    f"in {where_a}")
    return None
