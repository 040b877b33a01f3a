"""`kd export-model --format gguf`: a student as one GGUF file (llama.cpp, Ollama) with its tokenizer and chat template.

The conversion is llama.cpp's own convert_hf_to_gguf.py, run as a child
process with the gguf-py it ships with (`make setup` takes both from
llama-cpp-python's source distribution on PyPI, the only release of that
script there; the `gguf` wheel alone has the writer but no Hugging Face
converter). We add what a pipeline needs around it: the architecture checked
first (Llama only, refused by name otherwise), the file written beside its
final path and renamed into place, and read back with the `gguf` reader so a
file without a tokenizer is never committed.

    kd export-model --model data/student/demo/model --quant q8_0 --out data/student/demo/model-q8_0.gguf
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipeline.interop.gguf_model import GGUFExportError, GGUFSummary, check_gguf_architecture, \
    read_gguf_summary
from pipeline.store.atomic_commit import commit_path
from pipeline.student.qat import QUANTIZED_MARK
from schemas.deploy_config import ModelExportConfig

CONVERTER_SCRIPT = "convert_hf_to_gguf.py"


def converter_script(given: str | None) -> Path:
    """llama.cpp's convert_hf_to_gguf.py: --converter, $KD_LLAMA_CPP, or <venv>/share/llama.cpp."""
    root = Path(given or os.environ.get("KD_LLAMA_CPP") or Path(sys.prefix) / "share" / "llama.cpp")
    script = root / CONVERTER_SCRIPT
    if not script.is_file():
        raise GGUFExportError(f"no llama.cpp converter at {script}: run `make setup` (it extracts "
                              "it from llama-cpp-python's source distribution) or pass "
                              "--converter DIR")
    return script


def check_exportable(model: Path) -> str:
    """The student's GGUF architecture; refuse a directory that is no float Llama student."""
    if not (model / "config.json").is_file():
        raise GGUFExportError(f"--model {model}: no config.json (give a Hugging Face model "
                              "directory, e.g. <out>/model of kd train-student)")
    if (model / QUANTIZED_MARK).is_file():
        raise GGUFExportError(f"--model {model} holds torchao-quantized weights; export the float "
                              f"model/ of the same run (trained through the quantizer) with "
                              "--quant q8_0")
    architecture = check_gguf_architecture(json.loads((model / "config.json").read_text()),
                                           str(model))
    if not (model / "tokenizer.json").is_file() and not (model / "tokenizer.model").is_file():
        raise GGUFExportError(f"--model {model}: no tokenizer (tokenizer.json); a GGUF file "
                              "carries its tokenizer")
    return architecture


def run_export_model(cfg: ModelExportConfig) -> GGUFSummary:
    """Convert --model to --out at --quant with llama.cpp's converter; return what the file holds."""
    cfg.validate()
    model, out = Path(cfg.model), Path(cfg.out)
    architecture = check_exportable(model)
    if out.exists() and not cfg.overwrite:
        raise GGUFExportError(f"--out {out} exists: pass --overwrite to replace it")
    script = converter_script(cfg.converter)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(script), str(model), "--outfile", str(tmp),
                           "--outtype", cfg.quant], capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GGUFExportError(f"llama.cpp's converter failed on {model}: {last}")
    summary = read_gguf_summary(tmp)
    if summary.architecture != architecture or not summary.tokens:
        tmp.unlink(missing_ok=True)
        raise GGUFExportError(f"the converter wrote {summary.line()} for {model}; expected a "
                              f"{architecture} model with its tokenizer")
    commit_path(tmp, out)
    return summary
