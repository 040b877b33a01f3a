"""Write shards on a background thread so that generation never waits for disk.

The generation loop `submit()`s finished shards; a single writer thread packs
them into HDF5 (h5py releases the GIL during I/O), commits each file, then
calls `on_commit` (the stage updates and rewrites the manifest there). The
queue is bounded, so a slow disk applies back-pressure instead of growing
memory. An exception on the writer thread is re-raised in the caller at the
next `submit()` or at `close()`: no failure is silent.

    >>> from pipeline.teacher.background_writer import BackgroundWriter
    >>> done = []
    >>> with BackgroundWriter(lambda job: job * 2, on_commit=done.append) as w:
    ...     w.submit(21)
    >>> done
    [42]
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

_STOP = object()


class BackgroundWriter:
    """One daemon thread running `write(job)` then `on_commit(result)` for each submitted job, in order."""

    def __init__(self, write: Callable[[Any], Any], on_commit: Callable[[Any], None],
                 max_pending: int = 2):
        self._write, self._on_commit = write, on_commit
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (job := self._queue.get()) is not _STOP:
            if self._error is None:
                try:
                    self._on_commit(self._write(job))
                except BaseException as exc:  # surfaced in the caller's thread
                    self._error = exc
            self._queue.task_done()
        self._queue.task_done()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"shard writer failed: {self._error}") from self._error

    def submit(self, job: Any) -> None:
        """Queue a job; blocks while `max_pending` jobs are waiting."""
        self._raise_if_failed()
        self._queue.put(job)

    def close(self) -> None:
        """Wait for every queued job to be written and committed; re-raise a writer failure."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_if_failed()

    def __enter__(self) -> "BackgroundWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
