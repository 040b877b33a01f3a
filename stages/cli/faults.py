"""How a stage ends when something outside it fails: one line, a distinct exit status.

A full disk, a permission or read-only error, an I/O error, a file or folder
that vanished, or memory running out is not a bug of ours and not bad usage:
the user reads one line naming the cause, the path, what was already committed
and the exact command that resumes, and the process exits with
`EXIT_ENVIRONMENT` (74, sysexits' EX_IOERR). `kd --verbose` adds the traceback.

    >>> import errno
    >>> environment_cause(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    >>> environment_cause(ValueError("bad flag")) is None
    True
"""

from __future__ import annotations

import errno
import shlex
import sys
from pathlib import Path

EXIT_ENVIRONMENT = 74
"""The environment failed (disk, permissions, I/O, memory); rerun once it is fixed."""
EXIT_LOCKED = 75
"""Another run holds the output's writer lock (sysexits' EX_TEMPFAIL: try again later)."""

CAUSES = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system", errno.EIO: "I/O error",
    errno.ENOENT: "no such file or directory (moved or deleted while running?)",
}


def environment_error(exc: BaseException) -> tuple[BaseException, str] | None:
    """The environment fault behind `exc` (itself or what it was raised from, e.g. through the
    background shard writer) and its cause, or None."""
    seen: BaseException | None = exc
    while seen is not None:
        cause = environment_cause(seen)
        if cause is not None:
            return seen, cause
        seen = seen.__cause__ or seen.__context__
    return None


def environment_cause(exc: BaseException) -> str | None:
    """What in the environment failed, or None when `exc` is not an environment fault."""
    if isinstance(exc, MemoryError):
        return "out of host memory"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return "out of device memory (lower --batch-tokens or --loss-chunk)"
    if isinstance(exc, OSError):
        return CAUSES.get(exc.errno)
    return None


def fault_path(exc: BaseException, fallback: str) -> str:
    """The file the error names (h5py's messages carry it in the text), else the output."""
    if isinstance(exc, OSError) and exc.filename:
        return str(exc.filename)
    text = str(exc)
    for marker in ("name = '", "filename = '"):
        if marker in text:
            return text.split(marker, 1)[1].split("'", 1)[0]
    return fallback


def resume_command(add: tuple[str, ...] = (), drop: tuple[str, ...] = ()) -> str:
    """This process's own command line as `kd ...`, with flags added or dropped."""
    args = [a for a in sys.argv[1:] if a not in drop]
    args += [a for a in add if a not in args]
    return shlex.join(["kd", *args])


def teacher_committed(out: str | Path) -> str:
    from pipeline.store.manifest import ManifestError, read_manifest

    try:
        m = read_manifest(out)
    except ManifestError:
        return f"nothing yet in {out}"
    t = m.totals()
    return (f"{t['shards']} shard(s), {t['samples']} samples in {out} "
            f"(kd verify {out} checks them)")


def student_committed(out: str | Path) -> str:
    from pipeline.student.checkpoint import latest_checkpoint

    latest = latest_checkpoint(Path(out) / "checkpoints")
    return f"checkpoint {latest.name} in {latest.parent}" if latest else f"no checkpoint yet in {out}"
