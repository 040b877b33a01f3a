"""Training curves as matplotlib figures (Agg backend: no display needed).

`training_figure` draws one run's `metrics.jsonl` records in six titled
panels with labelled axes and legends: the training loss parts, the held-out
KL and NLL at every evaluation (the teacher's NLL as a reference line), the
learning rate and the distillation temperature, the gradient norm before
clipping (with the clip and alarm thresholds and the steps an alarm tripped),
the hidden-state cosine similarity per mapped layer, and throughput and
memory. Phase boundaries are dashed vertical lines named in every panel.
`comparison_figure` puts several runs' held-out curves side by side
(`make bench-quality`).

    >>> from pipeline.student.plots import training_figure
    >>> fig = training_figure([{"step": 1, "loss": 2.0, "lr": 1e-4, "grad_norm": 1.0}])
    >>> [ax.get_title() for ax in fig.axes][:2]
    ['Training loss per step', 'Held-out evaluation']
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

Records = Sequence[dict[str, Any]]
LOSS_PARTS = {"loss": "total (back-propagated)", "soft": "soft (KL x T², token-weighted)",
              "hard": "hard (cross-entropy)", "hidden": "hidden-state (before its weight)"}
PANEL_TITLES = ("Training loss per step", "Held-out evaluation",
                "Learning rate and distillation temperature", "Gradient norm before clipping",
                "Hidden-state cosine similarity (adapted student vs teacher)",
                "Throughput and memory")


def series(records: Records, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records holding `key`."""
    rows = [r for r in records if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def mark_phases(ax: Axes, phases: Sequence[tuple[str, int]]) -> None:
    """A dashed line at each phase start after the first, the phase's name at the top."""
    for i, (kind, start) in enumerate(phases):
        # Step s's record is logged as s + 1: the boundary falls between start and start + 1.
        x = start + 0.5
        if i:
            ax.axvline(x, color="0.4", linestyle="--", linewidth=1,
                       label="phase boundary" if i == 1 else None)
        # Clipped and out of the layout: a phase start off the plotted range must not
        # stretch the figure.
        ax.annotate(f"phase: {kind}", (x, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8, color="0.3", annotation_clip=True,
                    in_layout=False)


def loss_panel(ax: Axes, train: Records) -> None:
    for key, label in LOSS_PARTS.items():
        steps, values = series(train, key)
        if steps:
            ax.plot(steps, values, label=label, linewidth=1.2)
    ax.set(title=PANEL_TITLES[0], xlabel="optimizer step", ylabel="loss (nats per token)")


def eval_panel(ax: Axes, evals: Records, teacher: dict[str, float] | None) -> None:
    steps = [r["step"] for r in evals]
    if evals and "kl" in evals[0]["eval"]:  # a cross-tokenizer run has no token-level KL
        ax.plot(steps, [r["eval"]["kl"] for r in evals], "o-", label="KL(teacher || student)")
    ax.plot(steps, [r["eval"]["nll"] for r in evals], "s-", label="student NLL of the labelled tokens")
    if teacher is not None and "nll" in teacher:
        ax.axhline(teacher["nll"], color="0.5", linestyle=":", label="teacher NLL")
    ax.set(title=PANEL_TITLES[1], xlabel="optimizer step", ylabel="nats per token (held out)")


def schedule_panel(ax: Axes, train: Records) -> None:
    ax.plot(*series(train, "lr"), color="tab:blue", label="learning rate")
    ax.set(title=PANEL_TITLES[2], xlabel="optimizer step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    steps, temps = series(train, "temperature")
    if steps:
        right = ax.twinx()
        right.plot(steps, temps, color="tab:red", label="temperature T")
        right.set_ylabel("temperature T (dimensionless)")
        right.set_ylim(0, max(temps) * 1.15)
        right.legend(loc="center right", fontsize=8)


def grad_panel(ax: Axes, train: Records, limits: dict[str, float | None],
               alarms: Records) -> None:
    steps, norms = series(train, "grad_norm")
    ax.plot(steps, norms, color="tab:purple", label="global gradient norm")
    styles = {"grad_clip": ("clipped to (--grad-clip)", "tab:green"),
              "max_grad_norm_alarm": ("exploding alarm", "tab:red"),
              "min_grad_norm_alarm": ("vanishing alarm", "tab:orange")}
    finite = [n for n in norms if 0 < n < float("inf")] or [1.0]
    low, high = min(finite) / 100, max(finite) * 100
    for key, (label, colour) in styles.items():
        limit = limits.get(key)
        if limit and low <= limit <= high:
            ax.axhline(limit, color=colour, linestyle=":", linewidth=1, label=f"{label} {limit:g}")
        elif limit:  # far off the data: named in the legend rather than squashing the curve
            ax.plot([], [], " ", label=f"{label} {limit:g} (off scale)")
    for i, alarm in enumerate(alarms):
        ax.axvline(alarm["step"], color="red", linewidth=2, alpha=0.5,
                   label="alarm tripped" if i == 0 else None)
    ax.set_yscale("log")
    ax.set(title=PANEL_TITLES[3], xlabel="optimizer step", ylabel="L2 norm (log scale)")


def cosine_panel(ax: Axes, train: Records) -> None:
    rows = [r for r in train if r.get("cosine")]
    pairs = sorted({pair for r in rows for pair in r["cosine"]})
    for pair in pairs:
        student, teacher = pair.split(":")
        ax.plot([r["step"] for r in rows if pair in r["cosine"]],
                [r["cosine"][pair] for r in rows if pair in r["cosine"]],
                label=f"student layer {student} -> teacher layer {teacher}")
    if not pairs:
        ax.text(0.5, 0.5, "no hidden-state loss in this run", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
    ax.set(title=PANEL_TITLES[4], xlabel="optimizer step", ylabel="mean cosine similarity")


def resource_panel(ax: Axes, train: Records) -> None:
    ax.plot(*series(train, "tokens_per_second"), color="tab:cyan", label="tokens/s")
    ax.set(title=PANEL_TITLES[5], xlabel="optimizer step", ylabel="tokens per second")
    steps, memory = series(train, "peak_memory_mb")
    if steps:
        right = ax.twinx()
        right.plot(steps, memory, color="tab:brown", label="peak memory")
        right.set_ylabel("peak device memory (MiB)")
        right.legend(loc="lower right", fontsize=8)


def training_figure(records: Records, phases: Sequence[tuple[str, int]] = (),
                    teacher: dict[str, float] | None = None,
                    limits: dict[str, float | None] | None = None, title: str = "") -> Figure:
    """One run's curves in six panels; `phases` as (kind, first step), `limits` the thresholds."""
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    alarms = [r["alarm"] for r in records if "alarm" in r]
    fig = Figure(figsize=(13, 12), layout="constrained")
    axes = fig.subplots(3, 2).ravel()
    loss_panel(axes[0], train)
    eval_panel(axes[1], evals, teacher)
    schedule_panel(axes[2], train)
    grad_panel(axes[3], train, limits or {}, alarms)
    cosine_panel(axes[4], train)
    resource_panel(axes[5], train)
    # One step axis for every panel (the evaluations start at step 0).
    lows, highs = zip(axes[0].get_xlim(), axes[1].get_xlim())
    for ax in axes:
        ax.set_xlim(min(lows), max(highs))
        mark_phases(ax, phases)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if ax is not axes[2] else "upper left", fontsize=8)
    fig.suptitle(title or "Student training curves")
    return fig


def comparison_figure(runs: dict[str, Records], teacher: dict[str, float] | None = None,
                      title: str = "") -> Figure:
    """Held-out KL, held-out NLL and training loss of several runs, one line per run."""
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for name, records in runs.items():
        evals = [r for r in records if "eval" in r]
        steps = [r["step"] for r in evals]
        axes[0].plot(steps, [r["eval"]["kl"] for r in evals], "o-", markersize=3, label=name)
        axes[1].plot(steps, [r["eval"]["nll"] for r in evals], "o-", markersize=3, label=name)
        axes[2].plot(*series([r for r in records if "loss" in r], "loss"), label=name)
    if teacher is not None:
        axes[1].axhline(teacher["nll"], color="0.5", linestyle=":", label="teacher")
    axes[0].set(title="Held-out KL(teacher || student)", ylabel="nats per token")
    axes[1].set(title="Held-out NLL of the teacher's completions", ylabel="nats per token")
    axes[2].set(title="Training loss (back-propagated)", ylabel="loss (nats per token, log scale)",
                yscale="log")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title or "Held-out quality per run")
    return fig


def save(fig: Figure, path: str | Path) -> None:
    fig.savefig(path, dpi=110)
