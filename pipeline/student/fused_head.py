"""The student's LM head and token losses in one pass, with the gradient formed chunk by chunk.

The LM head is the student's largest matmul (V x d per loss position; for
SmolLM2 the head costs about as much as 8 decoder layers). Autograd over
`fused_head_losses` must either keep each chunk's (chunk, V) logits for backward,
adding up to the dense buffer again, or recompute them in backward under
activation checkpointing: four (N, V, d) matmuls and a dozen passes over (N, V)
buffers per step. Here the losses depend on a chunk's logits z only through
(chunk, k + 3) numbers: log-sum-exp at 1 and at T, the logits at the teacher's
ids and at the target. Autograd over those few numbers gives their gradients,
and the gradient with respect to z has a closed form,

    dL/dz = g_lse * softmax(z) + g_lse_T / T * softmax(z / T) + scatter(g_gathered),

so each chunk's share of dL/dstates and dL/dW is formed in forward and its
(chunk, V) buffers are freed before the next chunk: three matmuls per chunk, no
recompute, no (N, V) buffer, the same gradient as autograd
(tests/test_fused_head.py). Liger-Kernel's fused linear losses use the same plan.

Only `alpha * soft + (1 - alpha) * hard` is differentiable, because that is the
gradient formed in forward; soft and hard come back detached, for logging.

    >>> import torch
    >>> from pipeline.student.fused_head import HeadLoss, head_losses
    >>> states = torch.randn(6, 8, requires_grad=True)          # 6 loss positions, d = 8
    >>> weight = torch.randn(32, 8, requires_grad=True)         # V = 32
    >>> ids = torch.randint(0, 32, (6, 4)); lps = torch.randn(6, 4).log_softmax(-1)
    >>> total, soft, hard = head_losses(states, weight, ids, lps, torch.randint(0, 32, (6,)),
    ...                                 HeadLoss(vocab=32, alpha=0.5, chunk_size=4))
    >>> total.backward(); tuple(weight.grad.shape)
    (32, 8)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from pipeline.student.kd_losses import (check_soft_options, onpolicy_reverse_kl,
                                        soft_loss_from_gathered, weighted_token_sum)


@dataclass(frozen=True)
class HeadLoss:
    """What the head's losses are: the weighting, the soft-loss options and the chunking."""

    vocab: int
    """Logit rows used (the labels' vocabulary); padded head rows beyond it get no gradient."""
    alpha: float = 0.5
    """Weight of the soft loss; 1 - alpha weights the cross-entropy."""
    kind: str = "forward_kl"
    """Divergence between teacher and student (pipeline.student.kd_losses.KINDS)."""
    tail: str = "bucket"
    """Mass outside the top-k: 'bucket' or 'renormalize'."""
    temperature: float = 1.0
    """Softmax temperature of both sides of the soft loss."""
    beta: float = 0.5
    """Mixture weight of the generalised JSD."""
    chunk_size: int = 2048
    """Loss positions per (chunk, V) logits buffer."""
    onpolicy_weight: float = 0.0
    """Weight of the on-policy reverse-KL term (`kd_losses.onpolicy_reverse_kl`) added to the loss."""

    def __post_init__(self) -> None:
        check_soft_options(self.kind, self.tail, self.temperature, self.beta)
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1]; got {self.alpha!r}")
        if not self.onpolicy_weight >= 0:
            raise ValueError(f"onpolicy_weight must be >= 0; got {self.onpolicy_weight!r}")
        if self.vocab < 1 or self.chunk_size < 1:
            raise ValueError(f"vocab and chunk_size must be >= 1; got {self.vocab}, "
                             f"{self.chunk_size}")


TokenTerm = Callable[[slice, Tensor], Tensor]
"""(rows, their target logprobs z[y] - lse) -> a differentiable sum that joins the soft loss."""


def chunk_gradient(z: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor, target_ids: Tensor,
                   spec: HeadLoss, soft_weights: Tensor | None = None,
                   sampled: tuple[Tensor, Tensor | None] | None = None,
                   token_term: Callable[[Tensor], Tensor] | None = None
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(soft sum, hard sum, dL/dz, on-policy sum) of one chunk's logits z (float32 or wider).

    L = alpha * soft + (1 - alpha) * hard, each position's soft term times its
    `soft_weights` entry when given. z is overwritten: it becomes dL/dz, which
    saves a (chunk, V) buffer. With `spec.onpolicy_weight`, `sampled` = (teacher's
    logprob of each target, the behaviour student's or None) adds that times the
    on-policy reverse-KL surrogate, a function of the target's logprob z[y] - lse.
    `token_term`, a function of those target logprobs too (the cross-tokenizer ALM
    chunk loss), adds its value to the soft sum.
    """
    soft_on = spec.alpha > 0
    lse = torch.logsumexp(z, dim=-1).requires_grad_()
    at_target = z.gather(-1, target_ids[:, None])[:, 0].requires_grad_()
    scaled = z / spec.temperature if soft_on and spec.temperature != 1.0 else None
    scaled_lse = lse if scaled is None else torch.logsumexp(scaled, dim=-1).requires_grad_()
    at_teacher = z.gather(-1, teacher_ids).requires_grad_() if soft_on else None
    with torch.enable_grad():
        hard = (lse - at_target).sum()
        soft = (soft_loss_from_gathered(at_teacher, scaled_lse, teacher_logprobs, kind=spec.kind,
                                        tail=spec.tail, temperature=spec.temperature,
                                        beta=spec.beta, weights=soft_weights)
                if soft_on else torch.zeros_like(hard))
        if soft_on and token_term is not None:
            soft = soft + token_term(at_target - lse)
        weighted = weighted_token_sum(soft, hard, spec.alpha)
        onpolicy = torch.zeros_like(hard)
        if spec.onpolicy_weight and sampled is not None:
            onpolicy = onpolicy_reverse_kl(at_target - lse, sampled[0], sampled[1])
            weighted = weighted + spec.onpolicy_weight * onpolicy
        leaves = [lse, at_target] + ([scaled_lse] if scaled is not None else []) + \
            ([at_teacher] if soft_on else [])
        grads = torch.autograd.grad(weighted, leaves, allow_unused=True, materialize_grads=True)
    g_z = z.sub_(lse.detach()[:, None]).exp_().mul_(grads[0][:, None])
    g_z.scatter_add_(-1, target_ids[:, None], grads[1][:, None])
    if scaled is not None:
        g_scaled_lse = grads[2] / spec.temperature
        g_z.add_(scaled.sub_(scaled_lse.detach()[:, None]).exp_().mul_(g_scaled_lse[:, None]))
    if soft_on:
        g_z.scatter_add_(-1, teacher_ids, grads[-1])
    return soft.detach(), hard.detach(), g_z, onpolicy.detach()


def matmul_dtype(t: Tensor) -> torch.dtype:
    """The dtype autograd's own matmuls would use for `t` here: autocast's, else t's."""
    kind = t.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else t.dtype


class _FusedHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, states: Tensor, weight: Tensor, teacher_ids: Tensor,
                teacher_logprobs: Tensor, target_ids: Tensor, spec: HeadLoss,
                soft_weights: Tensor | None, teacher_sampled: Tensor | None,
                behaviour: Tensor | None, splits: Sequence[slice] | None,
                token_term: TokenTerm | None) -> tuple[Tensor, Tensor, Tensor]:
        mm = matmul_dtype(weight)
        head = weight[:spec.vocab].to(mm)
        grad_states = torch.empty_like(states)
        acc = torch.promote_types(mm, torch.float32)    # float64 stays float64 (tests)
        grad_head = torch.zeros(head.shape, dtype=acc, device=head.device)
        soft = torch.zeros((), dtype=acc, device=states.device)
        hard = torch.zeros((), dtype=acc, device=states.device)
        onpolicy = torch.zeros((), dtype=acc, device=states.device)
        if splits is None:
            splits = [slice(start, start + spec.chunk_size)
                      for start in range(0, states.shape[0], spec.chunk_size)]
        for rows in splits:
            x = states[rows].to(mm)
            # The matmuls run in autocast's dtype, as autograd's would; the losses in float32.
            z = (x @ head.T).to(acc)
            sampled = None if teacher_sampled is None else (
                teacher_sampled[rows].to(acc), None if behaviour is None else behaviour[rows].to(acc))
            s, h, g_z, o = chunk_gradient(z, teacher_ids[rows].long(), teacher_logprobs[rows],
                                          target_ids[rows].long(), spec,
                                          None if soft_weights is None else soft_weights[rows],
                                          sampled,
                                          None if token_term is None else partial(token_term, rows))
            soft, hard, onpolicy = soft + s, hard + h, onpolicy + o
            g_z = g_z.to(mm)
            grad_states[rows] = (g_z @ head).to(states.dtype)
            grad_head += g_z.T @ x
        ctx.save_for_backward(grad_states, grad_head)
        ctx.weight_meta = (weight.shape, weight.dtype)
        ctx.mark_non_differentiable(soft, hard)
        total = weighted_token_sum(soft, hard, spec.alpha)
        return (total + spec.onpolicy_weight * onpolicy if spec.onpolicy_weight else total,
                soft, hard)

    @staticmethod
    def backward(ctx: Any, g_total: Tensor, *_unused: Any) -> tuple[Tensor | None, ...]:
        grad_states, grad_head = ctx.saved_tensors
        shape, dtype = ctx.weight_meta
        grad_weight = grad_head.new_zeros(shape, dtype=dtype)
        grad_weight[:grad_head.shape[0]] = grad_head * g_total
        return (grad_states * g_total, grad_weight) + (None,) * 9


def head_losses(states: Tensor, weight: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
                target_ids: Tensor, spec: HeadLoss, soft_weights: Tensor | None = None,
                teacher_sampled: Tensor | None = None, behaviour: Tensor | None = None,
                splits: Sequence[slice] | None = None, token_term: TokenTerm | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
    """(alpha*soft + (1-alpha)*hard, soft, hard) sums over the N rows of `states` (N, d).

    weight: the LM head (V', d) with V' >= spec.vocab; soft_weights (N,), optional,
    weights each row's soft term; teacher_sampled (N,) (the teacher's logprob of each
    target) and behaviour (N,) (the sampling student's, optional) feed the on-policy
    term when spec.onpolicy_weight > 0 (it is in the first value only). `splits`
    (row slices in order, covering every row; default: runs of spec.chunk_size) are
    the chunks; `token_term(rows, their target logprobs)`, a sum that must depend on
    no row outside `rows`, joins the soft sum (`pipeline.student.cross_head`'s ALM
    loss, whose splits end on chunk boundaries). Only the first value is
    differentiable, with respect to states and weight.
    """
    if states.dim() != 2 or states.shape[1] != weight.shape[1]:
        raise ValueError(f"states must be (N, {weight.shape[1]}); got {tuple(states.shape)}")
    if weight.shape[0] < spec.vocab:
        raise ValueError(f"the head has {weight.shape[0]} rows, fewer than vocab {spec.vocab}")
    return _FusedHead.apply(states, weight, teacher_ids, teacher_logprobs, target_ids, spec,
                            soft_weights, teacher_sampled, behaviour, splits, token_term)
