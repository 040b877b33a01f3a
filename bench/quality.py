"""Does distillation beat fine-tuning? (`make bench-quality`) -> bench/results/quality.{json,md,png}

Trains the default student on the same labels, steps, batches and seed five
ways: hard-label cross-entropy only (fine-tuning on the teacher's samples,
alpha 0), soft-label KD (forward KL + CE, alpha 0.5, T = 1), KD plus the
hidden-state loss (student -1 to teacher -1 through the adapter), KD with the
temperature annealed linearly from 4 to 1 (against constant 1: `kd`), and the
hidden-state phase first (a third of the steps) then everything (against
everything from the start: `kd_hidden`). Each is evaluated on the held-out
split every 5 steps; the table adds the teacher and the untrained student.
The labels need hidden states: the first run makes them
(`kd teacher-labels --hidden-layers -1` into --labels) when missing.

    python -m bench.quality --labels data/labels/quality --steps 60
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.result_file import write_result
from pipeline.student.plots import comparison_figure, save
from stages.student.evaluate import format_table
from stages.student.report import read_metrics

HIDDEN = ["--hidden-weight", "1.0", "--layer-map", "-1:-1"]
RUNS = {
    "ce_only": ["--alpha", "0"],
    "kd": ["--alpha", "0.5"],
    "kd_hidden": ["--alpha", "0.5", *HIDDEN],
    "kd_t4_to_1": ["--alpha", "0.5", "--kd-temperature", "4", "--final-temperature", "1",
                   "--temperature-schedule", "linear"],
    "hidden_then_full": ["--alpha", "0.5", *HIDDEN],  # + --phases hidden:<steps/3>,full
}
# (run, the run it is measured against, what differs)
PAIRS = [("kd_t4_to_1", "kd", "temperature 4 -> 1 (linear) against constant 1"),
         ("hidden_then_full", "kd_hidden", "hidden phase then full against full alone")]


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
        if name == "hidden_then_full":
            extra = [*extra, "--phases", f"hidden:{args.steps // 3},full"]
        kd("train-student", "--labels", str(labels), "--out", str(out), "--steps", str(args.steps),
           "--batch-tokens", str(args.batch_tokens), "--eval-every", "5", "--overwrite", *extra)
        reports[name] = json.loads((out / "report.json").read_text())
    first = reports["kd"]["eval"]
    rows = {"teacher": first["teacher"], "student_before": first["student_before"],
            **{name: r["eval"]["student_after"] for name, r in reports.items()}}
    gap = rows["student_before"]["nll"] - rows["teacher"]["nll"]
    closed = (rows["student_before"]["nll"] - rows["kd"]["nll"]) / gap if gap else float("nan")
    verdict = {"kd_beats_ce_on_kl": rows["kd"]["kl"] < rows["ce_only"]["kl"],
               "kd_beats_ce_on_nll": rows["kd"]["nll"] < rows["ce_only"]["nll"],
               "kd_nll_gap_closed": closed, "kd_closes_half_the_gap": closed >= 0.5}
    pairs = {f"{run}_vs_{base}": {"what": what, "kl": rows[run]["kl"] - rows[base]["kl"],
                                  "nll": rows[run]["nll"] - rows[base]["nll"]}
             for run, base, what in PAIRS}
    result = {"labels": str(labels), "steps": args.steps,
              "batch_tokens": args.batch_tokens, "rows": rows, **rows, "verdict": verdict,
              "pairs": pairs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(
        f"# Distillation against fine-tuning\n\n{args.steps} steps of {args.batch_tokens} tokens "
        f"each, same data and seed; held-out split.\n\n{format_table(rows)}\n\n"
        f"KD closes {closed:.0%} of the NLL gap between the untrained student and the teacher."
        "\n\nTraining controls, each against its baseline (held-out difference, run minus "
        "baseline; negative is better):\n\n| comparison | KL | NLL |\n| --- | ---: | ---: |\n"
        + "".join(f"| {p['what']} | {p['kl']:+.3f} | {p['nll']:+.3f} |\n" for p in pairs.values())
        + "\n`quality.png`: held-out KL and NLL at every evaluation (every 5 steps) and the "
        "training loss, one line per run; `quality_<run>.png`: the two controlled runs' "
        "own curves.\n")
    runs = {name: read_metrics(Path(args.runs_dir) / name / "metrics.jsonl") for name in RUNS}
    save(comparison_figure(runs, rows["teacher"], title=f"Held-out quality of the default student, "
                           f"{args.steps} steps of {args.batch_tokens} tokens, same data and seed"),
         out.with_suffix(".png"))
    for run, _, _ in PAIRS:
        shutil.copyfile(Path(args.runs_dir) / run / "curves.png", f"{out}_{run}.png")
    print(format_table(rows))
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
