"""The confidence filter's keep/drop thresholds: part of the teacher config and its manifest.

They live here, with the configs, because `TeacherConfig` takes its defaults
from them and `schemas/` depends on nothing else of ours;
`pipeline.teacher.sample_filter` applies them.

    >>> from schemas.filter_thresholds import FilterThresholds
    >>> FilterThresholds().min_mean_logprob
    -4.0
    >>> FilterThresholds.for_mode("score").min_mean_logprob is None
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class FilterThresholds:
    """The keep/drop rules; None switches a rule off. These defaults are `TeacherConfig`'s."""

    drop_truncated: bool = True
    min_completion_tokens: int = 1
    max_repetition: float | None = 0.5
    min_mean_logprob: float | None = -4.0
    max_mean_logprob: float | None = None
    min_token_logprob: float | None = None
    max_mean_entropy: float | None = None
    max_tail_mass: float | None = None

    @classmethod
    def for_mode(cls, mode: str) -> "FilterThresholds":
        """The defaults of a mode. Scoring keeps the data as given: the rules that judge a
        teacher's own writing (truncation, repetition, implausibility) start off."""
        if mode == "score":
            return cls(drop_truncated=False, max_repetition=None, min_mean_logprob=None)
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
