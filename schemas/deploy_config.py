"""Typed configuration of deployment: `kd export-model` (GGUF) and the QAT schemes of `kd train-student --qat`.

One dataclass per command, one field per CLI flag; `validate()` names the flag
in every error. The QAT schemes are listed here so that the student config
(which carries `--qat`) and the deployment docs name the same ones.

    >>> from schemas.deploy_config import ModelExportConfig
    >>> ModelExportConfig(model="m", out="m.gguf", quant="q8_0").validate().quant
    'q8_0'
    >>> ModelExportConfig(model="m", out="m.gguf", quant="q4_k_m").validate().quant
    'q4_k_m'
    >>> ModelExportConfig(model="m", out="m.gguf", quant="q4").validate()
    Traceback (most recent call last):
    ...
    schemas.config_base.ConfigError: --quant must be one of f32, f16, bf16, q8_0, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, q4_0, q4_1, q5_0, q5_1, got 'q4'
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.config_base import ConfigError, check_choice

MODEL_FORMATS = ("gguf",)
GGUF_QUANTS = ("f32", "f16", "bf16", "q8_0")
"""What llama.cpp's Python converter writes with the gguf package (its --outtype, ternary types aside)."""
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
            "q4_0", "q4_1", "q5_0", "q5_1")
"""What llama.cpp's C++ quantizer writes from the f16 file (through llama-cpp-python: optional)."""
QAT_SCHEMES = ("int8da-int4w", "int8w")
"""`int8da-int4w`: int8 dynamic per-token activations and int4 weights in groups (torchao's
Int8DynamicActivationIntxWeightConfig); `int8w`: int8 weights in groups, weight-only
(IntxWeightOnlyConfig), with --qat-group-size 32 the layout of GGUF's Q8_0 blocks."""


@dataclass
class ModelExportConfig:
    """What `kd export-model` reads and the deployable file it writes."""

    model: str = "data/student/demo/model"
    """The student to export: a Hugging Face model directory with its tokenizer (`<out>/model` of kd train-student, a --qat run's included: its weights are the float ones trained through the quantizer)."""
    format: str = "gguf"
    """File format: `gguf` (llama.cpp, Ollama), Llama-architecture students (LlamaForCausalLM: SmolLM2, Llama 2/3) only."""
    quant: str = "f16"
    """GGUF tensor type of the 2-D weights: f32, f16, bf16 or q8_0 (llama.cpp's converter; norms stay float32), or a K-quant such as q4_k_m (llama.cpp's quantizer on the f16 file, through llama-cpp-python: `make llama-cpp`)."""
    out: str = ""
    """The .gguf file to write (written beside and renamed into place)."""
    converter: str | None = None
    """Directory holding llama.cpp's convert_hf_to_gguf.py (with its conversion/ and gguf-py/); default: $KD_LLAMA_CPP, else <venv>/share/llama.cpp, where `make setup` puts the one released in llama-cpp-python's source distribution."""
    overwrite: bool = False
    """Replace an existing --out file."""

    def validate(self) -> "ModelExportConfig":
        if not self.model:
            raise ConfigError("--model is required (a Hugging Face model directory)")
        if not self.out:
            raise ConfigError("--out is required (the .gguf file to write)")
        check_choice("format", self.format, MODEL_FORMATS)
        check_choice("quant", self.quant, GGUF_QUANTS + K_QUANTS)
        return self
