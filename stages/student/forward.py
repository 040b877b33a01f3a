"""The student's forward pass and losses on one collated batch, without dense teacher tensors.

The decoder runs once; its final hidden states are gathered at the loss
positions only, and the LM head plus the losses run over those rows in chunks
of `loss_chunk` through `pipeline.student.fused_head`, which forms their gradient in
forward, so neither a (batch, time, vocabulary) logits tensor nor its gradient
is ever held, and nothing is recomputed. Padded vocabulary rows of the
student's head (beyond the labels' vocabulary) get no logits and no gradient.
A `LossPlan` says which losses this step trains (its phase) and at which
temperature; the cosine similarity of the adapted student states to the
teacher's comes back per mapped layer, for monitoring.

    python -m pytest tests/test_student_train.py -k forward
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.student.eval_metrics import EvalTotals, position_metrics
from pipeline.student.fused_head import HeadLoss, head_losses
from pipeline.student.kd_losses import hidden_state_loss
from schemas.student_config import StudentConfig


@dataclass(frozen=True)
class LossPlan:
    """What one step trains: the soft and hard losses (at `temperature`), the hidden-state loss."""

    temperature: float
    soft: bool = True
    hidden: bool = False


@dataclass
class LossSums:
    """Summed (not averaged) losses of one micro-batch and what they were summed over.

    `weighted` = alpha * soft + (1 - alpha) * hard is the differentiable token loss;
    soft and hard are detached, for logging.
    """

    weighted: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor
    hidden: torch.Tensor
    positions: int
    hidden_rows: int
    cosine: torch.Tensor
    """(mapped layers,) summed cosine similarity of adapted student and teacher states, detached."""


def decoder_states(model: Any, batch: dict[str, Any], need_all: bool) -> tuple[torch.Tensor, Any]:
    """(B*T, d) final hidden states (after the last norm) and, if asked, every layer's."""
    decoder = model.get_decoder()
    out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                  output_hidden_states=need_all, use_cache=False)
    last = out.last_hidden_state
    return last.reshape(-1, last.shape[-1]), out.hidden_states


def batch_losses(model: Any, adapter: Any, batch: dict[str, Any], vocab: int, cfg: StudentConfig,
                 layer_map: dict[int, int], plan: LossPlan | None = None,
                 token_weights: torch.Tensor | None = None) -> LossSums:
    """Summed soft, hard and hidden losses of one collated micro-batch, as `plan` asks.

    Without a plan: every configured loss at --kd-temperature. `token_weights` (V,)
    weights each position's soft loss by its target token (--rare-token-weight).
    """
    plan = plan or LossPlan(cfg.kd_temperature, True, cfg.hidden_weight > 0)
    need_hidden = plan.hidden and bool(layer_map)
    flat, all_states = decoder_states(model, batch, need_hidden)
    zero = flat.new_zeros((), dtype=torch.float32)
    weighted = soft = hard = zero
    if plan.soft:
        spec = HeadLoss(vocab=vocab, alpha=cfg.alpha, kind=cfg.kd_loss, tail=cfg.tail,
                        temperature=plan.temperature, beta=cfg.beta, chunk_size=cfg.loss_chunk,
                        onpolicy_weight=cfg.onpolicy_weight)
        weights = None if token_weights is None else token_weights[batch["target_ids"]]
        weighted, soft, hard = head_losses(flat[batch["loss_rows"]],
                                           model.get_output_embeddings().weight,
                                           batch["teacher_ids"], batch["teacher_logprobs"],
                                           batch["target_ids"], spec, weights,
                                           batch["teacher_sampled_logprobs"],
                                           batch.get("student_sampled_logprobs"))
    hidden, cosine = zero, zero.new_zeros(0)
    if need_hidden:
        hidden, cosine = hidden_sums(adapter, all_states, layer_map, batch, cfg.hidden_loss)
    hidden_rows = int(batch["hidden_rows"].numel()) * len(layer_map) if need_hidden else 0
    return LossSums(weighted, soft, hard, hidden, int(batch["loss_rows"].numel()), hidden_rows,
                    cosine)


def hidden_sums(adapter: Any, all_states: Any, layer_map: dict[int, int], batch: dict[str, Any],
                kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden-state loss summed over `batch["hidden_rows"]` and every mapped layer, and
    each layer's summed cosine similarity (detached, for monitoring)."""
    hidden, cosines = all_states[0].new_zeros((), dtype=torch.float32), []
    for s_layer, t_layer in layer_map.items():
        student = all_states[s_layer].reshape(-1, all_states[s_layer].shape[-1])
        projected = adapter(s_layer, student[batch["hidden_rows"]]).float()
        teacher = batch["teacher_hidden"][t_layer].float()
        hidden = hidden + hidden_state_loss(projected, teacher, kind=kind)
        cosines.append(F.cosine_similarity(projected.detach(), teacher, dim=-1).sum())
    return hidden, torch.stack(cosines)


class DistillationModule(torch.nn.Module):
    """Student and hidden-state adapter as one module returning (weighted, soft, hard, hidden, cosine).

    A tuple, not `LossSums`: DDP and FSDP find the output tensors (to hook
    backward) by walking tuples, lists and dicts.

    This is what DDP wraps: the forward pass runs through DDP, so every trained
    parameter, the adapter's included, has its gradient synchronised.
    """

    def __init__(self, student: Any, adapter: Any, vocab: int, cfg: StudentConfig,
                 layer_map: dict[int, int], token_weights: torch.Tensor | None = None):
        super().__init__()
        self.student, self.adapter = student, adapter
        self.vocab, self.cfg, self.layer_map = vocab, cfg, layer_map
        # Derived from the labels at start, so not part of a checkpoint.
        self.register_buffer("token_weights", token_weights, persistent=False)

    def forward(self, batch: dict[str, Any], plan: LossPlan | None = None
                ) -> tuple[torch.Tensor, ...]:
        parts = batch_losses(self.student, self.adapter, batch, self.vocab, self.cfg,
                             self.layer_map, plan, self.token_weights)
        return parts.weighted, parts.soft, parts.hard, parts.hidden, parts.cosine


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
