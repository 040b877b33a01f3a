"""Typed configuration of `kd merge-labels` (one output mixing several teachers' labels).

    >>> from schemas.merge_config import MergeConfig
    >>> MergeConfig(labels=("a", "b"), weights="0.7,0.3", out="m").validate().weight_values
    (0.7, 0.3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from schemas.config_base import ConfigError, check_choice

MIX_RULES = ("mean", "geometric")
WEIGHT_SUM_TOLERANCE = 1e-6


@dataclass
class MergeConfig:
    """Which teacher outputs `kd merge-labels` mixes, with which weights and rule, and where."""

    labels: tuple[str, ...] = ()
    """Teacher output directories labelling the same samples (same ids, tokens, tokenizer and vocabulary); at least two."""
    weights: str = ""
    """Comma-separated weight per --labels, in order, each > 0, summing to 1 (e.g. 0.7,0.3)."""
    mix_rule: str = "mean"
    """`mean`: weighted mean of the teachers' probabilities (each teacher's tail spread uniformly over the ids it did not store); `geometric`: weighted mean of their logprobs, renormalised over the vocabulary."""
    top_k: int = 0
    """Ids kept per position from the union of the teachers' top-k; 0: the largest k of the sources."""
    out: str = ""
    """Output directory (new or empty): an ordinary output whose manifest records each source, its weight and its manifest's sha256."""

    @property
    def weight_values(self) -> tuple[float, ...]:
        try:
            return tuple(float(w) for w in self.weights.split(","))
        except ValueError as exc:
            raise ConfigError(f"--weights must be comma-separated numbers, got {self.weights!r}"
                              ) from exc

    def validate(self) -> "MergeConfig":
        if len(self.labels) < 2:
            raise ConfigError("--labels must be given at least twice (the outputs to merge)")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError("--labels names the same directory twice")
        if not self.out:
            raise ConfigError("--out is required")
        if not self.weights:
            raise ConfigError("--weights is required: one weight per --labels, e.g. 0.7,0.3")
        w = self.weight_values
        if len(w) != len(self.labels):
            raise ConfigError(f"--weights has {len(w)} values for {len(self.labels)} --labels")
        if not all(math.isfinite(x) and x > 0 for x in w):
            raise ConfigError(f"--weights must all be > 0, got {self.weights}")
        if abs(sum(w) - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise ConfigError(f"--weights must sum to 1, got {self.weights} (sum {sum(w):g})")
        check_choice("mix_rule", self.mix_rule, MIX_RULES)
        if self.top_k < 0:
            raise ConfigError(f"--top-k must be >= 0 (0: the sources' largest k), got {self.top_k}")
        return self
