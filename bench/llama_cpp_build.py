"""Install llama-cpp-python (it compiles llama.cpp) within a time limit, and record how it went.

`make llama-cpp` runs this: `pip install llama-cpp-python==VERSION` into the
running interpreter's environment, stopped after --time-limit seconds. Writes
bench/results/llama_cpp_build.json with the machine, the command, the seconds,
the exit status, how far the compilation got (the last `[n/m]` step of the
build log) and the end of the log, whether it built or not: on a small
machine the build may not fit, and bench-deploy then reports no llama.cpp speed.

    python -m bench.llama_cpp_build --version 0.3.36 --time-limit 1500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pipeline.machine import describe_machine

STEP = re.compile(r"\[(\d+)/(\d+)\]")
CMAKE_ARGS = ("-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_CURL=OFF "
              "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
              "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF")
"""Not -march=native: a native build here used the AMX instructions the CPU advertises, and
decoding died of SIGILL (a virtual machine that reports AMX without enabling it); AVX2 runs
on any x86-64 machine of the last decade."""


def build_progress(log: str) -> dict[str, int] | None:
    """The last `[done/total]` step the build printed, if any.

    >>> build_progress("[1/9] cc a.c\\n[2/9] cc b.c\\nlinking")
    {'done': 2, 'total': 9}
    """
    steps = STEP.findall(log)
    return {"done": int(steps[-1][0]), "total": int(steps[-1][1])} if steps else None


def install(version: str, time_limit: float, log_path: Path) -> dict[str, Any]:
    """Run pip with the time limit (the whole process group is stopped at the limit, so no
    compiler outlives it), its output in `log_path`; the outcome as a results row."""
    command = [sys.executable, "-m", "pip", "install", "-v", "--force-reinstall", "--no-deps",
               "--no-cache-dir", f"llama-cpp-python=={version}"]
    env = os.environ | {"CMAKE_ARGS": CMAKE_ARGS}
    tick = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=time_limit), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            rc, timed_out = proc.wait(), True
    log = log_path.read_text(errors="replace")
    return {"version": version, "cmake_args": CMAKE_ARGS, "seconds": time.time() - tick,
            "time_limit": time_limit,
            "returncode": rc, "timed_out": timed_out, "built": rc == 0 and not timed_out,
            "progress": build_progress(log), "log_tail": log.strip().splitlines()[-15:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.3.36")
    parser.add_argument("--time-limit", type=float, default=1500)
    parser.add_argument("--out", default="bench/results/llama_cpp_build.json")
    parser.add_argument("--log", default="/tmp/llama_cpp_build.log")
    args = parser.parse_args()
    result = {"machine": describe_machine(), "command": " ".join(sys.argv),
              "load_average_at_start": os.getloadavg()[0], **install(args.version, args.time_limit,
                                                                      Path(args.log))}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"llama-cpp-python {args.version}: built={result['built']} in "
          f"{result['seconds']:.0f} s; wrote {args.out}")
    sys.exit(0 if result["built"] else 1)


if __name__ == "__main__":
    main()
