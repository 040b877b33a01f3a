"""Training phases (`--phases hidden:100,full:400`, read by `StudentConfig.parsed_phases`): which losses train, and what is frozen, when.

A phase is a kind and a number of optimizer steps, run in the order given:
- `hidden`: only the hidden-state loss trains (the decoder and the adapter);
  the output head, and with --freeze-embeddings the input embeddings, are frozen;
- `kd`: only the soft and hard token losses;
- `full`: every loss as configured (the default, single phase).
- `qat`: as `full`, with the decoder's linear layers fake-quantized (--qat;
  last phase only, see `pipeline.student.qat`).

The last phase may leave its count out to take the rest of the run. Each phase
has its own learning-rate warm-up and decay (`phase_lr`), so a switch from
hidden to full starts a fresh warm-up rather than jumping to a decayed rate.

    >>> from pipeline.student.phases import layout_phases, phase_at
    >>> phases = layout_phases([("hidden", 2), ("full", None)], total=5)
    >>> [(p.kind, p.start, p.steps) for p in phases]
    [('hidden', 0, 2), ('full', 2, 3)]
    >>> phase_at(phases, 2).kind
    'full'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.student.schedules import lr_at


@dataclass(frozen=True)
class Phase:
    kind: str
    start: int
    """First optimizer step (0-based) of the phase."""
    steps: int
    index: int = 0

    @property
    def end(self) -> int:
        return self.start + self.steps

    @property
    def soft(self) -> bool:
        """Whether the soft and hard token losses train in this phase."""
        return self.kind != "hidden"

    @property
    def hidden(self) -> bool:
        """Whether the hidden-state loss may train in this phase (`full`: if configured)."""
        return self.kind != "kd"


def layout_phases(parsed: list[tuple[str, int | None]], total: int) -> list[Phase]:
    """`StudentConfig.parsed_phases()` laid over a run of `total` steps; [] gives one `full` phase.

    A last count left out (None) takes the rest of the run. Raises ValueError
    when the phases do not fill the run exactly (with --epochs, known only now).
    """
    if not parsed:
        return [Phase("full", 0, total)]
    phases, start = [], 0
    for i, (kind, count) in enumerate(parsed):
        steps = total - start if count is None else count
        if steps < 1:
            raise ValueError(f"phase {kind} gets no steps of the run's {total}")
        phases.append(Phase(kind, start, steps, i))
        start += steps
    if start != total:
        raise ValueError(f"the phases add up to {start} steps but the run has {total}")
    return phases


def phase_at(phases: list[Phase], step: int) -> Phase:
    """The phase optimizer step `step` (0-based) belongs to (the last one past the end)."""
    for phase in phases:
        if step < phase.end:
            return phase
    return phases[-1]


def phase_lr(phases: list[Phase], step: int, peak: float, warmup: int, min_ratio: float) -> float:
    """Learning rate of step `step`: the warm-up and cosine decay of its own phase."""
    phase = phase_at(phases, step)
    return lr_at(step - phase.start, peak, warmup, phase.steps, min_ratio)
