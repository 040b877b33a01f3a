"""Peak memory of a phase of a benchmark: resident set (CPU) or CUDA allocator peak.

`PeakMemory` samples /proc/self/statm from a thread every 2 ms while its
`with` block runs (the kernel's own peak, ru_maxrss, covers the whole process
lifetime, so it cannot tell two phases of one process apart); on CUDA it reads
the allocator's peak, reset at entry.

    with PeakMemory(device) as peak:
        run_steps()
    print(peak.mb)
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


class PeakMemory:
    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()

    @property
    def mb(self) -> float:
        return self.peak / 2**20
