"""What differs between `kd teacher-labels --mode generate` and `--mode score`.

Both modes share the engine start, shard scheduling, filtering, writing,
resume and verification (`stages.teacher.labels`); a `LabelJob` carries the
rest: the accepted records, their deterministic shard plans, the vLLM
sampling parameters, and how one shard's engine outputs become `Sample`s.
Built by `generate_job` (`stages.teacher.labels`) and `score_job`
(`stages.teacher.scoring`).

    python -c "from stages.teacher.label_job import LabelJob; help(LabelJob)"
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.store.sample import Sample
from pipeline.teacher.prompts import PromptBatch
from pipeline.teacher.shard_scheduler import ShardPlan


@dataclass
class LabelJob:
    """One mode's work: records in, shard plans, engine requests, samples out."""

    batch: PromptBatch
    """The input's accepted records and rejects."""
    plans: list[ShardPlan]
    """Every shard of the output, in order (the same for every rerun of the same input)."""
    planned_samples: int
    """Samples the plans make before filtering (what a complete manifest accounts for)."""
    sampling_params: Callable[[int], Any]
    """A request's `vllm.SamplingParams` from its seed."""
    to_samples: Callable[[ShardPlan, dict[str, Any]], list[Sample]]
    """A finished shard's engine outputs, by request key, as samples in plan order."""
    teacher_contexts: dict[str, str] = field(default_factory=dict)
    """The accepted records labelled behind a teacher context: id -> the teacher's messages
    as JSON (`pipeline.teacher.teacher_context`)."""

    @property
    def requests(self) -> int:
        return sum(len(p.requests) for p in self.plans)
