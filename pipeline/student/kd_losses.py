"""Distillation losses computed from stored top-k soft labels, never a dense teacher tensor.

The teacher's top-k ids and raw (temperature 1) log-probabilities come from
disk; the student's log-probabilities are gathered at those ids. Mass outside
the top-k is either dropped (`tail="renormalize"`: both sides renormalised over
the k ids) or kept as one extra class (`tail="bucket"`: k + 1 classes per side).

Every loss returns a SUM over positions (a 0-dim tensor). The caller divides by
the number of loss tokens exactly once, in `total_loss`, so micro-batch and
gradient-accumulation sizes never weight tokens unevenly. The divergence
functions (`forward_kl`, ...) return one value per position, shape (N,).

    >>> import torch
    >>> from pipeline.student.kd_losses import soft_label_loss, hard_label_loss, combine_losses
    >>> logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])         # one position, V = 4
    >>> ids = torch.tensor([[0, 1]])                            # the teacher's top-2
    >>> lps = torch.log_softmax(logits, -1).gather(-1, ids)     # teacher == student
    >>> soft = soft_label_loss(logits, ids, lps, kind="forward_kl", tail="bucket")
    >>> abs(soft.item()) < 1e-6
    True
    >>> hard = hard_label_loss(logits, torch.tensor([0]))       # -log softmax(logits)[0]
    >>> round(combine_losses(soft, hard, n_tokens=1, alpha=0.5).item(), 4)
    0.2201
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from schemas.choices import HIDDEN_LOSSES as HIDDEN_KINDS
from schemas.choices import KD_LOSSES as KINDS
from schemas.choices import TAILS

# Floor of both tail buckets. Stored float32 top-k probabilities carry ~1e-7 of rounding
# each, so a smaller tail is noise; a zero teacher tail would make reverse KL infinite.
MIN_TAIL = 1e-7


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number; got {temperature!r}")


def _check_beta(beta: float) -> None:
    if not (isinstance(beta, (int, float)) and 0 <= beta <= 1):
        raise ValueError(f"beta must be in [0, 1]; got {beta!r}")


def check_soft_options(kind: str, tail: str, temperature: float, beta: float) -> None:
    """Raise ValueError naming the first invalid soft-loss option."""
    _check_choice("kind", kind, KINDS)
    _check_choice("tail", tail, TAILS)
    _check_temperature(temperature)
    _check_beta(beta)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)
                                   or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or an integer >= 1; got {chunk_size!r}")


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    # A bf16/fp16 log-softmax over a 100k+ vocabulary loses the small probabilities
    # the tail bucket and the KL terms are made of.
    return torch.promote_types(dtype, torch.float32)


def retemper_teacher(teacher_logprobs: Tensor, temperature: float, tail: str) -> Tensor:
    """The stored raw teacher distribution re-tempered at T, as log-probs (N, k) or (N, k + 1).

    Tempering is p_i^(1/T), renormalised. "renormalize": softmax(logp / T) over the
    k ids. "bucket": the k ids plus one tail bucket holding 1 - sum(exp(logp))
    (at least MIN_TAIL), and the tail is tempered as ONE LUMP, tail^(1/T). This is an
    approximation for T != 1: the tail's internal distribution is not stored, and
    the true tempered tail sum_j p_j^(1/T) is larger than tail^(1/T) for T > 1.
    At T = 1 both modes are exact.
    """
    _check_temperature(temperature)
    _check_choice("tail", tail, TAILS)
    scaled = teacher_logprobs / temperature
    if tail == "bucket":
        # expm1 keeps 1 - sum(p) precise when the top-k hold nearly all the mass; stored
        # float32 rows can even sum a hair above 1.
        lse = torch.logsumexp(teacher_logprobs, dim=-1, keepdim=True)
        tail_mass = (-torch.expm1(lse)).clamp(min=MIN_TAIL)
        scaled = torch.cat([scaled, torch.log(tail_mass) / temperature], dim=-1)
    return torch.log_softmax(scaled, dim=-1)


def student_logprobs_at(student_logits: Tensor, teacher_ids: Tensor, temperature: float,
                        tail: str) -> Tensor:
    """log_softmax(student_logits / T) at the teacher's ids: (N, k), or (N, k + 1) with the tail last.

    "renormalize" renormalises over the k ids; "bucket" appends log(1 - sum of the
    gathered probabilities), at least log(MIN_TAIL). Computed in float32 or wider.
    """
    _check_temperature(temperature)
    _check_choice("tail", tail, TAILS)
    ids = teacher_ids.long()
    full = torch.log_softmax(student_logits.to(_loss_dtype(student_logits.dtype)) / temperature,
                             dim=-1)
    gathered = full.gather(-1, ids)
    if tail == "renormalize":
        return gathered - torch.logsumexp(gathered, dim=-1, keepdim=True)
    # Sum the probabilities outside the top-k directly: 1 - sum(top-k) cancels
    # catastrophically in float32 once the student is confident. The fill is the most
    # negative finite number, not -inf, so the gradient stays finite even when V == k.
    outside = full.scatter(-1, ids, torch.finfo(full.dtype).min)
    log_tail = torch.logsumexp(outside, dim=-1, keepdim=True).clamp(min=math.log(MIN_TAIL))
    return torch.cat([gathered, log_tail], dim=-1)


def mask_padding(student: Tensor, teacher_logprobs: Tensor) -> Tensor:
    """The student's gathered log-probs with -inf where the teacher's entry is -inf.

    Sampled labels (`pipeline.store.codecs.kind_sampled`) pad each row with -inf teacher entries
    at a repeated id; masking the student there keeps those columns out of its top-k
    mass (its tail bucket stays exact) and out of every divergence (0 log 0 = 0).
    Top-k labels are always finite, so this changes nothing for them.
    """
    pad = torch.isneginf(teacher_logprobs)
    k = teacher_logprobs.shape[-1]
    if not bool(pad.any()):
        return student
    head = student[..., :k].masked_fill(pad, float("-inf"))
    return torch.cat([head, student[..., k:]], dim=-1)


def soft_loss_from_gathered(teacher_logits: Tensor, lse_t: Tensor, teacher_logprobs: Tensor, *,
                            kind: str = "forward_kl", tail: str = "bucket",
                            temperature: float = 1.0, beta: float = 0.5,
                            weights: Tensor | None = None) -> Tensor:
    """The soft loss (sum x T^2) from the student's logits at the teacher's ids and log-sum-exp.

    teacher_logits: (N, k) raw student logits z at the teacher's ids; lse_t: (N,)
    logsumexp(z / T). The soft loss depends on the (N, V) logits only through these
    (N, k + 1) numbers, which is what lets `pipeline.student.fused_head` form its gradient in
    closed form. The student's tail bucket is log(1 - sum of its top-k
    probabilities), floored at MIN_TAIL: less precise than `student_logprobs_at` for
    tails below ~1e-6, whose share of the loss is then below the float32 noise anyway.
    `weights` (N,) multiplies each position's divergence (`--rare-token-weight`).
    """
    gathered = mask_padding(teacher_logits / temperature - lse_t[:, None], teacher_logprobs)
    if tail == "renormalize":
        student = gathered - torch.logsumexp(gathered, dim=-1, keepdim=True)
    else:
        inside = torch.logsumexp(gathered, dim=-1, keepdim=True).clamp(max=0)
        log_tail = torch.log((-torch.expm1(inside)).clamp(min=MIN_TAIL))
        student = torch.cat([gathered, log_tail], dim=-1)
    teacher = retemper_teacher(teacher_logprobs.to(student.dtype), temperature, tail)
    per_position = divergence(teacher, student, kind, beta)
    if weights is not None:
        per_position = per_position * weights.to(per_position.dtype)
    return temperature ** 2 * per_position.sum()


def fused_head_losses(logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor,
                      target_ids: Tensor, *, kind: str = "forward_kl", tail: str = "bucket",
                      temperature: float = 1.0, beta: float = 0.5, soft: bool = True
                      ) -> tuple[Tensor, Tensor]:
    """(soft sum x T^2, hard sum) from one pass over the (N, V) logits.

    One log-sum-exp over the vocabulary serves both the cross-entropy and (at
    T = 1) the soft loss, and only (N, k) values are gathered, so the soft loss
    costs little more than cross-entropy alone. `soft=False` skips the soft loss
    (plain fine-tuning). The training step uses `pipeline.student.fused_head`, which adds
    the LM head and a closed-form gradient around the same computation.
    """
    z = logits.to(_loss_dtype(logits.dtype))
    lse = torch.logsumexp(z, dim=-1)
    hard = (lse - z.gather(-1, target_ids.long()[:, None])[:, 0]).sum()
    if not soft:
        return z.new_zeros(()), hard
    lse_t = lse if temperature == 1.0 else torch.logsumexp(z / temperature, dim=-1)
    return soft_loss_from_gathered(z.gather(-1, teacher_ids.long()), lse_t, teacher_logprobs,
                                   kind=kind, tail=tail, temperature=temperature, beta=beta), hard


def _kl_rows(log_a: Tensor, log_b: Tensor) -> Tensor:
    """sum_i a_i (log a_i - log b_i) per row, with 0 * log 0 = 0."""
    a = log_a.exp()
    # Mask the difference, not the product: where() after multiplying still lets
    # 0 * inf = nan into the gradient when an entry is -inf on both sides.
    diff = torch.where(a > 0, log_a - log_b, torch.zeros_like(log_a))
    return (a * diff).sum(-1)


def forward_kl(teacher_logprobs: Tensor, student_logprobs: Tensor) -> Tensor:
    """KL(P || Q) = sum p (log p - log q) per position, (N,); P teacher, Q student, both log-probs (N, m)."""
    return _kl_rows(teacher_logprobs, student_logprobs)


def reverse_kl(teacher_logprobs: Tensor, student_logprobs: Tensor) -> Tensor:
    """KL(Q || P) = sum q (log q - log p) per position, (N,)."""
    return _kl_rows(student_logprobs, teacher_logprobs)


def generalized_jsd(teacher_logprobs: Tensor, student_logprobs: Tensor, beta: float) -> Tensor:
    """Generalised JSD per position, (N,), as in the GKD paper (Agarwal et al. 2024) and trl.

    M = beta * P + (1 - beta) * Q and JSD_beta = beta * KL(P || M) + (1 - beta) * KL(Q || M)
    for 0 < beta < 1. That expression is 0 at both ends, so, like trl's
    `generalized_jsd_loss`, beta == 0 returns forward KL(P || Q) and beta == 1 reverse KL(Q || P).
    """
    _check_beta(beta)
    if beta == 0:
        return forward_kl(teacher_logprobs, student_logprobs)
    if beta == 1:
        return reverse_kl(teacher_logprobs, student_logprobs)
    log_m = torch.logaddexp(teacher_logprobs + math.log(beta), student_logprobs + math.log1p(-beta))
    return beta * _kl_rows(teacher_logprobs, log_m) + (1 - beta) * _kl_rows(student_logprobs, log_m)


def total_variation(teacher_logprobs: Tensor, student_logprobs: Tensor) -> Tensor:
    """0.5 * sum |p - q| per position, (N,)."""
    return 0.5 * (teacher_logprobs.exp() - student_logprobs.exp()).abs().sum(-1)


def divergence(teacher_logprobs: Tensor, student_logprobs: Tensor, kind: str,
               beta: float = 0.5) -> Tensor:
    """Per-position divergence `kind` (one of KINDS) between teacher P and student Q, (N,)."""
    _check_choice("kind", kind, KINDS)
    if kind == "jsd":
        return generalized_jsd(teacher_logprobs, student_logprobs, beta)
    kl_or_tvd = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tvd": total_variation}[kind]
    return kl_or_tvd(teacher_logprobs, student_logprobs)


def _sum_in_chunks(loss_fn: Callable[..., Tensor], chunk_size: int | None,
                   *tensors: Tensor) -> Tensor:
    """loss_fn over row chunks of `tensors`, summed; loss_fn must return a sum over its rows."""
    n = tensors[0].shape[0]
    if chunk_size is None or n <= chunk_size:
        return loss_fn(*tensors)
    track = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    total: Tensor | None = None
    for start in range(0, n, chunk_size):
        part = [t[start:start + chunk_size] for t in tensors]
        # Recompute each chunk in backward instead of saving its (chunk, V) log-softmax:
        # saved for backward, the chunks would add up to the full (N, V) buffer again.
        value = (checkpoint(loss_fn, *part, use_reentrant=False, preserve_rng_state=False)
                 if track else loss_fn(*part))
        total = value if total is None else total + value
    return total


def _check_soft_inputs(student_logits: Tensor, teacher_ids: Tensor,
                       teacher_logprobs: Tensor) -> None:
    if student_logits.dim() != 2:
        raise ValueError(f"student_logits must be (N, V); got shape {tuple(student_logits.shape)}")
    if (teacher_ids.dim() != 2 or teacher_ids.shape != teacher_logprobs.shape
            or teacher_ids.shape[0] != student_logits.shape[0]):
        raise ValueError("teacher_ids and teacher_logprobs must both be (N, k) with N = "
                         f"student_logits.shape[0] = {student_logits.shape[0]}; got "
                         f"{tuple(teacher_ids.shape)} and {tuple(teacher_logprobs.shape)}")
    if teacher_ids.dtype.is_floating_point:
        raise ValueError(f"teacher_ids must be an integer tensor; got {teacher_ids.dtype}")


def soft_label_loss(student_logits: Tensor, teacher_ids: Tensor, teacher_logprobs: Tensor, *,
                    kind: str = "forward_kl", tail: str = "bucket", temperature: float = 1.0,
                    beta: float = 0.5, chunk_size: int | None = None) -> Tensor:
    """SUM over the N positions of divergence(teacher, student) * T**2, a 0-dim tensor.

    kind: forward_kl, reverse_kl, jsd (generalised, `beta`) or tvd. Both sides are
    tempered at `temperature` (see `retemper_teacher`); the T**2 factor (Hinton et al.)
    keeps KL gradients comparable across temperatures and is applied to every kind,
    TVD included, so that --kd-temperature means the same thing for all of them (TVD's
    gradient shrinks only as 1/T, so for TVD this is a convention, not a correction).
    chunk_size bounds the (rows, V) log-softmax buffer: the loss is computed and
    recomputed in backward per chunk of rows; the result equals the unchunked one.
    """
    check_soft_options(kind, tail, temperature, beta)
    _check_chunk_size(chunk_size)
    _check_soft_inputs(student_logits, teacher_ids, teacher_logprobs)

    def chunk_loss(logits: Tensor, ids: Tensor, lps: Tensor) -> Tensor:
        student = mask_padding(student_logprobs_at(logits, ids, temperature, tail), lps)
        if tail == "renormalize" and bool(torch.isneginf(lps).any()):
            student = student - torch.logsumexp(student, dim=-1, keepdim=True)  # pads left out
        teacher = retemper_teacher(lps.to(student.dtype), temperature, tail)
        return divergence(teacher, student, kind, beta).sum()

    return temperature ** 2 * _sum_in_chunks(chunk_loss, chunk_size, student_logits,
                                             teacher_ids.long(), teacher_logprobs)


def hard_label_loss(student_logits: Tensor, target_ids: Tensor,
                    chunk_size: int | None = None) -> Tensor:
    """SUM over positions of cross-entropy against the teacher's sampled tokens (temperature 1)."""
    _check_chunk_size(chunk_size)
    if student_logits.dim() != 2 or target_ids.shape != student_logits.shape[:1]:
        raise ValueError(f"student_logits must be (N, V) and target_ids (N,); got "
                         f"{tuple(student_logits.shape)} and {tuple(target_ids.shape)}")

    def chunk_loss(logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.to(_loss_dtype(logits.dtype)), targets, reduction="sum")

    return _sum_in_chunks(chunk_loss, chunk_size, student_logits, target_ids.long())


def hidden_state_loss(student_hidden: Tensor, teacher_hidden: Tensor, kind: str = "mse") -> Tensor:
    """SUM over positions of the hidden-state mismatch; inputs (N, d), the student's already adapted.

    "mse": per position the mean over d of the squared error; "cosine": 1 - cosine similarity.
    """
    _check_choice("kind", kind, HIDDEN_KINDS)
    if student_hidden.dim() != 2 or student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"student_hidden and teacher_hidden must both be (N, d); got "
                         f"{tuple(student_hidden.shape)} and {tuple(teacher_hidden.shape)}")
    dtype = _loss_dtype(torch.promote_types(student_hidden.dtype, teacher_hidden.dtype))
    s, t = student_hidden.to(dtype), teacher_hidden.to(dtype)
    if kind == "mse":
        return (s - t).pow(2).mean(-1).sum()
    return (1 - F.cosine_similarity(s, t, dim=-1)).sum()


class HiddenStateAdapter(torch.nn.Module):
    """One trainable linear map student_width -> teacher_width per mapped student layer.

    With equal widths each map starts as the identity (weight I, bias 0), so a student
    cut from the teacher is compared in the teacher's own basis from step 0 rather than
    through a random projection; otherwise nn.Linear's default init. Training-only.
    """

    def __init__(self, student_layers: list[int], student_width: int, teacher_width: int):
        super().__init__()
        if student_width < 1 or teacher_width < 1:
            raise ValueError(f"student_width and teacher_width must be >= 1; got "
                             f"{student_width} and {teacher_width}")
        if not student_layers:
            raise ValueError("student_layers must name at least one mapped student layer")
        self.proj = torch.nn.ModuleDict(
            {str(layer): torch.nn.Linear(student_width, teacher_width) for layer in student_layers})
        if student_width == teacher_width:
            with torch.no_grad():
                for linear in self.proj.values():
                    linear.weight.copy_(torch.eye(student_width))
                    linear.bias.zero_()

    def forward(self, student_layer: int, student_hidden: Tensor) -> Tensor:
        """student_hidden (..., student_width) of `student_layer` mapped to (..., teacher_width)."""
        return self.proj[str(student_layer)](student_hidden)


def combine_losses(soft_sum: Tensor, hard_sum: Tensor, n_tokens: int | Tensor, alpha: float,
                   hidden_mean: Tensor | None = None, hidden_weight: float = 0.0) -> Tensor:
    """(alpha * soft_sum + (1 - alpha) * hard_sum) / max(n_tokens, 1) + hidden_weight * hidden_mean.

    alpha = 1 is pure soft-label distillation, alpha = 0 pure cross-entropy. A term
    whose weight is 0 is skipped, so a non-finite value there cannot poison the total.
    """
    if not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise ValueError(f"alpha must be in [0, 1]; got {alpha!r}")
    return total_loss(weighted_token_sum(soft_sum, hard_sum, alpha), n_tokens, hidden_mean,
                      hidden_weight)


def onpolicy_reverse_kl(student_logprobs: Tensor, teacher_logprobs: Tensor,
                        behaviour_logprobs: Tensor | None = None) -> Tensor:
    """Summed on-policy reverse-KL surrogate on tokens the student sampled (`--onpolicy-weight`).

    Per token y_t of a student sample the reverse-KL estimate is
    k_t = log p_student(y_t) - log p_teacher(y_t): its expectation over the
    student's own samples is KL(student || teacher) at that prefix. The
    score-function gradient of that KL is E[k_t * grad log p_student(y_t)], the
    policy gradient with per-token reward -k_t that on-policy distillation
    trains (Agarwal et al., "On-Policy Distillation of Language Models: Learning
    from Self-Generated Mistakes" (GKD), ICLR 2024, arXiv:2306.13649; Gu et al.,
    "MiniLLM", ICLR 2024, arXiv:2306.08543; Thinking Machines Lab, "On-Policy
    Distillation", 2025, per-token reverse KL as the advantage). The samples were
    drawn by the student of the previous round, so each token is importance
    weighted by rho_t = p_current(y_t) / p_behaviour(y_t), with the behaviour
    logprobs stored with the samples; the surrogate

        sum_t rho_t * stopgrad(k_t)

    has gradient rho_t * k_t * grad log p_current(y_t) and value sum rho_t k_t.
    `student_logprobs` are the CURRENT student's (from this forward pass, with
    gradient), `teacher_logprobs` the stored `labels/sampled_logprobs`. Without
    behaviour logprobs, or where one is NaN (a row of an output that does not
    carry `labels/student_logprobs`), rho_t = 1 (taken as on-policy) with the
    same gradient.

        >>> s = torch.tensor([-1.0, -2.0], requires_grad=True)
        >>> loss = onpolicy_reverse_kl(s, torch.tensor([-1.5, -1.0]))
        >>> loss.item(), (loss.backward(), s.grad.tolist())[1]
        (-0.5, [0.5, -1.0])
    """
    behaviour = student_logprobs.detach()
    if behaviour_logprobs is not None:
        given = behaviour_logprobs.to(student_logprobs.dtype)
        behaviour = torch.where(torch.isnan(given), behaviour, given)
    ratio = torch.exp(student_logprobs - behaviour.to(student_logprobs.dtype))
    return (ratio * (student_logprobs - teacher_logprobs.to(student_logprobs.dtype)).detach()).sum()


def weighted_token_sum(soft_sum: Tensor, hard_sum: Tensor, alpha: float) -> Tensor:
    """alpha * soft_sum + (1 - alpha) * hard_sum, skipping a zero-weighted term."""
    return sum(w * v for w, v in ((alpha, soft_sum), (1 - alpha, hard_sum)) if w)


def balanced_weight(soft_mean: float, hidden_mean: float, fraction: float) -> float:
    """The hidden-state weight that makes weight * hidden_mean == fraction * soft_mean (`--loss-balance`).

    As NVIDIA ModelOpt's `LogitsAndIntermediatesLossBalancer` does for Megatron
    and NeMo distillation: the intermediate loss is rescaled by a detached
    factor every step, so its gradient keeps a fixed share of the logits loss's
    however their raw scales drift. 0 when the hidden loss is 0 or not finite.
    """
    if not (hidden_mean > 0 and math.isfinite(hidden_mean) and math.isfinite(soft_mean)):
        return 0.0
    return fraction * soft_mean / hidden_mean


def total_loss(token_sum: Tensor, n_tokens: int | Tensor, hidden_mean: Tensor | None = None,
               hidden_weight: float = 0.0) -> Tensor:
    """token_sum / max(n_tokens, 1) + hidden_weight * hidden_mean.

    The token sum is divided here, once; `hidden_mean` arrives already averaged
    over its own rows (every token, prompt included), so it is not divided again.
    """
    if not (isinstance(hidden_weight, (int, float)) and hidden_weight >= 0):
        raise ValueError(f"hidden_weight must be >= 0; got {hidden_weight!r}")
    if hidden_weight and hidden_mean is None:
        raise ValueError(f"hidden_mean is None but hidden_weight is {hidden_weight}")
    tokens = n_tokens.clamp(min=1) if isinstance(n_tokens, Tensor) else max(n_tokens, 1)
    total = token_sum / tokens
    return total + hidden_weight * hidden_mean if hidden_weight else total
