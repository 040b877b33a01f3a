"""Distilled student -> deployed model: float, post-training quantized, QAT-distilled, and GGUF files.

For each seed, the same student (a fresh `narrow` one by default: CPU-sized)
is distilled twice on the same labels with the same steps, learning rate and
seed: once in float, once with `--qat SCHEME` from the first step. The float
student is then quantized after training with the same scheme (torchao,
`pipeline.student.qat.convert_qat`: post-training quantization, PTQ). Rows:
held-out KL to the teacher, top-1 agreement and NLL (every sample of
--heldout-labels, a score-mode output of text no run trained on) and file
size, for float, PTQ and QAT. Then the float student of each of --gguf-seeds
is exported to GGUF at each --quants (`kd export-model`, llama.cpp's
converter), read back with transformers' GGUF reader, and scored the same way plus its mean KL to
the float student over every held-out position. Writes
bench/results/deploy.json with the machine, the command and every raw run.

    python -m bench.deploy --train-labels /tmp/l/train --heldout-labels /tmp/l/heldout
    python -m bench.deploy ... --seeds 0 --steps 4        # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.machine import describe_machine
from pipeline.student.batches import PlannedBatches
from pipeline.student.label_set import LabelSet, open_label_set
from pipeline.student.qat import convert_qat, load_quantized, save_quantized
from schemas.deploy_config import ModelExportConfig
from schemas.student_config import StudentConfig
from stages.interop.export_gguf import run_export_model
from stages.student.evaluate import eval_plan, evaluate_model, teacher_reference
from stages.student.train import run_train_student

CPU = torch.device("cpu")


def heldout_scores(model: Any, labels: LabelSet, plan: list[np.ndarray]) -> dict[str, float]:
    return evaluate_model(model.eval(), labels, plan, labels.vocab_size, 2048, CPU)


@torch.no_grad()
def kl_to(reference: Any, model: Any, labels: LabelSet, plan: list[np.ndarray]) -> float:
    """Mean KL(reference || model) over every real position of the held-out batches."""
    total, positions = 0.0, 0
    for batch in PlannedBatches(labels, plan):
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        p = reference(**kwargs).logits[..., :labels.vocab_size].float().log_softmax(-1)
        q = model(**kwargs).logits[..., :labels.vocab_size].float().log_softmax(-1)
        per_position = (p.exp() * (p - q)).sum(-1)
        mask = batch["attention_mask"].bool()
        total += float(per_position[mask].double().sum())
        positions += int(mask.sum())
    return total / max(positions, 1)


def train(args: argparse.Namespace, seed: int, out: Path, qat: str | None) -> float:
    cfg = StudentConfig(labels=(args.train_labels,), student=args.student,
                        keep_layers=args.keep_layers, narrow_hidden_size=args.narrow_hidden_size,
                        out=str(out), steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr,
                        warmup_steps=args.warmup_steps, seed=seed, eval_every=0,
                        checkpoint_every=0, report_to="none", overwrite=True, qat=qat,
                        qat_group_size=args.group_size)
    return run_train_student(cfg).seconds


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and
               p.suffix in (".safetensors", ".pt", ".gguf")) if path.is_dir() else path.stat().st_size


def seed_rows(args: argparse.Namespace, seed: int, work: Path, labels: LabelSet,
              plan: list[np.ndarray]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The float, PTQ and QAT rows of one seed, and its float student's GGUF rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    float_dir, qat_dir = work / f"float-{seed}", work / f"qat-{seed}"
    float_seconds = train(args, seed, float_dir, None)
    qat_seconds = train(args, seed, qat_dir, args.scheme)
    student = AutoModelForCausalLM.from_pretrained(float_dir / "model", dtype=torch.float32).eval()
    ptq = AutoModelForCausalLM.from_pretrained(float_dir / "model", dtype=torch.float32).eval()
    convert_qat(ptq, args.scheme, args.group_size)
    save_quantized(ptq, AutoTokenizer.from_pretrained(float_dir / "model"), work / f"ptq-{seed}",
                   args.scheme, args.group_size)
    qat = load_quantized(qat_dir / "model-quantized")
    base = {"seed": seed, "steps": args.steps}
    rows = [base | {"variant": "float", "train_seconds": float_seconds,
                    "bytes": size(float_dir / "model")} | heldout_scores(student, labels, plan),
            base | {"variant": f"ptq-{args.scheme}", "train_seconds": float_seconds,
                    "bytes": size(work / f"ptq-{seed}")} | heldout_scores(ptq, labels, plan),
            base | {"variant": f"qat-{args.scheme}", "train_seconds": qat_seconds,
                    "bytes": size(qat_dir / "model-quantized")} | heldout_scores(qat, labels, plan)]
    for row, model in zip(rows[1:], (ptq, qat)):
        row["kl_to_float_student"] = kl_to(student, model, labels, plan)
    gguf_rows = []
    for quant in args.quants.split(",") if seed in parse_seeds(args.gguf_seeds) else []:
        path = work / f"float-{seed}-{quant}.gguf"
        tick = time.time()
        summary = run_export_model(ModelExportConfig(model=str(float_dir / "model"), quant=quant,
                                                     out=str(path), overwrite=True))
        seconds = time.time() - tick
        loaded = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name,
                                                      dtype=torch.float32).eval()
        gguf_rows.append(base | {"quant": quant, "bytes": summary.bytes,
                                 "export_seconds": seconds, "tensor_types": summary.tensor_types,
                                 "kl_to_float_student": kl_to(student, loaded, labels, plan)}
                         | heldout_scores(loaded, labels, plan))
    return rows, gguf_rows


def parse_seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def spread(rows: list[dict[str, Any]], variant: str, key: str) -> dict[str, float]:
    values = [r[key] for r in rows if r["variant"] == variant]
    return {"mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(rows: list[dict[str, Any]], scheme: str) -> dict[str, Any]:
    """Per-variant mean and spread; the QAT gain (PTQ minus QAT, per seed) against its spread."""
    variants = ["float", f"ptq-{scheme}", f"qat-{scheme}"]
    summary: dict[str, Any] = {v: {k: spread(rows, v, k) for k in ("kl", "nll", "bytes")}
                               for v in variants}
    for key in ("kl", "nll"):
        by_seed = {r["seed"]: {} for r in rows}
        for r in rows:
            by_seed[r["seed"]][r["variant"]] = r[key]
        gains = [s[variants[1]] - s[variants[2]] for s in by_seed.values()]
        summary[f"qat_gain_{key}"] = {
            "per_seed": gains, "mean": statistics.fmean(gains),
            "stdev": statistics.stdev(gains) if len(gains) > 1 else 0.0,
            "seeds_where_qat_is_better": sum(g > 0 for g in gains),
            "float_stdev_across_seeds": summary["float"][key]["stdev"]}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-labels", required=True)
    parser.add_argument("--heldout-labels", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--student", default="narrow")
    parser.add_argument("--keep-layers", type=int, default=2)
    parser.add_argument("--narrow-hidden-size", type=int, default=64)
    parser.add_argument("--scheme", default="int8da-int4w")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--quants", default="f16,q8_0")
    parser.add_argument("--gguf-seeds", default="0", help="seeds whose float student is exported")
    parser.add_argument("--out", default="bench/results/deploy.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kd-bench-deploy-"))
    labels = open_label_set([args.heldout_labels])
    plan = eval_plan(labels, np.arange(len(labels)), args.batch_tokens, 0, 0)
    start = time.time()
    rows, gguf_rows = [], []
    for seed in parse_seeds(args.seeds):
        seed_runs, seed_gguf = seed_rows(args, seed, work, labels, plan)
        rows += seed_runs
        gguf_rows += seed_gguf
        print(json.dumps(seed_runs + seed_gguf), flush=True)
    result = {
        "machine": describe_machine(), "command": " ".join(sys.argv),
        "settings": vars(args), "seconds": time.time() - start,
        "heldout": {"labels": args.heldout_labels, "samples": len(labels),
                    "teacher": teacher_reference(labels, plan)},
        "runs": rows, "gguf": gguf_rows, "summary": summarise(rows, args.scheme),
        "llama_cpp_tokens_per_second": None,
        "llama_cpp_note": "not measured: llama-cpp-python compiles llama.cpp from source at "
                          "install, which does not fit the benchmark's time on 2 shared cores; "
                          "the GGUF files are checked through transformers' GGUF reader instead",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
