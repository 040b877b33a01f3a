"""Keep the vLLM engine's INFO lines out of the terminal: they go to `<out>/engine.log`.

vLLM configures its `vllm` logger when first imported, in this process and in
every engine process it spawns (which inherit the environment), from the
dict config named by VLLM_LOGGING_CONFIG_PATH. `route_engine_logs` writes such
a config (INFO and above to `<out>/engine.log`, WARNING and above to stderr)
before vLLM is imported, so the spawned engine core and its workers log to the
same file. Torch's C++ warnings (TORCH_CPP_LOG_LEVEL), its own logging's
warnings (TORCH_LOGS=-torch) and Python FutureWarnings of those processes, which speak to vLLM's developers and not to
a user, are silenced the same way. With `kd --verbose` nothing changes.

Warnings once: every engine process (this one, the engine core, its workers)
logs its own copy of the same warnings. `TerminalWarnings` filters the terminal
handler only (engine.log keeps every line): a warning known to be harmless on
this platform (`HARMLESS_WARNINGS`, the one list) never reaches the terminal,
and any other is shown the first time one of the command's processes logs it,
remembered in a file every process appends to under an exclusive lock.

`quiet_transformers` drops transformers' per-model progress bars ("Loading
weights", "Writing model shards") from the student stage's terminal.

    python -c "from stages.cli.engine_logs import route_engine_logs; print(route_engine_logs('/tmp/x', False))"
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging.config
import os
import tempfile
from pathlib import Path

ENGINE_LOG = "engine.log"
HARMLESS_WARNINGS = {
    "cpu": (
        "Triton is installed, but doesn't include CPU backend",  # no Triton kernels on CPU
        "Triton is not installed. triton-cpu is expected",
        "Model Runner V2 requires Triton",  # the V1 runner is what the CPU build runs
        "Inductor compilation was disabled by user settings",  # --enforce-eager, or eager on CPU
        "does not officially support disabling chunked prefill",  # ours: seeds need whole prefills
        "Reset SSM cache type to float32",  # a state-space-model setting; our teachers have none
        "Could not load this library",  # torchao's CUDA kernels (mxfp8, cutlass), absent on CPU
    ),
    "cuda": (),
}
"""vLLM warnings that say nothing a user can act on, by platform: engine.log only."""
QUIET_LOGGERS = (
    "torchao",  # "Failed to load ..._C_mxfp8...so": its CUDA kernels, absent on CPU
    "torch.utils._pytree",  # torchao's enum registration, deprecated in torch 2.13: not ours
)
"""Loggers of libraries imported by every student command (transformers imports torchao when
it is installed) whose warnings speak to those libraries' developers: errors only."""


def quiet_library_loggers() -> None:
    """Raise `QUIET_LOGGERS` to ERROR (before torch or torchao is imported; kd --verbose skips it)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


class NoTraceback(logging.Formatter):
    """The terminal's format: the message alone; a traceback stays in engine.log (the stage's
    own one-line fault names it), and `kd --verbose` prints it."""

    def format(self, record: logging.LogRecord) -> str:
        plain = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None,
                                       "stack_info": None})
        return super().format(plain)


class TerminalWarnings(logging.Filter):
    """Passes a record to the terminal unless it is harmless here or was already shown by one
    of this command's processes (`seen_file` holds a hash per line shown)."""

    def __init__(self, seen_file: str = "", harmless: list[str] | tuple[str, ...] = ()):
        super().__init__()
        self.seen_file, self.harmless = seen_file, tuple(harmless)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(fragment in message for fragment in self.harmless):
            return False
        return not self.seen_file or first_time(self.seen_file, f"{record.levelname} {message}")


def first_time(seen_file: str, line: str) -> bool:
    """Record `line` as shown; whether no process of this command showed it before."""
    key = hashlib.sha256(line.encode("utf-8", "replace")).hexdigest()
    try:
        with open(seen_file, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            fh.seek(0)
            if key in fh.read().split():
                return False
            fh.write(key + "\n")
            return True
    except OSError:
        return True  # showing a warning twice beats hiding it


def engine_platform() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def logging_config(log_file: Path, seen_file: str = "", platform: str = "cpu") -> dict:
    """A logging dict config: the `vllm` logger's INFO to `log_file`, its WARNING+ to stderr
    (each distinct line once per command, none of the platform's harmless ones)."""
    plain = {"format": "%(levelname)s %(asctime)s %(process)d [%(filename)s:%(lineno)d] %(message)s",
             "datefmt": "%m-%d %H:%M:%S"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": plain,
                       "short": {"()": "stages.cli.engine_logs.NoTraceback",
                                 "format": "vLLM %(levelname)s: %(message)s"}},
        "filters": {"once": {"()": "stages.cli.engine_logs.TerminalWarnings",
                             "seen_file": seen_file,
                             "harmless": list(HARMLESS_WARNINGS.get(platform, ()))}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "mode": "a",
                     "delay": True, "level": "INFO", "formatter": "plain"},
            "terminal": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                         "level": "WARNING", "formatter": "short", "filters": ["once"]},
        },
        "loggers": {
            "vllm": {"handlers": ["file", "terminal"], "level": "INFO", "propagate": False},
            # Imported by vLLM in every engine process, each with its own copy of a warning.
            "torchao": {"handlers": ["file", "terminal"], "level": "WARNING", "propagate": False},
        },
    }


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def route_engine_logs(out: str | Path, verbose: bool) -> Path | None:
    """Send vLLM's INFO lines (this process and the engine's) to `<out>/engine.log`; its path.

    Call before vLLM is imported (its engine processes read the config when they
    start); this process's `vllm` logger is configured here at once. Returns None
    with `verbose`.
    """
    if verbose:
        return None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Torch's Python-side warnings (glog-style, e.g. torchao's pytree registrations) set by
    # TORCH_LOGS before torch is first imported here; "-torch" keeps its errors.
    os.environ.setdefault("TORCH_LOGS", "-torch")
    fd, seen = tempfile.mkstemp(prefix="kd-engine-warnings-", suffix=".seen")
    os.close(fd)
    config = logging_config(out.resolve() / ENGINE_LOG, seen, engine_platform())
    fd, path = tempfile.mkstemp(prefix="kd-engine-logging-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    # The engine processes read them while they run; neither is needed after this one exits.
    atexit.register(remove_quietly, path)
    atexit.register(remove_quietly, seen)
    os.environ.update({"VLLM_CONFIGURE_LOGGING": "1", "VLLM_LOGGING_CONFIG_PATH": path,
                       "TORCH_CPP_LOG_LEVEL": "ERROR"})
    os.environ["PYTHONWARNINGS"] = ",".join(
        filter(None, [os.environ.get("PYTHONWARNINGS"), "ignore::FutureWarning"]))
    # Also here at once: some modules log while vLLM is still being imported, before it
    # reads the config file.
    logging.config.dictConfig(config)
    return out / ENGINE_LOG


def quiet_transformers(verbose: bool) -> None:
    """No transformers progress bars for loading or saving a model (kept with `verbose`)."""
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
