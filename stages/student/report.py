"""Training metrics and the final report of `kd train-student`.

`metrics.jsonl` gets one line per optimizer step (loss parts, phase,
temperature, lr, gradient norm before clipping, tokens/s, peak memory, hidden
cosine similarity per mapped layer), one per evaluation and one per alarm;
TensorBoard gets the same scalars when it is installed (unless --report-to
none), Weights & Biases too with --report-to wandb. At the end `report.json`
(config, phases, alarms, evaluations), `report.md` (the evaluation table) and
`curves.png` (`pipeline.student.plots.training_figure`) are written; without
matplotlib (a bare GPU machine) curves.png is left out and report.md says so.

    python -c "from stages.student.report import read_metrics; print(len(read_metrics('data/student/demo/metrics.jsonl')))"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.student.phases import Phase
from schemas.config_base import ConfigError
from schemas.student_config import StudentConfig
from stages.student.evaluate import format_table


def tensorboard_writer(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def wandb_run(out: Path, cfg: StudentConfig) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError("--report-to wandb: the wandb package is not installed "
                          "(pip install wandb), or pass --report-to tensorboard") from None
    return wandb.init(project="offline-kd", name=out.name, dir=str(out), config=cfg.to_dict(),
                      resume="allow")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers as flat `train/...` or `eval/...` names (phase as its index)."""
    flat = record.get("eval", record)
    prefix = "eval/" if "eval" in record else "train/"
    out = {prefix + k: v for k, v in flat.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
    out |= {f"train/cosine_{pair}": v for pair, v in record.get("cosine", {}).items()}
    return out


class MetricsLog:
    """Append-only JSONL (rank 0), mirrored to TensorBoard and W&B as --report-to asks."""

    def __init__(self, path: Path, enabled: bool, cfg: StudentConfig | None = None):
        self.path, self.enabled, self.sinks = path, enabled, []
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        report_to = cfg.report_to if cfg is not None else "tensorboard"
        if report_to != "none":
            tb = tensorboard_writer(path.parent)
            if tb is not None:
                self.sinks.append(lambda values, step: [tb.add_scalar(k, v, step)
                                                        for k, v in values.items()])
        if report_to == "wandb":
            run = wandb_run(path.parent, cfg)
            self.sinks.append(lambda values, step: run.log(values, step=step))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        values = scalars(record) if "alarm" not in record else {}
        for sink in self.sinks:
            if values:
                sink(values, record["step"])

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
                 seconds: float, phases: list[Phase], alarms: list[dict[str, Any]]) -> None:
    """report.json, report.md and curves.png from the evaluations and metrics.jsonl."""
    from pipeline.machine import describe_machine

    metrics = read_metrics(out / "metrics.jsonl")
    train = [m for m in metrics if "loss" in m]
    rows = {k: evals[k] for k in ("teacher", "student_before", "student_after") if k in evals}
    report = {"config": cfg.to_dict(), "steps": steps, "seconds": seconds,
              "final_loss": train[-1]["loss"] if train else None,
              "tokens": sum(m["tokens"] for m in train), "eval": rows,
              "phases": [{"kind": p.kind, "first_step": p.start + 1, "steps": p.steps}
                         for p in phases],
              "alarms": alarms, "machine": describe_machine()}
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    schedule = (f"T {cfg.kd_temperature}" if cfg.temperature_schedule == "constant" else
                f"T {cfg.kd_temperature} -> {cfg.final_temperature} ({cfg.temperature_schedule})")
    phase_text = ", ".join(f"{p.kind} {p.steps}" for p in phases)
    alarm_text = "".join(f"- step {a['step']} ({a['where']}): {a['kind']}: {a['message']}\n"
                         for a in alarms) or "none\n"
    (out / "report.md").write_text(
        f"# Student report\n\n{steps} steps in {seconds:.0f} s, labels {', '.join(cfg.labels)}, "
        f"student `{cfg.student_source}`, loss {cfg.kd_loss} (alpha {cfg.alpha}, {schedule}), "
        f"phases: {phase_text} steps.\n\n"
        f"Held-out evaluation: {rows['teacher']['positions']} labelled positions, the same at "
        f"every evaluation (--eval-max-tokens {cfg.eval_max_tokens or 'unbounded'}, "
        f"--eval-fraction {cfg.eval_fraction}):\n\n"
        f"{format_table(rows)}\n\nAlarms: {alarm_text}\n"
        "`curves.png`: training loss parts, held-out KL and NLL at every evaluation, learning "
        "rate and temperature, gradient norm, hidden-state cosine similarity, throughput and "
        "memory; dashed lines mark phase boundaries.\n")
    try:
        from pipeline.student.plots import save, training_figure
    except ImportError as exc:
        with open(out / "report.md", "a") as f:
            f.write(f"\n`curves.png` was not drawn: {exc} (pip install matplotlib).\n")
        return
    limits = {"grad_clip": cfg.grad_clip, "max_grad_norm_alarm": cfg.max_grad_norm_alarm,
              "min_grad_norm_alarm": cfg.min_grad_norm_alarm}
    figure = training_figure(metrics, [(p.kind, p.start) for p in phases], rows.get("teacher"),
                             limits, title=f"{out.name}: {cfg.student} on {', '.join(cfg.labels)}")
    save(figure, out / "curves.png")
