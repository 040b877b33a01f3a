"""Training alarms: non-finite loss, exploding or vanishing gradients, device memory.

`AlarmMonitor.check` sees each optimizer step's loss, global gradient norm
(before clipping) and device memory fraction, and returns the alarms that
trip, each naming the step and the batch it happened on:
- `non_finite`: the loss or the gradient norm is NaN or infinite (at once);
- `exploding_gradient`: norm above `max_grad_norm` for `patience` steps in a row;
- `vanishing_gradient`: norm below `min_grad_norm` for `patience` steps in a row;
- `memory`: memory in use above `memory_fraction` of the device's total (trips
  when crossed, again only after it fell back below).
A gradient alarm resets its count when it trips, so under `--alarms warn` a
persistent condition is reported every `patience` steps, not every step.

    >>> from pipeline.student.alarms import AlarmMonitor, AlarmThresholds
    >>> monitor = AlarmMonitor(AlarmThresholds(max_grad_norm=10.0, patience=2))
    >>> monitor.check(1, "epoch 0 batch 0", loss=1.0, grad_norm=50.0)
    []
    >>> [a.kind for a in monitor.check(2, "epoch 0 batch 1", loss=1.0, grad_norm=60.0)]
    ['exploding_gradient']
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AlarmThresholds:
    max_grad_norm: float | None = None
    min_grad_norm: float | None = None
    patience: int = 1
    memory_fraction: float | None = None


@dataclass(frozen=True)
class Alarm:
    kind: str
    step: int
    where: str
    """The batch, e.g. `epoch 0 batch 7` (this rank's micro-batch count in the epoch)."""
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return f"alarm {self.kind} at step {self.step} ({self.where}): {self.message}"


class AlarmMonitor:
    """Counts consecutive threshold crossings; its state travels in checkpoints."""

    def __init__(self, thresholds: AlarmThresholds):
        self.thresholds = thresholds
        self.high = self.low = 0
        self.memory_tripped = False

    def state_dict(self) -> dict[str, Any]:
        return {"high": self.high, "low": self.low, "memory_tripped": self.memory_tripped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.high, self.low = state["high"], state["low"]
        self.memory_tripped = state["memory_tripped"]

    def check(self, step: int, where: str, loss: float, grad_norm: float,
              memory_fraction: float | None = None) -> list[Alarm]:
        """The alarms tripped by this step's values (see the module docstring)."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return [Alarm("non_finite", step, where,
                          f"loss {loss}, gradient norm {grad_norm}; lower --lr or check the "
                          "labels (kd verify)")]
        t, alarms = self.thresholds, []
        self.high = self.high + 1 if t.max_grad_norm is not None and grad_norm > t.max_grad_norm \
            else 0
        self.low = self.low + 1 if t.min_grad_norm is not None and grad_norm < t.min_grad_norm \
            else 0
        if self.high >= t.patience:
            alarms.append(Alarm("exploding_gradient", step, where,
                                f"gradient norm {grad_norm:.4g} above --max-grad-norm-alarm "
                                f"{t.max_grad_norm:g} for {self.high} step(s) in a row"))
            self.high = 0
        if self.low >= t.patience:
            alarms.append(Alarm("vanishing_gradient", step, where,
                                f"gradient norm {grad_norm:.4g} below --min-grad-norm-alarm "
                                f"{t.min_grad_norm:g} for {self.low} step(s) in a row"))
            self.low = 0
        over = (t.memory_fraction is not None and memory_fraction is not None
                and memory_fraction > t.memory_fraction)
        if over and not self.memory_tripped:
            alarms.append(Alarm("memory", step, where,
                                f"device memory at {memory_fraction:.1%} of the total, above "
                                f"--memory-alarm {t.memory_fraction:g}"))
        self.memory_tripped = over
        return alarms
