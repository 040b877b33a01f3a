"""K-quants for `kd export-model --quant q4_k_m` (and q4_0, q5_k_m, q6_k, ...): llama.cpp's own quantizer through llama-cpp-python.

The gguf package (what llama.cpp's Python converter writes with) has no
K-quant writer; llama.cpp's C++ `llama_model_quantize` has, and
llama-cpp-python binds it. That package compiles llama.cpp when installed, so it
is optional (`make llama-cpp`): without it a K-quant export is refused with
the way to get one. The quantizer reads the f16 file the converter wrote.

    kd export-model --model data/student/demo/model --quant q4_k_m --out /tmp/student-q4_k_m.gguf
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from pipeline.interop.gguf_model import GGUFExportError


def require_llama_cpp(quant: str) -> None:
    """Refuse a K-quant export before any work when llama-cpp-python does not import."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as err:
        raise GGUFExportError(
            f"--quant {quant} is written by llama.cpp's quantizer, through llama-cpp-python, "
            f"which is not installed here ({err}): run `make llama-cpp` (it compiles llama.cpp), "
            f"or export --quant f16 and run `llama-quantize model-f16.gguf model-{quant}.gguf "
            f"{quant.upper()}`") from None


def quantize_gguf(source: Path, target: Path, quant: str) -> None:
    """Write `target`, the GGUF file at `source` (f16) quantized to `quant` by llama.cpp."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = os.cpu_count() or 1
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(),
                                            ctypes.byref(params))
    if status != 0:
        raise GGUFExportError(f"llama.cpp's quantizer failed ({status}) on {source} -> {quant}")
