"""The `sampled` label kind on disk: per labelled position, the distinct token ids drawn
from the teacher's distribution and how often each was drawn (uint8), ragged per row.

Stored datasets (every one contiguous, fixed-size items, memory-mappable):
`labels/sample_offsets` (label rows + 1,) int64: row j's entries are
`[offsets[j], offsets[j+1])` of `labels/sample_ids` (uint16/uint32, like topk ids) and
`labels/sample_counts` (uint8, >= 1, most drawn first); `labels/sample_tail_counts`
(label rows,) uint8: draws that fell in the tail bucket outside the engine's top-K.
Counts plus tail sum to N (`samples_per_position`) on every row.

In memory (what `ShardReader.sample()` hands the student and the writer takes) a row
is padded to N columns: ids, and `log(count / N)` as float32 logprobs; padding columns
repeat the row's first id with logprob -inf (a zero target, masked out of the student's
top-k mass by the losses), so `1 - sum(exp(logprobs))` is the tail's share, which the
`bucket` tail of `pipeline.student.kd_losses` already uses as its target.

    >>> import numpy as np
    >>> ids, lps = padded_rows(np.array([0, 2, 3]), np.array([5, 9, 7]), np.array([3, 1, 1]), 4)
    >>> ids.tolist(), np.round(np.exp(lps), 2).tolist()
    ([[5, 9, 5, 5], [7, 7, 7, 7]], [[0.75, 0.25, 0.0, 0.0], [0.25, 0.0, 0.0, 0.0]])
    >>> [a.tolist() for a in ragged_rows(ids, lps, 4)]
    [[0, 2, 3], [5, 9, 7], [3, 1, 1], [0, 3]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLED_DATASETS = ("labels/sample_offsets", "labels/sample_ids", "labels/sample_counts",
                    "labels/sample_tail_counts")


def label_kind(attrs: dict[str, Any]) -> str:
    """A shard's label kind from its root attributes (absent: topk, every older output)."""
    return str(attrs.get("label_kind", "topk"))


def padded_rows(offsets: np.ndarray, ids: np.ndarray, counts: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Ragged rows (offsets relative to ids[0]) -> (rows, n) ids and float32 log(count / n)."""
    offsets = np.asarray(offsets, np.int64) - int(offsets[0])
    rows, lens = len(offsets) - 1, np.diff(offsets)
    first = np.where(lens > 0, np.asarray(ids)[np.minimum(offsets[:-1], max(len(ids) - 1, 0))]
                     if len(ids) else 0, 0)
    out_ids = np.repeat(first.astype(np.int64)[:, None], n, axis=1)
    out_lps = np.full((rows, n), -np.inf, np.float32)
    row = np.repeat(np.arange(rows), lens)
    col = np.arange(len(ids)) - np.repeat(offsets[:-1], lens)
    out_ids[row, col] = ids
    out_lps[row, col] = np.log(np.asarray(counts, np.float64) / n)
    return out_ids, out_lps


def ragged_rows(ids: np.ndarray, lps: np.ndarray, n: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Padded rows -> (offsets (rows + 1,), ids, uint8 counts, uint8 tail counts)."""
    lps = np.asarray(lps, np.float64)
    keep = np.isfinite(lps)
    counts = np.rint(np.exp(np.where(keep, lps, -np.inf)) * n).astype(np.int64)
    offsets = np.zeros(len(lps) + 1, np.int64)
    np.cumsum(keep.sum(1), out=offsets[1:])
    tail = n - counts.sum(1)
    return offsets, np.asarray(ids)[keep], counts[keep].astype(np.uint8), tail.astype(np.uint8)
