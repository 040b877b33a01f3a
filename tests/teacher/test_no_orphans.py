"""No orphans: killing `kd teacher-labels` mid-generation leaves none of its processes running.

The real vLLM engine (its engine core and worker are processes of their own) runs
until it is generating; then only the `kd` process is killed, with SIGKILL (no
chance to clean up: the kernel's parent-death signal must do it, see
`stages.cli.child_process`) or SIGTERM (preemption: `kd` commits the shards in
flight, then exits 143). Within 10 s of `kd`'s exit no process of the tree
recorded before the signal may remain, checked with `ps`, by pid and start
time (so a reused pid is not mistaken for a survivor). The same runs check that
no vLLM warning reached the terminal twice or was one of the harmless ones.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest

import stages.cli.main  # noqa: F401  (as in kd: children of this process die with it)
from conftest import ROOT, TEACHER, require_teacher

PR_GET_PDEATHSIG = 2

GRACE_S = 10
PREEMPTION_S = 300


def report_parent_death_signal(queue) -> None:
    sig = ctypes.c_int()
    ctypes.CDLL(None).prctl(PR_GET_PDEATHSIG, ctypes.byref(sig), 0, 0, 0)
    queue.put(sig.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux feature")
@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_children_ask_to_die_with_their_parent(method):
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=report_parent_death_signal, args=(queue,))
    child.start()
    assert queue.get(timeout=120) == signal.SIGKILL
    child.join()


def test_a_child_whose_parent_already_died_exits_at_once():
    """Reparented before it could ask: its parent is not the pid its parent left for it."""
    code = ("import sys; sys.orig_argv.append('--multiprocessing-fork'); "
            "import stages.cli.main; print('still running')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=os.environ | {"KD_PARENT_PID": str(2**22 + 1)}, timeout=120)
    assert proc.returncode == 1 and proc.stdout == ""


def process_table() -> dict[int, tuple[int, str, str]]:
    """{pid: (parent pid, start time, command)} of every process, from `ps`."""
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,lstart=,args="], capture_output=True,
                         text=True, check=True).stdout
    table = {}
    for line in out.splitlines():
        pid, ppid, *rest = line.split()
        table[int(pid)] = (int(ppid), " ".join(rest[:5]), " ".join(rest[5:]))
    return table


def tree(root: int) -> dict[int, tuple[str, str]]:
    """{pid: (start time, command)} of `root` and every descendant."""
    table, found, todo = process_table(), {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            found[pid] = table[pid][1:]
            todo += [p for p, row in table.items() if row[0] == pid]
    return found


def survivors(recorded: dict[int, tuple[str, str]]) -> dict[int, tuple[str, str]]:
    table = process_table()
    return {pid: row for pid, row in recorded.items()
            if pid in table and table[pid][1] == row[0]}


def wait_generating(proc: subprocess.Popen, stderr_path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, stderr_path.read_text()[-3000:]
        if "generate:" in stderr_path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail("the teacher never started generating")


def shown_once_and_not_harmless(stderr: str) -> None:
    """Warnings once (`stages.cli.engine_logs`), checked on the same real run: no vLLM line twice,
    none of the platform's harmless ones."""
    from stages.cli.engine_logs import HARMLESS_WARNINGS

    lines = [line for line in stderr.splitlines() if line.startswith("vLLM WARNING")]
    assert len(lines) == len(set(lines)), lines
    assert not [line for line in lines for h in HARMLESS_WARNINGS["cpu"] if h in line]


@pytest.mark.engine
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_the_teacher_stage_leaves_no_process(tmp_path, sig):
    pytest.importorskip("vllm")
    require_teacher()
    stderr_path = tmp_path / "stderr"
    args = [sys.executable, "-m", "stages.cli.main", "teacher-labels", "--teacher", str(TEACHER),
            "--prompts", str(ROOT / "data/prompts/demo.jsonl"), "--out", str(tmp_path / "out"),
            "--limit", "64", "--max-tokens", "64", "--max-model-len", "512", "--dtype", "float32",
            "--shard-size", "4", "--enforce-eager"]
    with open(stderr_path, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_generating(proc, stderr_path)
            recorded = tree(proc.pid)
            assert len(recorded) >= 3, recorded  # kd, the engine core and its worker at least
            proc.send_signal(sig)
            # SIGTERM lets the shards in flight commit first (stages.cli.preemption): small ones.
            assert proc.wait(timeout=PREEMPTION_S) == (-9 if sig == signal.SIGKILL else 143)
            deadline = time.monotonic() + GRACE_S
            while survivors(recorded) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert survivors(recorded) == {}
        finally:
            if proc.poll() is None:
                proc.kill()
    shown_once_and_not_harmless(stderr_path.read_text(errors="replace"))
