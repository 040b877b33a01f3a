"""One writer per output: a second writer refused at once naming the holder, a dead holder's lock
taken over, another host's refused with what to do, readers never blocked."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import ROOT, write_fake_output
from pipeline.store.output_lock import LOCK_NAME, OutputLock, OutputLocked
from stages.cli.main import main

HOLD = ("import sys, time; from pipeline.store.output_lock import OutputLock; "
        "lock = OutputLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(600)")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the writer lock of tmp_path/out."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "kd", "teacher-labels"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield out, proc
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused_naming_the_holder(holder):
    out, proc = holder
    with pytest.raises(OutputLocked) as err:
        OutputLock(out).acquire()
    message = str(err.value)
    assert message.startswith(f"{out} is being written by another run: pid {proc.pid} on "
                              f"{socket.gethostname()} since ")
    assert "wait for it to end or stop it" in message


def test_both_stages_refuse_before_starting_anything(holder, tmp_path, monkeypatch):
    import stages.student.train as train
    import stages.teacher.labels as labels

    def started(*args, **kwargs):
        raise AssertionError("work began past the writer lock")
    # What each stage does first once it holds the lock: it must never be reached.
    monkeypatch.setattr(labels, "label_output", started)
    monkeypatch.setattr(train, "open_label_set", started)
    out, proc = holder
    teacher = CliRunner().invoke(main, ["teacher-labels", "--out", str(out), "--prompts",
                                        str(ROOT / "data/prompts/demo.jsonl")])
    student = CliRunner().invoke(main, ["train-student", "--out", str(out), "--labels",
                                        str(tmp_path / "nowhere")])
    for result in (teacher, student):
        assert result.exit_code == 75, result.output
        assert f"pid {proc.pid}" in result.output


def test_readers_need_no_lock(holder, tmp_path):
    out, _ = holder
    write_fake_output(out, shards=2)
    result = CliRunner().invoke(main, ["verify", str(out)])
    assert result.exit_code == 0 and "OK" in result.output
    assert CliRunner().invoke(main, ["inspect", str(out)]).exit_code == 0


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path, capsys):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with OutputLock(out):
        record = json.loads((out / LOCK_NAME).read_text())
        assert record["pid"] == os.getpid()
    warning = capsys.readouterr().err
    assert f"taking over the writer lock of {out} left by pid {proc.pid}" in warning
    with OutputLock(out):  # a clean release leaves nothing to take over
        pass
    assert "taking over" not in capsys.readouterr().err


def test_a_lock_from_another_host_is_refused_with_what_to_do(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"host": "node-17", "pid": 4242, "started": "then",
                                             "command": "kd teacher-labels"}))
    with pytest.raises(OutputLocked) as err:
        OutputLock(out).acquire()
    assert str(err.value) == (
        f"{out} holds the writer lock of pid 4242 on node-17 since then (kd teacher-labels), "
        f"which this host cannot check; if that run has ended, delete {out / LOCK_NAME} and rerun "
        "(on NFS or Lustre give each host its own output directory)")
