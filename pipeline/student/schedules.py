"""Schedules of the student stage: the learning rate and the distillation temperature, per step.

Learning rate: linear warm-up, then cosine decay to a floor (each training
phase runs its own, see `pipeline.student.phases`). Temperature: from
--kd-temperature at step 0 to --final-temperature at the last step of the run,
`constant`, `linear` or `cosine`:

    p = step / (total - 1)                      (0 at the first step, 1 at the last)
    linear:  T = T0 + (T1 - T0) * p
    cosine:  T = T1 + (T0 - T1) * (1 + cos(pi * p)) / 2

    >>> from pipeline.student.schedules import lr_at, temperature_at
    >>> [round(lr_at(s, 1.0, warmup=2, total=10, min_ratio=0.1), 3) for s in (0, 1, 2, 10)]
    [0.5, 1.0, 1.0, 0.1]
    >>> [temperature_at(s, 4.0, 1.0, total=5, kind="linear") for s in (0, 2, 4)]
    [4.0, 2.5, 1.0]
"""

from __future__ import annotations

import math

TEMPERATURE_SCHEDULES = ("constant", "linear", "cosine")


def lr_at(step: int, peak: float, warmup: int, total: int, min_ratio: float) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def temperature_at(step: int, start: float, end: float, total: int, kind: str) -> float:
    """Distillation temperature of optimizer step `step` (0-based) of `total`."""
    if kind not in TEMPERATURE_SCHEDULES:
        raise ValueError(f"kind must be one of {', '.join(TEMPERATURE_SCHEDULES)}; got {kind!r}")
    if kind == "constant":
        return start
    progress = min(max(step, 0) / max(total - 1, 1), 1.0)
    if kind == "linear":
        return start + (end - start) * progress
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
