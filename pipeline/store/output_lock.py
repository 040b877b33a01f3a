"""One writer per output directory: an exclusive `flock` held for a whole run.

Every command that writes an output directory (`kd teacher-labels --out`,
`kd train-student --out`) takes the lock first, before any engine starts, and
keeps it to the end; a second writer is refused at once, naming the holder
(host, pid, start time, command line, recorded in the lock file). The kernel
drops a flock when its process dies, so a lock left by a killed run on this
host is simply taken over, with a warning naming the dead holder. A lock file
naming another host cannot be checked from here (flock over NFS or Lustre may
not reach other clients): it is refused with what to do. Readers (`kd verify`,
`kd inspect`, a student reading labels) never take it: they read only what
the manifest or a checkpoint has committed.

    >>> import tempfile
    >>> from pipeline.store.output_lock import OutputLock
    >>> with OutputLock(tempfile.mkdtemp()) as lock:
    ...     lock.path.name
    '.kd-writer.lock'
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

LOCK_NAME = ".kd-writer.lock"


class OutputLocked(RuntimeError):
    """Another run writes this output directory; the message names it and what to do."""


def describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command')})")


class OutputLock:
    """`with OutputLock(out):` holds the writer lock of `out` (created if missing)."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK_NAME
        self._fd: int | None = None

    def _holder(self, fd: int) -> dict[str, Any]:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 1 << 16).decode("utf-8", "replace").strip()
        try:
            return json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {"command": text[:200]}

    def acquire(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise OutputLocked(f"{self.out} is being written by another run: {describe(holder)}; "
                               "wait for it to end or stop it (kd verify and other readers need "
                               "no lock)") from None
        holder = self._holder(fd)
        if holder and holder.get("host") != socket.gethostname():
            os.close(fd)
            raise OutputLocked(
                f"{self.out} holds the writer lock of {describe(holder)}, which this host cannot "
                f"check; if that run has ended, delete {self.path} and rerun (on NFS or Lustre "
                "give each host its own output directory)")
        if holder and holder.get("pid") != os.getpid():
            print(f"warning: taking over the writer lock of {self.out} left by {describe(holder)}, "
                  "which no longer holds it (killed?)", file=sys.stderr)
        record = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Clear the holder record (a clean end leaves nothing to take over) and unlock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass  # a full or vanished disk: the kernel still drops the lock below
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
