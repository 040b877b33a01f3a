"""Export speed and size per format, against our own shards, side by side in one run.

A synthetic output shaped like the demo labels (vocabulary 49152, k 20, 60
prompt + 200 completion tokens per sample) is exported to each format in turn
(`stages.interop.label_export.run_export`, full verification included, as `kd export`
runs it); each format is timed `--repeats` times, interleaved, and the median
kept. Reported per format: label rows (labelled positions) per second, and
output bytes per labelled token next to the shards' own; then the DistillKit
export is imported back (`kd import`, with the embedded teacher's tokenizer)
and timed the same way. Writes bench/results/interop.json with the machine.

    python -m bench.interop                 # 200 samples, 3 repeats (~1 min on 2 cores)
    python -m bench.interop --samples 40 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.result_file import write_result
from pipeline.store.shard_writer import ShardAttrs
from bench.synthetic_output import write_random_output
from schemas.interop_config import EXPORT_FORMATS, ExportConfig, ImportConfig
from stages.interop.label_export import run_export
from stages.interop.import_distillkit import run_import

VOCAB, K, PROMPT, COMPLETION = 49152, 20, 60, 200
TEACHER = Path("data/models/smollm2-135m-instruct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/interop.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kd-bench-interop-"))
    labels = work / "labels"
    attrs = ShardAttrs("bench", "f" * 64, VOCAB, K, {"n": 1})
    manifest = write_random_output(labels, attrs, 4, args.samples // 4, seed=0,
                                   prompt_len=PROMPT, comp_len=COMPLETION)
    totals = manifest.totals()
    rows = totals["completion_tokens"]
    times: dict[str, list[float]] = {f: [] for f in EXPORT_FORMATS}
    sizes: dict[str, int] = {}
    for r in range(args.repeats):
        for fmt in EXPORT_FORMATS:
            out = work / f"{fmt}-{r}"
            summary = run_export(ExportConfig(labels=(str(labels),), format=fmt, out=str(out)))
            times[fmt].append(summary.seconds)
            sizes[fmt] = summary.bytes
    result = {
        "labels": {"samples": totals["samples"], "labelled_tokens": rows, "vocab_size": VOCAB,
                   "top_k": K, "prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                   "shard_bytes_per_labelled_token": totals["bytes"] / rows},
        "repeats": args.repeats,
        "export": {fmt: {"seconds_median": statistics.median(t), "label_rows_per_s": rows / statistics.median(t),
                         "bytes_per_labelled_token": sizes[fmt] / rows,
                         "size_vs_shards": sizes[fmt] / totals["bytes"], "seconds_runs": t}
                   for fmt, t in times.items()},
    }
    if (TEACHER / "config.json").is_file():
        seconds = []
        for r in range(args.repeats):
            start = time.perf_counter()
            run_import(ImportConfig(source=str(work / "distillkit-0"), teacher=str(TEACHER),
                                    out=str(work / f"imported-{r}")))
            seconds.append(time.perf_counter() - start)
        result["import_distillkit"] = {"seconds_median": statistics.median(seconds),
                                       "label_rows_per_s": rows / statistics.median(seconds),
                                       "seconds_runs": seconds,
                                       "note": "includes loading the teacher's tokenizer"}
    write_result(args.out, result)
    print(json.dumps(result["export"], indent=1))
    print(json.dumps(result.get("import_distillkit"), indent=1))


if __name__ == "__main__":
    main()
