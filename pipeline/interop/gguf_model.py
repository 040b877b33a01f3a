"""Which students `kd export-model --format gguf` covers, and what a written GGUF file holds.

The conversion itself is llama.cpp's own (`stages.interop.export_gguf` runs
its convert_hf_to_gguf.py); this module decides beforehand whether a student
is one we cover (Llama architecture: the embedded teacher's family, tested end
to end) and reads the file back afterwards with the `gguf` package's reader,
so the export can refuse a file without a tokenizer.

    >>> from pipeline.interop.gguf_model import check_gguf_architecture
    >>> check_gguf_architecture({"architectures": ["LlamaForCausalLM"]}, "m")
    'llama'
    >>> check_gguf_architecture({"architectures": ["GPT2LMHeadModel"]}, "m")
    Traceback (most recent call last):
    ...
    pipeline.interop.gguf_model.GGUFExportError: --model m is a GPT2LMHeadModel; kd export-model --format gguf covers LlamaForCausalLM students only (tested round trip)
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COVERED_ARCHITECTURES = {"LlamaForCausalLM": "llama"}
"""Hugging Face architecture -> GGUF `general.architecture`, for those whose round trip is tested."""


class GGUFExportError(ValueError):
    """A student cannot be exported, or the file written is not what was asked; names which."""


def check_gguf_architecture(config: dict[str, Any], source: str) -> str:
    """The GGUF architecture of a covered student (its config.json as a dict); refuse others by name."""
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    for name in names:
        if name in COVERED_ARCHITECTURES:
            return COVERED_ARCHITECTURES[name]
    raise GGUFExportError(f"--model {source} is a {', '.join(names)}; kd export-model --format gguf "
                          f"covers {', '.join(COVERED_ARCHITECTURES)} students only (tested round "
                          "trip)")


@dataclass(frozen=True)
class GGUFSummary:
    """What a GGUF file holds, as its own metadata says."""

    architecture: str
    tensor_types: dict[str, int]
    """GGML tensor type -> number of tensors of that type."""
    tokens: int
    tokenizer_model: str
    chat_template: str | None
    bytes: int

    def line(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items()))
        template = "chat template" if self.chat_template else "no chat template"
        return (f"{self.architecture}, {types} tensors, {self.tokenizer_model} tokenizer of "
                f"{self.tokens} tokens, {template}, {self.bytes / 2**20:.1f} MiB")


def field_value(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_gguf_summary(path: Path) -> GGUFSummary:
    """Read a GGUF file's architecture, tensor types, tokenizer and chat template (gguf's reader)."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return GGUFSummary(architecture=field_value(reader, "general.architecture") or "unknown",
                       tensor_types=dict(types),
                       tokens=0 if tokens is None else len(tokens.data),
                       tokenizer_model=field_value(reader, "tokenizer.ggml.model") or "no",
                       chat_template=field_value(reader, "tokenizer.chat_template"),
                       bytes=Path(path).stat().st_size)
