"""Typed configuration of `kd student-samples` (the student writes completions for on-policy rounds).

One field per CLI flag; `validate()` names the flag in every error. The
resolved config is written beside the records (`student_samples_config.json`);
`engine_config()` is the teacher stage's engine config for the same model, so
the student runs on the very engine start, prompt rendering and seeding code
the teacher stage uses.

    >>> from schemas.student_samples_config import StudentSamplesConfig
    >>> cfg = StudentSamplesConfig(model="m", prompts="p.jsonl", out="s").validate()
    >>> cfg.engine_config().teacher, cfg.engine_config().n
    ('m', 1)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from schemas.config_base import ConfigError, check_choices, flag, identity_fields
from schemas.teacher_config import DTYPES, TeacherConfig, check_sampling_and_engine

SAMPLES_CONFIG_NAME = "student_samples_config.json"
# What a rerun into an existing output may change: where the prompts file (compared by hash)
# and the output are, how often records are flushed, and the engine's layout. Every other
# field is part of `identity()`, so a field added later is protected.
RESUME_MAY_CHANGE = frozenset({"prompts", "out", "overwrite", "flush_every",
                               "tensor_parallel_size", "gpu_memory_utilization", "kv_cache_gib",
                               "enforce_eager"})


@dataclass
class StudentSamplesConfig:
    """Which student writes completions for which prompts, how, and where the records go."""

    CHOICES = {"dtype": DTYPES}

    model: str = "data/student/demo/model"
    """The student that writes: a Hugging Face model directory, e.g. `<kd train-student --out>/model`."""
    prompts: str = "data/prompts/demo.jsonl"
    """Prompt file, JSONL or Parquet, as for `kd teacher-labels --mode generate`: an `id` and a `prompt` or `messages` per record. Each prompt gets one completion, under the prompt's id."""
    out: str = "data/onpolicy/samples"
    """Output directory: samples.jsonl (records for `kd teacher-labels --mode score`), rejects.jsonl and the resolved config."""
    system_prompt: str | None = None
    """Optional system message prepended to every prompt before the chat template is applied."""
    max_tokens: int = 128
    """Maximum completion length, in tokens."""
    temperature: float = 1.0
    """Sampling temperature. 1 (with --top-p 1) samples the student's own distribution, the one the on-policy loss is about; the stored logprobs are always the raw T = 1 ones."""
    top_p: float = 1.0
    """Nucleus sampling mass, in (0, 1]."""
    seed: int = 0
    """Base seed: each prompt's seed derives from it and the prompt id, so reruns and resumes reproduce samples."""
    dtype: str = "auto"
    """Student weights and activations dtype: auto (the model's own on GPU, float32 on CPU), float32, bfloat16 or float16."""
    max_model_len: int = 1024
    """Context length in tokens (prompt + completion); longer prompts are rejected, not truncated."""
    limit: int | None = None
    """Read only the first N records of the prompt file; part of the output's identity."""
    flush_every: int = 16
    """Prompts per appended batch: finished records reach samples.jsonl (fsynced) at least this often."""
    tensor_parallel_size: int = 1
    """GPUs the student is split over with tensor parallelism (vLLM)."""
    gpu_memory_utilization: float = 0.9
    """Fraction of each GPU's memory vLLM may take for weights and KV cache, in (0, 1]."""
    kv_cache_gib: float | None = None
    """KV-cache size in GiB; overrides --gpu-memory-utilization. Default on a CPU-only machine: 2."""
    enforce_eager: bool = False
    """Skip vLLM graph compilation (and CUDA graphs): engine start in seconds, slower steps."""
    overwrite: bool = False
    """Delete an existing output whose settings differ instead of refusing."""

    def validate(self) -> "StudentSamplesConfig":
        """Check every field and cross-field constraint; return self for chaining."""
        for name in ("max_tokens", "max_model_len", "flush_every", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.max_tokens >= self.max_model_len:
            raise ConfigError(f"--max-tokens ({self.max_tokens}) must be smaller than "
                              f"--max-model-len ({self.max_model_len}): no room for the prompt")
        check_choices(self)
        check_sampling_and_engine(self)
        for name in ("model", "prompts", "out"):
            if not getattr(self, name):
                raise ConfigError(f"{flag(name)} is required")
        return self

    def engine_config(self) -> TeacherConfig:
        """The teacher stage's generate-mode config for this student (engine, prompts, seeds):
        one completion per prompt, the sampled token's logprob (k = 1) per step."""
        return TeacherConfig(
            prompts=self.prompts, mode="generate", out=self.out, teacher=self.model,
            system_prompt=self.system_prompt, top_k=1, n=1, max_tokens=self.max_tokens,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed, dtype=self.dtype,
            max_model_len=self.max_model_len, shard_size=self.flush_every,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization, kv_cache_gib=self.kv_cache_gib,
            enforce_eager=self.enforce_eager, limit=self.limit).validate()

    def identity(self) -> dict[str, Any]:
        """Settings that must match for a rerun to extend an existing output: every field
        outside RESUME_MAY_CHANGE."""
        return {k: getattr(self, k) for k in identity_fields(type(self), RESUME_MAY_CHANGE)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
