"""Student start-up against label-set size: process start to first optimizer step, and peak memory.

Synthetic label sets shaped like the demo's (teacher, tokenizer, k taken from
a real output, so the real student accepts them) with a fixed number of
samples, grown two ways: in bytes (hidden states of growing width in 100
shards: about 0.5, 5 and 20 GB) and in shard count (100, 1,000 and 10,000
shards of about 0.5 GB in all). Each set is trained for one step twice,
interleaved: with `--verify full` (every shard hashed and scanned before the
first step, the behaviour before lazy verification) and with the default
(`--verify lazy`: cheap checks up front, each shard hashed when first read),
both with a cold verified-shard cache, a cold page cache (dropped before each
run where the benchmark runs as root) and the default evaluation bound. The
time is taken from `Popen` to the first `"step": 1` record in metrics.jsonl;
memory is the peak resident set of the whole process tree (trainer and
DataLoader workers), sampled every 50 ms. One bounded evaluation of the demo
student is also timed.

    python -m bench.startup --like data/labels/demo            # the full grid (~40 GB of disk)
    python -m bench.startup --like data/labels/demo --quick    # 0.5 GB and 100/1,000 shards
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.result_file import write_result
from pipeline.store.manifest import Manifest, read_manifest, write_manifest
from pipeline.store.sample import Sample
from pipeline.store.sample_index import merge_index, write_index_part
from pipeline.store.shard_writer import ShardAttrs, write_shard
from pipeline.teacher.sample_filter import filter_samples, index_table
from pipeline.teacher.kept_shard import KEEP_ALL
from schemas import shard_name

SAMPLES = 20_000
PROMPT_TOKENS, COMPLETION_TOKENS = 60, 280
HIDDEN_LAYER = 1


def template_sample(rng: np.random.Generator, vocab: int, k: int, hidden: int) -> Sample:
    c = COMPLETION_TOKENS
    ids = (rng.integers(0, vocab, (c, 1)) + np.arange(k) * (vocab // k)) % vocab
    lps = -np.sort(rng.exponential(2.0, size=(c, k)), axis=1).astype(np.float32)
    sample = Sample("t", 0, rng.integers(0, vocab, PROMPT_TOKENS).tolist(), ids[:, 0].tolist(),
                    ids, lps, lps[:, 0].copy(), "stop")
    if hidden:
        sample.hidden[HIDDEN_LAYER] = rng.standard_normal(
            (PROMPT_TOKENS + c, hidden)).astype(np.float16)
    return sample


def write_label_set(out: Path, like: Manifest, shards: int, hidden: int) -> int:
    """SAMPLES samples in `shards` shards, all copies of one random template; returns bytes."""
    layers = (HIDDEN_LAYER,) if hidden else ()
    attrs = ShardAttrs(like.teacher, like.tokenizer_fingerprint, like.vocab_size, like.top_k,
                       {"n": 1}, layers, hidden)
    template = template_sample(np.random.default_rng(0), like.vocab_size, like.top_k, hidden)
    metrics = filter_samples([template], KEEP_ALL).metrics[0]
    manifest = Manifest(like.teacher, like.tokenizer_fingerprint, like.vocab_size, like.top_k,
                        complete=True, config={"n": 1}, hidden_layers=list(layers),
                        hidden_size=hidden, teacher_num_layers=like.teacher_num_layers,
                        input_records=SAMPLES, accepted_prompts=SAMPLES)
    out.mkdir(parents=True)
    per = SAMPLES // shards
    for i in range(shards):
        samples = []
        for j in range(per):
            s = Sample(f"s{i}-{j}", 0, template.prompt_token_ids, template.completion_token_ids,
                       template.topk_ids, template.topk_logprobs, template.sampled_logprobs, "stop")
            s.hidden = template.hidden
            samples.append(s)
        record = write_shard(out / shard_name(i), i, samples, attrs)
        record.index_sha256 = write_index_part(
            out, i, index_table(samples, [metrics] * per, [None] * per, record.name))
        record.generated, record.hidden_layers = per, list(layers)
        manifest.shards[i] = record
    merge_index(out, range(shards))
    write_manifest(out, manifest)
    return manifest.totals()["bytes"]


def tree_rss_bytes(pid: int) -> int:
    """Resident set of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except OSError:
            continue
    return total


def drop_page_cache() -> bool:
    """Start cold, as a first read of labels on a training node does (needs root; else warm)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def time_to_first_step(labels: Path, verify: str, cache: Path, timeout: float) -> dict[str, Any]:
    """Seconds from process start to the first optimizer step, and peak tree RSS until then."""
    with tempfile.TemporaryDirectory() as run_dir:
        shutil.rmtree(cache, ignore_errors=True)
        cold = drop_page_cache()
        cmd = [sys.executable, "-m", "stages.cli.main", "train-student", "--labels", str(labels),
               "--out", run_dir, "--steps", "1", "--batch-tokens", "1024", "--eval-every", "0",
               "--checkpoint-every", "0", "--verify", verify, "--verify-cache", str(cache)]
        metrics, peak = Path(run_dir) / "metrics.jsonl", 0
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while True:
            peak = max(peak, tree_rss_bytes(proc.pid))
            if metrics.exists() and '"step": 1,' in metrics.read_text():
                seconds = time.perf_counter() - start
                break
            if proc.poll() is not None or time.perf_counter() - start > timeout:
                proc.kill()
                raise RuntimeError(f"{' '.join(cmd)} ended before its first step:\n"
                                   f"{proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        return {"seconds_to_first_step": round(seconds, 2), "peak_rss_mb": round(peak / 2**20),
                "cold_page_cache": cold}


def bounded_eval_seconds(labels: Path) -> dict[str, float]:
    """One evaluation of the demo-shaped student at the default --eval-max-tokens."""
    import torch

    from pipeline.student.batch_plan import split_by_prompt
    from pipeline.student.label_set import open_label_set
    from schemas.student_config import StudentConfig
    from stages.student.evaluate import eval_plan, evaluate_model
    from stages.student.model import build_student, check_vocabulary

    cfg = StudentConfig(labels=(str(labels),))
    labels_set = open_label_set(cfg.labels)
    model, _ = build_student(cfg.student, labels_set.teacher, cfg.keep_layers,
                             cfg.narrow_hidden_size, cfg.seed)
    vocab = check_vocabulary(model, labels_set.vocab_size)
    _, eval_idx = split_by_prompt(labels_set.prompt_hash, cfg.eval_fraction, cfg.seed)
    plan = eval_plan(labels_set, eval_idx, cfg.batch_tokens, cfg.eval_max_tokens, cfg.seed)
    start = time.perf_counter()
    result = evaluate_model(model, labels_set, plan, vocab, cfg.loss_chunk, torch.device("cpu"))
    return {"seconds": round(time.perf_counter() - start, 2), "positions": result["positions"],
            "eval_max_tokens": cfg.eval_max_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--like", default="data/labels/demo")
    parser.add_argument("--work", default=None, help="where to write the synthetic sets")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", default="bench/results/startup.json")
    args = parser.parse_args()
    like = read_manifest(args.like)
    # (shards, hidden width): the bytes series at 100 shards, then the shard-count series.
    grid = [(100, 0), (1000, 0)] if args.quick else [(100, 0), (100, 352), (100, 1536),
                                                     (1000, 0), (10000, 0)]
    work = Path(args.work or tempfile.mkdtemp(prefix="kd-startup-"))
    rows: list[dict[str, Any]] = []
    evaluation: dict[str, float] = {}
    try:
        for shards, hidden in grid:
            labels = work / f"s{shards}-h{hidden}"
            tick = time.perf_counter()
            size = write_label_set(labels, like, shards, hidden)
            row = {"shards": shards, "samples": SAMPLES, "hidden_size": hidden,
                   "gb": round(size / 1e9, 2), "write_seconds": round(time.perf_counter() - tick)}
            for verify in ("full", "lazy"):
                row[verify] = time_to_first_step(labels, verify, work / "cache", args.timeout)
            print(json.dumps(row), flush=True)
            rows.append(row)
            if (shards, hidden) == (100, 0):
                evaluation = bounded_eval_seconds(labels)
            shutil.rmtree(labels)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"rows": rows, "bounded_evaluation": evaluation,
              "note": "full = --verify full (hash and scan every shard before step 1, the old "
                      "start-up); lazy = default (cheap checks up front, hashes when first read); "
                      "both with the default --eval-max-tokens and a cold verified-shard cache"}
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
