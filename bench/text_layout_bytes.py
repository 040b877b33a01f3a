"""Bytes the schema v3 text layout adds to a label set, per token: measured, not estimated.

Copies an existing output (default: the demo labels, `make demo`), gives the
copy its text layout with `kd add-text-layout`'s own code
(`pipeline.teacher.add_text_layout.run_add_text_layout`, the teacher's
tokenizer, no weights), and records per shard: the two datasets' payload
(`samples/token_byte_lengths` bytes + the UTF-8 bytes of `samples/text_regions`)
and the growth of the file (payload plus HDF5 headers), each per token and per
labelled token. A fresh v3 run writes the same datasets, so the numbers hold
for it too.

    python -m bench.text_layout_bytes --labels data/labels/demo

Writes bench/results/text_layout_bytes.json with the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import h5py

from pipeline.machine import describe_machine
from pipeline.store.manifest import read_manifest
from pipeline.store.text_layout_datasets import BYTE_LENGTHS, REGIONS
from pipeline.teacher.add_text_layout import run_add_text_layout

RESULT = Path("bench/results/text_layout_bytes.json")


def payload_bytes(path: Path) -> tuple[int, int]:
    """(byte-length dataset bytes, region JSON bytes) of one shard file."""
    with h5py.File(path, "r") as f:
        regions = sum(len(s if isinstance(s, bytes) else s.encode()) for s in f[REGIONS][()])
        return int(f[BYTE_LENGTHS].nbytes), regions


def measure(labels: Path, tokenizer: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        shutil.copytree(labels, out, ignore=shutil.ignore_patterns(".*"))
        before = {r.name: r.bytes for r in read_manifest(out).shards.values()}
        started = time.perf_counter()
        summary = run_add_text_layout(out, tokenizer)
        seconds = time.perf_counter() - started
        m = read_manifest(out)
        shards = []
        for rec in sorted(m.shards.values(), key=lambda r: r.name):
            lengths, regions = payload_bytes(out / rec.name)
            shards.append({"shard": rec.name, "tokens": rec.tokens, "labelled_tokens": rec.completion_tokens,
                           "samples": rec.samples, "byte_lengths_bytes": lengths,
                           "regions_bytes": regions, "file_bytes_before": before[rec.name],
                           "file_bytes_after": rec.bytes})
    tokens = sum(s["tokens"] for s in shards)
    labelled = sum(s["labelled_tokens"] for s in shards)
    payload = sum(s["byte_lengths_bytes"] + s["regions_bytes"] for s in shards)
    growth = sum(s["file_bytes_after"] - s["file_bytes_before"] for s in shards)
    return {
        "labels": str(labels), "mode": m.mode, "teacher": m.teacher, "add_seconds": seconds,
        "shards_rewritten": summary.rewritten, "tokens": tokens, "labelled_tokens": labelled,
        "samples": sum(s["samples"] for s in shards),
        "payload_bytes_per_token": payload / tokens, "file_growth_bytes_per_token": growth / tokens,
        "payload_bytes_per_labelled_token": payload / labelled,
        "file_growth_bytes_per_labelled_token": growth / labelled,
        "shards": shards,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=Path, action="append",
                        help="an output written before v3 (repeatable; default data/labels/demo)")
    parser.add_argument("--tokenizer", default=None, help="the teacher's tokenizer folder")
    args = parser.parse_args()
    runs = [measure(p, args.tokenizer) for p in args.labels or [Path("data/labels/demo")]]
    result = {"benchmark": "text_layout_bytes", "machine": describe_machine(), "runs": runs}
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps([{k: v for k, v in r.items() if k != "shards"} for r in runs], indent=1))


if __name__ == "__main__":
    main()
