"""Distilled student -> deployed model: float, post-training quantized, QAT-distilled, and GGUF files.

For each seed the same student (by default the embedded teacher itself: LLM-QAT's
self-distillation into its quantized copy, the case where post-training quantization
does real damage; `--student narrow` is a fresh random init from the teacher's config,
which needs no teacher weights) is distilled on the same labels with the same total
steps, learning rate and seed, as:

- `float`: in float; `ptq`: that float student quantized after training with
  the scheme (torchao, `pipeline.student.qat.convert_qat`: post-training
  quantization);
- `qat-start`: with `--qat SCHEME` from the first step;
- `qat-final` (with --qat-steps M): float distillation, then a last QAT phase
  of M steps (`--phases kd:N-M,qat:M`), what torchtune and torchao recommend:
  QAT as a fine-tuning phase of an already trained float model;
- with --phase-control: `float-phased` (`--phases kd:N-M,full:M`, the same two
  learning-rate schedules without fake quantization) and its PTQ `ptq-phased`:
  separates the effect of QAT from that of the second warm-up.

Rows: held-out KL to the teacher, top-1 agreement and NLL (every sample of
--heldout-labels, a score-mode output of text no run trained on), file size,
and each quantized student's KL to its float student. The gains (PTQ minus
QAT, paired by seed) are set against their spread across seeds. Then the float
student of each of --gguf-seeds is exported to GGUF at each --quants (`kd
export-model`, llama.cpp's converter), read back with transformers' GGUF
reader and scored the same way, plus tokens per second under llama.cpp where
llama-cpp-python is installed (`make llama-cpp`). Results are written after
every seed (with the machine, the command and every raw run), so a run cut
short keeps its finished seeds: `--continue-from FILE` keeps them and runs the rest
(`--work DIR --reuse` also takes trained runs and GGUF files already in DIR). Runs on
CUDA when there is one.

    python -m bench.deploy --train-labels /tmp/l/train --heldout-labels /tmp/l/heldout
    python -m bench.deploy ... --seeds 0 --steps 4 --qat-steps 2 --quants ''  # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.llama_cpp_speed import llama_cpp_status, tokens_per_second
from pipeline.machine import describe_machine
from pipeline.student.batches import PlannedBatches, to_device
from pipeline.student.label_set import LabelSet, open_label_set
from pipeline.student.qat import convert_qat, prepare_qat, save_quantized
from schemas.student_config import StudentConfig
from schemas.teacher_config import DEFAULT_TEACHER
from stages.student.evaluate import eval_plan, evaluate_model, teacher_reference
from stages.student.train import run_train_student

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PAIRS = (("qat-start", "ptq"), ("qat-final", "ptq"), ("qat-final", "ptq-phased"),
         ("ptq", "float"), ("ptq-phased", "float-phased"))
"""(variant, baseline) pairs whose per-seed difference baseline - variant is summarised; the
last two are the damage of PTQ (negative: PTQ is worse than float)."""


def heldout_scores(model: Any, labels: LabelSet, plan: list[np.ndarray]) -> dict[str, float]:
    return evaluate_model(model.to(DEVICE).eval(), labels, plan, labels.vocab_size, 2048, DEVICE)


@torch.no_grad()
def kl_to(reference: Any, model: Any, labels: LabelSet, plan: list[np.ndarray]) -> float:
    """Mean KL(reference || model) over every real position of the held-out batches."""
    total, positions = 0.0, 0
    for batch in PlannedBatches(labels, plan):
        batch = to_device(batch, DEVICE)
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        p = reference(**kwargs).logits[..., :labels.vocab_size].float().log_softmax(-1)
        q = model(**kwargs).logits[..., :labels.vocab_size].float().log_softmax(-1)
        per_position = (p.exp() * (p - q)).sum(-1)
        mask = batch["attention_mask"].bool()
        total += float(per_position[mask].double().sum())
        positions += int(mask.sum())
    return total / max(positions, 1)


def run_plans(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Training runs of one seed: name -> the StudentConfig fields that differ between them."""
    first = args.steps - args.qat_steps
    plans: dict[str, dict[str, Any]] = {"float": {}}
    if args.qat_steps and args.phase_control:
        plans["float-phased"] = {"phases": f"kd:{first},full:{args.qat_steps}"}
    plans["qat-start"] = {"qat": args.scheme}
    if args.qat_steps:
        plans["qat-final"] = {"qat": args.scheme, "phases": f"kd:{first},qat:{args.qat_steps}"}
    return plans


def train(args: argparse.Namespace, seed: int, out: Path, fields: dict[str, Any]) -> float | None:
    """The run's wall seconds; None for a run --reuse takes as it is from an earlier invocation."""
    if args.reuse and (out / "model" / "config.json").is_file():
        return None
    cfg = StudentConfig(labels=(args.train_labels,), student=args.student, teacher=args.teacher,
                        keep_layers=args.keep_layers, narrow_hidden_size=args.narrow_hidden_size,
                        out=str(out), steps=args.steps, batch_tokens=args.batch_tokens, lr=args.lr,
                        warmup_steps=args.warmup_steps, seed=seed, eval_every=0,
                        checkpoint_every=0, report_to="none", overwrite=True,
                        qat_group_size=args.group_size, **fields)
    seconds = run_train_student(cfg).seconds
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 1.6 GB each for the 135M teacher
    return seconds


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and
               p.suffix in (".safetensors", ".pt", ".gguf")) if path.is_dir() else path.stat().st_size


def load_float(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def quantized(float_dir: Path, args: argparse.Namespace) -> Any:
    """The float weights at `float_dir` quantized with the scheme, on DEVICE: PTQ of a float run;
    for a --qat run what its <out>/model-quantized holds. Evaluated through torchao's fake
    quantizer, which computes what the converted model does (tests/student/test_qat.py: equal
    within 1e-5): torchao's CPU kernels for int4 weights take ~10 min per held-out pass of
    the 135M teacher on 2 cores, the fake quantizer about as long as the float model."""
    model = load_float(float_dir).to(DEVICE)
    prepare_qat(model, args.scheme, args.group_size)
    return model


def ptq_file_bytes(float_dir: Path, args: argparse.Namespace, out: Path) -> int:
    """Size of the PTQ student saved as --qat runs save theirs (converted on CPU, like them)."""
    from transformers import AutoTokenizer

    model = load_float(float_dir)
    convert_qat(model, args.scheme, args.group_size)
    save_quantized(model, AutoTokenizer.from_pretrained(float_dir), out, args.scheme,
                   args.group_size)
    return size(out)


def seed_rows(args: argparse.Namespace, seed: int, work: Path, labels: LabelSet,
              plan: list[np.ndarray]) -> list[dict[str, Any]]:
    """One row per variant of one seed (see the module docstring)."""
    base = {"seed": seed, "steps": args.steps, "device": str(DEVICE)}
    rows, floats = [], {}
    for name, fields in run_plans(args).items():
        out = work / f"{name}-{seed}"
        seconds = train(args, seed, out, fields)
        took = "reused" if seconds is None else f"in {seconds:.1f} s"
        print(f"seed {seed} {name}: {args.steps} steps {took}", flush=True)
        row = base | {"variant": name, "train_seconds": seconds, **fields}
        if "qat" in fields:
            model = quantized(out / "model", args)
            reference = floats["float-phased" if "phases" in fields and "float-phased" in floats
                               else "float"]
            rows.append(row | {"bytes": size(out / "model-quantized")}
                        | heldout_scores(model, labels, plan)
                        | {"kl_to_float_student": kl_to(reference, model, labels, plan)})
            continue
        floats[name] = model = load_float(out / "model").to(DEVICE)
        base["parameters"] = row["parameters"] = sum(p.numel() for p in model.parameters())
        rows.append(row | {"bytes": size(out / "model")} | heldout_scores(model, labels, plan))
        ptq_name = name.replace("float", "ptq")
        ptq = quantized(out / "model", args)
        ptq_bytes = ptq_file_bytes(out / "model", args, work / f"{ptq_name}-{seed}")
        rows.append(base | {"variant": ptq_name, "train_seconds": seconds, "bytes": ptq_bytes}
                    | heldout_scores(ptq, labels, plan)
                    | {"kl_to_float_student": kl_to(floats[name], ptq, labels, plan)})
    return rows


def gguf_rows(args: argparse.Namespace, seed: int, work: Path, labels: LabelSet,
              plan: list[np.ndarray]) -> list[dict[str, Any]]:
    """The float student of `seed` as GGUF at each --quants: size, KL to it and to the teacher,
    and llama.cpp's tokens per second where llama-cpp-python is installed."""
    from transformers import AutoModelForCausalLM

    from pipeline.interop.gguf_model import read_gguf_summary
    from schemas.deploy_config import ModelExportConfig
    from stages.interop.export_gguf import run_export_model

    float_dir = work / f"float-{seed}" / "model"
    student = load_float(float_dir).to(DEVICE)
    rows = []
    for quant in [q for q in args.quants.split(",") if q]:
        path = work / f"float-{seed}-{quant}.gguf"
        tick = time.time()
        if args.reuse and path.is_file():
            summary, seconds = read_gguf_summary(path), None
        else:
            summary = run_export_model(ModelExportConfig(model=str(float_dir), quant=quant,
                                                         out=str(path), overwrite=True))
            seconds = time.time() - tick
        loaded = AutoModelForCausalLM.from_pretrained(work, gguf_file=path.name,
                                                      dtype=torch.float32).eval()
        rows.append({"seed": seed, "steps": args.steps, "quant": quant, "bytes": summary.bytes,
                     "export_seconds": seconds, "tensor_types": summary.tensor_types,
                     "kl_to_float_student": kl_to(student, loaded.to(DEVICE), labels, plan)}
                    | heldout_scores(loaded, labels, plan)
                    | {"llama_cpp": tokens_per_second(path, args.llama_tokens)})
    return rows


def parse_seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s]


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def paired_gain(rows: list[dict[str, Any]], variant: str, baseline: str, key: str) -> dict[str, Any]:
    """baseline - variant per seed (positive: `variant` is better on a lower-is-better `key`),
    its mean, stdev and standard error, and how many seeds it is positive on.

    >>> rows = [{"seed": s, "variant": v, "kl": x} for s, v, x in
    ...         [(0, "a", 1.0), (0, "b", 1.5), (1, "a", 2.0), (1, "b", 2.25)]]
    >>> g = paired_gain(rows, "a", "b", "kl")
    >>> g["per_seed"], g["mean"], g["seeds_better"]
    ([0.5, 0.25], 0.375, 2)
    """
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows:
        by_seed.setdefault(r["seed"], {})[r["variant"]] = r[key]
    gains = [s[baseline] - s[variant] for s in by_seed.values() if variant in s and baseline in s]
    if not gains:
        return {}
    out = {"per_seed": gains, **spread(gains), "seeds_better": sum(g > 0 for g in gains)}
    out["stderr"] = out["stdev"] / math.sqrt(len(gains))
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-variant mean and spread over seeds; each pair of PAIRS's paired gain on KL and NLL."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    summary: dict[str, Any] = {
        "variants": {v: {k: spread([r[k] for r in rows if r["variant"] == v])
                         for k in ("kl", "nll", "bytes")} for v in variants},
        "gains": {}}
    for variant, baseline in PAIRS:
        if variant in variants and baseline in variants:
            summary["gains"][f"{variant} vs {baseline}"] = {
                key: paired_gain(rows, variant, baseline, key) for key in ("kl", "nll")}
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-labels", required=True)
    parser.add_argument("--heldout-labels", required=True)
    parser.add_argument("--teacher", default=None,
                        help="directory with the teacher's config.json and tokenizer (no weights "
                             "needed) when the label set holds no tokenizer copy")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=16, help="total steps of every run")
    parser.add_argument("--qat-steps", type=int, default=0,
                        help="steps of the final QAT phase of qat-final (0: no qat-final run)")
    parser.add_argument("--phase-control", action=argparse.BooleanOptionalAction, default=None,
                        help="also the float-phased run (kd:N-M,full:M) and its PTQ (default: "
                             "with --qat-steps)")
    parser.add_argument("--batch-tokens", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--student", default=DEFAULT_TEACHER,
                        help="narrow, from-teacher or a model directory (default: the teacher "
                             "itself, LLM-QAT's self-distillation)")
    parser.add_argument("--keep-layers", type=int, default=2)
    parser.add_argument("--narrow-hidden-size", type=int, default=128)
    parser.add_argument("--scheme", default="int8da-int4w")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--quants", default="f16,q8_0", help="GGUF quantizations ('' for none)")
    parser.add_argument("--gguf-seeds", default="0", help="seeds whose float student is exported")
    parser.add_argument("--llama-tokens", type=int, default=64,
                        help="tokens generated per llama.cpp speed measurement")
    parser.add_argument("--time-budget", type=float, default=0,
                        help="seconds: start no further seed once the next would pass it (0: none)")
    parser.add_argument("--out", default="bench/results/deploy.json")
    parser.add_argument("--work", default=None, help="folder of the runs (default: a new "
                                                     "temporary one)")
    parser.add_argument("--continue-from", default=None,
                        help="a results file of an earlier invocation with the same settings: "
                             "its finished seeds are kept, not run again")
    parser.add_argument("--reuse", action="store_true",
                        help="take runs (and GGUF files) already in --work as they are: an "
                             "interrupted invocation's; their wall time is not recorded")
    return parser


def check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.qat_steps < args.steps:
        raise SystemExit(f"--qat-steps {args.qat_steps} must be in 0..{args.steps - 1} (--steps)")
    if args.phase_control is None:
        args.phase_control = bool(args.qat_steps)
    if args.phase_control and not args.qat_steps:
        raise SystemExit("--phase-control needs --qat-steps (it is the control of qat-final); "
                         "pass --no-phase-control with --qat-steps 0")


def write(args: argparse.Namespace, start: float, labels: LabelSet, plan: list[np.ndarray],
          rows: list[dict[str, Any]], gguf: list[dict[str, Any]],
          llama_cpp: dict[str, Any]) -> None:
    result = {
        "machine": describe_machine(), "command": " ".join(sys.argv), "device": str(DEVICE),
        "settings": vars(args), "seconds": time.time() - start,
        "heldout": {"labels": args.heldout_labels, "samples": len(labels),
                    "teacher": teacher_reference(labels, plan)},
        "runs": rows, "gguf": gguf, "summary": summarise(rows) if rows else {},
        "llama_cpp": llama_cpp,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{args.out}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)


def finished_seeds(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(runs, GGUF rows) of the seeds --continue-from's results file finished, which this
    invocation does not run again; refused when that file was made with other settings."""
    if not args.continue_from:
        return [], []
    earlier = json.loads(Path(args.continue_from).read_text())
    same = ("student", "steps", "qat_steps", "batch_tokens", "lr", "warmup_steps", "scheme",
            "group_size", "train_labels", "heldout_labels")
    differ = [k for k in same if earlier["settings"][k] != getattr(args, k)]
    if differ:
        raise SystemExit(f"--continue-from {args.continue_from}: made with other --"
                         f"{differ[0].replace('_', '-')} ({earlier['settings'][differ[0]]})")
    return earlier["runs"], earlier["gguf"]


def main() -> None:
    args = build_parser().parse_args()
    check_args(args)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="kd-bench-deploy-"))
    work.mkdir(parents=True, exist_ok=True)
    labels = open_label_set([args.heldout_labels])
    plan = eval_plan(labels, np.arange(len(labels)), args.batch_tokens, 0, 0)
    start = time.time()
    rows, gguf = finished_seeds(args)
    done = {r["seed"] for r in rows}
    last_seed_seconds = 0.0
    llama_cpp = llama_cpp_status()  # as when the GGUF files are measured, not at the last write
    for seed in [s for s in parse_seeds(args.seeds) if s not in done]:
        if args.time_budget and time.time() - start + last_seed_seconds > args.time_budget:
            print(f"--time-budget {args.time_budget:.0f} s: seed {seed} and later not run")
            break
        tick = time.time()
        seed_runs = seed_rows(args, seed, work, labels, plan)
        rows += seed_runs
        if seed in parse_seeds(args.gguf_seeds):
            gguf += gguf_rows(args, seed, work, labels, plan)
        last_seed_seconds = time.time() - tick
        print(json.dumps(seed_runs), flush=True)
        write(args, start, labels, plan, rows, gguf, llama_cpp)
    print(f"wrote {args.out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
