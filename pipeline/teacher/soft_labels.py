"""Turn vLLM's flat per-token logprobs into top-k soft-label arrays.

For each generated token vLLM returns k + 1 entries: the sampled token first
(whatever its rank), then the top-k by rank; prompt logprobs (score mode) have
the same layout with the prompt's own next token first. When the sampled token is in the
top-k it therefore appears twice, so summing or sorting the k + 1 entries
naively double-counts it. We split the entries by position instead: column 0
is the sampled token's logprob, columns 1..k are the top-k.

    >>> import numpy as np
    >>> from pipeline.teacher.soft_labels import split_flat_logprobs
    >>> ids = [7, 7, 3]; lps = [-0.1, -0.1, -2.4]   # one position, k = 2
    >>> top_ids, top_lps, sampled = split_flat_logprobs(ids, lps, [0], [3], [7], k=2)
    >>> top_ids.tolist(), sampled.tolist()
    ([[7, 3]], [-0.10000000149011612])
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class SoftLabelError(ValueError):
    """The engine's logprobs do not have the expected k + 1 layout."""


def split_flat_logprobs(token_ids: Sequence[int], logprobs: Sequence[float],
                        starts: Sequence[int], ends: Sequence[int],
                        sampled_ids: Sequence[int], k: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (topk_ids (T, k) int64, topk_logprobs (T, k) float32, sampled_logprobs (T,) float32).

    Rows are sorted by descending logprob. Raises SoftLabelError when a position
    does not hold exactly k + 1 entries or its first entry is not the sampled token.
    """
    n_pos = len(starts)
    if len(sampled_ids) != n_pos or len(ends) != n_pos:
        raise SoftLabelError(
            f"{n_pos} logprob positions for {len(sampled_ids)} sampled tokens")
    ids = np.asarray(token_ids, dtype=np.int64)
    lps = np.asarray(logprobs, dtype=np.float32)
    widths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
    if n_pos and not np.all(widths == k + 1):
        bad = int(np.argmax(widths != k + 1))
        raise SoftLabelError(
            f"position {bad} has {widths[bad]} logprob entries, expected k + 1 = {k + 1}; "
            "is the engine's max_logprobs below k?")
    # Positions may be any subset of the engine's (a scored chat's assistant turns).
    take = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(k + 1)
    ids, lps = ids[take], lps[take]
    if n_pos and not np.array_equal(ids[:, 0], np.asarray(sampled_ids, dtype=np.int64)):
        bad = int(np.argmax(ids[:, 0] != np.asarray(sampled_ids)))
        raise SoftLabelError(f"position {bad}: first logprob entry is not the sampled token")
    top_ids, top_lps = ids[:, 1:], lps[:, 1:]
    # vLLM orders the top-k by rank already; ties or a future change must not
    # break the "sorted descending" invariant the schema promises.
    if n_pos and np.any(np.diff(top_lps, axis=1) > 0):
        order = np.argsort(-top_lps, axis=1, kind="stable")
        top_ids = np.take_along_axis(top_ids, order, axis=1)
        top_lps = np.take_along_axis(top_lps, order, axis=1)
    return top_ids, top_lps, lps[:, 0].copy()
