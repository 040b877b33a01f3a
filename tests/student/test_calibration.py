"""Expected calibration error of a top-1 (`pipeline.student.calibration`), against a
plain numpy oracle, on calibrated and overconfident predictors, across batches."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.student.calibration import BINS, CalibrationBins


def ece_oracle(p: np.ndarray, correct: np.ndarray, bins: int = BINS) -> float:
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (p >= lo) & ((p < hi) if hi < 1 else (p <= hi))
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - correct[inside].mean())
    return total


def test_matches_the_oracle_when_added_in_batches():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 5000)
    correct = rng.uniform(0, 1, 5000) < p ** 2  # overconfident
    cal = CalibrationBins()
    for part in np.array_split(np.arange(5000), 7):
        cal.add(torch.from_numpy(p[part]), torch.from_numpy(correct[part]))
    assert np.isclose(cal.ece(), ece_oracle(p, correct), atol=1e-9)
    assert np.isclose(cal.accuracy(), correct.mean()) and np.isclose(cal.mean_confidence(), p.mean())


def test_calibrated_predictor_scores_near_zero_overconfident_does_not():
    rng = np.random.default_rng(1)
    p = rng.uniform(0, 1, 200_000)
    calibrated, over = CalibrationBins(), CalibrationBins()
    calibrated.add(torch.from_numpy(p), torch.from_numpy(rng.uniform(0, 1, p.size) < p))
    over.add(torch.from_numpy(p), torch.from_numpy(rng.uniform(0, 1, p.size) < p / 2))
    assert calibrated.ece() < 0.01
    assert abs(over.ece() - p.mean() / 2) < 0.01  # confidence - accuracy = p / 2 everywhere


def test_confidence_of_exactly_one_lands_in_the_last_bin():
    cal = CalibrationBins()
    cal.add(torch.tensor([1.0, 1.0]), torch.tensor([True, True]))
    assert cal.count[-1] == 2 and cal.ece() == 0.0
