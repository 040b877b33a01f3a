"""Keep the vLLM engine's INFO lines out of the terminal: they go to `<out>/engine.log`.

vLLM configures its `vllm` logger when first imported, in this process and in
every engine process it spawns (which inherit the environment), from the
dict config named by VLLM_LOGGING_CONFIG_PATH. `route_engine_logs` writes such
a config (INFO and above to `<out>/engine.log`, WARNING and above to stderr)
before vLLM is imported, so the spawned engine core and its workers log to the
same file. Torch's C++ warnings (TORCH_CPP_LOG_LEVEL) and Python
FutureWarnings of those processes, which speak to vLLM's developers and not to
a user, are silenced the same way. With `kd --verbose` nothing changes.

`quiet_transformers` drops transformers' per-model progress bars ("Loading
weights", "Writing model shards") from the student stage's terminal.

    python -c "from stages.cli.engine_logs import route_engine_logs; print(route_engine_logs('/tmp/x', False))"
"""

from __future__ import annotations

import atexit
import json
import logging.config
import os
import tempfile
from pathlib import Path

ENGINE_LOG = "engine.log"


def logging_config(log_file: Path) -> dict:
    """A logging dict config: the `vllm` logger's INFO to `log_file`, its WARNING+ to stderr."""
    plain = {"format": "%(levelname)s %(asctime)s %(process)d [%(filename)s:%(lineno)d] %(message)s",
             "datefmt": "%m-%d %H:%M:%S"}
    return {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": plain, "short": {"format": "vLLM %(levelname)s: %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "mode": "a",
                     "delay": True, "level": "INFO", "formatter": "plain"},
            "terminal": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                         "level": "WARNING", "formatter": "short"},
        },
        "loggers": {"vllm": {"handlers": ["file", "terminal"], "level": "INFO",
                             "propagate": False}},
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
    config = logging_config(out.resolve() / ENGINE_LOG)
    fd, path = tempfile.mkstemp(prefix="kd-engine-logging-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(config, fh)
    # The engine processes read it when they start; it is not needed after this one exits.
    atexit.register(remove_quietly, path)
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
