"""The student stage killed, or out of disk, at every point of its commit protocol, then resumed.

Points (`pipeline.store.fault_points`): a checkpoint directory written,
fsynced, renamed into place; the exported model's directory likewise. After
each SIGKILL or ENOSPC the latest complete checkpoint loads, the command the
run printed (or, after a SIGKILL, the same command with --resume) completes,
and the exported weights are bit-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from pipeline.student.checkpoint import latest_checkpoint, load_checkpoint

pytestmark = pytest.mark.engine


def student_args(labels: Path, student: Path, out: Path) -> list[str]:
    return ["train-student", "--labels", str(labels), "--student", str(student), "--out", str(out),
            "--steps", "4", "--checkpoint-every", "2", "--eval-every", "0", "--batch-tokens", "256",
            "--lr", "1e-3", "--warmup-steps", "1", "--loader-workers", "0", "--eval-fraction",
            "0.25"]


def run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli.main", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=600, env=os.environ | env)


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def straight(engine_labels, tiny_student, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("straight") / "out"
    proc = run(student_args(engine_labels, tiny_student, out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return weights(out)


POINTS = ["written:step-0000002", "fsynced:step-0000002", "renamed:step-0000002",
          "written:step-0000004", "renamed:step-0000004", "written:model", "fsynced:model",
          "renamed:model"]


def assert_equal_weights(out: Path, straight: dict[str, torch.Tensor]) -> None:
    got = weights(out)
    assert got.keys() == straight.keys()
    assert all(torch.equal(got[k], straight[k]) for k in got)


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_at_each_point_then_resume_is_bit_identical(engine_labels, tiny_student, tmp_path,
                                                           straight, point):
    out, args = tmp_path / "out", student_args(engine_labels, tiny_student, tmp_path / "out")
    crashed = run(args, KD_CRASH_AT=point)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    latest = latest_checkpoint(out / "checkpoints")
    if latest is not None:  # whatever is there is whole: it loads
        assert load_checkpoint(latest)["step"] in (2, 4)
    assert not (out / "model").exists() or point == "renamed:model"
    resumed = run(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_equal_weights(out, straight)


@pytest.mark.parametrize("point", ["written:step-0000002", "renamed:step-0000004", "written:model"])
def test_no_space_is_one_line_and_its_resume_command_completes(engine_labels, tiny_student,
                                                              tmp_path, straight, point):
    out, args = tmp_path / "out", student_args(engine_labels, tiny_student, tmp_path / "out")
    failed = run(args, KD_FAIL_AT=point)
    assert failed.returncode == 74, failed.stderr[-2000:]
    last = failed.stderr.strip().splitlines()[-1]
    resume = shlex.join(["kd", *args, "--resume"])
    assert last.startswith("kd train-student: no space left on device: ") and "Traceback" not in \
        failed.stderr
    assert last.endswith(f"Resume with: {resume}")
    if point == "renamed:step-0000004":
        assert last == (f"kd train-student: no space left on device: "
                        f"{out / 'checkpoints' / 'step-0000004'}. Committed: checkpoint "
                        f"step-0000004 in {out / 'checkpoints'}. Resume with: {resume}")
    resumed = run(shlex.split(resume)[1:])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_equal_weights(out, straight)


def test_sigterm_ends_with_the_resume_command(engine_labels, tiny_student, tmp_path):
    args = student_args(engine_labels, tiny_student, tmp_path / "out")
    args[args.index("--steps") + 1] = "400"
    proc = subprocess.Popen([sys.executable, "-m", "stages.cli.main", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    metrics = tmp_path / "out" / "metrics.jsonl"
    import time
    deadline = time.time() + 300
    while not (metrics.exists() and '"loss"' in metrics.read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.terminate()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143
    lines = err.strip().splitlines()
    assert lines[-2].startswith("preempted: SIGTERM: checkpoint written at step ")
    assert lines[-1] == f"resume with: {shlex.join(['kd', *args, '--resume'])}"
