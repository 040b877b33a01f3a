"""Tokens per second of a GGUF file under llama.cpp, through llama-cpp-python where it is installed.

llama-cpp-python compiles llama.cpp when it is installed (`make llama-cpp`:
minutes of C++ on a small machine), so it is optional: without it
`tokens_per_second` returns None and `llama_cpp_status` says why, which the
deployment benchmark records in its results.

    python -m bench.llama_cpp_speed /tmp/student-f16.gguf /tmp/student-q8_0.gguf \
        --repeats 3 --out bench/results/llama_cpp_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

PROMPT = "The history of the printing press begins"


def llama_cpp_status() -> dict[str, Any]:
    """Whether llama-cpp-python imports here, its version, and a sentence for the results."""
    try:
        import llama_cpp
    except ImportError as err:
        return {"installed": False,
                "note": f"llama-cpp-python is not installed here ({err}); `make llama-cpp` "
                        "builds it (it compiles llama.cpp from source), after which bench-deploy "
                        "measures the GGUF student's tokens per second"}
    return {"installed": True, "version": llama_cpp.__version__,
            "note": f"llama-cpp-python {llama_cpp.__version__}, CPU, "
                    f"{os.cpu_count()} threads, greedy decoding"}


def tokens_per_second(path: Path, new_tokens: int) -> dict[str, float] | None:
    """Prompt and generation speed of the GGUF file at `path` (None without llama-cpp-python).

    Greedy decoding of `new_tokens` tokens after PROMPT, once to warm up and once timed; the
    generation may stop early at an end-of-text token, so the count is what was generated.
    """
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(model_path=str(path), n_ctx=512, n_threads=os.cpu_count(), seed=0,
                verbose=False)
    prompt = llm.tokenize(PROMPT.encode(), add_bos=True)
    generate(llm, prompt, new_tokens)
    llm.reset()
    tick = time.perf_counter()
    llm.eval(prompt)
    prompt_seconds = time.perf_counter() - tick
    llm.reset()
    generated, seconds = generate(llm, prompt, new_tokens)
    return {"prompt_tokens": len(prompt), "prompt_tokens_per_second": len(prompt) / prompt_seconds,
            "generated_tokens": generated, "seconds": seconds,
            "tokens_per_second": generated / seconds}


def generate(llm: Any, prompt: list[int], new_tokens: int) -> tuple[int, float]:
    """(tokens generated, seconds) of greedy decoding, prompt processing included."""
    tick = time.perf_counter()
    count = 0
    for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
        count += 1
        if count >= new_tokens or token == llm.token_eos():
            break
    return count, time.perf_counter() - tick


def main() -> None:
    """Each GGUF file's speed, --repeats times, written with the machine and the command."""
    from pipeline.interop.gguf_model import read_gguf_summary
    from pipeline.machine import describe_machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gguf", nargs="+", type=Path)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/llama_cpp_speed.json")
    args = parser.parse_args()
    status = llama_cpp_status()
    if not status["installed"]:
        raise SystemExit(status["note"])
    files = [{"file": path.name, "bytes": path.stat().st_size,
              "tensor_types": read_gguf_summary(path).tensor_types,
              "runs": [tokens_per_second(path, args.new_tokens) for _ in range(args.repeats)]}
             for path in args.gguf]
    result = {"machine": describe_machine(), "command": " ".join(sys.argv),
              "llama_cpp": status, "new_tokens": args.new_tokens, "files": files}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
