"""Cross-tokenizer evidence from stored labels alone (`make bench-cross-tokenizer-evidence`) -> bench/results/cross_tokenizer_evidence.json

Does a student of another tokenizer learn more from the stored labels (ALM + 1:1 KL
+ CE) than from the same text alone (CE only)? `bench/cross_tokenizer.py` measures
costs and cuts its students from the teacher's weights; this one needs no weights,
so it runs where only the repository and a small carry folder travel (a GPU machine)
as well as here. Its inputs, all in --carry (`--prepare` scores and packs them here;
`--pack` packs existing label sets):

- `labels-train/`, `labels-heldout/`: score-mode labels of the embedded teacher
  (SmolLM2, k = 20) on all of data/corpus/train.jsonl and on the 60 held-out
  documents of data/corpus/heldout.jsonl, with the text layout (schema v3) and the
  teacher's tokenizer and config.json in `labels-train/tokenizer/`;
- `tokenizers/qwen3/`, `tokenizers/gemma3/`: the student tokenizers (Qwen3:
  byte-level BPE; Gemma3: SentencePiece-style with byte fallback), tokenizer.json gzipped.

Students: `--student narrow`, a fresh random init of the teacher's architecture
scaled to --hidden wide and --layers deep, with tied embeddings for the student's
vocabulary (rows of byte strings the teacher has copied from the random teacher-vocab
table, the rest their mean). Per pair and seed, `--alpha 0.5` (ALM + 1:1 KL + CE)
against `--alpha 0` (CE only), same text, steps and seed, trained in this process
(`run_train_student`), then bits per byte of the held-out documents. Step time:
the median over the steps after the first --skip-steps, for every run, and for
two reference runs of --timing-steps: ordinary KD of the same architecture with
the teacher's vocabulary, and the cross path with the teacher's tokenizer.

    make bench-cross-tokenizer-evidence   # here, CPU-sized: 64 wide, 2 layers, 100 steps (~1 h on 2 cores)
    python -m bench.cross_tokenizer_evidence --pack data/xtok-carry     # the carry folder for a GPU
    python -m bench.cross_tokenizer_evidence --carry data/xtok-carry    # on a GPU: 384 wide, 4 layers, 300 steps
    python -m bench.cross_tokenizer_evidence --device cpu --steps 2 --timing-steps 2 --seeds 0 \
        --hidden 64 --layers 2 --output /tmp/xtok.json          # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

PAIRS = ("qwen3", "gemma3")
LOSSES = {"alm+kl+ce": 0.5, "ce only": 0.0}


def pack(carry: Path, train: str, heldout: str, tokenizers: str) -> None:
    """The carry folder from label sets and tokenizer folders here (student tokenizers gzipped)."""
    carry.mkdir(parents=True, exist_ok=True)
    for name, src in (("labels-train", train), ("labels-heldout", heldout)):
        shutil.copytree(src, carry / name, dirs_exist_ok=True)
    for pair in PAIRS:
        dest = carry / "tokenizers" / pair
        dest.mkdir(parents=True, exist_ok=True)
        for f in Path(tokenizers, pair).iterdir():
            if f.name == "tokenizer.json":
                with open(f, "rb") as src_f, gzip.open(dest / "tokenizer.json.gz", "wb", 6) as out:
                    shutil.copyfileobj(src_f, out)
            elif f.is_file():
                shutil.copy(f, dest / f.name)
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    print(f"{carry}: {size / 2**20:.1f} MiB")


def prepare(carry: Path, args: argparse.Namespace) -> None:
    """Score the training corpus and the held-out documents with the embedded teacher (reusing
    complete outputs) and pack them with the student tokenizers into `carry`, unless it holds them."""
    if (carry / "labels-heldout" / "manifest.json").is_file():
        return
    from bench.cross_tokenizer import heldout_documents, score

    score("data/corpus/train.jsonl", args.pack_train, None)
    Path(args.pack_heldout).parent.mkdir(parents=True, exist_ok=True)
    score(heldout_documents(Path(args.pack_heldout).parent / "heldout-docs.jsonl"),
          args.pack_heldout, None)
    pack(carry, args.pack_train, args.pack_heldout, args.pack_tokenizers)


def unpack_tokenizer(carry: Path, pair: str, work: Path) -> str:
    """The student tokenizer's folder with tokenizer.json un-gzipped (under --work)."""
    src, dest = carry / "tokenizers" / pair, work / "tokenizers" / pair
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "tokenizer.json.gz":
            if not (dest / "tokenizer.json").is_file():
                with gzip.open(f, "rb") as g, open(dest / "tokenizer.json", "wb") as out:
                    shutil.copyfileobj(g, out)
        else:
            shutil.copy(f, dest / f.name)
    return str(dest)


def median_step(out: Path, skip: int) -> tuple[float, list[float]]:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m["tokens"] / m["tokens_per_second"] for m in metrics if "loss" in m]
    return statistics.median(steps[skip:] or steps), steps


def train(args: argparse.Namespace, out: Path, steps: int, seed: int, alpha: float,
          tokenizer: str | None, cross: bool = True) -> dict[str, Any]:
    from schemas.student_config import StudentConfig
    from stages.student.train import run_train_student

    cfg = StudentConfig(
        labels=(str(args.carry / "labels-train"),), student="narrow", teacher=args.teacher,
        keep_layers=args.layers, narrow_hidden_size=args.hidden, out=str(out), steps=steps,
        batch_tokens=args.batch_tokens, lr=args.lr, warmup_steps=args.warmup, alpha=alpha,
        seed=seed, eval_every=0, checkpoint_every=steps, loader_workers=0, report_to="none",
        eval_max_tokens=512, overwrite=True, loss_chunk=args.loss_chunk,
        cross_tokenizer="alm" if cross else None, student_tokenizer=tokenizer)
    start = time.perf_counter()
    run_train_student(cfg)
    seconds = time.perf_counter() - start
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # GiBs each with a 262k vocabulary
    return {"seconds": seconds} | step_stats(out, args.skip_steps)


def finished(out: Path, steps: int) -> bool:
    """Whether `out` holds a run of `steps` steps whose model was exported."""
    metrics = out / "metrics.jsonl"
    return (out / "model" / "config.json").is_file() and metrics.is_file() and sum(
        "loss" in json.loads(line) for line in metrics.read_text().splitlines()) == steps


def step_stats(out: Path, skip: int) -> dict[str, Any]:
    """A finished run's step times, from its metrics."""
    median, step_s = median_step(out, skip)
    return {"median_step_seconds": median, "steps": len(step_s),
            "first_step_seconds": step_s[0], "mean_step_seconds": statistics.fmean(step_s)}


def heldout(args: argparse.Namespace, models: list[Path]) -> tuple[list[float], float]:
    """Bits per byte of each exported model on the held-out labels, and the teacher's."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.student.label_set import open_label_set
    from stages.student.cross_tokenizer import teacher_cross_reference
    from stages.student.evaluate import cross_row, eval_plan

    labels = dataclasses.replace(open_label_set([str(args.carry / "labels-heldout")]),
                                 teacher=args.teacher)
    plan = eval_plan(labels, np.arange(len(labels)), args.batch_tokens, 0, 0)
    device = torch.device(args.device)
    sides: dict[str, Any] = {}
    bpb = []
    for path in models:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        row = cross_row(model.to(device), AutoTokenizer.from_pretrained(path), labels, plan,
                        device, sides)
        bpb.append(row["bits_per_byte"])
        del model
    teacher = teacher_cross_reference(next(iter(sides.values())))["bits_per_byte"]
    return bpb, teacher


def evidence(args: argparse.Namespace, result: dict[str, Any]) -> None:
    from bench.cross_tokenizer import summarise

    for pair in args.pairs:
        tokenizer = unpack_tokenizer(args.carry, pair, args.work)
        runs = []
        for seed in args.seeds:
            for loss, alpha in LOSSES.items():
                out = args.work / f"{pair}-{loss.replace('+', '-').replace(' ', '-')}-s{seed}"
                run = ({"seconds": None} | step_stats(out, args.skip_steps)  # no wall time
                       if args.reuse and finished(out, args.steps)
                       else train(args, out, args.steps, seed, alpha, tokenizer))
                runs.append(run | {"seed": seed, "loss": loss, "alpha": alpha, "out": str(out)})
                took = "reused" if run["seconds"] is None else f"{run['seconds']:.1f} s"
                print(f"{pair} seed {seed} {loss}: {took}", flush=True)
        bpb, teacher = heldout(args, [Path(r["out"]) / "model" for r in runs])
        for r, b in zip(runs, bpb):
            r["heldout_bits_per_byte"] = {"student": b, "teacher": teacher}
        result["evidence"][pair] = {"runs": runs, "summary": summarise(runs)}
        write(result, args.output)


def step_times(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Reference runs, and the two ratios: (a) against ordinary KD with the teacher's vocabulary
    (same architecture), (b) against CE only of the very same cross student."""
    from bench.cross_tokenizer import STEP_GOAL, step_ratios

    result["step_goal"] = STEP_GOAL
    same = dict(steps=args.timing_steps, seed=0, alpha=0.5)
    times = result["step_time"]
    times["ordinary KD, teacher tokenizer"] = train(args, args.work / "time-kd", tokenizer=None,
                                                    cross=False, **same)
    times["cross path, teacher tokenizer"] = train(args, args.work / "time-cross-same",
                                                   tokenizer=None, **same)
    for pair, ev in result["evidence"].items():  # medians over the evidence runs' medians
        for loss, key in (("alm+kl+ce", f"cross path, {pair}"),
                          ("ce only", f"cross path, {pair}, CE only")):
            times[key] = {"median_step_seconds": statistics.median(
                r["median_step_seconds"] for r in ev["runs"] if r["loss"] == loss)}
    result["step_ratio"] = step_ratios(times, list(result["evidence"]))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--carry", type=Path, default=Path("data/xtok-carry"))
    ap.add_argument("--pack", type=Path, help="build this carry folder from the next three, then stop")
    ap.add_argument("--prepare", action="store_true",
                    help="make --carry first if it is not there: score the corpus, then pack")
    ap.add_argument("--pack-train", default="data/labels/xtok-train")
    ap.add_argument("--pack-heldout", default="data/labels/xtok-heldout")
    ap.add_argument("--pack-tokenizers", default="data/tokenizers")
    ap.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                    help="auto: cuda where there is one")
    ap.add_argument("--pairs", nargs="+", choices=PAIRS, default=list(PAIRS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--timing-steps", type=int, default=100)
    ap.add_argument("--skip-steps", type=int, default=5, help="steps left out of the median")
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--loss-chunk", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--work", type=Path, default=Path("data/bench-cross-tokenizer-evidence"))
    ap.add_argument("--output", default="bench/results/cross_tokenizer_evidence.json")
    ap.add_argument("--reuse", action="store_true",
                    help="take runs already finished in --work (an interrupted invocation's) as "
                         "they are; their wall time is not recorded")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.pack:
        return pack(args.pack, args.pack_train, args.pack_heldout, args.pack_tokenizers)
    if args.prepare:
        prepare(args.carry, args)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch looks: the stage picks cuda if any
    import torch

    from pipeline.machine import describe_machine

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here (use --device cpu)")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.teacher = str(args.carry / "labels-train" / "tokenizer")
    args.work.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    result: dict[str, Any] = {
        "machine": machine, "command": " ".join(sys.argv),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "init": (f"narrow student: random init of the teacher's architecture, {args.hidden} wide, "
                 f"{args.layers} layers, tied embeddings for the student's vocabulary; no "
                 "teacher weights"),
        "evidence": {}, "step_time": {}, "step_ratio": {}}
    start = time.perf_counter()
    evidence(args, result)
    step_times(args, result)
    result["total_seconds"] = time.perf_counter() - start
    write(result, args.output)


def write(result: dict[str, Any], path: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
