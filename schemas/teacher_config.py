"""Typed configuration of the teacher stage (`kd teacher-labels`).

One dataclass, one field per CLI flag (the flag is the field name with dashes).
`validate()` runs the cross-field checks and names the flag in every error.
The resolved config is written beside the shards as `teacher_config.json`
and embedded in the manifest, so the data always says how it was made.

    >>> from schemas.teacher_config import TeacherConfig
    >>> cfg = TeacherConfig(prompts="data/prompts/demo.jsonl", out="data/labels/demo", top_k=5)
    >>> cfg.validate().top_k
    5
    >>> TeacherConfig(mode="score").validate().filter_thresholds().min_mean_logprob is None
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from schemas.choices import HIDDEN_FORMATS, LABEL_FORMATS, LABEL_KINDS, MODES
from schemas.choices import ENGINE_DTYPES as DTYPES
from schemas.eagle3 import EAGLE3
from schemas.filter_thresholds import FilterThresholds
from schemas.config_base import (AUTO, ConfigError, check_choice, check_choices,  # noqa: F401
                                 field_docs, flag, identity_fields)

DEFAULT_TEACHER = "data/models/smollm2-135m-instruct"
Q8POLY_MIN_TOP_K = 32
"""--label-format q8poly keeps the first 16 logprobs in q8 and a 4-term curve for the rest: below k = 32 it saves little or nothing over q8."""
EAGLE3_HIDDEN_FORMAT = "int8"
"""--hidden-format auto with --hidden-layers eagle3 (bench/results/draft.json: int8 against fp8)."""
SAMPLED_SOURCE_K = 256
"""--label-kind sampled draws from the engine's top-K with K = max(this, --top-k), plus a tail bucket."""
# What a rerun into an existing output may change: where the prompts file and the output are
# (the prompts' content is compared by hash), how the engine is laid out and paced, and when
# to give up. Every other field is part of `identity()`, so a field added later is protected.
RESUME_MAY_CHANGE = frozenset({
    "prompts", "out", "overwrite", "tensor_parallel_size", "pipeline_parallel_size",
    "gpu_memory_utilization", "kv_cache_gib", "shards_in_flight", "enforce_eager",
    "max_non_finite_rate", "hidden_batch_tokens", "logprobs_memory_gib"})
SAMPLING_FIELDS = frozenset({"mode", "n", "max_tokens", "temperature", "top_p", "seed",
                             "system_prompt", "teacher_system_prompt", "window_overlap"})
STORAGE_FIELDS = frozenset({"label_format", "hidden_format", "label_kind", "samples_per_position",
                            "hidden_rank"})
IDENTITY_PARTS = frozenset(FilterThresholds.__dataclass_fields__) | SAMPLING_FIELDS | STORAGE_FIELDS
"""Identity fields entered through a part of `identity()` (`filter`, `sampling()`,
`storage_identity()`): resolved, or only where the mode or format uses them."""


def check_sampling_and_engine(cfg: Any) -> None:
    """The sampling and vLLM engine fields a generating stage shares (`kd teacher-labels`,
    `kd student-samples`): temperature, top-p, GPU memory share, KV cache, limit, dtype."""
    if not (math.isfinite(cfg.temperature) and cfg.temperature >= 0):
        raise ConfigError(f"--temperature must be a finite number >= 0, got {cfg.temperature}")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {cfg.top_p}")
    if not 0 < cfg.gpu_memory_utilization <= 1:
        raise ConfigError(
            f"--gpu-memory-utilization must be in (0, 1], got {cfg.gpu_memory_utilization}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.kv_cache_gib is not None and cfg.kv_cache_gib <= 0:
        raise ConfigError(f"--kv-cache-gib must be positive, got {cfg.kv_cache_gib}")

@dataclass
class TeacherConfig:
    """Everything that decides what `kd teacher-labels` generates and writes."""

    CHOICES = {"mode": MODES, "label_format": LABEL_FORMATS,
               "hidden_format": HIDDEN_FORMATS + (AUTO,), "label_kind": LABEL_KINDS, "dtype": DTYPES}

    prompts: str = "data/prompts/demo.jsonl"
    """Input file, JSONL or Parquet, an `id` per record. generate: `prompt` (text) or `messages` (chat list); score: `text`, `messages` (a chat) or `prompt` + `completion`."""
    mode: str = "generate"
    """generate: the teacher writes completions for the prompts and labels them; score: the teacher labels the given text, teacher-forced."""
    out: str = "data/labels/demo"
    """Output directory for shards, manifest.json, rejects.jsonl and the resolved config."""
    teacher: str = DEFAULT_TEACHER
    """Teacher model: local Hugging Face directory or hub id (default: the embedded SmolLM2-135M-Instruct)."""
    system_prompt: str | None = None
    """Optional system message prepended to every prompt before the chat template is applied."""
    teacher_system_prompt: str | None = None
    """A system message only the teacher sees (privileged context, docs/teacher-context.md): generate: the teacher generates behind it, the stored prompt is the student's; score: the teacher scores behind it, labels stored at the student's positions. A record's own system turn follows it in the same turn, after a blank line."""
    top_k: int = 20
    """Number of teacher alternatives (token id, logprob) stored per completion token."""
    label_kind: str = "topk"
    """topk: store the teacher's top-k per labelled position; sampled: draw --samples-per-position tokens from the teacher's raw distribution (its top-256 plus a tail bucket) and store the distinct ids with their counts, an unbiased target (README: Compact labels)."""
    samples_per_position: int = 50
    """--label-kind sampled: draws per labelled position, with replacement (1..255: counts are uint8)."""
    label_format: str = "fp16"
    """How top-k logprobs are stored: fp16 (2 bytes an entry), q8 (1 byte an entry on a log scale, worst-case error (0.3 + |lp|) x 0.018 nats, mass-preserving per row) or q8poly (--top-k >= 32: the first 16 in q8, the sorted rest as a 4-term curve in log rank with the tail's mass kept, 24 bytes a row; README: Compact labels)."""
    n: int = 1
    """Completions sampled per prompt."""
    max_tokens: int = 256
    """Maximum completion length, in tokens."""
    temperature: float = 0.8
    """Sampling temperature for the completions (soft labels are always stored at T = 1)."""
    top_p: float = 0.95
    """Nucleus sampling mass for the completions, in (0, 1]."""
    seed: int = 0
    """Base seed: each prompt's seed derives from it and the prompt id, so reruns reproduce samples."""
    dtype: str = "auto"
    """Teacher weights and activations dtype: auto (the model's own on GPU, float32 on CPU), float32, bfloat16 or float16."""
    max_model_len: int = 2048
    """Context length in tokens (prompt + completion); longer prompts are rejected, not truncated."""
    shard_size: int = 1024
    """Samples per shard file, rounded up to whole prompts (a prompt's n samples never straddle shards)."""
    tensor_parallel_size: int = 1
    """GPUs a teacher replica is split over with tensor parallelism (vLLM)."""
    pipeline_parallel_size: int = 1
    """Pipeline stages a teacher replica is split over (vLLM); multiplies with tensor parallelism."""
    gpu_memory_utilization: float = 0.9
    """Fraction of each GPU's memory vLLM may take for weights and KV cache, in (0, 1]."""
    kv_cache_gib: float | None = None
    """KV-cache size in GiB; overrides --gpu-memory-utilization. Default on a CPU-only machine: 2."""
    shards_in_flight: int = 2
    """Shards whose prompts are queued in the engine at once; more keeps the batch full across shard ends."""
    enforce_eager: bool = False
    """Skip vLLM graph compilation (and CUDA graphs): engine start in seconds, slower steps."""
    limit: int | None = None
    """Read only the first N records of the prompt file (smoke runs); part of the output's identity."""
    overwrite: bool = False
    """Delete an existing output directory whose settings differ instead of refusing."""
    drop_truncated: bool = FilterThresholds.drop_truncated
    """Drop completions cut off by --max-tokens (finish reason `length`); --no-drop-truncated keeps them."""
    min_completion_tokens: int = FilterThresholds.min_completion_tokens
    """Drop completions shorter than this many tokens."""
    max_repetition: float | None = AUTO
    """Drop samples whose share of repeated 4-grams exceeds this (0..1; 0.5 = a degenerate loop). None: off; auto: 0.5 in generate mode, off in score mode."""
    min_mean_logprob: float | None = AUTO
    """Drop samples whose mean labelled-token teacher logprob (nats, raw T = 1) is below this (score: text the teacher finds implausible). None: off; auto: -4.0 in generate mode, off in score mode."""
    max_mean_logprob: float | None = FilterThresholds.max_mean_logprob
    """Drop samples whose mean labelled-token teacher logprob (nats) is above this (score: boilerplate the teacher finds trivially predictable). None: off."""
    min_token_logprob: float | None = FilterThresholds.min_token_logprob
    """Drop samples with any sampled token whose teacher logprob (nats) is below this. None: off."""
    max_mean_entropy: float | None = FilterThresholds.max_mean_entropy
    """Drop samples whose mean top-k entropy (nats, top-k renormalised) exceeds this. None: off."""
    max_tail_mass: float | None = FilterThresholds.max_tail_mass
    """Drop samples whose mean probability outside the top-k exceeds this (0..1). None: off."""
    max_non_finite_rate: float = 0.01
    """Abort when more than this fraction of generated samples had NaN/inf teacher values (checked per shard)."""
    hidden_layers: str | None = None
    """Teacher hidden states to store, comma-separated layer indices (0 = embeddings, -1 = final, after the last norm), e.g. "8,16,-1", or `eagle3`: the inputs of blocks 2, L/2 and L-3 plus the last block's output before the final norm (docs/draft-models.md). Default: none."""
    hidden_format: str = AUTO
    """How hidden states are stored: auto (int8 for --hidden-layers eagle3, where it beats fp8 at the same size (docs/draft-models.md), else fp16), fp16 (2 bytes a value), int8 (1 byte a value + a float32 scale per token row, square-root companded, error <= max|row| / 127) or pca (--hidden-rank coefficients per token on a basis fitted on the first shard, then int8; the student's adapter targets them). README: Compact labels."""
    hidden_rank: int = 64
    """--hidden-format pca: principal directions kept per stored layer, fitted on the run's first hidden-state shard (README: Compact labels)."""
    hidden_batch_tokens: int = 4096
    """Token budget of one teacher-forced forward batch when capturing hidden states."""
    num_workers: int = 1
    """Independent teacher workers splitting the prompts by a hash of their id (one per machine or GPU group)."""
    worker_index: int = 0
    """Which worker this run is, 0 .. --num-workers - 1; each writes its own output directory."""
    window_overlap: int = 256
    """score: a document longer than --max-model-len - 1 tokens is cut into windows, each repeating this many tokens of the previous one as unlabelled context (at least 1), so every token is labelled once."""
    logprobs_memory_gib: float = 2.0
    """score: memory one engine step's (tokens, vocabulary) prompt-logprob tensors may take; bounds the tokens per step (README: Score mode)."""

    def validate(self) -> "TeacherConfig":
        """Check every field and cross-field constraint; return self for chaining."""
        self.check_counts()
        self.hidden_format = self.resolved_hidden_format()
        check_choices(self)
        self.check_label_storage()
        self.check_hidden_storage()
        if self.mode == "score":
            self.validate_score()
        else:
            self.check_generate()
        check_sampling_and_engine(self)
        self.check_workers()
        self.check_filters()
        self.check_teacher_context()
        if not self.prompts:
            raise ConfigError("--prompts is required")
        if not self.out:
            raise ConfigError("--out is required")
        return self

    def resolved_hidden_format(self) -> str:
        """--hidden-format, with `auto` resolved: int8 for the eagle3 preset, else fp16."""
        if self.hidden_format != AUTO:
            return self.hidden_format
        return EAGLE3_HIDDEN_FORMAT if self.hidden_layers == EAGLE3 else "fp16"

    def check_counts(self) -> None:
        """Sizes and counts that must be at least 1."""
        positive = ("top_k", "n", "max_tokens", "max_model_len", "shard_size",
                    "tensor_parallel_size", "pipeline_parallel_size", "shards_in_flight",
                    "num_workers", "hidden_batch_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")

    def check_label_storage(self) -> None:
        """The label kind and format, and the settings each needs."""
        if not 1 <= self.samples_per_position <= 255:
            raise ConfigError(f"--samples-per-position must be in 1..255 (counts are stored as "
                              f"uint8), got {self.samples_per_position}")
        if self.label_kind == "sampled" and self.label_format != "fp16":
            raise ConfigError(f"--label-format {self.label_format} applies to --label-kind topk; "
                              "sampled labels store counts, not logprobs")
        if self.label_format == "q8poly" and self.top_k < Q8POLY_MIN_TOP_K:
            raise ConfigError(f"--label-format q8poly needs --top-k >= {Q8POLY_MIN_TOP_K} (it fits "
                              f"a curve to the entries after the first 16), got {self.top_k}; "
                              "use q8 for small k")

    def check_hidden_storage(self) -> None:
        """Which hidden states are stored, and how."""
        if self.hidden_rank < 1:
            raise ConfigError(f"--hidden-rank must be at least 1, got {self.hidden_rank}")
        if self.hidden_format != "fp16" and not self.hidden_layers:
            raise ConfigError(f"--hidden-format {self.hidden_format} needs --hidden-layers: "
                              "no hidden states are stored without it")
        if self.hidden_layers != EAGLE3:  # the preset's layers depend on the teacher's depth
            self.parsed_hidden_layers()

    def check_generate(self) -> None:
        """The checks only `--mode generate` needs."""
        if self.max_tokens >= self.max_model_len:
            raise ConfigError(
                f"--max-tokens ({self.max_tokens}) must be smaller than --max-model-len "
                f"({self.max_model_len}): no room would be left for the prompt")
        if self.temperature == 0 and self.n > 1:
            raise ConfigError("--n > 1 needs --temperature > 0: greedy decoding gives n identical samples")

    def check_teacher_context(self) -> None:
        """--teacher-system-prompt: non-empty, and without hidden states (they would be captured
        over the stored student view, not over what the teacher saw)."""
        if self.teacher_system_prompt is None:
            return
        if not self.teacher_system_prompt.strip():
            raise ConfigError("--teacher-system-prompt is empty or whitespace; leave it out for "
                              "a teacher that sees what the student sees")
        if self.hidden_layers:
            raise ConfigError("--hidden-layers cannot be stored with --teacher-system-prompt: the "
                              "hidden states are captured over the stored (student's) view, not "
                              "the teacher's context")

    def check_workers(self) -> None:
        if not 0 <= self.worker_index < self.num_workers:
            raise ConfigError(f"--worker-index must be in 0..{self.num_workers - 1} "
                              f"(--num-workers {self.num_workers}), got {self.worker_index}")

    def check_filters(self) -> None:
        """The keep/drop thresholds, and when non-finite teacher values abort the run."""
        if not 0 <= self.max_non_finite_rate <= 1:
            raise ConfigError(f"--max-non-finite-rate must be in [0, 1], got {self.max_non_finite_rate}")
        for name in ("max_repetition", "max_tail_mass"):
            value = getattr(self, name)
            if value not in (None, AUTO) and not 0 <= value <= 1:
                raise ConfigError(f"{flag(name)} must be in [0, 1], got {value}")
        t = self.filter_thresholds()
        if None not in (t.min_mean_logprob, t.max_mean_logprob) \
                and t.min_mean_logprob >= t.max_mean_logprob:
            raise ConfigError(f"--min-mean-logprob ({t.min_mean_logprob}) must be below "
                              f"--max-mean-logprob ({t.max_mean_logprob}): every sample would be dropped")
        if self.min_completion_tokens < 0:
            raise ConfigError(f"--min-completion-tokens must be >= 0, got {self.min_completion_tokens}")

    def validate_score(self) -> None:
        """The checks only `--mode score` needs."""
        if self.n != 1:
            raise ConfigError(f"--n {self.n}: --mode score labels the given text once; "
                              "--n applies to --mode generate")
        if not 1 <= self.window_overlap < self.max_model_len - 1:
            raise ConfigError(
                f"--window-overlap must be in 1..{self.max_model_len - 2} (below --max-model-len "
                f"{self.max_model_len} - 1, the longest window), got {self.window_overlap}")
        if not (math.isfinite(self.logprobs_memory_gib) and self.logprobs_memory_gib > 0):
            raise ConfigError(f"--logprobs-memory-gib must be positive, got {self.logprobs_memory_gib}")

    @property
    def window_tokens(self) -> int:
        """score: the longest window; one position stays free for the token the engine
        must generate (max_tokens = 1, discarded)."""
        return self.max_model_len - 1

    @property
    def prompts_per_shard(self) -> int:
        """Whole prompts per shard: shard_size samples rounded up to a multiple of n."""
        return -(-self.shard_size // self.n)

    def parsed_hidden_layers(self) -> list[int]:
        """--hidden-layers as a list of (possibly negative) layer indices, in the order given."""
        if not self.hidden_layers:
            return []
        try:
            layers = [int(x) for x in self.hidden_layers.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--hidden-layers must be comma-separated integers like 8,16,-1 or "
                              f"{EAGLE3!r}, "
                              f"got {self.hidden_layers!r}") from None
        if len(set(layers)) != len(layers):
            raise ConfigError(f"--hidden-layers lists a layer twice: {self.hidden_layers!r}")
        return layers

    def filter_thresholds(self) -> FilterThresholds:
        """The keep/drop rules of `pipeline.teacher.sample_filter` from the filter flags,
        `auto` ones resolved for the mode."""
        defaults = FilterThresholds.for_mode(self.mode)
        return FilterThresholds(**{
            f: getattr(defaults, f) if getattr(self, f) == AUTO else getattr(self, f)
            for f in FilterThresholds.__dataclass_fields__})

    def sampling(self) -> dict[str, Any]:
        """How the samples are made (stored in every shard): the sampling settings of the
        completions, or the windowing of the scored text."""
        # Listed only when set, so outputs without a teacher context keep the attributes
        # (and bytes) of earlier builds.
        teacher = ({} if self.teacher_system_prompt is None
                   else {"teacher_system_prompt": self.teacher_system_prompt})
        if self.mode == "score":
            return {"mode": "score", "window_overlap": self.window_overlap,
                    "system_prompt": self.system_prompt} | teacher
        return {"mode": "generate", "n": self.n, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "system_prompt": self.system_prompt} | teacher

    def identity(self) -> dict[str, Any]:
        """Settings that must match for a rerun to extend or reuse an existing output: every
        field outside RESUME_MAY_CHANGE, those in IDENTITY_PARTS as their part gives them."""
        plain = identity_fields(type(self), RESUME_MAY_CHANGE | IDENTITY_PARTS)
        return {name: getattr(self, name) for name in plain} | {
            "filter": self.filter_thresholds().to_dict(), **self.sampling(),
            **self.storage_identity()}

    def storage_identity(self) -> dict[str, Any]:
        """The storage formats, part of `identity()` (one output holds one format). Only
        non-default values are listed, so outputs written before these flags existed
        (whose config lacks them) still resume."""
        defaults = {"label_format": "fp16", "hidden_format": "fp16", "label_kind": "topk"}
        out = {k: getattr(self, k) for k, v in defaults.items() if getattr(self, k) != v}
        if self.label_kind == "sampled":
            out["samples_per_position"] = self.samples_per_position
        if self.hidden_format == "pca":
            out["hidden_rank"] = self.hidden_rank
        return out

    @property
    def engine_k(self) -> int:
        """Logprobs per position asked of the engine: --top-k, or the sampling source K."""
        return max(self.top_k, SAMPLED_SOURCE_K) if self.label_kind == "sampled" else self.top_k

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
