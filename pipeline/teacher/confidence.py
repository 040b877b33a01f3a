"""Per-sample teacher-confidence metrics, computed from the stored soft labels.

Every generated sample gets these numbers whether it is kept or not; they go
into `index.parquet` and drive `pipeline.teacher.sample_filter`. All of them come from
arrays the teacher stage already holds (top-k logprobs at T = 1, the sampled
tokens' logprobs, the completion tokens), so they cost no extra forward pass.

    >>> import numpy as np
    >>> from pipeline.teacher.confidence import confidence_metrics
    >>> m = confidence_metrics(np.log([[0.5, 0.25]]), np.log([0.5]), [7], "stop")
    >>> round(m.mean_tail_mass, 3), m.completion_tokens
    (0.25, 1)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

REPETITION_NGRAM = 4
"""n of the n-grams counted by `repetition_rate` (4 catches loops of short phrases)."""


@dataclass(frozen=True)
class ConfidenceMetrics:
    """How sure the teacher was of one sample, and how healthy the sample looks."""

    mean_logprob: float
    """Mean raw teacher logprob of the labelled tokens (sampled, or the data's own in score mode)."""
    min_logprob: float
    """Lowest raw teacher logprob among the sampled tokens."""
    mean_entropy: float
    """Mean entropy (nats) of the top-k distribution renormalised over its k entries."""
    mean_tail_mass: float
    """Mean probability mass outside the top-k: 1 - sum of the k probabilities."""
    repetition_rate: float
    """Fraction of the completion's 4-grams that repeat an earlier 4-gram of it (0 when too short)."""
    completion_tokens: int
    """Labelled tokens: the completion of a generated sample, the labelled positions of a scored one."""
    finish_reason: str
    """vLLM's reason: `stop` (end of sequence or stop token) or `length` (hit --max-tokens)."""
    non_finite: bool
    """True when any stored teacher value is NaN or infinite."""

    def to_row(self) -> dict[str, Any]:
        return asdict(self)


def repetition_rate(tokens: Sequence[int], n: int = REPETITION_NGRAM) -> float:
    """Share of n-grams already seen earlier in the same sequence: 0 for no loop, near 1 for a loop."""
    total = len(tokens) - n + 1
    if total <= 0:
        return 0.0
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for i in range(total):
        gram = tuple(tokens[i:i + n])
        repeats += gram in seen
        seen.add(gram)
    return repeats / total


def topk_entropy_and_tail(topk_logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row entropy of the renormalised top-k and the mass outside it."""
    lp = topk_logprobs.astype(np.float64)
    p = np.exp(lp)
    mass = p.sum(axis=1)
    q = p / np.where(mass > 0, mass, 1.0)[:, None]
    plogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -plogq.sum(axis=1), np.clip(1.0 - mass, 0.0, 1.0)


def confidence_metrics(topk_logprobs: np.ndarray, sampled_logprobs: np.ndarray,
                       completion: Sequence[int], finish_reason: str) -> ConfidenceMetrics:
    """All metrics of one sample from its (tokens, k) and (tokens,) raw teacher logprobs."""
    # Shards promise finite values (kd verify checks it), so even a -inf
    # "impossible token" inside the top-k disqualifies the sample.
    non_finite = not (np.isfinite(sampled_logprobs).all() and np.isfinite(topk_logprobs).all())
    if len(completion) == 0:
        return ConfidenceMetrics(0.0, 0.0, 0.0, 0.0, 0.0, 0, finish_reason, non_finite)
    with np.errstate(invalid="ignore", over="ignore"):
        entropy, tail = topk_entropy_and_tail(topk_logprobs)
        sampled = sampled_logprobs.astype(np.float64)
        return ConfidenceMetrics(
            mean_logprob=float(sampled.mean()), min_logprob=float(sampled.min()),
            mean_entropy=float(entropy.mean()), mean_tail_mass=float(tail.mean()),
            repetition_rate=repetition_rate(list(completion)),
            completion_tokens=len(completion), finish_reason=finish_reason,
            non_finite=non_finite)
