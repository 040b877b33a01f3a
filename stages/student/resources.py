"""Device memory of the training process, for the per-step metrics and the memory alarm.

On a GPU: the peak memory allocated by torch since the previous call, against
the card's total. On CPU: the process's peak resident set (it only grows),
against the machine's RAM.

    python -c "import torch; from stages.student.resources import memory_use; print(memory_use(torch.device('cpu')))"
"""

from __future__ import annotations

import os
import resource

import torch


def memory_use(device: torch.device) -> tuple[float, float]:
    """(peak bytes in use since the last call (CPU: since start), total bytes of the device)."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        return float(peak), float(torch.cuda.get_device_properties(device).total_memory)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return float(peak), float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
