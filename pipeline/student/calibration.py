"""Expected calibration error (ECE) of a model's top-1 prediction, accumulated over batches.

Each position contributes its top-1 probability (the confidence) and whether the top-1
token is the one that came next (correct). Positions are binned by confidence into
BINS equal-width bins; ECE = sum over bins of (bin positions / all positions) x
|mean confidence - accuracy| in the bin (Guo et al., 2017). 0 is perfectly calibrated;
a model that says 0.9 and is right half the time scores 0.4.

    >>> import torch
    >>> c = CalibrationBins()
    >>> c.add(torch.tensor([0.9, 0.9, 0.3, 0.3]), torch.tensor([True, False, False, False]))
    >>> round(c.ece(), 4), round(c.mean_confidence(), 2), c.accuracy()
    (0.35, 0.6, 0.25)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

BINS = 15


@dataclass
class CalibrationBins:
    """Per confidence bin: positions, summed confidence, correct top-1 predictions."""

    count: torch.Tensor = field(default_factory=lambda: torch.zeros(BINS, dtype=torch.float64))
    confidence: torch.Tensor = field(default_factory=lambda: torch.zeros(BINS, dtype=torch.float64))
    correct: torch.Tensor = field(default_factory=lambda: torch.zeros(BINS, dtype=torch.float64))

    def add(self, confidence: torch.Tensor, correct: torch.Tensor) -> None:
        """Add positions: top-1 probabilities in [0, 1] and whether each top-1 was right."""
        p = confidence.detach().double().cpu().clamp(0.0, 1.0)
        b = (p * BINS).long().clamp(max=BINS - 1)
        self.count += torch.bincount(b, minlength=BINS).double()
        self.confidence += torch.bincount(b, weights=p, minlength=BINS)
        self.correct += torch.bincount(b, weights=correct.detach().double().cpu(), minlength=BINS)

    def ece(self) -> float:
        n = float(self.count.sum())
        return float((self.confidence - self.correct).abs().sum()) / n if n else float("nan")

    def mean_confidence(self) -> float:
        return float(self.confidence.sum() / self.count.sum().clamp(min=1))

    def accuracy(self) -> float:
        return float(self.correct.sum() / self.count.sum().clamp(min=1))
