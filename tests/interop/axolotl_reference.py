"""axolotl's top-k forward KL, verbatim, as the oracle the axolotl export tests check against.

Copied from axolotl-ai-cloud/axolotl 0.18.0, commit 067b021c8b87a9e5e380b9173c704cf7340e30f5
(Apache-2.0): `loss` of src/axolotl/integrations/kd/topk_logprob/forward_kl.py.
Its trainer (src/axolotl/integrations/kd/trainer.py) calls it with
num_items_in_batch = (labels != -100).sum(), and reads student logits at
position t against target row t without a shift.
"""
# ruff: noqa
import torch
from torch import nn


def loss(
    student_logits: torch.Tensor,
    target_token_ids: torch.Tensor,
    target_logprobs: torch.Tensor,
    target_mask: torch.Tensor,
    num_items_in_batch: int = -1,  # Use -1 to indicate "None"
    kd_temperature: float = 1.0,
) -> torch.Tensor:
    """
    Top-k forward KL divergence KD loss.

    Arguments:
        student_logits (torch.Tensor): The logits of the student model.
            Shape: [B, student_seq_len, vocab_size]
        target_token_ids (torch.Tensor): The top-k teacher/target token IDs
            Shape: [B, teacher_seq_len, top_k]
        target_logprobs (torch.Tensor): The top-k teacher/target logprobs, these should already be re-normalized.
            Shape: [B, teacher_seq_len, top_k]
        target_mask (torch.Tensor): The mask for valid tokens.
            Shape: [B, teacher_seq_len, top_k]
        num_items_in_batch (int, optional): The number of items in the batch.
        kd_temperature (float, optional): The temperature for KD.
            Default: 1.0
    """

    target_logprobs = target_logprobs.float()

    # Determine the teacher sequence length
    # target_token_ids shape: [B, teacher_seq_len, K]
    # student_logits shape:   [B, student_seq_len, vocab_size]
    teacher_seq_len = target_token_ids.shape[1]

    # Slice student logits to match teacher-provided sequence length and
    # keep in full precision for numerical stability of loss
    student_logits_for_kd = student_logits[
        :, :teacher_seq_len, :
    ].float()  # [B, teacher_seq_len, vocab_size]

    if kd_temperature != 1.0:
        student_logits_for_kd = student_logits_for_kd / kd_temperature

    # log_softmax + gather peaks one full-vocab backward buffer lower than the
    # gather + logsumexp formulation
    student_logprobs = torch.log_softmax(student_logits_for_kd, dim=-1)

    # Gather student logprobs for teacher's top-K tokens
    student_logprobs_topk = torch.gather(
        student_logprobs, dim=-1, index=target_token_ids
    )  # [B, teacher_seq_len, K]

    # Convert teacher_mask to boolean for indexing
    valid_mask = target_mask.to(torch.bool)

    # Prune tensors to only keep valid tokens
    student_logprobs_topk = student_logprobs_topk[valid_mask]
    target_logprobs = target_logprobs[valid_mask]

    # Convert teacher logprobs to probabilities
    teacher_probs = target_logprobs.exp()

    # Compute forward KL
    kd_loss_per_token = teacher_probs * (target_logprobs - student_logprobs_topk)
    kd_loss = kd_loss_per_token.sum()

    # Normalize by number of items (if provided) or by valid tokens
    if num_items_in_batch > 0:
        kd_loss = kd_loss / float(num_items_in_batch)
    else:
        # Fall back to average over valid tokens
        kd_loss = kd_loss / float(kd_loss_per_token.size(0))

    return kd_loss


