"""Checks shared by `kd verify` and the codecs: offsets arrays, bounded row blocks, the logprob ceiling.

Verification reads multi-GB shards, so every value check walks its dataset in
blocks of `BLOCK_ROWS` rows; offsets arrays (`samples/offsets`, `labels/offsets`,
`labels/sample_offsets`) follow one rule, checked by `check_offsets`.

    >>> import numpy as np
    >>> check_offsets("labels/offsets", np.array([0, 2, 5]), total=5, count=2)
    []
    >>> check_offsets("labels/offsets", np.array([0, 3, 2]), total=2, count=2)
    ['labels/offsets decreases at sample 1']
    >>> [(s.start, s.stop) for s in blocks(5, rows=2)]
    [(0, 2), (2, 4), (4, 5)]
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

BLOCK_ROWS = 1 << 18
"""Rows checked per step: bounds memory on multi-GB shards."""
LOGPROB_MAX = 1e-3
"""float16 rounding of logprobs near 0 can land a hair above 0."""


def blocks(n: int, rows: int = BLOCK_ROWS) -> Iterator[slice]:
    """Slices of at most `rows` rows covering 0..n."""
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def check_offsets(name: str, offsets: np.ndarray, total: int, count: int) -> list[str]:
    """An offsets array of `count` items over `total` rows: shape (count + 1,), 0..total,
    never decreasing."""
    if offsets.shape != (count + 1,):
        return [f"{name} has shape {offsets.shape}, expected ({count + 1},)"]
    if offsets[0] != 0 or offsets[-1] != total:
        return [f"{name} runs {offsets[0]}..{offsets[-1]}, expected 0..{total}"]
    if np.any(np.diff(offsets) < 0):
        return [f"{name} decreases at sample {int(np.argmax(np.diff(offsets) < 0))}"]
    return []


def nonpositive_logprobs(values: np.ndarray) -> bool:
    """All finite and at most 0 (to float16 rounding): what every stored logprob must be."""
    return bool(np.all(np.isfinite(values)) and values.max(initial=-1) <= LOGPROB_MAX)
