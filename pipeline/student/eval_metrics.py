"""Held-out evaluation against the teacher's stored labels: KL, top-1 agreement, NLL.

Per loss position, from a model's logits and the teacher's top-k:
- `kl`: forward KL from the teacher's top-k (plus one tail bucket holding the
  rest of its mass) to the model's distribution over the same k + 1 buckets,
  at T = 1; the teacher's own row is 0 by definition;
- `top1_agreement`: the model's argmax equals the teacher's top-1 id;
- `nll`: the model's negative log-likelihood of the teacher's sampled token
  (perplexity = exp(nll)); the teacher's own NLL comes from the stored
  sampled logprobs, so the teacher never has to be loaded.
Sums are accumulated and divided once by the position count.

On a model's own text (a score-mode output of its `kd student-samples`
completions), `SampleScores` gives the number on-policy training is about: the
teacher's mean NLL of the tokens the model wrote (lower: it writes what the
teacher would), and, where the output stores the sampling student's logprobs,
the model's own NLL of them and the mean per-token reverse-KL estimate
log p_model(y) - log p_teacher(y) (its expectation is KL(model || teacher)).

    >>> import torch
    >>> from pipeline.student.eval_metrics import EvalTotals
    >>> t = EvalTotals(); t.add(kl=torch.tensor([0.5]), agree=torch.tensor([True]),
    ...                        nll=torch.tensor([2.0])); t.means()["top1_agreement"]
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.student.kd_losses import forward_kl, retemper_teacher, student_logprobs_at


def position_metrics(logits: torch.Tensor, teacher_ids: torch.Tensor,
                     teacher_logprobs: torch.Tensor, target_ids: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position (kl, agree, nll) of a model's (N, V) logits against the teacher's labels."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = forward_kl(retemper_teacher(teacher_logprobs.float(), 1.0, "bucket"),
                    student_logprobs_at(logits, teacher_ids, 1.0, "bucket"))
    agree = logp.argmax(-1) == teacher_ids[:, 0]
    nll = -logp.gather(1, target_ids[:, None])[:, 0]
    return kl, agree, nll


@dataclass
class EvalTotals:
    """Running sums over evaluation positions."""

    kl: float = 0.0
    agree: float = 0.0
    nll: float = 0.0
    positions: int = 0

    def add(self, kl: torch.Tensor, agree: torch.Tensor, nll: torch.Tensor) -> None:
        self.kl += float(kl.double().sum())
        self.agree += float(agree.double().sum())
        self.nll += float(nll.double().sum())
        self.positions += int(nll.numel())

    def means(self) -> dict[str, float]:
        n = max(self.positions, 1)
        return {"kl": self.kl / n, "top1_agreement": self.agree / n, "nll": self.nll / n,
                "perplexity": math.exp(min(self.nll / n, 700.0)), "positions": self.positions}


@dataclass
class SampleScores:
    """Running sums over the tokens of a model's own samples, scored by the teacher.

        >>> s = SampleScores(); s.add(np.array([-1.0, -3.0]), np.array([-0.5, -0.5]))
        >>> s.means()
        {'teacher_nll_of_samples': 2.0, 'sample_positions': 2, 'student_nll_of_samples': 0.5, 'reverse_kl_estimate': 1.5}
    """

    teacher_nll: float = 0.0
    student_nll: float = 0.0
    positions: int = 0
    with_student: int = 0

    def add(self, teacher_logprobs: np.ndarray, student_logprobs: np.ndarray | None) -> None:
        """One sample's (or shard's) teacher logprobs of the sampled tokens, and the
        sampling student's where stored."""
        self.teacher_nll -= float(np.sum(teacher_logprobs, dtype=np.float64))
        self.positions += len(teacher_logprobs)
        if student_logprobs is not None:
            self.student_nll -= float(np.sum(student_logprobs, dtype=np.float64))
            self.with_student += len(student_logprobs)

    def means(self) -> dict[str, float]:
        """Teacher NLL per token; the student's and the reverse-KL estimate only when every
        token has the student's logprob (a partial mean would compare other tokens)."""
        n = max(self.positions, 1)
        out = {"teacher_nll_of_samples": self.teacher_nll / n, "sample_positions": self.positions}
        if self.positions and self.with_student == self.positions:
            out |= {"student_nll_of_samples": self.student_nll / n,
                    "reverse_kl_estimate": (self.teacher_nll - self.student_nll) / n}
        return out
