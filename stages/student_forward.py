"""The student's forward pass and losses on one collated batch, without dense teacher tensors.

The decoder runs once; its final hidden states are gathered at the loss
positions only, and the LM head plus the losses run over those rows in chunks
of `loss_chunk`, each under activation checkpointing, so neither a
(batch, time, vocabulary) logits tensor nor its gradient is ever held. Padded
vocabulary rows of the student's head (beyond the labels' vocabulary) are
sliced off before any softmax.

    python -m pytest tests/test_student_train.py -k forward
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from pipeline.eval_metrics import EvalTotals, position_metrics
from pipeline.kd_losses import fused_head_losses, hidden_state_loss
from schemas.student_config import StudentConfig


@dataclass
class LossSums:
    """Summed (not averaged) losses of one micro-batch and what they were summed over."""

    soft: torch.Tensor
    hard: torch.Tensor
    hidden: torch.Tensor
    positions: int
    hidden_rows: int


def decoder_states(model: Any, batch: dict[str, Any], need_all: bool) -> tuple[torch.Tensor, Any]:
    """(B*T, d) final hidden states (after the last norm) and, if asked, every layer's."""
    decoder = model.get_decoder()
    out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=need_all, use_cache=False)
    last = out.last_hidden_state
    return last.reshape(-1, last.shape[-1]), out.hidden_states


def chunk_losses(head_weight: torch.Tensor, states: torch.Tensor, teacher_ids: torch.Tensor,
                 teacher_logprobs: torch.Tensor, target_ids: torch.Tensor, vocab: int,
                 cfg: StudentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (states @ head_weight[:vocab].T).float()
    # alpha = 0 is plain fine-tuning on the teacher's samples: it pays no soft-label cost.
    return fused_head_losses(logits, teacher_ids, teacher_logprobs, target_ids, kind=cfg.kd_loss,
                             tail=cfg.tail, temperature=cfg.temperature, beta=cfg.beta,
                             soft=cfg.alpha > 0)


def batch_losses(model: Any, adapter: Any, batch: dict[str, Any], vocab: int, cfg: StudentConfig,
                 layer_map: dict[int, int]) -> LossSums:
    """Summed soft, hard and hidden losses of one collated micro-batch."""
    need_hidden = cfg.hidden_weight > 0
    flat, all_states = decoder_states(model, batch, need_hidden)
    rows = flat[batch["loss_rows"]]
    weight = model.get_output_embeddings().weight
    soft = hard = flat.new_zeros((), dtype=torch.float32)
    for start in range(0, rows.shape[0], cfg.loss_chunk):
        sl = slice(start, start + cfg.loss_chunk)
        s, h = checkpoint(chunk_losses, weight, rows[sl], batch["teacher_ids"][sl],
                          batch["teacher_logprobs"][sl], batch["target_ids"][sl], vocab, cfg,
                          use_reentrant=False)
        soft, hard = soft + s, hard + h
    hidden = flat.new_zeros((), dtype=torch.float32)
    hidden_rows = 0
    if need_hidden:
        for s_layer, t_layer in layer_map.items():
            student = all_states[s_layer].reshape(-1, all_states[s_layer].shape[-1])
            projected = adapter(s_layer, student[batch["hidden_rows"]])
            hidden = hidden + hidden_state_loss(projected.float(),
                                                batch["teacher_hidden"][t_layer].float(),
                                                kind=cfg.hidden_loss)
            hidden_rows += int(batch["hidden_rows"].numel())
    return LossSums(soft, hard, hidden, int(rows.shape[0]), hidden_rows)


class DistillationModule(torch.nn.Module):
    """Student and hidden-state adapter as one module returning (soft, hard, hidden) sums.

    This is what DDP wraps: the forward pass runs through DDP, so every trained
    parameter, the adapter's included, has its gradient synchronised.
    """

    def __init__(self, student: Any, adapter: Any, vocab: int, cfg: StudentConfig,
                 layer_map: dict[int, int]):
        super().__init__()
        self.student, self.adapter = student, adapter
        self.vocab, self.cfg, self.layer_map = vocab, cfg, layer_map

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts = batch_losses(self.student, self.adapter, batch, self.vocab, self.cfg,
                             self.layer_map)
        return parts.soft, parts.hard, parts.hidden


@torch.no_grad()
def batch_eval(model: Any, batch: dict[str, Any], vocab: int, chunk: int, totals: EvalTotals) -> None:
    """Add one batch's per-position KL, top-1 agreement and NLL to `totals`."""
    flat, _ = decoder_states(model, batch, False)
    rows = flat[batch["loss_rows"]]
    weight = model.get_output_embeddings().weight[:vocab]
    for start in range(0, rows.shape[0], chunk):
        sl = slice(start, start + chunk)
        totals.add(*position_metrics(rows[sl] @ weight.T, batch["teacher_ids"][sl],
                                     batch["teacher_logprobs"][sl], batch["target_ids"][sl]))
