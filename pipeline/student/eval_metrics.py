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

    >>> import torch
    >>> from pipeline.student.eval_metrics import EvalTotals
    >>> t = EvalTotals(); t.add(kl=torch.tensor([0.5]), agree=torch.tensor([True]),
    ...                        nll=torch.tensor([2.0])); t.means()["top1_agreement"]
    1.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
