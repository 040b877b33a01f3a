"""No orphans: every process a `kd` command starts dies with the process that started it.

vLLM runs its engine core in a process it starts with multiprocessing, and the
engine core starts its worker the same way. Killed with SIGKILL, `kd` gets no
chance to stop them, and they kept running (on a GPU, holding its memory). The
kernel can do it instead: `prctl(PR_SET_PDEATHSIG, SIGKILL)` asks for SIGKILL
when the parent dies, whatever killed it. `install()` (run when `stages.cli.main`
is imported) arranges that each child asks for it first thing:

- a *spawned* child (vLLM's engine core and worker) re-imports the parent's
  main module before anything else, so `stages.cli.main` runs `install()` in
  it, which sees `--multiprocessing-fork` in the interpreter's argv and asks at once;
- a *forked* child (DataLoader workers, vLLM with VLLM_WORKER_MULTIPROC_METHOD
  fork) runs the `os.register_at_fork` hook registered here.

A parent that died before the child asked leaves it reparented (to init or a
subreaper): each kd process leaves its pid in KD_PARENT_PID for its children,
which compare it with their parent after asking (not with pid 1: kd may itself
be pid 1 in a container). The signal fires when
the *thread* that started the child exits: every process kd starts comes from
a main thread. In a spawned child `install()` also configures logging from
`VLLM_LOGGING_CONFIG_PATH` (`stages.cli.engine_logs`) before vLLM is imported,
so no warning reaches the terminal unformatted and unfiltered, and a child
that fails logs its traceback there instead of printing it. The parent-death
signal is Linux only; elsewhere it does nothing.

    python -c "from stages.cli.child_process import die_with_parent; print(die_with_parent())"
"""

from __future__ import annotations

import ctypes
import json
import logging.config
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_VARIABLE = "KD_PARENT_PID"
"""The pid of the process that started this one (each kd process sets it for its children)."""


def die_with_parent() -> bool:
    """Ask the kernel for SIGKILL when this process's parent dies; whether it was granted.
    Exits at once when the parent (the pid it left in PARENT_PID_VARIABLE) is already gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        granted = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(PARENT_PID_VARIABLE, "")
    if expected.isdigit() and os.getppid() != int(expected):
        os._exit(1)  # orphaned (reparented) before the request took effect
    os.environ[PARENT_PID_VARIABLE] = str(os.getpid())  # what this process's children check
    return granted


def spawned_child() -> bool:
    """A process multiprocessing started with spawn that is still setting up (its `sys.argv`
    is already the parent's by then: the interpreter's own argv tells)."""
    return "--multiprocessing-fork" in getattr(sys, "orig_argv", sys.argv)


def configure_child_logging() -> None:
    """The logging config `route_engine_logs` wrote, applied before vLLM configures its own."""
    path = os.environ.get("VLLM_LOGGING_CONFIG_PATH")
    if not path or os.environ.get("VLLM_CONFIGURE_LOGGING") != "1":
        return
    try:
        with open(path) as fh:
            logging.config.dictConfig(json.load(fh))
    except (OSError, ValueError):
        pass  # vLLM's own configuration still applies when it is imported


def log_instead_of_printing_tracebacks() -> None:
    """A child whose target raises prints `Process NAME:` and the traceback to the terminal
    (multiprocessing's bootstrap); log it instead (the traceback to engine.log, one line to the
    terminal: `stages.cli.engine_logs`) and exit with the same status 1."""
    from multiprocessing.process import BaseProcess

    run = BaseProcess.run

    def logged_run(self: BaseProcess) -> None:
        try:
            run(self)
        except Exception:
            logging.getLogger("vllm.kd").error("process %s failed", self.name, exc_info=True)
            sys.exit(1)
    BaseProcess.run = logged_run  # type: ignore[method-assign]


def install() -> None:
    """In a `kd` process: make every child it forks die with it; in a spawned child: do it now."""
    os.register_at_fork(after_in_child=die_with_parent)
    if not spawned_child():
        os.environ[PARENT_PID_VARIABLE] = str(os.getpid())
    else:
        die_with_parent()
        if os.environ.get("VLLM_LOGGING_CONFIG_PATH"):  # not with kd --verbose
            configure_child_logging()
            log_instead_of_printing_tracebacks()
