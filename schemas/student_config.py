"""Typed configuration of the student stage (`kd train-student`).

One dataclass, one field per CLI flag; `validate()` runs the cross-field
checks and names the flag in every error. The resolved config is written to
the output directory (`student_config.json`) and into `report.json`.

    >>> from schemas.student_config import StudentConfig
    >>> StudentConfig(labels=("data/labels/demo",), steps=10).validate().steps
    10
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from schemas.choices import (ALARM_POLICIES, CROSS_TOKENIZER_LOSSES, HIDDEN_LOSSES, KD_LOSSES,
                             NON_FINITE_POLICIES, PHASE_KINDS, REPORT_TO, STUDENT_KINDS, TAILS,
                             TEMPERATURE_SCHEDULES, VERIFY_MODES)
from schemas.choices import TRAINING_DTYPES as DTYPES
from schemas.config_base import ConfigError, check_choice, check_choices, flag, identity_fields
from schemas.deploy_config import QAT_SCHEMES

EVAL_MAX_TOKENS = 4096
"""Default bound of one evaluation: ~5 s of the demo student on 2 CPU cores (bench/results/startup.json)."""
# What a --resume may change: where things are (a run may move machines), how long it
# runs, how often it reports, and how the same global batch is laid out over ranks.
# Anything else would silently continue a different run than the checkpoint's.
RESUME_MAY_CHANGE = frozenset({
    "labels", "student", "teacher", "out", "steps", "epochs", "eval_every", "checkpoint_every",
    "resume", "overwrite", "loader_workers", "on_non_finite", "fsdp", "verify", "verify_cache",
    "grad_accum", "loss_chunk", "gradient_checkpointing", "alarms", "max_grad_norm_alarm",
    "min_grad_norm_alarm", "alarm_patience", "memory_alarm", "report_to"})


@dataclass
class StudentConfig:
    """Everything that decides how `kd train-student` trains, checkpoints and evaluates."""

    CHOICES = {"kd_loss": KD_LOSSES, "tail": TAILS, "hidden_loss": HIDDEN_LOSSES, "dtype": DTYPES,
               "on_non_finite": NON_FINITE_POLICIES, "verify": VERIFY_MODES,
               "alarms": ALARM_POLICIES, "report_to": REPORT_TO,
               "temperature_schedule": TEMPERATURE_SCHEDULES}
    RENAMED = {"temperature": "kd_temperature"}
    """Old name -> field: the old flag, recipe key and saved-config key still work (a flag or
    key with a warning); `kd teacher-labels --temperature` is the sampling temperature."""

    labels: tuple[str, ...] = ("data/labels/demo",)
    """Teacher output directories to train from (repeat the flag for several, e.g. one per worker)."""
    student: str = "from-teacher"
    """Student: a Hugging Face model directory or id, `from-teacher` (keep --keep-layers of the teacher's layers, with weights) or `narrow` (fresh init, --narrow-hidden-size wide)."""
    teacher: str | None = None
    """Teacher weights for `from-teacher`/`narrow` (read once to build the student, never kept). Default: the labels' teacher."""
    init_from: str | None = None
    """Continue from an exported student (`<out>/model` of an earlier run, e.g. the previous on-policy round): its weights only, a new optimizer and schedule; replaces --student, and its tokenizer must match the labels'."""
    keep_layers: int = 10
    """Layers of the derived student (`from-teacher`: evenly spaced teacher layers, first and last included)."""
    narrow_hidden_size: int = 384
    """Hidden size of a `narrow` student (heads scale with it; must divide by the head size)."""
    out: str = "data/student/demo"
    """Output directory: model/, checkpoints/, metrics.jsonl, report.json, report.md, curves.png."""
    steps: int | None = 200
    """Optimizer steps to train (exclusive with --epochs)."""
    epochs: float | None = None
    """Passes over the training split (exclusive with --steps; fractional allowed)."""
    batch_tokens: int = 4096
    """Token budget of one micro-batch, padding included (length-bucketed, no packing)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float = 2e-4
    """Peak learning rate of AdamW."""
    warmup_steps: int = 20
    """Linear warm-up steps before cosine decay."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of --lr at the end of cosine decay."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: off)."""
    kd_loss: str = "forward_kl"
    """Soft-label divergence: forward_kl, reverse_kl, jsd (generalised, --beta) or tvd."""
    tail: str = "bucket"
    """Mass outside the teacher's top-k: `bucket` (one extra class on both sides) or `renormalize` (top-k only)."""
    beta: float = 0.5
    """Generalised JSD interpolation in [0, 1]: 0 = forward KL, 1 = reverse KL."""
    alpha: float = 0.5
    """Weight of the soft loss; 1 - alpha weights cross-entropy on the teacher's sampled tokens."""
    onpolicy_weight: float = 0.0
    """Weight of the on-policy reverse-KL term on student samples scored by the teacher: per token rho * stopgrad(log p_student - log p_teacher) from the stored teacher logprobs, rho the importance weight against the sampling student's stored logprobs (GKD, arXiv:2306.13649; MiniLLM, arXiv:2306.08543); added to alpha * soft + (1 - alpha) * hard (use --alpha 1 on student samples); 0: off."""
    kd_temperature: float = 1.0
    """Distillation temperature (at the first step, with --temperature-schedule): both distributions are tempered and the soft loss scaled by T^2. Formerly --temperature (still accepted, with a warning)."""
    temperature_schedule: str = "constant"
    """How the temperature moves from --kd-temperature (first step) to --final-temperature (last step): constant, linear or cosine."""
    final_temperature: float | None = None
    """Temperature at the last step of a linear or cosine --temperature-schedule (e.g. 4 -> 1)."""
    hidden_weight: float = 0.0
    """Weight of the hidden-state alignment loss (needs labels with hidden states); 0: off."""
    hidden_loss: str = "mse"
    """Hidden-state loss through the trainable adapter: mse or cosine."""
    loss_balance: float | None = None
    """Rescale the hidden-state loss every micro-batch to this fraction of the soft loss (replaces --hidden-weight's fixed weight; NVIDIA ModelOpt's LogitsAndIntermediatesLossBalancer uses 1); none: fixed weights."""
    rare_token_weight: float | None = None
    """Weight each position's soft loss by its target token's inverse frequency in the training labels, min(CAP, max(1, N / (D * count))), CAP being this value (> 1); none: off."""
    phases: str | None = None
    """Ordered training phases, e.g. "hidden:100,full:400": `hidden` trains only the hidden-state loss (output head frozen), `kd` only soft + hard, `full` everything configured; each has its own warm-up; the last may omit its count to take the rest."""
    freeze_embeddings: bool = False
    """In `hidden` phases also freeze the input embeddings (tied to the output head in SmolLM2, which then freeze anyway)."""
    layer_map: str | None = None
    """Student-to-teacher layer pairs, e.g. "4:16,-1:-1" (student layer:teacher layer, hidden-state numbering). Default: student -1 to teacher -1."""
    eval_fraction: float = 0.1
    """Share of prompts held out for evaluation (split by prompt id: no prompt on both sides)."""
    eval_max_tokens: int = EVAL_MAX_TOKENS
    """Labelled positions one evaluation reads at most: the same held-out samples every time (a fixed order by prompt hash and --seed), so curves compare; 0: the whole held-out split."""
    eval_every: int = 50
    """Evaluate on the held-out split every N steps, so the held-out curve has points (0: only before and after training)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every N steps (and on SIGTERM, and at the end)."""
    resume: bool = False
    """Continue from the latest checkpoint in --out as if never interrupted (from step 0 when there is none yet, so a requeued job can always pass it)."""
    overwrite: bool = False
    """Start over in an --out that already holds checkpoints, deleting them (without it such a run is refused)."""
    seed: int = 0
    """Seed for initialisation, shuffling and the evaluation split."""
    dtype: str = "auto"
    """Training precision: auto (bf16 autocast on GPUs that support it, else float32), float32 or bfloat16."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% more compute."""
    loss_chunk: int = 2048
    """Loss positions per chunk when gathering student log-probabilities (bounds the (positions, vocab) buffer)."""
    loader_workers: int = 2
    """DataLoader worker processes (0: load in the training process)."""
    on_non_finite: str = "stop"
    """A non-finite loss: `stop` (naming the step and batch) or `skip` the batch (at most 10 in a row)."""
    alarms: str = "stop"
    """What a tripped alarm does (gradient norm too high or too low for --alarm-patience steps, device memory above --memory-alarm): `stop` (checkpoint, name the step and batch, exit 1) or `warn` (log it and go on)."""
    max_grad_norm_alarm: float | None = 1000.0
    """Alarm when the global gradient norm (before clipping) exceeds this for --alarm-patience consecutive steps (exploding); none: off."""
    min_grad_norm_alarm: float | None = 1e-8
    """Alarm when the global gradient norm stays below this for --alarm-patience consecutive steps (vanishing); none: off."""
    alarm_patience: int = 5
    """Consecutive steps a gradient-norm threshold must be crossed before its alarm trips."""
    memory_alarm: float | None = 0.95
    """Alarm when the device memory in use exceeds this fraction of the device's total (GPU memory, or RAM on CPU); none: off."""
    report_to: str = "tensorboard"
    """Where the per-step metrics go besides metrics.jsonl: `tensorboard` (when installed), `wandb` (Weights & Biases, when installed; TensorBoard too) or `none`."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state over the ranks (PyTorch FSDP2) instead of replicating the student (DDP)."""
    verify: str = "lazy"
    """`lazy`: check manifests, sizes, attributes, index and ids at start, hash each shard when first read (stops naming it on a mismatch); `full`: hash and scan every shard before training."""
    verify_cache: str = ""
    """Directory remembering shards verified in full (keyed by path, size, modification time, the manifest's sha256, the verifier's version and the schema version), so a resume or another student does not hash them again. Default: $KD_VERIFY_CACHE, else ~/.cache/offline-kd/verified-shards, read when first used."""
    qat: str | None = None
    """Quantization-aware training through torchao: the decoder's linear layers train fake-quantized as `int8da-int4w` (int8 dynamic activations, int4 grouped weights) or `int8w` (int8 grouped weights), from the first step or from a last `qat` phase (--phases full:200,qat:50); <out>/model-quantized holds the converted model (real quantized weights, for kd eval) beside the float model/ (for kd export-model)."""
    qat_group_size: int = 32
    """Weights per quantization group of --qat (32: the block of GGUF's Q8_0 and Q4_0)."""
    cross_tokenizer: str | None = None
    """Train a student whose tokenizer differs from the teacher's: `alm` = ALM chunk loss (arXiv 2503.20083, as tokenkit) + KL on chunks of one token on both sides + cross-entropy on its own tokens, over byte-aligned chunks of the labelled text (needs labels with the text layout, docs/cross-tokenizer.md); none: the student must share the teacher's tokenizer."""
    student_tokenizer: str | None = None
    """With --cross-tokenizer and --student from-teacher or narrow: the student's tokenizer directory (e.g. data/tokenizers/qwen3); the model gets new embeddings for it, each row copied from the teacher's token of the same byte string, else the mean of the teacher's rows."""
    alm_temperature: float = 1.0
    """Binarisation temperature of the ALM chunk loss (tokenkit's binarization_temp; its configs use 100): both chunk logprobs are divided by it before they are compared as binary probabilities."""

    def validate(self) -> "StudentConfig":
        """Check every field and cross-field constraint; return self for chaining."""
        if not self.labels:
            raise ConfigError("--labels is required (one or more teacher output directories)")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError("give exactly one of --steps and --epochs")
        for name in ("steps", "batch_tokens", "grad_accum", "keep_layers", "narrow_hidden_size",
                     "loss_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{flag(name)} must be at least 1, got {value}")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "loader_workers",
                     "eval_max_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{flag(name)} must be >= 0, got {getattr(self, name)}")
        if self.epochs is not None and not self.epochs > 0:
            raise ConfigError(f"--epochs must be positive, got {self.epochs}")
        for name in ("alpha", "beta", "min_lr_ratio"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{flag(name)} must be in [0, 1], got {getattr(self, name)}")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction}")
        for name in ("kd_temperature", "final_temperature"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag(name)} must be a positive number, got {value}")
        check_choices(self)
        self.check_temperature_schedule()
        self.check_training_controls()
        if not (self.lr > 0 and self.hidden_weight >= 0 and self.grad_clip >= 0
                and self.weight_decay >= 0):
            raise ConfigError("--lr must be positive; --hidden-weight, --grad-clip and "
                              "--weight-decay must be >= 0")
        if not (math.isfinite(self.onpolicy_weight) and self.onpolicy_weight >= 0):
            raise ConfigError(f"--onpolicy-weight must be >= 0, got {self.onpolicy_weight}")
        self.parsed_layer_map()
        self.check_qat()
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other: pick one")
        if self.init_from is not None and self.student != "from-teacher":
            raise ConfigError(f"--init-from {self.init_from} replaces --student; drop --student "
                              f"{self.student}")
        self.check_cross_tokenizer()
        return self

    def check_temperature_schedule(self) -> None:
        moving = self.temperature_schedule != "constant"
        if moving and self.final_temperature is None:
            raise ConfigError(f"--temperature-schedule {self.temperature_schedule} needs "
                              "--final-temperature (e.g. --kd-temperature 4 --final-temperature 1)")
        if not moving and self.final_temperature not in (None, self.kd_temperature):
            raise ConfigError(f"--final-temperature {self.final_temperature} needs a moving "
                              "--temperature-schedule (linear or cosine); it is constant")

    def check_training_controls(self) -> None:
        """Phases, loss balance, token weights and alarm thresholds: each refusal names its flag."""
        if self.loss_balance is not None and not (math.isfinite(self.loss_balance)
                                                  and self.loss_balance > 0):
            raise ConfigError(f"--loss-balance must be a positive fraction, got {self.loss_balance}")
        if self.loss_balance is not None and self.alpha == 0:
            raise ConfigError("--loss-balance scales the hidden-state loss to the soft loss, "
                              "which --alpha 0 turns off")
        if self.rare_token_weight is not None and not self.rare_token_weight > 1:
            raise ConfigError(f"--rare-token-weight is the cap of the weights and must be > 1, "
                              f"got {self.rare_token_weight}")
        for name in ("max_grad_norm_alarm", "min_grad_norm_alarm", "memory_alarm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{flag(name)} must be positive (or none), got {value}")
        if self.alarm_patience < 1:
            raise ConfigError(f"--alarm-patience must be at least 1, got {self.alarm_patience}")
        phases = self.parsed_phases()
        if phases and self.steps is None and phases[-1][1] is not None:
            raise ConfigError("--phases with --epochs: leave the last phase's count out so it "
                              "takes the rest of the run (e.g. hidden:100,full)")
        counted = sum(n for _, n in phases if n is not None)
        if phases and self.steps is not None and (
                counted >= self.steps if phases[-1][1] is None else counted != self.steps):
            raise ConfigError(f"--phases add up to {counted} steps but --steps is {self.steps}; "
                              "make them add up, or leave the last phase's count out to take "
                              "the rest")

    def check_qat(self) -> None:
        """--qat names a scheme; a `qat` phase needs one and comes last (its quantizer stays on)."""
        if self.qat is not None:
            check_choice("qat", self.qat, QAT_SCHEMES)
        if self.qat_group_size < 1:
            raise ConfigError(f"--qat-group-size must be at least 1, got {self.qat_group_size}")
        kinds = [kind for kind, _ in self.parsed_phases()]
        if "qat" in kinds and self.qat is None:
            raise ConfigError("--phases: a qat phase needs --qat SCHEME (int8da-int4w or int8w)")
        if "qat" in kinds[:-1]:
            raise ConfigError(f"--phases: the qat phase must be the last one, got {self.phases!r}")

    def parsed_phases(self) -> list[tuple[str, int | None]]:
        """--phases as [(kind, steps)], the last count None when left out; [] without phases."""
        if not self.phases:
            return []
        items = [item.strip() for item in self.phases.split(",")]
        parsed = []
        for i, item in enumerate(items):
            kind, colon, count = item.partition(":")
            if kind not in PHASE_KINDS:
                raise ConfigError(f"--phases: unknown phase {kind!r} in {self.phases!r} "
                                  f"(phases: {', '.join(PHASE_KINDS)})")
            if not colon and i == len(items) - 1:
                parsed.append((kind, None))
                continue
            try:
                steps = int(count)
            except ValueError:
                steps = 0
            if steps < 1:
                raise ConfigError(f"--phases: {item!r} must look like {kind}:100, a positive "
                                  "step count (only the last phase may leave it out)")
            parsed.append((kind, steps))
        return parsed

    @property
    def uses_hidden(self) -> bool:
        """Whether some phase trains the hidden-state loss (the labels must hold hidden states)."""
        return self.hidden_weight > 0 or self.loss_balance is not None or \
            any(kind == "hidden" for kind, _ in self.parsed_phases())

    def parsed_layer_map(self) -> dict[int, int]:
        """--layer-map as {student layer: teacher layer} (hidden-state numbering, negatives allowed)."""
        if not self.layer_map:
            return {-1: -1}
        try:
            pairs = [p.split(":") for p in self.layer_map.split(",") if p.strip()]
            mapping = {int(s): int(t) for s, t in pairs}
        except ValueError:
            raise ConfigError(f"--layer-map must look like 4:16,-1:-1, got {self.layer_map!r}") from None
        if len(mapping) != len(pairs):
            raise ConfigError(f"--layer-map maps a student layer twice: {self.layer_map!r}")
        return mapping

    @property
    def derived_student(self) -> bool:
        return self.init_from is None and self.student in STUDENT_KINDS

    @property
    def student_source(self) -> str:
        """Where the student's weights come from: --init-from, else --student."""
        return self.init_from if self.init_from is not None else self.student

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data

    def check_resumes(self, saved: dict[str, Any]) -> None:
        """Refuse a --resume whose settings differ from the checkpoint's `saved` config (saved
        under old field names, too); a field missing from `saved` predates it and is not compared."""
        saved = {self.RENAMED.get(k, k): v for k, v in saved.items()}
        now = self.to_dict()
        for name in identity_fields(type(self), RESUME_MAY_CHANGE):
            value = now[name]
            if name in saved and saved[name] != value:
                raise ConfigError(f"--resume: {flag(name)} was {saved[name]!r} when the "
                                  f"checkpoint was written and is {value!r} now; resume with "
                                  "the same value, or start over with --overwrite")

    def check_cross_tokenizer(self) -> None:
        """--cross-tokenizer and what it does not combine with, each refusal naming the flag."""
        if self.cross_tokenizer is None:
            if self.student_tokenizer is not None:
                raise ConfigError("--student-tokenizer needs --cross-tokenizer alm")
            return
        check_choice("cross_tokenizer", self.cross_tokenizer, CROSS_TOKENIZER_LOSSES)
        if not (math.isfinite(self.alm_temperature) and self.alm_temperature > 0):
            raise ConfigError(f"--alm-temperature must be positive, got {self.alm_temperature}")
        if self.student_tokenizer is not None and not self.derived_student:
            raise ConfigError("--student-tokenizer builds a from-teacher or narrow student; a "
                              f"--student directory ({self.student}) brings its own tokenizer")
        unsupported = [name for name, on in (
            ("phases", bool(self.phases)),
            ("rare_token_weight", self.rare_token_weight is not None),
            ("onpolicy_weight", self.onpolicy_weight > 0), ("init_from", self.init_from is not None),
            ("temperature_schedule", self.temperature_schedule != "constant"),
            ("tail", self.tail != "bucket")) if on]
        if unsupported:
            raise ConfigError(f"--cross-tokenizer {self.cross_tokenizer} does not combine with "
                              f"{flag(unsupported[0])} (docs/cross-tokenizer.md: what it cannot do)")


@dataclass
class EvalConfig:
    """What `kd eval` evaluates, and on which split."""

    CHOICES = {"verify": VERIFY_MODES}

    labels: tuple[str, ...] = ("data/labels/demo",)
    """Teacher output directories (repeatable); the held-out split of their union is used (every sample with --all)."""
    model: tuple[str, ...] = ("data/student/demo/model",)
    """Model to evaluate (repeatable, one table row each) as [NAME=]MODEL: a Hugging Face directory or id whose tokenizer matches the labels', or `from-teacher` (the untrained student kd train-student starts from, see --keep-layers); NAME labels the row."""
    samples: tuple[str, ...] = ()
    """A model's own text, scored by the teacher (repeatable) as [NAME=]DIR: a score-mode output of its `kd student-samples` completions. Row NAME (a --model's, or a row of its own) gets the teacher's mean NLL of that text (lower is better) over the held-out split's prompts (every prompt with --all), and the reverse-KL estimate where the output stores the student's logprobs."""
    keep_layers: int = 10
    """For --model from-teacher: the teacher's decoder layers kept, as given to kd train-student."""
    eval_fraction: float = 0.1
    """Share of prompts held out, as given to `kd train-student`."""
    seed: int = 0
    """Seed of the split, as given to `kd train-student`."""
    eval_max_tokens: int = EVAL_MAX_TOKENS
    """Labelled positions read at most, chosen as `kd train-student` chooses them; 0: the whole held-out split."""
    all: bool = False
    """Evaluate every sample of the labels (no split, no bound): for a dedicated evaluation output."""
    verify: str = "lazy"
    """`lazy` (cheap checks at start, each shard hashed when first read) or `full` (hash every shard first)."""
    verify_cache: str = ""
    """Directory remembering shards verified in full. Default: $KD_VERIFY_CACHE, else ~/.cache/offline-kd/verified-shards, read when first used."""
    batch_tokens: int = 4096
    """Token budget of one evaluation batch, padding included."""
    loss_chunk: int = 2048
    """Positions per chunk when computing log-probabilities over the vocabulary."""
    output: str | None = None
    """Also write the rows as JSON to this file."""

    def validate(self) -> "EvalConfig":
        self.named_models()
        self.named_samples()
        if self.keep_layers < 1:
            raise ConfigError(f"--keep-layers must be at least 1, got {self.keep_layers}")
        if not self.all and not 0 < self.eval_fraction < 1:
            raise ConfigError(f"--eval-fraction must be in (0, 1), got {self.eval_fraction} "
                              "(--all evaluates every sample)")
        if self.batch_tokens < 1 or self.loss_chunk < 1:
            raise ConfigError("--batch-tokens and --loss-chunk must be at least 1")
        if self.eval_max_tokens < 0:
            raise ConfigError(f"--eval-max-tokens must be >= 0, got {self.eval_max_tokens}")
        check_choices(self)
        return self

    def named_samples(self) -> dict[str, str]:
        """Row name -> score-mode output of each --samples; a single unnamed one is the row
        of the single --model (`model`)."""
        named: dict[str, str] = {}
        for spec in self.samples:
            name, _, out = spec.rpartition("=")
            name = name or ("model" if len(self.samples) == 1 and len(self.model) == 1 else "")
            if not out or not name or name in named or name == "teacher":
                raise ConfigError(f"--samples {spec!r}: give [NAME=]DIR, NAME once per row "
                                  "(needed unless there is one --model and one --samples)")
            named[name] = out
        return named

    def named_models(self) -> dict[str, str]:
        """Row name -> model of each --model; a single unnamed one is the row `model`."""
        if not self.model:
            raise ConfigError("--model is required")
        named: dict[str, str] = {}
        for spec in self.model:
            name, _, model = spec.rpartition("=")
            name = name or (spec if len(self.model) > 1 else "model")
            if not model or name in named or name == "teacher":
                raise ConfigError(f"--model {spec!r}: give [NAME=]MODEL with a name used once "
                                  "(`teacher` is the teacher's own row)")
            named[name] = model
        return named
