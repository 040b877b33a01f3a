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

from pathlib import Path
from typing import Any

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
    """Where each kept sample of one output lies: sample id -> (reader, row)."""

    def __init__(self, out_dir: str | Path, manifest: Manifest):
        self.out = str(out_dir)
        self.readers = [ShardReader(Path(out_dir) / manifest.shards[i].name)
                        for i in sorted(manifest.shards)]
        self.rows: dict[str, tuple[ShardReader, int]] = {}
        self.order: list[str] = []
        for reader in self.readers:
            for row, sid in enumerate(reader.strings("samples/ids")):
                self.rows[sid] = (reader, row)
                self.order.append(sid)

    def sample(self, sid: str) -> dict[str, Any]:
        reader, row = self.rows[sid]
        return reader.sample(row)


def first_id_difference(ref: SampleLocator, other: SampleLocator) -> str | None:
    """The first sample id (in `ref`'s order, then `other`'s) that only one output holds."""
    for sid in ref.order:
        if sid not in other.rows:
            return f"{other.out}: has no sample {sid!r} (first sample of {ref.out} it lacks)"
    for sid in other.order:
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
