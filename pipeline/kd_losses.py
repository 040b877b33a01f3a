"""Distillation losses over the teacher's stored top-k: pure torch, no dense teacher tensor.

The teacher's labels are k ids per position with their raw (T = 1) logprobs,
normalised over the full vocabulary, so their probabilities sum to at most 1;
the remainder is the tail mass. The student's log-probabilities are gathered
at those ids, never expanded to a (positions, vocabulary) teacher tensor.

Tail handling (`tail`):
- `renormalize`: both distributions are restricted to the k ids and
  renormalised there;
- `bucket`: k + 1 classes on both sides, the last holding everything outside
  the teacher's top-k (teacher: 1 - sum of its k probabilities; student: the
  mass its softmax puts outside those ids).

Temperature: the stored logprobs are at T = 1. At T, the teacher's top-k are
re-tempered as softmax(logp / T) over the support (logits and logprobs differ
by a per-row constant, which cancels); the tail bucket, whose internal shape
is unknown, is treated as one lump of mass m tempered to m^(1/T), an
approximation exact at T = 1. The student is tempered as log_softmax(z / T).
The soft loss is scaled by T^2 (Hinton et al.) so its gradients keep their
size across temperatures; TVD is scaled the same way, for uniformity.

Every loss returns a SUM over positions: the caller divides once by its count
of loss tokens (`combine_losses`).

    >>> import torch
    >>> from pipeline.kd_losses import soft_label_loss
    >>> z = torch.tensor([[2.0, 1.0, 0.0]]); ids = torch.tensor([[0, 1, 2]])
    >>> float(soft_label_loss(z, ids, torch.log_softmax(z, -1), kind="forward_kl"))
    0.0
"""

from __future__ import annotations

import torch

KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")
TAILS = ("renormalize", "bucket")
# exp(logsumexp) of the top-k can round to >= 1; the tail bucket's log is
# then taken of at least this much mass.
MIN_TAIL = 1e-7


def check_args(kind: str, tail: str, temperature: float, beta: float) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {', '.join(TAILS)}; got {tail!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1]; got {beta}")


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 inputs are promoted: softmax over ~50k logits in bf16 loses the tail."""
    return x if x.dtype == torch.float64 else x.float()


def log_tail(logprobs: torch.Tensor) -> torch.Tensor:
    """(N, 1) log of the mass outside the given (N, k) log-probabilities."""
    lse = torch.logsumexp(logprobs, dim=-1, keepdim=True)
    return torch.log((-torch.expm1(lse.clamp(max=0))).clamp(min=MIN_TAIL))


def retemper_teacher(teacher_logprobs: torch.Tensor, temperature: float, tail: str) -> torch.Tensor:
    """Teacher log-probs over the k ids (renormalize) or k + 1 buckets (bucket), at `temperature`."""
    t = at_least_fp32(teacher_logprobs)
    if tail == "renormalize":
        return torch.log_softmax(t / temperature, dim=-1)
    return torch.log_softmax(torch.cat([t, log_tail(t)], dim=-1) / temperature, dim=-1)


def student_logprobs_at(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                        temperature: float, tail: str) -> torch.Tensor:
    """Student log-probs at the teacher's ids (renormalised) or with a tail bucket appended."""
    gathered = torch.log_softmax(at_least_fp32(student_logits) / temperature, dim=-1).gather(1, teacher_ids)
    if tail == "renormalize":
        return torch.log_softmax(gathered, dim=-1)
    return torch.cat([gathered, log_tail(gathered)], dim=-1)


def kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Per-row KL(P || Q) from log-probs; rows of P with zero mass contribute 0."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def generalized_jsd(logp: torch.Tensor, logq: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-row generalised JSD (GKD, Agarwal et al. 2024; TRL's convention).

    M = (1 - beta) P + beta Q, JSD = beta KL(P || M) + (1 - beta) KL(Q || M);
    the endpoints are defined as the limits the method interpolates between:
    beta = 0 is forward KL(P || Q) and beta = 1 is reverse KL(Q || P).
    """
    if beta == 0:
        return kl(logp, logq)
    if beta == 1:
        return kl(logq, logp)
    logm = torch.logsumexp(torch.stack([logp + torch.log(torch.tensor(1 - beta)),
                                        logq + torch.log(torch.tensor(beta))]), dim=0)
    return beta * kl(logp, logm) + (1 - beta) * kl(logq, logm)


def divergence(logp: torch.Tensor, logq: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row divergence between teacher P and student Q given as log-probs."""
    if kind == "forward_kl":
        return kl(logp, logq)
    if kind == "reverse_kl":
        return kl(logq, logp)
    if kind == "jsd":
        return generalized_jsd(logp, logq, beta)
    return 0.5 * (logp.exp() - logq.exp()).abs().sum(-1)


def soft_label_loss(student_logits: torch.Tensor, teacher_ids: torch.Tensor,
                    teacher_logprobs: torch.Tensor, *, kind: str = "forward_kl",
                    temperature: float = 1.0, tail: str = "bucket", beta: float = 0.5,
                    chunk_size: int | None = None) -> torch.Tensor:
    """Summed soft-label loss over positions, scaled by T^2; chunked along positions if asked."""
    check_args(kind, tail, temperature, beta)
    n = student_logits.shape[0]
    step = chunk_size or max(n, 1)
    total = at_least_fp32(student_logits.new_zeros(()))
    for s in range(0, n, step):
        sl = slice(s, s + step)
        logp = retemper_teacher(teacher_logprobs[sl], temperature, tail)
        logq = student_logprobs_at(student_logits[sl], teacher_ids[sl], temperature, tail)
        total = total + divergence(logp, logq, kind, beta).sum()
    return total * temperature ** 2


def hard_label_loss(student_logits: torch.Tensor, target_ids: torch.Tensor,
                    chunk_size: int | None = None) -> torch.Tensor:
    """Summed cross-entropy of the student on the teacher's sampled tokens."""
    n = student_logits.shape[0]
    step = chunk_size or max(n, 1)
    total = at_least_fp32(student_logits.new_zeros(()))
    for s in range(0, n, step):
        total = total + torch.nn.functional.cross_entropy(
            at_least_fp32(student_logits[s:s + step]), target_ids[s:s + step], reduction="sum")
    return total


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                      kind: str = "mse") -> torch.Tensor:
    """Summed over positions: mean squared error per position, or 1 - cosine similarity."""
    if kind == "mse":
        return (student_hidden - teacher_hidden).pow(2).mean(-1).sum()
    if kind == "cosine":
        return (1 - torch.nn.functional.cosine_similarity(student_hidden, teacher_hidden, dim=-1)).sum()
    raise ValueError(f"kind must be one of mse, cosine; got {kind!r}")


class HiddenStateAdapter(torch.nn.Module):
    """Trainable linear maps from the student's width to the teacher's, one per mapped layer.

    Identity-initialised when the widths match, so distillation starts from the
    student's own states. It exists only for training: never exported.
    """

    def __init__(self, student_layers: list[int], student_width: int, teacher_width: int):
        super().__init__()
        self.proj = torch.nn.ModuleDict({str(layer): torch.nn.Linear(student_width, teacher_width)
                                         for layer in student_layers})
        if student_width == teacher_width:
            for lin in self.proj.values():
                torch.nn.init.eye_(lin.weight)
                torch.nn.init.zeros_(lin.bias)

    def forward(self, student_layer: int, states: torch.Tensor) -> torch.Tensor:
        return self.proj[str(student_layer)](states)


def combine_losses(soft_sum: torch.Tensor, hard_sum: torch.Tensor, n_tokens: int, alpha: float,
                   hidden_mean: torch.Tensor | None = None, hidden_weight: float = 0.0
                   ) -> torch.Tensor:
    """alpha * soft + (1 - alpha) * hard, per loss token, plus the weighted hidden loss.

    The soft and hard sums are divided once by `n_tokens`; the hidden loss comes
    already averaged over its own rows (every token, prompt included).
    """
    total = (alpha * soft_sum + (1 - alpha) * hard_sum) / max(n_tokens, 1)
    if hidden_mean is not None and hidden_weight:
        total = total + hidden_weight * hidden_mean
    return total
