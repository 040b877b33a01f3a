"""Typed configuration of `kd export` and `kd import` (other trainers' dataset formats).

One dataclass per command, one field per CLI flag (`--in` is the field
`source`: `in` is a Python keyword); `validate()` names the flag in every error.

    >>> from schemas.interop_config import ExportConfig
    >>> ExportConfig(labels=("data/labels/demo",), format="axolotl", out="x", max_length=512,
    ...              long_samples="split").validate().format
    'axolotl'
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.config_base import ConfigError, check_choice

EXPORT_FORMATS = ("parquet", "axolotl", "distillkit", "speculators")
HIDDEN_DTYPES = ("bf16", "fp8")
IMPORT_FORMATS = ("distillkit",)
LONG_SAMPLES = ("refuse", "split")
EXACT_DTYPES = ("float16", "float32")


@dataclass
class ExportConfig:
    """What `kd export` reads, which format it writes, and where."""

    labels: tuple[str, ...] = ()
    """Teacher output directories (repeatable; one teacher and tokenizer, refused otherwise as by the student stage)."""
    format: str = "parquet"
    """`parquet` (plain columnar view), `axolotl` (its KD trainer's pre-tokenized rows), `distillkit` (its compressed-logit Parquet, exact-value mode) or `speculators` (vllm-project/speculators' offline EAGLE-3 data from a --hidden-layers eagle3 output; docs/draft-models.md)."""
    out: str = ""
    """Output directory: data-NNNNN.parquet files (speculators: a datasets directory, hidden_states/ and token_freq.pt) and offline_kd_export.yaml (sources, sample ids in row order)."""
    max_length: int = 0
    """axolotl: tokens per row at most (its sequence_len); 0: no bound."""
    long_samples: str = "refuse"
    """axolotl: a sample longer than --max-length is refused (`refuse`, naming it) or split into windows sharing one token (`split`: every label kept once)."""
    kd_temperature: float = 1.0
    """axolotl: the kd_temperature of the training YAML; targets are stored as softmax(logprob / T) over the top k."""
    exact_dtype: str = "float16"
    """distillkit: float type of the exact values (our labels are float16, so float16 is lossless)."""
    rows_per_file: int = 10_000
    """Rows per Parquet file."""
    hidden_dtype: str = "bf16"
    """speculators: how the hidden states are written, `bf16` or `fp8` (float8_e4m3fn with one float32 scale per token across the four layers, speculators' FP8 layout)."""

    def validate(self) -> "ExportConfig":
        if not self.labels:
            raise ConfigError("--labels is required (repeat it for several directories)")
        if not self.out:
            raise ConfigError("--out is required")
        check_choice("format", self.format, EXPORT_FORMATS)
        check_choice("long_samples", self.long_samples, LONG_SAMPLES)
        check_choice("exact_dtype", self.exact_dtype, EXACT_DTYPES)
        check_choice("hidden_dtype", self.hidden_dtype, HIDDEN_DTYPES)
        if self.hidden_dtype != "bf16" and self.format != "speculators":
            raise ConfigError(f"--hidden-dtype {self.hidden_dtype} applies to --format speculators only")
        if self.max_length < 0 or self.max_length == 1:
            raise ConfigError(f"--max-length must be 0 (no bound) or at least 2, got {self.max_length}")
        if self.max_length and self.format != "axolotl":
            raise ConfigError("--max-length applies to --format axolotl only")
        if not self.kd_temperature > 0:
            raise ConfigError(f"--kd-temperature must be > 0, got {self.kd_temperature}")
        if self.rows_per_file < 1:
            raise ConfigError(f"--rows-per-file must be at least 1, got {self.rows_per_file}")
        return self


@dataclass
class ImportConfig:
    """What `kd import` reads and the offline-kd output it writes."""

    FLAGS = {"source": "--in"}

    format: str = "distillkit"
    """Format of the dataset read (`distillkit`: compressed-logit Parquet, any compression setting)."""
    source: str = ""
    """The dataset: a directory of *.parquet files (with compression_config.yaml, as DistillKit's capture writes it) or one .parquet file."""
    distillkit_config: str | None = None
    """Compression configuration YAML, when the dataset has none beside it (a compression config, or a DistillKit training config with teacher.logprob_compressor)."""
    teacher: str = ""
    """The teacher's model directory or id: supplies the tokenizer fingerprint and vocabulary size the labels are checked against."""
    out: str = ""
    """Output directory: an ordinary offline-kd output (shards, index, manifest with mode `imported`)."""
    shard_size: int = 256
    """Samples per shard."""

    def validate(self) -> "ImportConfig":
        check_choice("format", self.format, IMPORT_FORMATS)
        for name, value in (("--in", self.source), ("--teacher", self.teacher), ("--out", self.out)):
            if not value:
                raise ConfigError(f"{name} is required")
        if self.shard_size < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {self.shard_size}")
        return self
