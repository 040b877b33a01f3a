"""Students trained alike on each label format, at equal bytes (`make bench-storage-quality`).

Two phases, so that training can run on another machine (no vLLM, no network there):

- `labels` (needs vLLM; CPU is fine): `kd teacher-labels --mode score` on the first
  --docs documents of data/corpus/train.jsonl, once per format: fp16 top-20, q8 top-20,
  sampled N = 50 (draws from the engine's top-256 + tail bucket), and q8 top-k with k
  chosen so its bytes per labelled token match sampled's (measured, not assumed); plus
  the reference, fp16 top-256 on every document of data/corpus/heldout.jsonl. Everything
  goes under --labels-dir (default data/labels/storage-quality, 14 MiB at 120 docs),
  which is all the `train` phase reads besides the teacher's weights.
- `train` (CPU or CUDA, imports no vLLM): per format, `kd train-student` from the teacher
  (--keep-layers 10, as the demo), same steps, batch tokens, learning rate and seed; then
  each student, and the untrained one, on the reference: KL to its top-256 + tail, NLL
  of the held-out text, top-1 agreement, and the expected calibration error of the
  student's top-1 (`pipeline.student.calibration`) next to the teacher's own (from the
  reference labels). Writes bench/results/storage_quality.{json,md} with the machine.

    python -m bench.storage_quality labels --docs 120
    python -m bench.storage_quality train --teacher-dir data/models/smollm2-135m-instruct \
        --labels-dir data/labels/storage-quality --steps 30 --device cpu
    python -m bench.storage_quality train --teacher-dir /models/smollm2-135m-instruct \
        --steps 300 --batch-tokens 4096 --device cuda --out bench/results/storage_quality_cuda
    python -m bench.storage_quality train --steps 3 --batch-tokens 256 \
        --runs-dir /tmp/q-runs --out /tmp/q                                   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.result_file import write_result
from pipeline.store.manifest import read_manifest
from pipeline.store.summary import storage_bytes
from pipeline.student.calibration import CalibrationBins
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.eval_metrics import EvalTotals, position_metrics
from pipeline.student.label_set import LabelSet, open_label_set

TEACHER = "data/models/smollm2-135m-instruct"
LABELS_DIR = "data/labels/storage-quality"
REFERENCE = "reference-heldout-fp16-top256"
SAMPLED = "sampled-n50"
# name -> teacher-labels flags; "q8-equal-bytes" gets its --top-k from sampled's bytes
FORMATS = {
    "fp16-top20": ["--top-k", "20"],
    "q8-top20": ["--top-k", "20", "--label-format", "q8"],
    SAMPLED: ["--top-k", "20", "--label-kind", "sampled", "--samples-per-position", "50"],
    "q8-equal-bytes": ["--label-format", "q8"],
}
Q8_ENTRY_BYTES = 3  # uint16 id + one code, at the demo teacher's vocabulary


def kd(*args: str, env: dict[str, str] | None = None) -> None:
    subprocess.run([sys.executable, "-m", "stages.cli.main", *args], check=True, env=env)


def score(teacher: str, prompts: str, out: Path, limit: int | None, *flags: str) -> None:
    """Score-mode labels as the demo makes them (eager engine, demo window and shard size)."""
    extra = ["--limit", str(limit)] if limit else []
    kd("teacher-labels", "--mode", "score", "--teacher", teacher, "--prompts", prompts,
       "--out", str(out), "--max-model-len", "1024", "--window-overlap", "128",
       "--shard-size", "64", "--seed", "0", "--enforce-eager", *extra, *flags)


def label_bytes(out: Path) -> dict[str, float]:
    return storage_bytes(out, read_manifest(out))


def equal_bytes_k(sampled_token_bytes: float, fp16_top20: dict[str, float]) -> int:
    """The q8 k whose bytes per labelled token come closest to sampled's: the per-token
    overhead (sampled logprob, position, offsets) is fp16 top-20's bytes less its entries."""
    overhead = fp16_top20["label_token"] - 20 * fp16_top20["topk_entry"]
    return max(1, round((sampled_token_bytes - overhead) / Q8_ENTRY_BYTES))


def labels_phase(args: argparse.Namespace) -> None:
    root = Path(args.labels_dir)
    bytes_of: dict[str, dict[str, float]] = {}
    for name, flags in FORMATS.items():
        if name == "q8-equal-bytes":
            k = equal_bytes_k(bytes_of[SAMPLED]["label_token"], bytes_of["fp16-top20"])
            flags = ["--top-k", str(k), *flags]
        score(args.teacher_dir, args.train_prompts, root / name, args.docs, *flags)
        bytes_of[name] = label_bytes(root / name)
    score(args.teacher_dir, args.heldout_prompts, root / REFERENCE, None, "--top-k", "256")
    for name in [*FORMATS, REFERENCE]:  # one by one: together they would be one union
        kd("verify", str(root / name))
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    summary = {"docs": args.docs, "bytes": bytes_of, "total_mib": round(size / 2**20, 1)}
    (root / "formats.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


def train_env(device: str) -> dict[str, str]:
    """kd train-student picks CUDA when it sees one: hide it for --device cpu."""
    env = dict(os.environ)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def train_student(args: argparse.Namespace, labels: Path, out: Path) -> None:
    kd("train-student", "--labels", str(labels), "--teacher", args.teacher_dir,
       "--student", "from-teacher", "--keep-layers", str(args.keep_layers), "--out", str(out),
       "--steps", str(args.steps), "--batch-tokens", str(args.batch_tokens), "--lr", str(args.lr),
       "--seed", str(args.seed), "--eval-every", "0", "--checkpoint-every", str(args.steps),
       "--report-to", "none", "--overwrite", env=train_env(args.device))


def reference_plan(labels: LabelSet, batch_tokens: int) -> list[np.ndarray]:
    from stages.student.evaluate import eval_plan

    return eval_plan(labels, np.arange(len(labels)), batch_tokens, 0, 0)


def teacher_row(labels: LabelSet, plan: list[np.ndarray]) -> dict[str, float]:
    """The teacher on the reference: its stored NLL, and the calibration of its top-1."""
    from stages.student.evaluate import teacher_reference

    cal = CalibrationBins()
    for batch in PlannedBatches(labels, plan):
        cal.add(batch["teacher_logprobs"][:, 0].double().exp(),
                batch["teacher_ids"][:, 0] == batch["target_ids"])
    return {**teacher_reference(labels, plan), **calibration_fields(cal)}


def calibration_fields(cal: CalibrationBins) -> dict[str, float]:
    return {"ece_top1": cal.ece(), "mean_top1_confidence": cal.mean_confidence(),
            "top1_accuracy": cal.accuracy()}


@torch.no_grad()
def student_row(model: Any, labels: LabelSet, plan: list[np.ndarray], device: torch.device,
                chunk: int = 2048) -> dict[str, float]:
    """KL to the reference top-k + tail, top-1 agreement, NLL, and the top-1's calibration."""
    from stages.student.forward import decoder_states

    model.eval()
    totals, cal = EvalTotals(), CalibrationBins()
    weight = model.get_output_embeddings().weight[:labels.vocab_size]
    for batch in PlannedBatches(labels, plan):
        batch = to_device(batch, device)
        rows = decoder_states(model, batch, False)[0][batch["loss_rows"]]
        for start in range(0, rows.shape[0], chunk):
            sl = slice(start, start + chunk)
            logits, target = rows[sl] @ weight.T, batch["target_ids"][sl]
            totals.add(*position_metrics(logits, batch["teacher_ids"][sl],
                                         batch["teacher_logprobs"][sl], target))
            confidence, top = torch.softmax(logits.float(), -1).max(-1)
            cal.add(confidence, top == target)
    return {**totals.means(), **calibration_fields(cal)}


def train_phase(args: argparse.Namespace) -> None:
    from transformers import AutoModelForCausalLM

    from stages.student.model import build_student

    root, runs = Path(args.labels_dir), Path(args.runs_dir)
    device = torch.device(args.device)
    names = [n for n in FORMATS if (root / n / "manifest.json").is_file()]
    reference = open_label_set([root / REFERENCE], "full")
    plan = reference_plan(reference, args.batch_tokens)
    rows = {"teacher": teacher_row(reference, plan)}
    before, _ = build_student("from-teacher", args.teacher_dir, args.keep_layers, 0, args.seed)
    rows["student_before"] = student_row(before.to(device), reference, plan, device)
    del before
    formats = {}
    for name in names:
        train_student(args, root / name, runs / name)
        model = AutoModelForCausalLM.from_pretrained(runs / name / "model", dtype=torch.float32)
        rows[name] = student_row(model.to(device), reference, plan, device)
        m = read_manifest(root / name)
        b = storage_bytes(root / name, m)
        formats[name] = {"label_format": m.label_format, "label_kind": m.label_kind,
                         "top_k": m.top_k, "samples_per_position": m.samples_per_position,
                         "bytes_per_labelled_token": round(b["label_token"], 1),
                         "labelled_tokens": m.totals()["completion_tokens"]}
    result = {"device": str(device),
              "train": {"steps": args.steps, "batch_tokens": args.batch_tokens, "lr": args.lr,
                        "seed": args.seed, "student": f"from-teacher, {args.keep_layers} layers",
                        "teacher": args.teacher_dir},
              "reference": {"labels": str(root / REFERENCE), "top_k": reference.top_k,
                            "positions": rows["teacher"]["positions"]},
              "formats": formats, "rows": rows}
    out = Path(args.out)
    write_result(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(report(result))
    print(report(result))


def report(r: dict[str, Any]) -> str:
    t = r["train"]
    lines = ["# Quality at equal bytes: students on each label format", "",
             f"Each student: {t['student']} of the teacher, {t['steps']} steps of "
             f"{t['batch_tokens']} tokens, lr {t['lr']}, seed {t['seed']}, trained on "
             f"{r['device']}. Evaluated on held-out documents against the reference "
             f"(fp16 top-{r['reference']['top_k']}, {r['reference']['positions']} positions): "
             "KL from the teacher's top-k + tail to the student, NLL of the text, and the "
             "expected calibration error (ECE, 15 bins) of the top-1 prediction against the "
             "next token.", "",
             "| model | labels: bytes per token | KL to teacher | NLL | top-1 agreement "
             "| ECE of top-1 | mean top-1 confidence | top-1 accuracy |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in r["rows"].items():
        b = r["formats"].get(name, {}).get("bytes_per_labelled_token", "")
        lines.append(f"| {name} | {b} | {row['kl']:.4f} | {row['nll']:.4f} | "
                     f"{row['top1_agreement']:.4f} | {row['ece_top1']:.4f} | "
                     f"{row['mean_top1_confidence']:.4f} | {row['top1_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=("labels", "train"))
    parser.add_argument("--labels-dir", default=LABELS_DIR)
    parser.add_argument("--teacher-dir", default=TEACHER)
    parser.add_argument("--docs", type=int, default=120, help="labels: training documents")
    parser.add_argument("--train-prompts", default="data/corpus/train.jsonl")
    parser.add_argument("--heldout-prompts", default="data/corpus/heldout.jsonl")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep-layers", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="train: cpu or cuda")
    parser.add_argument("--runs-dir", default="data/student/storage-quality")
    parser.add_argument("--out", default="bench/results/storage_quality")
    args = parser.parse_args()
    if args.phase == "labels":
        labels_phase(args)
    else:
        train_phase(args)


if __name__ == "__main__":
    main()
