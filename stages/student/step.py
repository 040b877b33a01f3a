"""One optimizer step's forward and backward over its micro-batches, and what the step trains.

`train_step` runs the micro-batches of one step through the (DDP/FSDP-wrapped)
`DistillationModule` as a `LossPlan` says (the phase's losses, the step's
temperature), weighting the hidden-state loss by the phase's fixed weight or
by `--loss-balance`; it returns the step's metrics. `frozen_parameters` names
what a `hidden` phase keeps fixed; `drop_frozen_grads` removes their
gradients so AdamW leaves them bit-identical. Wiring for `stages.student.train`:

    python -m pytest tests/student/test_training_controls.py -k phase
"""

from __future__ import annotations

from typing import Any

import torch

from pipeline.student.kd_losses import balanced_weight, total_loss
from pipeline.student.phases import Phase
from schemas.student_config import StudentConfig
from stages.student.distributed import DistContext
from stages.student.forward import LossPlan


def step_plan(cfg: StudentConfig, phase: Phase, temperature: float, layers: int) -> LossPlan:
    """The losses phase `phase` trains; the hidden-state loss only when configured and mapped."""
    hidden = layers > 0 and phase.hidden and (phase.kind == "hidden" or cfg.hidden_weight > 0
                                              or cfg.loss_balance is not None)
    return LossPlan(temperature, soft=phase.soft, hidden=hidden)


def hidden_weight(cfg: StudentConfig, plan: LossPlan, soft_mean: float,
                  hidden_mean: float) -> float:
    """Weight of the hidden-state mean: alone in a hidden phase, balanced, or fixed."""
    if not plan.hidden:
        return 0.0
    if not plan.soft:
        return cfg.hidden_weight or 1.0
    if cfg.loss_balance is not None:
        return balanced_weight(soft_mean, hidden_mean, cfg.loss_balance)
    return cfg.hidden_weight


def frozen_parameters(model: Any, cfg: StudentConfig) -> list[torch.nn.Parameter]:
    """What a `hidden` phase freezes: the output head (and --freeze-embeddings the input ones).

    Read after wrapping: under FSDP the module's parameters are the sharded ones.
    When the head is tied to the input embeddings (SmolLM2), they are one tensor.
    """
    frozen = [model.get_output_embeddings().weight]
    if cfg.freeze_embeddings:
        frozen.append(model.get_input_embeddings().weight)
    unique = {id(p): p for p in frozen}
    return list(unique.values())


def drop_frozen_grads(frozen: list[torch.nn.Parameter]) -> None:
    """No gradient, so AdamW (which skips grad-less parameters) neither steps nor decays them."""
    for p in frozen:
        p.grad = None


def train_step(model: Any, micro: list[dict[str, Any]], cfg: StudentConfig, hidden_layers: int,
               dist: DistContext, amp: torch.dtype | None, plan: LossPlan) -> dict[str, Any]:
    """Forward and backward over the micro-batches of one optimizer step; returns its metrics."""
    # Normalise by the loss tokens of the whole step on every rank, exactly once:
    # each rank divides by the global count and DDP's gradient mean is undone.
    local = sum(int(b["loss_rows"].numel()) for b in micro)
    hidden_local = sum(int(b["hidden_rows"].numel()) for b in micro) if plan.hidden else 0
    n_tokens, hidden_rows = dist.sum_ints(local, hidden_local)
    sums = {"weighted": 0.0, "soft": 0.0, "hard": 0.0, "hidden": 0.0, "hidden_term": 0.0}
    cosine = torch.zeros(hidden_layers, dtype=torch.float64)
    for i, batch in enumerate(micro):
        with dist.no_sync(model, last=i == len(micro) - 1):
            with torch.autocast(dist.device.type, dtype=amp or torch.float32,
                                enabled=amp is not None):
                weighted, soft, hard, hidden, cos = model(batch, plan)
                hidden_mean = hidden / max(hidden_rows * hidden_layers, 1)
                weight = hidden_weight(cfg, plan, float(soft.detach()) / max(n_tokens, 1),
                                       float(hidden_mean.detach()))
                token_sum = weighted if plan.soft else weighted.detach()
                loss = total_loss(token_sum, n_tokens, hidden_mean, weight) * dist.world_size
            loss.backward()
        for key, value in (("weighted", weighted), ("soft", soft), ("hard", hard),
                           ("hidden", hidden), ("hidden_term", weight * hidden_mean)):
            sums[key] += float(value.detach())
        if plan.hidden:
            cosine += cos.detach().double().cpu()
    # The logged loss is the one back-propagated (weighted), so a non-finite one is caught.
    weighted, soft, hard, hidden, hidden_term, *cos_sums = dist.sum_floats(
        *sums.values(), *cosine.tolist())
    token_part = weighted / max(n_tokens, 1) if plan.soft else 0.0
    hidden_mean = hidden / max(hidden_rows * hidden_layers, 1)
    tokens = dist.sum_ints(sum(int(b["attention_mask"].sum()) for b in micro))[0]
    record = {"loss": token_part + hidden_term, "tokens": tokens, "loss_tokens": n_tokens}
    if plan.soft:
        record["hard"] = hard / max(n_tokens, 1)
    if plan.soft and cfg.alpha > 0:  # --alpha 0 computes no soft loss
        record["soft"] = soft / max(n_tokens, 1)
    if plan.hidden:
        record |= {"hidden": hidden_mean, "hidden_weight": hidden_term / hidden_mean
                   if hidden_mean else 0.0}
        record["cosine"] = [c / max(hidden_rows, 1) for c in cos_sums]
    return record
