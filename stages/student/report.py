"""Training metrics and the final report of `kd train-student`.

`metrics.jsonl` gets one line per optimizer step (loss parts, lr, gradient
norm, tokens/s) and one per evaluation; TensorBoard gets the same scalars when
it is installed. At the end `report.json`, `report.md` (the evaluation table:
teacher, student before, student after) and `curves.png` (panel 1: training
loss; panel 2: held-out KL to the teacher) are written.

    python -c "from stages.student.report import read_metrics; print(len(read_metrics('data/student/demo/metrics.jsonl')))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.student.png_plot import write_line_chart
from schemas.student_config import StudentConfig
from stages.student.evaluate import format_table


class MetricsLog:
    """Append-only JSONL (rank 0), mirrored to TensorBoard when available."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self._tb = path, enabled, None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # TensorBoard is optional
                pass

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            flat = record.get("eval", record)
            prefix = "eval/" if "eval" in record else "train/"
            for key, value in flat.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(prefix + key, value, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint, which will be redone."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = [line for line in self.path.read_text().splitlines()
                if json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in keep))


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def write_report(out: Path, cfg: StudentConfig, evals: dict[str, dict[str, float]], steps: int,
                 seconds: float) -> None:
    from pipeline.machine import describe_machine

    metrics = read_metrics(out / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    evals_logged = [m for m in metrics if "eval" in m]
    rows = {k: evals[k] for k in ("teacher", "student_before", "student_after") if k in evals}
    report = {"config": cfg.to_dict(), "steps": steps, "seconds": seconds,
              "final_loss": train[-1]["loss"] if train else None,
              "tokens": sum(m["tokens"] for m in train), "eval": rows,
              "machine": describe_machine()}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(
        f"# Student report\n\n{steps} steps in {seconds:.0f} s, labels {', '.join(cfg.labels)}, "
        f"student `{cfg.student}`, loss {cfg.kd_loss} (alpha {cfg.alpha}, T {cfg.temperature}).\n\n"
        f"Held-out evaluation: {rows['teacher']['positions']} labelled positions, the same at "
        f"every evaluation (--eval-max-tokens {cfg.eval_max_tokens or 'unbounded'}, "
        f"--eval-fraction {cfg.eval_fraction}):\n\n"
        f"{format_table(rows)}\n\n`curves.png`: top, training loss per step (blue: total, red: "
        f"soft, green: hard); bottom, held-out KL to the teacher over those "
        f"{rows['teacher']['positions']} positions.\n")
    write_line_chart(out / "curves.png", [
        {k: ([m["step"] for m in train], [m[k] for m in train]) for k in ("loss", "soft", "hard")},
        {"kl": ([m["step"] for m in evals_logged], [m["eval"]["kl"] for m in evals_logged])},
    ])
