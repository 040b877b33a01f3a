"""Speed and peak memory of `kd merge-labels` against the number of shards (`make bench-merge`).

Two synthetic teachers' outputs of the same samples (`write_random_output`: the
same tokens, labels drawn from two seeds; vocabulary 49,152, k = 20, 64 samples
of 200 labelled positions per shard, the sizes of a real run) at 1x, 4x and 16x
--shards shards. Each merge runs in a fresh process (`run_merge`, what the CLI
calls), which samples its own /proc/self/status every 5 ms: peak resident set,
split into anonymous memory (the merge's arrays) and file-backed pages (the
memory-mapped shards, which the kernel can drop at any time), each also as the
growth over the process's resident set just before the merge. Labelled
positions per second: those of the merged output over the merge's wall time,
median of --repeats. Results: bench/results/merge.json.

    python -m bench.merge --shards 2 --repeats 1     # CPU-sized, ~2 minutes
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.result_file import write_result

SCALES = (1, 4, 16)
FIELDS = ("VmRSS", "RssAnon", "RssFile")


def status_kib() -> dict[str, int]:
    with open("/proc/self/status") as fh:
        rows = dict(line.split(":", 1) for line in fh)
    return {f: int(rows[f].split()[0]) for f in FIELDS}


def run_job(sources: list[str], out: str) -> dict[str, Any]:
    """Merge in this process while a thread samples its memory."""
    from stages.teacher.merge_labels import run_merge
    from schemas.merge_config import MergeConfig

    before = status_kib()
    peak = dict(before)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for f, v in status_kib().items():
                peak[f] = max(peak[f], v)
            time.sleep(0.005)
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    summary = run_merge(MergeConfig(labels=tuple(sources), weights="0.5,0.5", out=out))
    stop.set()
    watcher.join()
    mib = {f: v / 1024 for f, v in peak.items()}
    return {"positions": summary.labelled, "samples": summary.samples,
            "seconds": summary.seconds, "peak_rss_mib": mib["VmRSS"],
            "peak_anon_mib": mib["RssAnon"], "peak_file_mib": mib["RssFile"],
            "rss_growth_mib": (peak["VmRSS"] - before["VmRSS"]) / 1024,
            "anon_growth_mib": (peak["RssAnon"] - before["RssAnon"]) / 1024}


def write_sources(root: Path, shards: int, per_shard: int) -> list[str]:
    from pipeline.store.shard_writer import ShardAttrs
    from bench.synthetic_output import write_random_output

    attrs = ShardAttrs("synthetic", "0" * 64, 49152, 20, {"mode": "score"})
    dirs = [root / "a", root / "b"]
    for d, label_seed in zip(dirs, (None, 1)):
        write_random_output(d, attrs, shards, per_shard, seed=0, prompt_len=60, comp_len=200,
                            label_seed=label_seed)
    return [str(d) for d in dirs]


def measure(sources: list[str], out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "bench.merge", "--job", *sources, "--out",
                           str(out)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=2, help="shards per source at 1x")
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", default="bench/results/merge.json")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(run_job(args.job, args.out)))
        return
    scales: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        for scale in SCALES:
            root = Path(tmp) / f"x{scale}"
            sources = write_sources(root, args.shards * scale, args.per_shard)
            runs = [measure(sources, root / "merged") for _ in range(args.repeats)]
            med = {key: statistics.median(r[key] for r in runs)
                   for key in runs[0] if key not in ("positions", "samples")}
            scales[f"{scale}x"] = {"shards_per_source": args.shards * scale,
                                   "positions": runs[0]["positions"],
                                   "positions_per_second": runs[0]["positions"] / med["seconds"],
                                   **med, "runs": runs}
            print(f"{scale}x: {json.dumps({k: v for k, v in scales[f'{scale}x'].items() if k != 'runs'})}",
                  flush=True)
            shutil.rmtree(root)
    small, large = scales["1x"], scales[f"{SCALES[-1]}x"]
    result = {"settings": vars(args) | {
        "vocab": 49152, "top_k": 20, "sources": 2, "positions_per_sample": 200,
        "weights": "0.5,0.5", "mix_rule": "mean"}, "scales": scales,
        "peak_rss_ratio_16x_over_1x": large["peak_rss_mib"] / small["peak_rss_mib"],
        "anon_growth_ratio_16x_over_1x": large["anon_growth_mib"] / max(small["anon_growth_mib"], 1e-9),
        "target": "peak memory flat in the number of shards"}
    write_result(args.output, result)
    print("| shards per source | labelled positions | positions/s | peak RSS MiB | anon MiB "
          "| file-backed MiB | RSS growth MiB |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s in scales.values():
        print(f"| {s['shards_per_source']} | {s['positions']} | {s['positions_per_second']:,.0f} | "
              f"{s['peak_rss_mib']:.0f} | {s['peak_anon_mib']:.0f} | {s['peak_file_mib']:.0f} | "
              f"{s['rss_growth_mib']:.0f} |")


if __name__ == "__main__":
    main()
