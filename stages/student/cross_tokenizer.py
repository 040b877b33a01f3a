"""Student stage wiring for `--cross-tokenizer alm`: the student, its batches, losses and bits per byte.

The student reads the teacher's labels through byte-aligned chunks of the labelled
text (`pipeline.student.cross_tokenizer_batches`); its alignments are cached in
`<out>/alignment/` (never in the label set). `CrossTokenizerModule` returns the
same tuple as `stages.student.forward.DistillationModule`, so `train_step`,
checkpoints, resume and export work unchanged: `soft` is ALM + 1:1 KL, `hard` the
cross-entropy, both sums over the student's labelled tokens; `hidden` (with
--hidden-weight on labels with hidden states) the hidden-state loss at chunk ends,
through the same adapter and --layer-map as a same-tokenizer run. Evaluations
report bits per byte of the labelled text (teacher: its stored sampled logprobs).

    kd train-student --labels data/labels/corpus-train --cross-tokenizer alm \
        --student-tokenizer data/tokenizers/qwen3 --keep-layers 4 --steps 20 --out data/student/xtok
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.store.text_layout import token_bytes_table
from pipeline.student.cross_tokenizer_batches import (AlignmentCache, StudentSide,
                                                      collate_cross, stored_layouts)
from pipeline.student.cross_head import fused_cross_losses
from pipeline.student.embedding_transplant import source_rows, transplant
from pipeline.student.label_set import LabelSet
from schemas.config_base import ConfigError
from schemas.student_config import STUDENT_KINDS, StudentConfig
from stages.student.forward import decoder_states, hidden_sums

class CrossPlannedBatches(Dataset):
    """Batches of a plan as `collate_cross` makes them; alignments from the cache."""

    def __init__(self, labels: LabelSet, plan: Sequence[np.ndarray], side: StudentSide,
                 cache: AlignmentCache, hidden_layers: Sequence[int] = ()):
        self.labels, self.plan, self.side, self.cache = labels, list(plan), side, cache
        self.hidden_layers = list(hidden_layers)

    def __len__(self) -> int:
        return len(self.plan)

    def shard_alignments(self, s: int) -> list:
        def compute() -> list:
            reader = self.labels.open_shard(s)
            layouts = stored_layouts(reader)
            ids = reader.strings("samples/ids")
            return [self.side.align(reader.sample(i), layouts[i], ids[i])
                    for i in range(len(reader))]
        return self.cache.shard(self.labels.shard_paths[s], compute)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self.plan):
            raise IndexError(f"batch {i} is not in this plan of {len(self.plan)} batches")
        samples, alignments = [], []
        for j in self.plan[i]:
            shard, row = int(self.labels.shard[j]), int(self.labels.row[j])
            samples.append(self.labels.open_shard(shard).sample(row))
            alignments.append(self.shard_alignments(shard)[row])
        return collate_cross(samples, alignments, self.side.vocab_map,
                             hidden_layers=self.hidden_layers)


def build_cross_student(cfg: StudentConfig, teacher: str) -> tuple[Any, Any, Any]:
    """(model, student tokenizer, teacher tokenizer) for --cross-tokenizer."""
    from transformers import AutoTokenizer

    from stages.student.model import build_student

    teacher_tok = AutoTokenizer.from_pretrained(teacher)
    model, tokenizer = build_student(cfg.student, teacher, cfg.keep_layers,
                                     cfg.narrow_hidden_size, cfg.seed)
    if cfg.student in STUDENT_KINDS and cfg.student_tokenizer is not None:
        if not (Path(cfg.student_tokenizer) / "tokenizer.json").is_file():
            raise ConfigError(f"--student-tokenizer {cfg.student_tokenizer}: no tokenizer.json "
                              "(make tokenizers fetches data/tokenizers/qwen3 and gemma3)")
        tokenizer = AutoTokenizer.from_pretrained(cfg.student_tokenizer)
        new_embeddings(model, teacher_tok, tokenizer)
    return model, tokenizer, teacher_tok


def new_embeddings(model: Any, teacher_tok: Any, student_tok: Any) -> None:
    """Replace the model's (tied or untied) embeddings by rows for the student's vocabulary."""
    t_table, _ = token_bytes_table(teacher_tok)
    s_table, _ = token_bytes_table(student_tok)
    rows = -(-len(student_tok) // 64) * 64
    sources = source_rows(t_table, s_table)
    old_in = model.get_input_embeddings().weight.detach().numpy()
    emb = torch.nn.Embedding(rows, old_in.shape[1])
    emb.weight.data = torch.from_numpy(transplant(old_in, sources, rows)).float()
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.set_input_embeddings(emb)
    head = torch.nn.Linear(old_in.shape[1], rows, bias=False)
    if tied:
        head.weight = emb.weight
    else:
        old_out = model.get_output_embeddings().weight.detach().numpy()
        head.weight.data = torch.from_numpy(transplant(old_out, sources, rows)).float()
    model.set_output_embeddings(head)
    model.config.vocab_size = rows
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(student_tok, name)
        setattr(model.config, name, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, name, value)


def student_vocab(model: Any, tokenizer: Any) -> int:
    rows = int(model.get_output_embeddings().weight.shape[0])
    if rows < len(tokenizer):
        raise ConfigError(f"the student's output layer has {rows} rows for a tokenizer of "
                          f"{len(tokenizer)} tokens")
    return len(tokenizer)


def labelled_logits(model: Any, batch: dict[str, Any], vocab: int) -> torch.Tensor:
    flat, _ = decoder_states(model, batch, False)
    return flat[batch["loss_rows"]] @ model.get_output_embeddings().weight[:vocab].T


class CrossTokenizerModule(torch.nn.Module):
    """Student and hidden-state adapter returning (weighted, soft, hard, hidden, cosine) sums,
    as `DistillationModule`."""

    def __init__(self, student: Any, vocab: int, cfg: StudentConfig, adapter: Any = None,
                 layer_map: dict[int, int] | None = None):
        super().__init__()
        self.student, self.vocab, self.cfg = student, vocab, cfg
        self.adapter, self.layer_map = adapter, layer_map or {}

    def forward(self, batch: dict[str, Any], plan: Any = None) -> tuple[torch.Tensor, ...]:
        cfg = self.cfg
        need_hidden = bool(self.layer_map) and (plan.hidden if plan else cfg.hidden_weight > 0)
        flat, all_states = decoder_states(self.student, batch, need_hidden)
        sums = fused_cross_losses(flat[batch["loss_rows"]],
                                  self.student.get_output_embeddings().weight, batch,
                                  vocab=self.vocab, alpha=cfg.alpha, kd_loss=cfg.kd_loss,
                                  temperature=plan.temperature if plan else cfg.kd_temperature,
                                  alm_temperature=cfg.alm_temperature, chunk_size=cfg.loss_chunk)
        zero = flat.new_zeros((), dtype=torch.float32)
        hidden, cosine = (hidden_sums(self.adapter, all_states, self.layer_map, batch,
                                      cfg.hidden_loss) if need_hidden
                          else (zero, zero.new_zeros(0)))
        return sums.weighted, sums.alm + sums.kl, sums.ce, hidden, cosine


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / max(n_bytes, 1)


@torch.no_grad()
def evaluate_cross(model: Any, data: Dataset, vocab: int, device: torch.device,
                   amp: torch.dtype | None = None) -> dict[str, float]:
    """Bits per byte of the labelled text (and NLL per student token) over `data`'s batches."""
    from pipeline.student.batches import to_device

    was_training = model.training
    model.eval()
    nll, n_bytes, positions = 0.0, 0, 0
    for batch in data:
        batch = to_device(batch, device)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = labelled_logits(model, batch, vocab)
        lp = torch.log_softmax(logits.float(), -1).gather(-1, batch["target_ids"][:, None])
        nll -= float(lp.double().sum())
        n_bytes += int(batch["chunk_bytes"].sum())
        positions += int(batch["target_ids"].numel())
    model.train(was_training)
    mean = nll / max(positions, 1)
    return {"bits_per_byte": bits_per_byte(nll, n_bytes), "nll": mean,
            "perplexity": math.exp(mean), "positions": positions, "labelled_bytes": n_bytes}


def teacher_cross_reference(data: Dataset) -> dict[str, float]:
    """The teacher's bits per byte of the same chunks, from its stored sampled logprobs."""
    nll, n_bytes, positions = 0.0, 0, 0
    for batch in data:
        nll -= float(batch["chunk_teacher_logprobs"].double().sum())
        n_bytes += int(batch["chunk_bytes"].sum())
        positions += int(batch["target_ids"].numel())
    return {"bits_per_byte": bits_per_byte(nll, n_bytes), "positions": positions,
            "labelled_bytes": n_bytes}
