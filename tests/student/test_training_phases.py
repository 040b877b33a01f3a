"""Phases, alarms and per-step monitoring in the real training loop (real labels, tiny student).

The labels are the session's real vLLM run (`engine_labels`, hidden layers 3
and -1); the student is the 2-layer, 64-wide `tiny_student`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import sigterm_after_step
from pipeline.student.checkpoint import latest_checkpoint, load_checkpoint
from schemas.student_config import StudentConfig
from stages.cli.preemption import Preempted
from stages.student.train import AlarmStop, run_train_student

pytestmark = pytest.mark.engine

EMBEDDING = "student.model.embed_tokens.weight"  # tied to the head in SmolLM2
DECODER = "student.model.layers.0.mlp.up_proj.weight"


def config(labels: Path, student: Path, out: Path, **changes) -> StudentConfig:
    base = dict(labels=(str(labels),), student=str(student), out=str(out), steps=4,
                batch_tokens=256, lr=1e-3, warmup_steps=1, eval_every=0, checkpoint_every=2,
                loader_workers=0, eval_fraction=0.25)
    return StudentConfig(**(base | changes)).validate()


def lines(out: Path, key: str) -> list[dict]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if key in r]


def state_at(out: Path, step: int) -> dict:
    return load_checkpoint(out / "checkpoints" / f"step-{step:07d}")


def test_a_phase_boundary_across_sigterm_and_resume(engine_labels, tiny_student, tmp_path,
                                                    monkeypatch):
    phased = dict(phases="hidden:2,full", hidden_weight=1.0)
    straight = run_train_student(config(engine_labels, tiny_student, tmp_path / "a", **phased))
    undo = sigterm_after_step(monkeypatch, 1)
    with pytest.raises(Preempted, match="step 1"):
        run_train_student(config(engine_labels, tiny_student, tmp_path / "b", **phased))
    undo()
    saved = json.loads((latest_checkpoint(tmp_path / "b/checkpoints") / "meta.json").read_text())
    assert (saved["step"], saved["phase"]) == (1, {"kind": "hidden", "index": 0,
                                                   "step_in_phase": 1})
    resumed = run_train_student(config(engine_labels, tiny_student, tmp_path / "b", resume=True,
                                       **phased))
    assert resumed.steps == straight.steps == 4
    b = lines(tmp_path / "b", "loss")
    assert [r["phase"] for r in b] == ["hidden", "hidden", "full", "full"]
    assert "soft" not in b[1] and b[1]["hidden"] > 0 and b[2]["soft"] > 0
    np.testing.assert_allclose([r["loss"] for r in b],
                               [r["loss"] for r in lines(tmp_path / "a", "loss")], atol=1e-5)
    # Step 2 (the end of the hidden phase, run after the resume): head frozen bit for bit,
    # the decoder trained; the full phase then trains the head.
    from transformers import AutoModelForCausalLM

    initial = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.float32).state_dict()
    end_hidden, end = state_at(tmp_path / "b", 2)["module"], state_at(tmp_path / "b", 4)["module"]
    assert torch.equal(end_hidden[EMBEDDING], initial["model.embed_tokens.weight"])
    assert not torch.equal(end_hidden[DECODER], initial["model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(end[EMBEDDING], initial["model.embed_tokens.weight"])
    report = json.loads((tmp_path / "b/report.json").read_text())
    assert report["phases"] == [{"kind": "hidden", "first_step": 1, "steps": 2},
                                {"kind": "full", "first_step": 3, "steps": 2}]


def test_an_exploding_gradient_on_a_crafted_batch_stops_naming_it(engine_labels, tiny_student,
                                                                  tmp_path, monkeypatch):
    import stages.student.forward as forward

    real = forward.batch_losses
    calls = {"n": 0}

    def exploding(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the second training batch: step 2, epoch 0 batch 1
            parts.weighted = parts.weighted * 1e9
        return parts
    monkeypatch.setattr(forward, "batch_losses", exploding)
    out = tmp_path / "explode"
    with pytest.raises(AlarmStop, match=r"alarm exploding_gradient at step 2 \(epoch 0 batch 1\)"
                                        r".*above --max-grad-norm-alarm 1000"):
        run_train_student(config(engine_labels, tiny_student, out, alarm_patience=1))
    report = json.loads((out / "report.json").read_text())
    assert [(a["kind"], a["step"], a["where"]) for a in report["alarms"]] == \
        [("exploding_gradient", 2, "epoch 0 batch 1")]
    assert lines(out, "alarm")[0]["alarm"]["kind"] == "exploding_gradient"
    assert latest_checkpoint(out / "checkpoints").name == "step-0000001"  # the last good step


def test_warned_alarms_are_logged_and_the_run_goes_on(engine_labels, tiny_student, tmp_path):
    out = tmp_path / "warn"
    result = run_train_student(config(engine_labels, tiny_student, out, alarms="warn",
                                      min_grad_norm_alarm=1e6, alarm_patience=2,
                                      memory_alarm=1e-9))
    assert result.steps == 4
    kinds = [(a["kind"], a["step"]) for a in json.loads((out / "report.json").read_text())["alarms"]]
    assert kinds == [("memory", 1), ("vanishing_gradient", 2), ("vanishing_gradient", 4)]
    assert "vanishing_gradient" in (out / "report.md").read_text()


def test_schedules_balance_weights_and_monitoring_are_logged_every_step(engine_labels,
                                                                        tiny_student, tmp_path):
    out = tmp_path / "monitored"
    run_train_student(config(engine_labels, tiny_student, out, kd_temperature=4.0,
                             final_temperature=1.0, temperature_schedule="linear",
                             loss_balance=0.5, rare_token_weight=5.0, eval_every=1,
                             layer_map="1:3,-1:-1"))
    train = lines(out, "loss")
    assert [r["temperature"] for r in train] == pytest.approx([4.0, 3.0, 2.0, 1.0])
    for r in train:
        token_part = 0.5 * r["soft"] + 0.5 * r["hard"]
        assert r["loss"] - token_part == pytest.approx(0.5 * r["soft"], rel=1e-4)
        assert set(r["cosine"]) == {"1:3", "2:30"} and all(-1 <= c <= 1 for c in
                                                              r["cosine"].values())
        assert r["grad_norm"] > 0 and r["tokens_per_second"] > 0 and r["peak_memory_mb"] > 0
        assert r["lr"] > 0 and r["phase"] == "full"
    assert [r["step"] for r in lines(out, "eval")] == [0, 1, 2, 3, 4]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
