"""The `topk` label kind: per labelled position the teacher's k best ids with their logprobs.

`labels/topk_ids` (label rows, k) holds the ids (uint16 or uint32, by vocabulary
size), best first; the logprobs, sorted descending, are stored in the output's
label format (`pipeline.store.codecs.label_fp16`, `label_q8`, `label_q8poly`),
which names their dataset. The default kind: a shard without a `label_kind`
attribute holds top-k rows.

    >>> import numpy as np
    >>> from pipeline.store.codecs.label_q8 import Q8
    >>> TOPK.datasets(Q8)
    ['labels/topk_ids', 'labels/topk_logprobs_q8']
    >>> TOPK.check_structure({"labels/topk_ids": np.zeros((3, 4), np.uint16),
    ...                       "labels/topk_logprobs_q8": np.zeros((3, 4), np.uint8)},
    ...                      {"top_k": 4}, Q8, rows=3, id_dtype=np.dtype(np.uint16))
    []
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from pipeline.store.codecs.array_checks import LOGPROB_MAX, blocks
from pipeline.store.codecs.base import Arrays, Attrs, LabelFormat, LabelKind, Stack

IDS = "labels/topk_ids"


class TopkKind(LabelKind):
    """topk: (label rows, k) ids and their logprobs in the output's label format."""

    name = "topk"

    def datasets(self, fmt: LabelFormat) -> list[str]:
        return [IDS, fmt.dataset]

    def entry_datasets(self, fmt: LabelFormat) -> tuple[str, ...]:
        return (IDS, fmt.dataset)

    def entry_count(self, lengths: Mapping[str, int], rows: int, top_k: int) -> int:
        return rows * max(top_k, 1)

    def storage_words(self, manifest: Any) -> tuple[str, str]:
        return f"top-{manifest.top_k} {manifest.label_format}", "top-k entry"

    def pack(self, stack: Stack, attrs: Any, fmt: LabelFormat, id_dtype: np.dtype
             ) -> dict[str, np.ndarray]:
        k = attrs.top_k
        return {IDS: stack("topk_ids", (0, k), id_dtype),
                fmt.dataset: fmt.encode(stack("topk_logprobs", (0, k), fmt.input_dtype))}

    def rows(self, reader: Any, l0: int, l1: int) -> dict[str, np.ndarray]:
        return {"topk_ids": reader.arrays[IDS][l0:l1], "topk_logprobs": reader.logprobs(slice(l0, l1))}

    def check_structure(self, arrays: Arrays, attrs: Attrs, fmt: LabelFormat, rows: int,
                        id_dtype: np.dtype) -> list[str]:
        a, errors = arrays, []
        if a[IDS].dtype != id_dtype:
            errors.append(f"{IDS} is {a[IDS].dtype}, expected {id_dtype}")
        if fmt.stored_dtype is not None and a[fmt.dataset].dtype != fmt.stored_dtype:
            errors.append(f"{fmt.dataset} has dtype {a[fmt.dataset].dtype}, "
                          f"expected {fmt.stored_dtype}")
        for name, cols in ((IDS, int(attrs["top_k"])), (fmt.dataset, fmt.row_width(attrs))):
            if a[name].shape != (rows, cols):
                errors.append(f"{name} has shape {a[name].shape}, expected ({rows}, {cols})")
        return errors

    def check_values(self, reader: Any) -> list[str]:
        """Ids below the vocabulary; decoded logprobs (and the labelled tokens') finite,
        <= 0 and sorted descending; stops at the first block with a problem."""
        a, vocab, errors = reader.arrays, int(reader.attrs["vocab_size"]), []
        for sl in blocks(len(a["labels/sampled_logprobs"])):
            ids, lps = a[IDS][sl], reader.logprobs(sl).astype(np.float32)
            sampled = a["labels/sampled_logprobs"][sl]
            if ids.max(initial=0) >= vocab:
                errors.append(f"{IDS} has ids >= vocab_size {vocab} (rows {sl.start}..)")
            if not (np.all(np.isfinite(lps)) and np.all(np.isfinite(sampled))):
                errors.append(f"non-finite logprobs in rows {sl.start}..{sl.stop}")
            elif lps.max(initial=-1) > LOGPROB_MAX or sampled.max(initial=-1) > LOGPROB_MAX:
                errors.append(f"positive logprobs in rows {sl.start}..{sl.stop}")
            if np.any(np.diff(lps, axis=1) > 0):
                row = sl.start + int(np.argmax(np.any(np.diff(lps, axis=1) > 0, axis=1)))
                errors.append(f"{reader.label_codec.dataset} row {row} is not sorted descending")
            if errors:
                break
        return errors


TOPK = TopkKind()
