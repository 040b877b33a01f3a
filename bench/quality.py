"""Does distillation beat fine-tuning? (`make bench-quality`) -> bench/results/quality.{json,md,png}

Trains the default student on the same labels, steps, batches and seed three
ways: hard-label cross-entropy only (fine-tuning on the teacher's samples,
alpha 0), soft-label KD (forward KL + CE, alpha 0.5), and KD plus the
hidden-state loss (student -1 to teacher -1 through the adapter). Each is
evaluated on the held-out split; the table adds the teacher and the untrained
student. The labels need hidden states: the first run makes them
(`kd teacher-labels --hidden-layers -1` into --labels) when missing.

    python -m bench.quality --labels data/labels/quality --steps 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from pipeline.machine import describe_machine
from pipeline.student.png_plot import write_line_chart
from stages.student.evaluate import format_table

RUNS = {
    "ce_only": ["--alpha", "0"],
    "kd": ["--alpha", "0.5"],
    "kd_hidden": ["--alpha", "0.5", "--hidden-weight", "1.0", "--layer-map", "-1:-1"],
}


def kd(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "stages.cli.main", *args], check=True)


def ensure_labels(labels: Path, prompts: str, max_tokens: int, limit: int | None) -> None:
    """Labels with the teacher's last hidden state (a rerun reuses them: it generates nothing)."""
    extra = ["--limit", str(limit)] if limit else []
    kd("teacher-labels", "--prompts", prompts, "--out", str(labels), "--max-tokens",
       str(max_tokens), "--max-model-len", "1024", "--shard-size", "64", "--hidden-layers", "-1",
       *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="data/labels/quality")
    parser.add_argument("--prompts", default="data/prompts/demo.jsonl")
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--limit", type=int, default=160, help="first N prompts (0: all)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--runs-dir", default="data/student/quality")
    parser.add_argument("--out", default="bench/results/quality")
    args = parser.parse_args()

    labels = Path(args.labels)
    ensure_labels(labels, args.prompts, args.max_tokens, args.limit)
    reports = {}
    for name, extra in RUNS.items():
        out = Path(args.runs_dir) / name
        kd("train-student", "--labels", str(labels), "--out", str(out), "--steps", str(args.steps),
           "--batch-tokens", str(args.batch_tokens), "--eval-every", "10", "--overwrite", *extra)
        reports[name] = json.loads((out / "report.json").read_text())
    first = reports["kd"]["eval"]
    rows = {"teacher": first["teacher"], "student_before": first["student_before"],
            **{name: r["eval"]["student_after"] for name, r in reports.items()}}
    gap = rows["student_before"]["nll"] - rows["teacher"]["nll"]
    closed = (rows["student_before"]["nll"] - rows["kd"]["nll"]) / gap if gap else float("nan")
    verdict = {"kd_beats_ce_on_kl": rows["kd"]["kl"] < rows["ce_only"]["kl"],
               "kd_beats_ce_on_nll": rows["kd"]["nll"] < rows["ce_only"]["nll"],
               "kd_nll_gap_closed": closed, "kd_closes_half_the_gap": closed >= 0.5}
    result = {"machine": describe_machine(), "labels": str(labels), "steps": args.steps,
              "batch_tokens": args.batch_tokens, "rows": rows, **rows, "verdict": verdict}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(
        f"# Distillation against fine-tuning\n\n{args.steps} steps of {args.batch_tokens} tokens "
        f"each, same data and seed; held-out split.\n\n{format_table(rows)}\n\n"
        f"KD closes {closed:.0%} of the NLL gap between the untrained student and the teacher.\n\n"
        "`quality.png`: held-out KL to the teacher per step (blue: ce_only, red: kd, "
        "green: kd_hidden).\n")
    curves = {}
    for name in RUNS:
        evals = [json.loads(x) for x in (Path(args.runs_dir) / name / "metrics.jsonl")
                 .read_text().splitlines() if "eval" in x]
        curves[name] = ([e["step"] for e in evals], [e["eval"]["kl"] for e in evals])
    write_line_chart(out.with_suffix(".png"), [curves])
    print(format_table(rows))
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
