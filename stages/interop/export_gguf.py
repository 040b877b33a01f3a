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

K-quants (q4_k_m, ...) go through f16 and llama.cpp's quantizer
(`stages.interop.llama_quantize`, llama-cpp-python: optional).
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
from schemas.deploy_config import K_QUANTS, ModelExportConfig
from stages.interop.llama_quantize import quantize_gguf, require_llama_cpp

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
    """Convert --model to --out at --quant with llama.cpp's converter (a K-quant: to f16, then
    llama.cpp's quantizer); return what the file holds."""
    cfg.validate()
    model, out = Path(cfg.model), Path(cfg.out)
    architecture = check_exportable(model)
    if out.exists() and not cfg.overwrite:
        raise GGUFExportError(f"--out {out} exists: pass --overwrite to replace it")
    k_quant = cfg.quant in K_QUANTS
    if k_quant:
        require_llama_cpp(cfg.quant)
    script = converter_script(cfg.converter)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    converted = out.with_name(f".{out.name}.f16.tmp") if k_quant else tmp
    for path in {tmp, converted}:
        path.unlink(missing_ok=True)
    try:
        convert(script, model, converted, "f16" if k_quant else cfg.quant)
        if k_quant:
            quantize_gguf(converted, tmp, cfg.quant)
        summary = read_gguf_summary(tmp)
        if summary.architecture != architecture or not summary.tokens:
            raise GGUFExportError(f"the converter wrote {summary.line()} for {model}; expected a "
                                  f"{architecture} model with its tokenizer")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if k_quant:
            converted.unlink(missing_ok=True)
    commit_path(tmp, out)
    return summary


def convert(script: Path, model: Path, target: Path, outtype: str) -> None:
    """llama.cpp's converter as a child process; its last error line when it fails."""
    proc = subprocess.run([sys.executable, str(script), str(model), "--outfile", str(target),
                           "--outtype", outtype], capture_output=True, text=True)
    if proc.returncode != 0:
        target.unlink(missing_ok=True)
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise GGUFExportError(f"llama.cpp's converter failed on {model}: {last}")
