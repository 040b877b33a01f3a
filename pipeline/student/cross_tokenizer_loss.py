"""Losses of a student whose tokenizer differs from the teacher's (`--cross-tokenizer alm`).

The two token sequences meet in **chunks** (`pipeline.student.token_alignment`): spans
of the same bytes on both sides. Three terms, each a SUM (the caller normalises):

- **ALM chunk loss** (Minixhofer et al., "Universal Cross-Tokenizer Distillation via
  Approximate Likelihood Matching", arXiv 2503.20083; tokenkit's `compute_alm_loss`,
  `alm_diff_fn="binary_ce"`, github.com/bminixhofer/tokenkit, tokenkit/training/losses.py
  at bcacdef). A chunk's log-likelihood is the sum of its tokens' logprobs, on each side
  (the teacher's from the stored `labels/sampled_logprobs`). Both are tempered as in
  tokenkit, `l / T - eps`, and compared as the probabilities of a binary event: the
  binary cross-entropy of the student's against the teacher's, minus the teacher's
  binary entropy, i.e. the binary KL. The gradient is tokenkit's binary_ce exactly;
  the subtracted constant makes a chunk the student matches cost 0.
- **1:1 KL**: where a chunk is one token on both sides (then both are the same byte
  string), the teacher's stored top-k mapped to student ids by byte string
  (`byte_vocab_map`) against the student's distribution, with `kd_losses.soft_label_loss`;
  teacher entries with no student counterpart join the tail bucket.
- **Cross-entropy** on the student's own tokens of the labelled text.

    >>> import torch
    >>> t, s = torch.tensor([-0.5]), torch.tensor([-0.5])
    >>> float(alm_chunk_loss(t, s, temperature=1.0))
    0.0
    >>> chunk_logprobs(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([0, 0, 1]), 2).tolist()
    [-3.0, -3.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from pipeline.student.kd_losses import soft_label_loss

ALM_EPSILON = 1e-6
"""tokenkit's epsilon: keeps a chunk of probability 1 (logprob 0) away from log(1 - 1)."""


def chunk_logprobs(token_logprobs: Tensor, chunk: Tensor, chunks: int) -> Tensor:
    """(chunks,) sum of the token logprobs of each chunk (`chunk` gives each token's)."""
    out = token_logprobs.new_zeros(chunks)
    return out.index_add(0, chunk.long(), token_logprobs)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of log(1/2) (as tokenkit)."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def binary_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(Bernoulli(p) || Bernoulli(q)) per element, from log p and log q (both < 0)."""
    p = torch.exp(log_p)
    return p * (log_p - log_q) + (-torch.expm1(log_p)) * (log1mexp(log_p) - log1mexp(log_q))


def alm_chunk_loss(teacher_chunk_logprobs: Tensor, student_chunk_logprobs: Tensor,
                   temperature: float = 1.0, weights: Tensor | None = None) -> Tensor:
    """SUM over chunks of the binarised chunk-likelihood divergence (see the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"the ALM temperature must be > 0, got {temperature}")
    t = teacher_chunk_logprobs.float().clamp(max=0) / temperature - ALM_EPSILON
    s = student_chunk_logprobs.float().clamp(max=0) / temperature - ALM_EPSILON
    per_chunk = binary_kl(t, s)
    if weights is not None:
        per_chunk = per_chunk * weights
    return per_chunk.sum()


def byte_vocab_map(teacher_table: Sequence[bytes], student_table: Sequence[bytes],
                   teacher_end_of_turn: Sequence[int] = (), student_end_of_turn: int | None = None,
                   student_byte_fallback: np.ndarray | None = None) -> np.ndarray:
    """(teacher vocabulary,) int64: the student id of the same byte string, -1 where none.

    Special tokens (empty byte strings) map only as end-of-turn markers, the teacher's
    to the student's own. Where several student ids share a byte string, the one its
    tokenizer emits wins: a regular token over a `<0xNN>` byte-fallback token, else the
    lowest id.
    """
    fallback = (np.zeros(len(student_table), bool) if student_byte_fallback is None
                else student_byte_fallback)
    order = np.concatenate([np.flatnonzero(~fallback), np.flatnonzero(fallback)])
    by_bytes: dict[bytes, int] = {}
    for i in order.tolist():
        if student_table[i]:
            by_bytes.setdefault(student_table[i], i)
    mapped = np.array([by_bytes.get(b, -1) if b else -1 for b in teacher_table], np.int64)
    if student_end_of_turn is not None:
        mapped[list(teacher_end_of_turn)] = student_end_of_turn
    return mapped


def mapped_topk(mapped_ids: Tensor, teacher_logprobs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The teacher's top-k in student ids (`byte_vocab_map` applied, -1: none): (ids, logprobs, rows kept).

    An entry with no student counterpart gets logprob -inf (its mass joins the tail
    bucket) at a repeat of its row's first mapped id (so the student's tail stays
    exact, as for sampled labels' padding); a row with no mapped entry is dropped.
    """
    ok = mapped_ids >= 0
    keep = ok.any(-1)
    first = mapped_ids.gather(-1, ok.long().argmax(-1, keepdim=True))
    ids = torch.where(ok, mapped_ids, first)
    lps = torch.where(ok, teacher_logprobs, torch.full_like(teacher_logprobs, float("-inf")))
    return ids[keep], lps[keep], keep


def one_to_one_kl(student_logits: Tensor, mapped_ids: Tensor, teacher_logprobs: Tensor, *,
                  kind: str = "forward_kl", temperature: float = 1.0) -> Tensor:
    """SUM over 1:1 chunks of the soft loss against the mapped top-k (tail bucket)."""
    ids, lps, keep = mapped_topk(mapped_ids, teacher_logprobs)
    if not bool(keep.any()):
        return student_logits.new_zeros((), dtype=torch.float32)
    return soft_label_loss(student_logits[keep], ids, lps, kind=kind, tail="bucket",
                           temperature=temperature)


@dataclass
class CrossSums:
    """Summed losses of one micro-batch (see `pipeline.student.cross_tokenizer_batches` for its keys)."""

    weighted: Tensor
    """alpha * (alm + kl) + (1 - alpha) * ce: the differentiable sum."""
    alm: Tensor
    kl: Tensor
    ce: Tensor
    """Detached, like `alm` and `kl`; ce is also minus the student's log-likelihood of the chunks."""


def cross_tokenizer_losses(logits: Tensor, batch: dict[str, Tensor], *, alpha: float,
                           kd_loss: str = "forward_kl", temperature: float = 1.0,
                           alm_temperature: float = 1.0) -> CrossSums:
    """The three sums from the student's logits at `batch["loss_rows"]` ((N, V) rows, in order)."""
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    token_lp = logp.gather(-1, batch["target_ids"][:, None]).squeeze(-1)
    ce = -token_lp.sum()
    zero = ce.new_zeros(())
    alm = kl = zero
    if alpha > 0:
        chunks = len(batch["chunk_teacher_logprobs"])
        student = chunk_logprobs(token_lp, batch["row_chunk"], chunks)
        alm = alm_chunk_loss(batch["chunk_teacher_logprobs"], student, alm_temperature)
        if len(batch["one_rows"]):
            kl = one_to_one_kl(logits[batch["one_rows"]], batch["one_teacher_ids"],
                               batch["one_teacher_logprobs"], kind=kd_loss,
                               temperature=temperature)
    weighted = alpha * (alm + kl) + (1 - alpha) * ce
    return CrossSums(weighted, alm.detach(), kl.detach(), ce.detach())
