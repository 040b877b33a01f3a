"""Confidence metrics in closed form, filter rules and their order, index rows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.store.sample import Sample
from pipeline.teacher.confidence import ConfidenceMetrics, confidence_metrics, repetition_rate
from pipeline.teacher.sample_filter import (DROP_REASONS, FilterThresholds, drop_reason, filter_samples,
                                            index_table)


def sample(lps, sampled, completion, reason="stop", pid="p", index=0) -> Sample:
    lps = np.asarray(lps, np.float32)
    return Sample(pid, index, [1, 2], list(completion), np.zeros(lps.shape, np.int64), lps,
                  np.asarray(sampled, np.float32), reason)


def test_metrics_closed_form():
    top = np.log([[0.5, 0.25], [0.9, 0.05]])
    m = confidence_metrics(top, np.log([0.5, 0.05]), [3, 4], "stop")
    h1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    h2 = -(0.9 / 0.95 * math.log(0.9 / 0.95) + 0.05 / 0.95 * math.log(0.05 / 0.95))
    assert m.mean_logprob == pytest.approx((math.log(0.5) + math.log(0.05)) / 2)
    assert m.min_logprob == pytest.approx(math.log(0.05))
    assert m.mean_entropy == pytest.approx((h1 + h2) / 2)
    assert m.mean_tail_mass == pytest.approx((0.25 + 0.05) / 2)
    assert (m.completion_tokens, m.finish_reason, m.non_finite) == (2, "stop", False)


def test_repetition_rate():
    assert repetition_rate([1, 2, 3, 4, 5, 6]) == 0.0
    assert repetition_rate([1, 2, 3]) == 0.0
    # 12 tokens of a 3-token loop: 9 four-grams, the first 3 new, the other 6 repeats.
    assert repetition_rate([7, 8, 9] * 4) == pytest.approx(6 / 9)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_flagged(bad):
    assert confidence_metrics(np.array([[-0.1, bad]]), np.array([-0.1]), [3], "stop").non_finite
    assert confidence_metrics(np.array([[-0.1, -1.0]]), np.array([bad]), [3], "stop").non_finite


def metrics(**changes) -> ConfidenceMetrics:
    base = dict(mean_logprob=-1.0, min_logprob=-3.0, mean_entropy=1.0, mean_tail_mass=0.1,
                repetition_rate=0.0, completion_tokens=10, finish_reason="stop", non_finite=False)
    return ConfidenceMetrics(**(base | changes))


@pytest.mark.parametrize("changes,thresholds,reason", [
    ({}, {}, None),
    ({"finish_reason": "length"}, {}, "truncated"),
    ({"finish_reason": "length"}, {"drop_truncated": False}, None),
    ({"completion_tokens": 0}, {}, "too_short"),
    ({"repetition_rate": 0.6}, {}, "repetition"),
    ({"repetition_rate": 0.6}, {"max_repetition": None}, None),
    ({"mean_logprob": -4.5}, {}, "low_mean_logprob"),
    ({"min_logprob": -9.0}, {"min_token_logprob": -8.0}, "low_min_logprob"),
    ({"mean_entropy": 2.5}, {"max_mean_entropy": 2.0}, "high_entropy"),
    ({"mean_tail_mass": 0.4}, {"max_tail_mass": 0.3}, "high_tail_mass"),
    # The first broken rule wins, so each sample has exactly one reason.
    ({"non_finite": True, "finish_reason": "length"}, {}, "non_finite"),
    ({"finish_reason": "length", "repetition_rate": 0.9}, {}, "truncated"),
])
def test_drop_reason(changes, thresholds, reason):
    assert drop_reason(metrics(**changes), FilterThresholds(**thresholds)) == reason
    assert reason is None or reason in DROP_REASONS


def test_filter_keeps_order_and_index_rows_point_at_kept_rows():
    good = [sample([[-0.1, -2.0]], [-0.1], [5], pid=f"g{i}") for i in range(3)]
    cut = sample([[-0.1, -2.0]], [-0.1], [5], reason="length", pid="cut")
    nan = sample([[np.nan, -2.0]], [-0.1], [5], pid="nan")
    generated = [good[0], cut, good[1], nan, good[2]]
    outcome = filter_samples(generated, FilterThresholds())
    assert [s.prompt_id for s in outcome.kept] == ["g0", "g1", "g2"]
    assert outcome.dropped_by_reason() == {"non_finite": 1, "truncated": 1}
    assert outcome.non_finite == 1
    rows = index_table(generated, outcome.metrics, outcome.reasons, "shard-00003.h5").to_pylist()
    assert [(r["sample_id"], r["kept"], r["shard"], r["row"], r["drop_reason"]) for r in rows] == [
        ("g0/0", True, "shard-00003.h5", 0, None), ("cut/0", False, None, None, "truncated"),
        ("g1/0", True, "shard-00003.h5", 1, None), ("nan/0", False, None, None, "non_finite"),
        ("g2/0", True, "shard-00003.h5", 2, None)]


def test_run_aborts_once_the_non_finite_rate_passes_its_limit():
    from stages.teacher.labels import GenerationStats, NonFiniteError, check_non_finite_rate

    check_non_finite_rate(GenerationStats(samples=200, non_finite=2), limit=0.01)
    with pytest.raises(NonFiniteError, match="3 of 200 .*--max-non-finite-rate 0.01"):
        check_non_finite_rate(GenerationStats(samples=200, non_finite=3), limit=0.01)
