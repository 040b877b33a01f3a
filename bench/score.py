"""Benchmark: `kd teacher-labels --mode score` against a plain vLLM scoring script.

Each job runs in its own process, engine start included, on the same windows
of the same texts, same dtype and engine settings:
- `kd`: the whole score-mode job (records, windows, prompt logprobs, filter,
  shards, index, manifest), through `run_teacher_labels`;
- `plain`: a minimal vLLM script doing the same `prompt_logprobs` scoring and
  discarding the result;
- `prefill`: the same script with `prompt_logprobs` off (prefill only), the
  cost of running the text through the teacher without capturing labels.
The three alternate, `--repeats` times each; the reported numbers are medians,
the ratio is kd's labelled tokens per second over plain's. Each job's peak
proportional resident memory (PSS of its process tree, sampled every 20 ms) is compared with the
formula for the prompt-logprob tensors at the chosen token budget:
peak(plain) - peak(prefill) against tokens/step x vocabulary x (logit bytes + 5).
The prompt logprobs of one request are computed at once, so the smaller of the
step budget and the longest window bounds them.
Results go to bench/results/score.json.

    python -m bench.score --limit 60 --repeats 1      # CPU-sized, ~5 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.result_file import write_result
from schemas.teacher_config import TeacherConfig

ROOT = Path(__file__).resolve().parents[1]
JOBS = ("kd", "plain", "prefill")


def bench_config(args: argparse.Namespace, out: str) -> TeacherConfig:
    return TeacherConfig(mode="score", prompts=args.prompts, out=out, limit=args.limit,
                         max_model_len=args.max_model_len, window_overlap=args.window_overlap,
                         dtype="float32", enforce_eager=True, top_k=20,
                         logprobs_memory_gib=args.logprobs_memory_gib, overwrite=True).validate()


def run_job(job: str, cfg: TeacherConfig) -> dict[str, Any]:
    """One job in this process (its parent times the whole process: imports, engine start and
    shutdown included); returns the labelled tokens."""
    if job == "kd":
        from stages.teacher.labels import run_teacher_labels

        summary = run_teacher_labels(cfg)
        return {"tokens": summary.manifest.totals()["completion_tokens"]}
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from stages.teacher.labels import build_llm, shutdown_llm
    from stages.teacher.scoring import load_score_input

    batch = load_score_input(cfg, AutoTokenizer.from_pretrained(cfg.teacher))
    windows = [item for record in batch.accepted for item in record.items]
    llm = build_llm(cfg)
    params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False, flat_logprobs=True,
                            prompt_logprobs=cfg.top_k if job == "plain" else None)
    llm.generate([{"prompt_token_ids": w.token_ids} for w in windows], params, use_tqdm=False)
    shutdown_llm(llm)
    return {"tokens": sum(len(w.positions) for w in windows)}


def tree_pss(pid: int) -> int:
    """Proportional resident bytes of a process and all its descendants (Linux /proc): pages
    shared between the engine's processes count once, not once per process as in RSS."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


def measure(job: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one job in a fresh process; its result plus the peak RSS of its process tree."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "bench.score", "--job", job, "--out", f"{tmp}/out",
               *forwarded(args)]
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_pss(proc.pid))
                time.sleep(0.02)
        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        stdout, _ = proc.communicate()
        seconds = time.time() - start
        watcher.join()
        if proc.returncode:
            raise RuntimeError(f"job {job} failed with exit {proc.returncode}")
        result = json.loads(stdout.strip().splitlines()[-1])
    return result | {"seconds": seconds, "peak_pss_mib": peak[0] / 2**20,
                     "tokens_per_second": result["tokens"] / seconds}


def forwarded(args: argparse.Namespace) -> list[str]:
    return ["--prompts", args.prompts, "--limit", str(args.limit),
            "--max-model-len", str(args.max_model_len),
            "--window-overlap", str(args.window_overlap),
            "--logprobs-memory-gib", str(args.logprobs_memory_gib)]


def summarise(runs: dict[str, list[dict[str, Any]]], cfg: TeacherConfig) -> dict[str, Any]:
    from stages.teacher.labels import teacher_shape
    from stages.teacher.scoring import LOGPROB_BYTES_PER_ENTRY_EXTRA, score_step_tokens

    median = {job: {key: statistics.median(r[key] for r in rs)
                    for key in ("tokens_per_second", "seconds", "peak_pss_mib")}
              for job, rs in runs.items()}
    vocab = teacher_shape(cfg.teacher)[0]
    step = score_step_tokens(cfg.logprobs_memory_gib, vocab, 4)
    per_token = vocab * (4 + LOGPROB_BYTES_PER_ENTRY_EXTRA) / 2**20
    longest = min(step, cfg.window_tokens)
    ratio = median["kd"]["tokens_per_second"] / median["plain"]["tokens_per_second"]
    return {
        "labelled_tokens": runs["kd"][0]["tokens"], "median": median,
        "ratio_kd_over_plain": ratio, "target_ratio": 0.95, "met": ratio >= 0.95,
        "capture_cost": 1 - median["plain"]["tokens_per_second"]
        / median["prefill"]["tokens_per_second"],
        "tokens_per_step": step, "formula_bound_mib": step * per_token,
        "formula_longest_chunk_mib": longest * per_token,
        "measured_logprob_mib": median["plain"]["peak_pss_mib"] - median["prefill"]["peak_pss_mib"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="data/corpus/train.jsonl")
    parser.add_argument("--limit", type=int, default=120)
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--window-overlap", type=int, default=128)
    parser.add_argument("--logprobs-memory-gib", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/score.json")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, bench_config(args, args.out))))
        return
    runs: dict[str, list[dict[str, Any]]] = {job: [] for job in JOBS}
    failures: list[str] = []
    for repeat in range(args.repeats):
        for job in JOBS:
            try:
                runs[job].append(measure(job, args))
            except RuntimeError as exc:  # reported, then run again: a crash is not a timing
                failures.append(f"repeat {repeat}: {exc}")
                print(failures[-1], flush=True)
                runs[job].append(measure(job, args))
            print(f"repeat {repeat} {job}: {runs[job][-1]}", flush=True)
    cfg = bench_config(args, "unused")
    result = {"settings": vars(args) | {"dtype": "float32"},
              "runs": runs, "failed_runs": failures, **summarise(runs, cfg)}
    write_result(args.output, result)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
