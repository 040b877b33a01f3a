"""Cross-tokenizer distillation from stored labels (`make bench-cross-tokenizer`) -> bench/results/cross_tokenizer.json

The embedded teacher (SmolLM2, byte-level BPE) scores the first --train-docs
documents of data/corpus/train.jsonl and the 60 held-out documents of
data/corpus/heldout.jsonl (`kd teacher-labels --mode score`, k = 20; reruns reuse
complete outputs). Students of two real tokenizers of other families (Qwen3:
byte-level BPE; Gemma3: SentencePiece-style with byte fallback; `make tokenizers`)
are built from the teacher (--keep-layers of its layers, new embeddings) and
trained from those labels alone. Reported, with every raw run:

- alignment cost per sample, cold (render, tokenise, align) and cached (read back
  from the run's `.npz`), per tokenizer;
- the bytes per token the new stored data add (`samples/token_byte_lengths` as one
  uint8 per token, `samples/text_regions` as its JSON), from the labels' own layouts;
- the share of labelled bytes in 1:1 chunks (where the top-k KL applies), per pair;
- student step time, median over the steps after the first, as two ratios per
  pair: (a) the cross student's ALM + 1:1 KL + CE step against the ordinary
  same-tokenizer KD step of the same architecture with the teacher's vocabulary
  (this includes the cost of the larger vocabulary: embedding, LM head, optimizer),
  and (b) against a CE-only step of the very same cross student, which isolates
  what the cross-tokenizer losses add; plus the cross path with the teacher's tokenizer;
- the evidence (run first): per pair and seed, `--alpha 0.5` (ALM + 1:1 KL + CE)
  against `--alpha 0` (CE only), same text, steps and seed, then one `kd eval --all`
  per pair: bits per byte on the held-out documents.

The labels are score-mode runs of the teacher stage, which store the text layout.

    python -m bench.cross_tokenizer --steps 8 --seeds 0 1     # the defaults (make bench-cross-tokenizer)
    python -m bench.cross_tokenizer --parts alignment step-time   # rerun those, keep the rest of the file

`bench/cross_tokenizer_gpu.py` runs the evidence on a GPU without the teacher's weights.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.machine import describe_machine

TEACHER = "data/models/smollm2-135m-instruct"
PAIRS = {"qwen3": "data/tokenizers/qwen3", "gemma3": "data/tokenizers/gemma3"}
PARTS = ("evidence", "alignment", "step-time", "paired-step")
STEP_GOAL = 1.15
"""The issue's goal for a cross-tokenizer step against the step it is compared with."""


def kd(*args: str) -> float:
    """Run one kd command (this checkout's code); its wall-clock seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "stages.cli.main", *args], check=True,
                   env=os.environ)
    return time.perf_counter() - start


def score(prompts: str, out: str, limit: int | None) -> None:
    if (Path(out) / "manifest.json").is_file() and json.loads(
            (Path(out) / "manifest.json").read_text()).get("complete"):
        return
    kd("teacher-labels", "--mode", "score", "--teacher", TEACHER, "--prompts", prompts,
       "--out", out, "--top-k", "20", "--max-model-len", "1024", "--window-overlap", "128",
       "--enforce-eager", *(["--limit", str(limit)] if limit else []))


def heldout_documents(path: Path) -> str:
    docs = [line for line in open("data/corpus/heldout.jsonl") if "text" in json.loads(line)]
    path.write_text("".join(docs))
    return str(path)


def alignment_costs(labels: str, tokenizer_dir: str) -> dict[str, Any]:
    """Cold and cached alignment seconds per sample, 1:1 share and stored-layout bytes."""
    import tempfile

    from transformers import AutoTokenizer

    from pipeline.store.text_layout import encode_regions
    from pipeline.student.cross_tokenizer_batches import AlignmentCache, StudentSide, stored_layouts
    from pipeline.student.label_set import open_label_set

    set_ = open_label_set([labels])
    side = StudentSide.build(AutoTokenizer.from_pretrained(tokenizer_dir),
                             AutoTokenizer.from_pretrained(TEACHER))
    cold = cached = 0.0
    samples = one_bytes = all_bytes = tokens = layout_bytes = 0
    with tempfile.TemporaryDirectory() as tmp:
        for s, path in enumerate(set_.shard_paths):
            reader = set_.open_shard(s)
            layouts = stored_layouts(reader)
            start = time.perf_counter()
            aligned = [side.align(reader.sample(i), layouts[i]) for i in range(len(reader))]
            cold += time.perf_counter() - start
            AlignmentCache(tmp, side.fingerprint).shard(path, lambda: aligned)
            start = time.perf_counter()
            AlignmentCache(tmp, side.fingerprint).shard(path, lambda: 1 / 0)
            cached += time.perf_counter() - start
            for a, (lengths, regions) in zip(aligned, layouts):
                one_bytes += int(a.chunk_bytes[a.one_to_one()].sum())
                all_bytes += int(a.chunk_bytes.sum())
                tokens += len(lengths)
                layout_bytes += len(lengths) + len(encode_regions(regions).encode())
            samples += len(reader)
    return {"samples": samples, "cold_ms_per_sample": 1e3 * cold / samples,
            "cached_ms_per_sample": 1e3 * cached / samples,
            "one_to_one_byte_share": one_bytes / all_bytes, "labelled_bytes": all_bytes,
            "stored_layout_bytes_per_token": layout_bytes / tokens, "teacher_tokens": tokens}


def train(labels: str, out: Path, steps: int, seed: int, alpha: float, args: argparse.Namespace,
          tokenizer: str | None, cross: bool = True) -> dict[str, Any]:
    extra = ["--cross-tokenizer", "alm"] if cross else []
    if tokenizer:
        extra += ["--student-tokenizer", tokenizer]
    seconds = kd("train-student", "--labels", labels, "--out", str(out), "--overwrite",
                 "--keep-layers", str(args.keep_layers), "--steps", str(steps),
                 "--batch-tokens", str(args.batch_tokens), "--lr", str(args.lr),
                 "--alpha", str(alpha), "--seed", str(seed), "--eval-every", "0",
                 "--checkpoint-every", str(steps), "--loader-workers", "0",
                 "--report-to", "none", "--warmup-steps", "2", "--eval-max-tokens", "512",
                 *extra)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step_s = [m["tokens"] / m["tokens_per_second"] for m in metrics if "loss" in m]
    return {"seconds": seconds, "step_seconds": step_s,
            "median_step_seconds": statistics.median(step_s[1:] or step_s)}


def heldout_bpb(labels: str, models: dict[str, Path], out: Path) -> dict[str, dict[str, float]]:
    """One `kd eval --all` of several models on the held-out labels: each row's bits per byte."""
    kd("eval", "--all", "--labels", labels, *[a for name, m in models.items()
                                               for a in ("--model", f"{name}={m}")],
       "--output", str(out))
    return {name: row["bits_per_byte"] for name, row in json.loads(out.read_text()).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-docs", type=int, default=120)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--timing-steps", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--keep-layers", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--work", default="data/bench-cross-tokenizer")
    ap.add_argument("--output", default="bench/results/cross_tokenizer.json")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                    help="what to (re)run; the other parts are kept from --output")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_labels, heldout_labels = str(work / "labels-train"), str(work / "labels-heldout")
    score("data/corpus/train.jsonl", train_labels, args.train_docs)
    score(heldout_documents(work / "heldout-docs.jsonl"), heldout_labels, None)
    result: dict[str, Any] = {"alignment": {}, "step_time": {}, "evidence": {}}
    if set(args.parts) != set(PARTS):
        result = keep_earlier(json.loads(Path(args.output).read_text()), args.parts)
    result |= {"machine": describe_machine(), "command": " ".join(sys.argv), "args": vars(args),
               "parts": args.parts, "step_goal": STEP_GOAL}
    if "evidence" in args.parts:
        evidence(args, work, train_labels, heldout_labels, result)
    if "alignment" in args.parts:
        for name, path in {"same (smollm2)": TEACHER, **PAIRS}.items():
            result["alignment"][name] = alignment_costs(train_labels, path)
        write(result, args.output)
    if "step-time" in args.parts:
        step_times(args, work, train_labels, result)
    if "paired-step" in args.parts:
        result["paired_step_ratio"] = {name: paired_losses_ratio(train_labels, path, args)
                                       for name, path in PAIRS.items()}
    write(result, args.output)


def keep_earlier(result: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """The file's top-level run moves to "earlier runs"; each earlier run keeps the parts
    that `parts` does not rerun (and is dropped when none is left)."""
    top = {k: result.pop(k) for k in ("machine", "command", "args", "parts") if k in result}
    earlier = result.pop("earlier runs", [])
    covered = {p for e in earlier for p in e["parts"]}
    top["parts"] = top.get("parts") or [p for p in PARTS if p not in covered]
    kept = [e | {"parts": [p for p in e["parts"] if p not in parts]} for e in earlier + [top]]
    result["earlier runs"] = [e for e in kept if e["parts"]]
    return result


def evidence(args: argparse.Namespace, work: Path, train_labels: str, heldout_labels: str,
             result: dict[str, Any]) -> None:
    """Per pair and seed, ALM + 1:1 KL + CE against CE only, then held-out bits per byte."""
    for name, path in PAIRS.items():
        runs = []
        for seed in args.seeds:
            for label, alpha in (("alm+kl+ce", 0.5), ("ce only", 0.0)):
                out = work / f"{name}-{label.replace('+', '-').replace(' ', '-')}-s{seed}"
                run = train(train_labels, out, args.steps, seed, alpha, args, path)
                runs.append(run | {"seed": seed, "loss": label, "alpha": alpha, "out": str(out)})
        rows = heldout_bpb(heldout_labels, {Path(r["out"]).name: Path(r["out"]) / "model"
                                            for r in runs}, work / f"{name}-heldout.json")
        for r in runs:
            r["heldout_bits_per_byte"] = {"student": rows[Path(r["out"]).name],
                                          "teacher": rows["teacher"]}
        result["evidence"][name] = {"runs": runs, "summary": summarise(runs)}
        write(result, args.output)


def step_times(args: argparse.Namespace, work: Path, train_labels: str,
               result: dict[str, Any]) -> None:
    """Step times and the ratios (a) against ordinary KD, (b) against CE only of the same student."""
    same = dict(labels=train_labels, steps=args.timing_steps, seed=0, args=args)
    times = result["step_time"] = {}
    times["ordinary KD, teacher tokenizer"] = train(out=work / "time-kd", tokenizer=None,
                                                    cross=False, alpha=0.5, **same)
    times["cross path, teacher tokenizer"] = train(out=work / "time-cross-same", tokenizer=None,
                                                   alpha=0.5, **same)
    for name, path in PAIRS.items():
        times[f"cross path, {name}"] = train(out=work / f"time-{name}", tokenizer=path,
                                             alpha=0.5, **same)
        times[f"cross path, {name}, CE only"] = train(out=work / f"time-{name}-ce", tokenizer=path,
                                                      alpha=0.0, **same)
        write(result, args.output)
    result["step_ratio"] = step_ratios(times)


def paired_losses_ratio(labels: str, tokenizer: str, args: argparse.Namespace,
                        reps: int = 6) -> dict[str, Any]:
    """Ratio (b) measured in one process: the same student and batch, steps of ALM + 1:1 KL + CE
    and of CE only alternating, so the load of a shared machine hits both alike."""
    import torch

    from pipeline.student.cross_head import fused_cross_losses
    from pipeline.student.cross_tokenizer_batches import StudentSide, collate_cross, stored_layouts
    from pipeline.student.label_set import open_label_set
    from schemas.student_config import StudentConfig
    from stages.student.cross_tokenizer import build_cross_student
    from stages.student.forward import decoder_states

    cfg = StudentConfig(labels=(labels,), cross_tokenizer="alm", student_tokenizer=tokenizer,
                        keep_layers=args.keep_layers).validate()
    model, tok, teacher_tok = build_cross_student(cfg, TEACHER)
    side, reader = StudentSide.build(tok, teacher_tok), open_label_set([labels]).open_shard(0)
    layouts, samples, tokens = stored_layouts(reader), [], 0
    while tokens < args.batch_tokens:
        samples.append(reader.sample(len(samples)))
        tokens += len(samples[-1]["token_ids"])
    batch = collate_cross(samples, [side.align(x, layouts[i]) for i, x in enumerate(samples)],
                          side.vocab_map)
    weight, optimizer = model.get_output_embeddings().weight, torch.optim.AdamW(model.parameters())
    seconds: dict[str, list[float]] = {"alm+kl+ce": [], "ce only": []}
    for rep in range(reps + 1):
        for loss, alpha in (("alm+kl+ce", 0.5), ("ce only", 0.0)):
            start = time.perf_counter()
            flat, _ = decoder_states(model, batch, False)
            fused_cross_losses(flat[batch["loss_rows"]], weight, batch, vocab=len(tok),
                               alpha=alpha).weighted.backward()
            optimizer.step()
            optimizer.zero_grad()
            if rep:  # the first of each is a warm-up
                seconds[loss].append(time.perf_counter() - start)
    ratios = [a / c for a, c in zip(seconds["alm+kl+ce"], seconds["ce only"])]
    return {"step_seconds": seconds, "rows": len(batch["loss_rows"]),
            "median_ratio": statistics.median(ratios), "ratios": ratios}


def step_ratios(times: dict[str, dict[str, Any]], pairs: Any = PAIRS) -> dict[str, dict[str, float]]:
    """Per pair: (a) cross ALM + KL + CE step / ordinary KD step with the teacher's vocabulary,
    (b) the same / a CE-only step of the same cross student."""
    ordinary = times["ordinary KD, teacher tokenizer"]["median_step_seconds"]
    out = {"teacher tokenizer": {"vs ordinary KD, teacher vocabulary (a)":
                                 times["cross path, teacher tokenizer"]["median_step_seconds"]
                                 / ordinary}}
    for name in pairs:
        cross = times[f"cross path, {name}"]["median_step_seconds"]
        out[name] = {"vs ordinary KD, teacher vocabulary (a)": cross / ordinary,
                     "vs CE only, same student (b)":
                         cross / times[f"cross path, {name}, CE only"]["median_step_seconds"]}
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread of bits per byte per loss, and the per-seed gain of ALM+KL+CE over CE."""
    by = {label: {r["seed"]: r["heldout_bits_per_byte"]["student"] for r in runs if r["loss"] == label}
          for label in ("alm+kl+ce", "ce only")}
    gains = [by["ce only"][s] - by["alm+kl+ce"][s] for s in by["ce only"] if s in by["alm+kl+ce"]]
    out = {label: {"mean": float(np.mean(list(v.values()))),
                   "std_across_seeds": float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else 0.0}
           for label, v in by.items()}
    out["gain_bits_per_byte_per_seed"] = gains
    out["gain_mean"] = float(np.mean(gains)) if gains else 0.0
    out["wins"] = f"{sum(g > 0 for g in gains)} of {len(gains)} seeds"
    return out


def write(result: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
