"""Evaluate models against the teacher's labels on the held-out split (`kd eval`).

Rows: each model's mean KL from the teacher's top-k (+ tail bucket), top-1
agreement with the teacher and NLL (perplexity) of the labelled tokens (the
teacher's completions, or the given text of a score-mode output);
the teacher's own row comes from the stored sampled logprobs (KL 0, agreement
1 by definition), so the teacher is never loaded. The split is the one
`kd train-student` holds out (same --eval-fraction and --seed), and one
evaluation reads at most --eval-max-tokens labelled positions of it, the same
ones `kd train-student` reads (`--all`: every sample of the labels, no bound).
`--samples NAME=DIR` adds the teacher's mean NLL of the model's own text: DIR
is a score-mode output of its `kd student-samples` completions, read over the
same split's prompts (README: On-policy rounds).
Labels made behind a teacher context (docs/teacher-context.md) store the
student's view, so every row is the model reading the plain prompt against
the teacher that saw more; `views_note` says so under the table.

    kd eval --labels data/labels/demo --model data/student/demo/model
    kd eval --all --labels data/labels/corpus-heldout --model before=from-teacher \
        --model after=data/student/demo/model     # perplexity on held-out text
    kd eval --labels data/labels/demo --model data/onpolicy/round-1/student/model \
        --samples data/onpolicy/round-2/labels    # + the teacher's NLL of the student's text
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.student.batch_plan import bounded_eval, plan_batches, split_by_prompt
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.eval_metrics import EvalTotals, SampleScores
from pipeline.student.label_set import LabelSet, open_label_set
from schemas.config_base import ConfigError
from schemas.student_config import EvalConfig
from pipeline.store.fingerprint import tokenizer_fingerprint
from stages.student.cross_tokenizer import bits_per_byte
from stages.student.forward import batch_eval


def eval_plan(labels: LabelSet, eval_idx: np.ndarray, batch_tokens: int, max_tokens: int,
              seed: int) -> list[np.ndarray]:
    """Batches of the held-out samples one evaluation reads (see `bounded_eval`), every time."""
    chosen = bounded_eval(labels.label_count, eval_idx, labels.prompt_hash, max_tokens, seed)
    if len(eval_idx) and not len(chosen):
        shortest = int(labels.label_count[eval_idx].min())
        raise ConfigError(f"--eval-max-tokens {max_tokens} is below the labelled positions of the "
                          f"first held-out sample (the shortest has {shortest}): raise it, or "
                          "pass 0 to evaluate the whole split")
    return plan_batches(labels.length, chosen, batch_tokens, seed=0, epoch=0)


@torch.no_grad()
def evaluate_model(model: Any, labels: LabelSet, plan: list[np.ndarray], vocab: int, chunk: int,
                   device: torch.device, autocast_dtype: torch.dtype | None = None,
                   byte_lengths: np.ndarray | None = None) -> dict[str, float]:
    """KL, top-1 agreement, NLL and perplexity of `model` over the batches of `plan`; with
    `byte_lengths` (UTF-8 bytes of each token id) also bits per byte of the labelled text."""
    was_training = model.training
    model.eval()
    totals = EvalTotals()
    enabled = autocast_dtype is not None
    n_bytes = 0
    for batch in PlannedBatches(labels, plan):
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=enabled):
            batch_eval(model, to_device(batch, device), vocab, chunk, totals)
        n_bytes += labelled_bytes(batch, byte_lengths)
    model.train(was_training)
    means = totals.means()
    if byte_lengths is not None:
        means["bits_per_byte"] = bits_per_byte(means["nll"] * means["positions"], n_bytes)
    return means


def labelled_bytes(batch: dict[str, Any], byte_lengths: np.ndarray | None) -> int:
    if byte_lengths is None:
        return 0
    return int(byte_lengths[batch["target_ids"].numpy()].sum())


def teacher_byte_lengths(teacher: str) -> np.ndarray | None:
    """UTF-8 bytes of every id of the labels' tokenizer (None where the teacher's files are absent)."""
    from transformers import AutoTokenizer

    from pipeline.store.text_layout import token_bytes_table

    try:
        tokenizer = AutoTokenizer.from_pretrained(teacher)
    except (OSError, ValueError):
        return None
    table, _ = token_bytes_table(tokenizer)
    return np.fromiter(map(len, table), np.int64, len(table))


def teacher_reference(labels: LabelSet, plan: list[np.ndarray],
                      byte_lengths: np.ndarray | None = None) -> dict[str, float]:
    """The teacher's own row: NLL (and bits per byte) of its samples from the stored sampled logprobs."""
    nll, positions, n_bytes = 0.0, 0, 0
    for batch in PlannedBatches(labels, plan):
        nll -= float(batch["teacher_sampled_logprobs"].double().sum())
        positions += int(batch["teacher_sampled_logprobs"].numel())
        n_bytes += labelled_bytes(batch, byte_lengths)
    mean = nll / max(positions, 1)
    row = {"kl": 0.0, "top1_agreement": 1.0, "nll": mean, "perplexity": math.exp(mean),
           "positions": positions}
    if byte_lengths is not None:
        row["bits_per_byte"] = bits_per_byte(nll, n_bytes)
    return row


def sample_scores(out: str, cfg: EvalConfig) -> dict[str, float]:
    """The teacher's NLL of a model's own samples (a score-mode output of them), over the
    held-out split's prompts (split as `kd train-student` splits, by prompt id), or all."""
    labels = open_label_set([out], cfg.verify, cfg.verify_cache)
    chosen = (np.arange(len(labels)) if cfg.all
              else split_by_prompt(labels.prompt_hash, cfg.eval_fraction, cfg.seed)[1])
    scores = SampleScores()
    for shard in np.unique(labels.shard[chosen]):
        reader = labels.open_shard(int(shard))
        for row in labels.row[chosen[labels.shard[chosen] == shard]]:
            s = reader.sample(int(row))
            scores.add(s["sampled_logprobs"], s.get("student_logprobs"))
    return scores.means()


def run_eval(cfg: EvalConfig) -> dict[str, dict[str, float]]:
    from stages.student.model import (build_student, check_tokenizer, check_vocabulary,
                                      labels_tokenizer, shares_vocabulary)

    cfg.validate()
    labels = open_label_set(cfg.labels, cfg.verify, cfg.verify_cache)
    if cfg.all:
        plan = eval_plan(labels, np.arange(len(labels)), cfg.batch_tokens, 0, cfg.seed)
    else:
        _, eval_idx = split_by_prompt(labels.prompt_hash, cfg.eval_fraction, cfg.seed)
        plan = eval_plan(labels, eval_idx, cfg.batch_tokens, cfg.eval_max_tokens, cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    byte_lengths = teacher_byte_lengths(labels.teacher)
    rows = {"teacher": teacher_reference(labels, plan, byte_lengths)}
    sides: dict[str, Any] = {}  # cross-tokenizer rows of one tokenizer share its alignment
    for name, spec in cfg.named_models().items():
        if spec == "narrow":
            raise ConfigError(f"--model {name}={spec}: a narrow student starts from random "
                              "weights; evaluate a saved model directory instead")
        model, tokenizer = build_student(spec, labels.teacher, cfg.keep_layers, 0, cfg.seed,
                                         labels_tokenizer(labels)[0])
        if not shares_vocabulary(tokenizer, labels):
            rows[name] = cross_row(model.to(device), tokenizer, labels, plan, device, sides)
            continue
        check_tokenizer(tokenizer, labels, spec)
        vocab = check_vocabulary(model, labels.vocab_size)
        rows[name] = evaluate_model(model.to(device), labels, plan, vocab, cfg.loss_chunk, device,
                                    byte_lengths=byte_lengths)
        del model
    for name, out in cfg.named_samples().items():
        rows[name] = rows.get(name, {}) | sample_scores(out, cfg)
    if cfg.output:
        Path(cfg.output).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def cross_row(model: Any, tokenizer: Any, labels: LabelSet, plan: list[np.ndarray],
              device: torch.device, sides: dict[str, Any]) -> dict[str, float]:
    """A model of another tokenizer: bits per byte of the same labelled text (its own tokens);
    `sides` keeps each tokenizer's alignment (by fingerprint) for the next such row."""
    from transformers import AutoTokenizer

    from pipeline.student.cross_tokenizer_batches import AlignmentCache, StudentSide
    from stages.student.cross_tokenizer import (CrossPlannedBatches, evaluate_cross,
                                                student_vocab)

    key = tokenizer_fingerprint(tokenizer)
    if key not in sides:
        side = StudentSide.build(tokenizer, AutoTokenizer.from_pretrained(labels.teacher))
        sides[key] = CrossPlannedBatches(labels, plan, side, AlignmentCache(None, key))
    return evaluate_cross(model, sides[key], student_vocab(model, tokenizer), device)


def views_note(label_dirs: tuple[str, ...]) -> str:
    """A line under the table when some labels were made behind a teacher context, else ""."""
    from pipeline.store.manifest import ManifestError, read_manifest

    behind = []
    for d in label_dirs:
        try:
            context = read_manifest(d).teacher_context
        except ManifestError:
            continue  # open_label_set has already refused an unreadable output
        if context:
            behind.append(f"{d} ({context['kind']}, {context['records']} record(s))")
    if not behind:
        return ""
    return ("\nteacher context: the teacher labelled " + ", ".join(behind) + " behind a context "
            "the stored samples lack; every row reads the student's view (the plain prompt)")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table of evaluation rows; the columns of its own samples (`kd eval --samples`)
    only when some row has them, "-" where a row has no such number."""
    columns = [("KL to teacher", "kl", ".4f"), ("top-1 agreement", "top1_agreement", ".4f"),
               ("NLL", "nll", ".4f"), ("perplexity", "perplexity", ".2f"),
               ("positions", "positions", "d")]
    if any("bits_per_byte" in r for r in rows.values()):
        columns.insert(0, ("bits per byte", "bits_per_byte", ".4f"))
    if any("teacher_nll_of_samples" in r for r in rows.values()):
        columns += [("teacher NLL of its samples", "teacher_nll_of_samples", ".4f"),
                    ("reverse-KL estimate", "reverse_kl_estimate", ".4f"),
                    ("sample positions", "sample_positions", "d")]
    lines = ["| model | " + " | ".join(c[0] for c in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for name, r in rows.items():
        cells = [format(r[key], spec) if key in r else "-" for _, key, spec in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
