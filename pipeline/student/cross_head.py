"""The cross-tokenizer losses through the fused LM head: no (N, V) logits buffer, no second softmax.

`pipeline.student.cross_tokenizer_loss.cross_tokenizer_losses` takes the student's
(N, V) logits, which autograd keeps with their log-softmax, and the 1:1 KL runs a
second log-softmax over its rows. The three losses depend on a row's logits only
through its log-sum-exp, its target's logit and its logits at the mapped teacher
ids, which is what `pipeline.student.fused_head` forms the gradient from in closed
form, chunk by chunk. The ALM chunk loss couples the rows of one byte chunk, so
the row chunks here end on byte-chunk boundaries (`chunk_splits`) and the ALM sum
of a row chunk is its `token_term`; the 1:1 KL is the fused head's soft loss,
weighted 0 on the rows outside 1:1 chunks. Same sums as the dense path
(tests/student/test_cross_head.py), at the cost of cross-entropy plus O(N k).

    >>> import torch
    >>> [(s.start, s.stop) for s in chunk_splits(torch.tensor([0, 0, 1, 1, 1, 2]), 4)]
    [(0, 2), (2, 6)]
"""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import Tensor

from pipeline.student.cross_tokenizer_loss import (CrossSums, alm_chunk_loss, chunk_logprobs,
                                                   mapped_topk)
from pipeline.student.fused_head import HeadLoss, head_losses


def chunk_splits(row_chunk: Tensor, size: int) -> list[slice]:
    """Row slices of about `size` rows, each ending where a byte chunk ends (row_chunk sorted)."""
    rows = int(row_chunk.numel())
    ends = (torch.nonzero(row_chunk[1:] != row_chunk[:-1]).flatten() + 1).tolist() + [rows]
    splits, start = [], 0
    while start < rows:
        last = bisect_right(ends, start + size) - 1
        # one chunk longer than `size` gets a split of its own
        end = ends[last] if last >= 0 and ends[last] > start else ends[bisect_right(ends, start)]
        splits.append(slice(start, end))
        start = end
    return splits


def full_soft_targets(batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """(N, k) teacher ids and logprobs in student ids and (N,) weights: 1 on the 1:1 rows kept."""
    target = batch["target_ids"]
    n, k = len(target), batch["one_teacher_ids"].shape[-1]
    ids = target[:, None].repeat(1, k)
    lps = torch.full((n, k), float("-inf"), device=target.device)
    lps[:, 0] = 0.0  # a one-hot stand-in: finite loss, weighted 0
    weights = torch.zeros(n, device=target.device)
    if len(batch["one_rows"]):
        mids, mlps, keep = mapped_topk(batch["one_teacher_ids"], batch["one_teacher_logprobs"])
        rows = batch["one_rows"][keep]
        ids[rows], lps[rows], weights[rows] = mids, mlps.float(), 1.0
    return ids, lps, weights


def fused_cross_losses(states: Tensor, weight: Tensor, batch: dict[str, Tensor], *, vocab: int,
                       alpha: float, kd_loss: str = "forward_kl", temperature: float = 1.0,
                       alm_temperature: float = 1.0, chunk_size: int = 2048) -> CrossSums:
    """The sums of `cross_tokenizer_losses` from the (N, d) final states at `batch["loss_rows"]`.

    `alm` comes back as ALM + 1:1 KL (one soft sum) and `kl` as 0: the fused head
    forms one soft gradient.
    """
    row_chunk, teacher_chunks = batch["row_chunk"], batch["chunk_teacher_logprobs"]
    splits = chunk_splits(row_chunk, chunk_size)
    first_chunk = [int(row_chunk[s.start]) if s.start < len(row_chunk) else len(teacher_chunks)
                   for s in splits] + [len(teacher_chunks)]
    first_chunk[0] = 0
    bounds = {(s.start, s.stop): (first_chunk[i], first_chunk[i + 1]) for i, s in enumerate(splits)}

    def alm(rows: slice, token_lp: Tensor) -> Tensor:
        c0, c1 = bounds[(rows.start, rows.stop)]
        student = chunk_logprobs(token_lp, row_chunk[rows] - c0, c1 - c0)
        return alm_chunk_loss(teacher_chunks[c0:c1], student, alm_temperature)

    ids, lps, weights = full_soft_targets(batch)
    spec = HeadLoss(vocab=vocab, alpha=alpha, kind=kd_loss, tail="bucket", temperature=temperature,
                    chunk_size=chunk_size)
    weighted, soft, hard = head_losses(states, weight, ids, lps, batch["target_ids"], spec,
                                       weights, splits=splits, token_term=alm)
    return CrossSums(weighted, soft, torch.zeros_like(soft), hard)

