"""SIGTERM (preemption) handling: finish what is committed, then exit non-zero.

Spot and preemptible machines get SIGTERM some seconds before SIGKILL. Inside
`PreemptionGuard` a SIGTERM only sets a flag; the stage checks it between
shards, lets the shards already handed to the writer commit, discards the
ones still generating, writes the manifest and raises `Preempted`, which the
CLI turns into exit status 143 (128 + SIGTERM). The next run resumes.

    with PreemptionGuard() as guard:
        for shard in shards:
            if guard.requested: raise Preempted("...")
"""

from __future__ import annotations

import signal
import threading
from typing import Any

EXIT_PREEMPTED = 128 + signal.SIGTERM


class Preempted(RuntimeError):
    """The run stopped early on SIGTERM after committing its finished shards."""


class PreemptionGuard:
    """Turns SIGTERM into a flag for the duration of a `with` block (main thread only)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
