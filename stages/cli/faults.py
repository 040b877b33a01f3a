"""How a stage ends when something outside it fails: one line, a distinct exit status.

A full disk, a permission or read-only error, an I/O error, a file or folder
that vanished, memory running out, a model folder that is not there, a corrupt
checkpoint or HDF5 file, or a vLLM engine that cannot start (its KV cache
larger than memory) is not a bug of ours and not bad usage: the user reads one
line naming the cause, the path, what was already committed and the exact
command that resumes, and the process exits with `EXIT_ENVIRONMENT` (74,
sysexits' EX_IOERR). `kd --verbose` adds the traceback.

Libraries report several of these without an errno (transformers' OSError for
a missing model, h5py's for an unreadable file, safetensors' and vLLM's own
errors), so they are recognised by their text (`TEXT_CAUSES`, one list). The
engine core runs in a process of its own: when it fails to start, the parent
only learns that it did, so the cause is read from the end of `<out>/engine.log`.
An exception carrying a `fault_cause` attribute is an environment fault with
that cause (how `stages` checks say so without importing this module).

    >>> import errno
    >>> environment_cause(OSError(errno.ENOSPC, "No space left on device"))
    'no space left on device'
    >>> environment_cause(ValueError("bad flag")) is None
    True
    >>> environment_cause(OSError("Unable to synchronously open file (truncated file: eof = 96)"))
    'HDF5 file unreadable (truncated or corrupt): run kd verify on its output, regenerate or copy it again'
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


KV_CACHE = ("the KV cache needs more memory than the engine has: lower --max-model-len, or give "
            "it more (--kv-cache-gib on CPU, --gpu-memory-utilization on a GPU)")
HDF5 = ("HDF5 file unreadable (truncated or corrupt): run kd verify on its output, regenerate or "
        "copy it again")
TEXT_CAUSES = (
    ("larger than the available KV cache memory", KV_CACHE),
    ("No available memory for the cache blocks", KV_CACHE),
    ("insufficient memory for KV cache", KV_CACHE),
    ("less than requested memory for kv", KV_CACHE),  # the CPU build's words
    ("Error while deserializing header", "corrupt safetensors file (truncated or partly copied): "
                                         "copy the checkpoint again"),
    ("GGUF", "unreadable GGUF file (truncated, or not GGUF): copy or convert the checkpoint again"),
    ("Unable to synchronously open file", HDF5), ("Unable to open file", HDF5),
    ("Can't synchronously read data", HDF5), ("Can't read data", HDF5),
    ("couldn't connect to 'https://huggingface.co'", "not a local folder, and the hub cannot be "
                                                      "reached: pass a local checkpoint directory"),
)
"""(text in a library's message, the cause a user reads) for faults raised without an errno."""
ENGINE_START_FAILED = "Engine core initialization failed"
ENGINE_LOG_TAIL = 1 << 16


def environment_error(exc: BaseException, engine_log: Path | None = None
                      ) -> tuple[BaseException, str] | None:
    """The environment fault behind `exc` (itself or what it was raised from, e.g. through the
    background shard writer) and its cause, or None. `engine_log` is where a vLLM engine that
    failed to start wrote why."""
    seen: BaseException | None = exc
    while seen is not None:
        cause = environment_cause(seen)
        if cause is None and ENGINE_START_FAILED in str(seen):
            cause = engine_start_cause(engine_log)
        if cause is not None:
            return seen, cause
        seen = seen.__cause__ or seen.__context__
    return None


def environment_cause(exc: BaseException) -> str | None:
    """What in the environment failed, or None when `exc` is not an environment fault."""
    if isinstance(getattr(exc, "fault_cause", None), str):
        return exc.fault_cause
    if isinstance(exc, MemoryError):
        return "out of host memory"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError, without importing torch
        return "out of device memory (lower --batch-tokens or --loss-chunk)"
    if isinstance(exc, OSError) and exc.errno in CAUSES:
        return CAUSES[exc.errno]
    if isinstance(exc, (OSError, RuntimeError, ValueError)):
        # args, not str(): an OSError given a filename afterwards prints only that.
        return text_cause(" ".join(map(str, exc.args)))
    return None


def text_cause(text: str) -> str | None:
    return next((cause for marker, cause in TEXT_CAUSES if marker in text), None)


def engine_start_cause(engine_log: Path | None) -> str:
    """Why the vLLM engine did not start, from the end of its log when it says."""
    where = f" (its log: {engine_log})" if engine_log else ""
    try:
        with open(engine_log, "rb") as fh:  # type: ignore[arg-type]
            fh.seek(max(0, fh.seek(0, 2) - ENGINE_LOG_TAIL))
            tail = fh.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        tail = ""
    cause = text_cause(tail)
    return (f"the vLLM engine did not start: {cause}" if cause
            else f"the vLLM engine did not start{where}")


class EnvironmentFault(OSError):
    """Raised by our own checks of the environment: a cause and the path it concerns."""

    def __init__(self, cause: str, path: str | Path):
        super().__init__(None, cause, str(path))
        self.fault_cause = cause


def fault_path(exc: BaseException, fallback: str) -> str:
    """The file the error names (h5py's messages carry it in the text), else the output."""
    if isinstance(exc, OSError) and exc.filename:
        return str(exc.filename)
    text = str(exc)
    for marker in ("name = '", "filename = '"):
        if marker in text:  # h5py's messages carry it in the text
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
