"""Keep or drop generated samples by teacher confidence and sample health.

`drop_reason` returns the first rule a sample breaks, or None to keep it. The
rules run in a fixed order so every dropped sample has exactly one reason, and
the manifest's counts by reason add up to the dropped total.

    >>> from pipeline.teacher.confidence import ConfidenceMetrics
    >>> from pipeline.teacher.sample_filter import FilterThresholds, drop_reason
    >>> m = ConfidenceMetrics(-0.5, -3.0, 1.2, 0.02, 0.0, 40, "length", False)
    >>> drop_reason(m, FilterThresholds())
    'truncated'
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import pyarrow as pa

from pipeline.store.sample import Sample
from pipeline.store.sample_index import INDEX_SCHEMA
from pipeline.teacher.confidence import ConfidenceMetrics, confidence_metrics
from schemas.filter_thresholds import FilterThresholds

DROP_REASONS = ("non_finite", "too_short", "truncated", "repetition", "low_mean_logprob",
                "high_mean_logprob", "low_min_logprob", "high_entropy", "high_tail_mass")
"""Every reason a sample can be dropped for, in the order the rules are tried."""


def drop_reason(m: ConfidenceMetrics, t: FilterThresholds) -> str | None:
    """The first rule `m` breaks (one of DROP_REASONS), or None when the sample is kept."""
    rules = (
        ("non_finite", m.non_finite),
        ("too_short", m.completion_tokens < t.min_completion_tokens),
        ("truncated", t.drop_truncated and m.finish_reason == "length"),
        ("repetition", t.max_repetition is not None and m.repetition_rate > t.max_repetition),
        ("low_mean_logprob", t.min_mean_logprob is not None and m.mean_logprob < t.min_mean_logprob),
        ("high_mean_logprob", t.max_mean_logprob is not None and m.mean_logprob > t.max_mean_logprob),
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
    metrics = [confidence_metrics(s.topk_logprobs, s.sampled_logprobs, s.labelled_token_ids,
                                  s.finish_reason) for s in samples]
    reasons = [drop_reason(m, thresholds) for m in metrics]
    kept = [s for s, r in zip(samples, reasons) if r is None]
    return FilterOutcome(kept, metrics, reasons)


def index_table(samples: Sequence[Sample], metrics: Sequence[ConfidenceMetrics],
                reasons: Sequence[str | None], shard: str) -> pa.Table:
    """Rows for one shard's generated samples; kept ones get consecutive shard rows in order."""
    rows, next_row = [], 0
    for s, m, reason in zip(samples, metrics, reasons):
        kept = reason is None
        rows.append({"sample_id": s.sample_id, "prompt_id": s.prompt_id, "sample_index": s.index,
                     "kept": kept, "drop_reason": reason, "shard": shard if kept else None,
                     "row": next_row if kept else None, "prompt_tokens": len(s.prompt_token_ids),
                     "tokens": len(s.prompt_token_ids) + s.completion_length, **m.to_row()})
        next_row += kept
    return pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
