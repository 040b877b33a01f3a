"""torchrun: 2 CPU ranks with gloo take the same steps as one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT

pytestmark = pytest.mark.engine


def train_args(labels: Path, student: Path, out: Path, grad_accum: int, steps: int,
               *extra: str) -> list[str]:
    # A constant learning rate (--min-lr-ratio 1) makes a 2-step run the prefix of a 4-step one.
    return ["--labels", str(labels), "--student", str(student), "--out", str(out),
            "--steps", str(steps), "--batch-tokens", "256", "--grad-accum", str(grad_accum),
            "--lr", "1e-3", "--warmup-steps", "0", "--min-lr-ratio", "1", "--eval-every", "0",
            "--loader-workers", "0", "--eval-fraction", "0.25", *extra]


def kd(*args: str, ranks: int = 1) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                "--master-port", "29517"] if ranks > 1 else [sys.executable]
    proc = subprocess.run([*launcher, "-m", "stages.cli.main", "train-student", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_two_gloo_ranks_match_one_process_and_resume_on_one(engine_labels, tiny_student,
                                                             tmp_path):
    """Same global batch (2 ranks x 1 micro-batch = 1 process x 2): same losses, then a
    checkpoint written by 2 ranks resumes on 1 process and continues the same trajectory."""
    kd(*train_args(engine_labels, tiny_student, tmp_path / "one", 2, 4))
    kd(*train_args(engine_labels, tiny_student, tmp_path / "two", 1, 2), ranks=2)
    assert len(losses(tmp_path / "two")) == 2   # rank 0 alone logs
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one")[:2], rtol=1e-4)
    assert (tmp_path / "two/model/model.safetensors").is_file()
    kd(*train_args(engine_labels, tiny_student, tmp_path / "two", 2, 4, "--resume"))
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-4)


def test_fsdp_two_ranks_match_one_process_resume_and_export_a_plain_model(engine_labels,
                                                                          tiny_student, tmp_path):
    """FSDP on 2 ranks takes the single process's steps; its gathered checkpoint resumes
    under FSDP and then on one plain process, along the same trajectory throughout."""
    from transformers import AutoModelForCausalLM

    kd(*train_args(engine_labels, tiny_student, tmp_path / "one", 2, 4))
    kd(*train_args(engine_labels, tiny_student, tmp_path / "fsdp", 1, 2, "--fsdp"), ranks=2)
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "one")[:2], rtol=1e-4)
    kd(*train_args(engine_labels, tiny_student, tmp_path / "fsdp", 1, 3, "--fsdp", "--resume"),
       ranks=2)
    kd(*train_args(engine_labels, tiny_student, tmp_path / "fsdp", 2, 4, "--resume"))
    np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp_path / "one"), rtol=1e-4)
    report = json.loads((tmp_path / "fsdp/report.json").read_text())
    single = json.loads((tmp_path / "one/report.json").read_text())
    assert report["eval"]["student_after"]["kl"] == pytest.approx(
        single["eval"]["student_after"]["kl"], rel=1e-4)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp/model")
    assert model.config.num_hidden_layers == 2
