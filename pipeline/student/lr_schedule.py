"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

    >>> from pipeline.student.lr_schedule import lr_at
    >>> [round(lr_at(s, 1.0, warmup=2, total=10, min_ratio=0.1), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.1]
"""

from __future__ import annotations

import math


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
