"""Keep or drop generated samples by teacher confidence and sample health.

`drop_reason` returns the first rule a sample breaks, or None to keep it. The
rules run in a fixed order so every dropped sample has exactly one reason, and
the manifest's counts by reason add up to the dropped total.

    >>> from pipeline.confidence import ConfidenceMetrics
    >>> from pipeline.sample_filter import FilterThresholds, drop_reason
    >>> m = ConfidenceMetrics(-0.5, -3.0, 1.2, 0.02, 0.0, 40, "length", False)
    >>> drop_reason(m, FilterThresholds())
    'truncated'
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from pipeline.confidence import ConfidenceMetrics, confidence_metrics
from pipeline.sample import Sample

DROP_REASONS = ("non_finite", "too_short", "truncated", "repetition", "low_mean_logprob",
                "low_min_logprob", "high_entropy", "high_tail_mass")
"""Every reason a sample can be dropped for, in the order the rules are tried."""


@dataclass(frozen=True)
class FilterThresholds:
    """The keep/drop rules; None switches a rule off. These defaults are `TeacherConfig`'s."""

    drop_truncated: bool = True
    min_completion_tokens: int = 1
    max_repetition: float | None = 0.5
    min_mean_logprob: float | None = -4.0
    min_token_logprob: float | None = None
    max_mean_entropy: float | None = None
    max_tail_mass: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_reason(m: ConfidenceMetrics, t: FilterThresholds) -> str | None:
    """The first rule `m` breaks (one of DROP_REASONS), or None when the sample is kept."""
    rules = (
        ("non_finite", m.non_finite),
        ("too_short", m.completion_tokens < t.min_completion_tokens),
        ("truncated", t.drop_truncated and m.finish_reason == "length"),
        ("repetition", t.max_repetition is not None and m.repetition_rate > t.max_repetition),
        ("low_mean_logprob", t.min_mean_logprob is not None and m.mean_logprob < t.min_mean_logprob),
        ("low_min_logprob", t.min_token_logprob is not None and m.min_logprob < t.min_token_logprob),
        ("high_entropy", t.max_mean_entropy is not None and m.mean_entropy > t.max_mean_entropy),
        ("high_tail_mass", t.max_tail_mass is not None and m.mean_tail_mass > t.max_tail_mass),
    )
    return next((reason for reason, broken in rules if broken), None)


@dataclass
class FilterOutcome:
    """One shard's generated samples after filtering."""

    kept: list[Sample]
    metrics: list[ConfidenceMetrics]
    reasons: list[str | None]
    """Per generated sample, in generation order: its drop reason, or None if kept."""

    def dropped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r for r in self.reasons if r is not None).items()))

    @property
    def non_finite(self) -> int:
        return sum(r == "non_finite" for r in self.reasons)


def filter_samples(samples: Sequence[Sample], thresholds: FilterThresholds) -> FilterOutcome:
    """Metrics and keep/drop decision for each sample; kept samples stay in order."""
    metrics = [confidence_metrics(s.topk_logprobs, s.sampled_logprobs, s.completion_token_ids,
                                  s.finish_reason) for s in samples]
    reasons = [drop_reason(m, thresholds) for m in metrics]
    kept = [s for s, r in zip(samples, reasons) if r is None]
    return FilterOutcome(kept, metrics, reasons)
