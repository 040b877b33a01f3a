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

from typing import Any, Mapping

import numpy as np

from pipeline.store.codecs.array_checks import check_offsets, nonpositive_logprobs
from pipeline.store.codecs.base import Arrays, Attrs, LabelFormat, LabelKind, Stack

SAMPLED_DATASETS = ("labels/sample_offsets", "labels/sample_ids", "labels/sample_counts",
                    "labels/sample_tail_counts")


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


class SampledKind(LabelKind):
    """sampled: per label row, the distinct ids of N draws and their counts, ragged."""

    name = "sampled"
    holds_topk_rows = False
    drawn = True

    def root_attrs(self, attrs: Any) -> dict[str, Any]:
        return {"label_kind": self.name, "samples_per_position": attrs.samples_per_position,
                "label_source_k": attrs.label_source_k}

    def datasets(self, fmt: LabelFormat) -> list[str]:
        return list(SAMPLED_DATASETS)

    def entry_datasets(self, fmt: LabelFormat) -> tuple[str, ...]:
        return ("labels/sample_ids", "labels/sample_counts")

    def entry_count(self, lengths: Mapping[str, int], rows: int, top_k: int) -> int:
        return lengths.get("labels/sample_ids", 0)

    def storage_words(self, manifest: Any) -> tuple[str, str]:
        return f"sampled N={manifest.samples_per_position}", "distinct drawn id"

    def pack(self, stack: Stack, attrs: Any, fmt: LabelFormat, id_dtype: np.dtype
             ) -> dict[str, np.ndarray]:
        n = attrs.samples_per_position
        offsets, ids, counts, tail = ragged_rows(stack("topk_ids", (0, n), np.int64),
                                                 stack("topk_logprobs", (0, n), np.float32), n)
        return dict(zip(SAMPLED_DATASETS, (offsets, ids.astype(id_dtype), counts, tail)))

    def rows(self, reader: Any, l0: int, l1: int) -> dict[str, np.ndarray]:
        a = reader.arrays
        offsets = np.asarray(a["labels/sample_offsets"][l0:l1 + 1], np.int64)
        e0, e1 = int(offsets[0]), int(offsets[-1])
        ids, lps = padded_rows(offsets, a["labels/sample_ids"][e0:e1],
                               a["labels/sample_counts"][e0:e1], reader.samples_per_position)
        return {"topk_ids": ids, "topk_logprobs": lps}

    def check_attrs(self, attrs: Attrs, manifest: Any) -> list[str]:
        if attrs.get("samples_per_position") != manifest.samples_per_position:
            return [f"samples_per_position is {attrs.get('samples_per_position')!r}, manifest says "
                    f"{manifest.samples_per_position!r}"]
        return []

    def check_structure(self, arrays: Arrays, attrs: Attrs, fmt: LabelFormat, rows: int,
                        id_dtype: np.dtype) -> list[str]:
        a, entries = arrays, len(arrays["labels/sample_ids"])
        errors = check_offsets("labels/sample_offsets", a["labels/sample_offsets"], entries, rows)
        want = {"labels/sample_ids": id_dtype, "labels/sample_counts": np.dtype(np.uint8),
                "labels/sample_tail_counts": np.dtype(np.uint8)}
        for name, dtype in want.items():
            if a[name].dtype != dtype:
                errors.append(f"{name} has dtype {a[name].dtype}, expected {dtype}")
        if a["labels/sample_counts"].shape != (entries,):
            errors.append(f"labels/sample_counts has shape {a['labels/sample_counts'].shape}, "
                          f"expected ({entries},) like labels/sample_ids")
        if a["labels/sample_tail_counts"].shape != (rows,):
            errors.append(f"labels/sample_tail_counts has shape "
                          f"{a['labels/sample_tail_counts'].shape}, expected ({rows},)")
        return errors

    def check_values(self, reader: Any) -> list[str]:
        errors = check_draws(reader.arrays, reader.samples_per_position,
                             int(reader.attrs["vocab_size"]))
        if not nonpositive_logprobs(reader.arrays["labels/sampled_logprobs"]):
            errors.append("labels/sampled_logprobs not finite and <= 0")
        return errors


def check_draws(a: Arrays, n: int, vocab: int) -> list[str]:
    """Every sampled row: ids below the vocabulary, counts >= 1, counts + tail = N."""
    if a["labels/sample_ids"].max(initial=0) >= vocab:
        return [f"labels/sample_ids has ids >= vocab_size {vocab}"]
    counts = np.asarray(a["labels/sample_counts"], np.int64)
    if counts.size and counts.min() < 1:
        return ["labels/sample_counts holds a zero count (only drawn ids are stored)"]
    offsets = np.asarray(a["labels/sample_offsets"], np.int64)
    cumulative = np.concatenate([[0], np.cumsum(counts)])
    sums = cumulative[offsets[1:]] - cumulative[offsets[:-1]] + a["labels/sample_tail_counts"]
    if np.any(sums != n):
        row = int(np.argmax(sums != n))
        return [f"label row {row}: sample counts plus tail sum to {int(sums[row])}, "
                f"expected samples_per_position {n}"]
    return []


SAMPLED = SampledKind()
