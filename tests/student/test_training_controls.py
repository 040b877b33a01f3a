"""Training controls as pure logic: schedules in closed form, phases, flags, token weights, alarms, plots.

No engine and no model: fake shards from `conftest.write_fake_output`.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from conftest import fake_attrs, write_fake_output
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.student.alarms import AlarmMonitor, AlarmThresholds
from pipeline.student.kd_losses import balanced_weight
from pipeline.student.label_set import open_label_set
from pipeline.student.phases import layout_phases, phase_at, phase_lr
from pipeline.student.plots import PANEL_TITLES, comparison_figure, training_figure
from pipeline.student.schedules import lr_at, temperature_at
from pipeline.student.token_weights import rare_token_weights, weights_from_counts
from schemas.config_base import ConfigError
from schemas.student_config import StudentConfig


@pytest.mark.parametrize("kind, expected", [
    ("constant", [4.0, 4.0, 4.0, 4.0, 4.0]),
    ("linear", [4.0, 3.25, 2.5, 1.75, 1.0]),
    # cosine: 1 + 3 * (1 + cos(pi * s / 4)) / 2
    ("cosine", [4.0, 1 + 1.5 * (1 + math.sqrt(0.5)), 2.5, 1 + 1.5 * (1 - math.sqrt(0.5)), 1.0]),
])
def test_temperature_schedule_in_closed_form(kind, expected):
    assert [temperature_at(s, 4.0, 1.0, 5, kind) for s in range(5)] == pytest.approx(expected)
    assert temperature_at(99, 4.0, 1.0, 5, kind) == expected[-1]


def test_each_phase_runs_its_own_warm_up_and_decay():
    phases = layout_phases([("hidden", 4), ("full", None)], total=10)
    assert [(p.kind, p.start, p.steps) for p in phases] == [("hidden", 0, 4), ("full", 4, 6)]
    assert [phase_at(phases, s).kind for s in (0, 3, 4, 9, 10)] == \
        ["hidden", "hidden", "full", "full", "full"]
    # Step 4 is the first of `full`: warm-up starts again at peak / warmup.
    assert phase_lr(phases, 4, 1.0, 2, 0.1) == 0.5
    assert phase_lr(phases, 5, 1.0, 2, 0.1) == 1.0
    assert phase_lr(phases, 9, 1.0, 2, 0.1) == pytest.approx(lr_at(5, 1.0, 2, 6, 0.1))
    assert phase_lr(phases, 3, 1.0, 2, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(
        math.pi * 1 / 2)))
    assert layout_phases([], 7)[0].kind == "full"
    with pytest.raises(ValueError, match="add up to 4 steps but the run has 5"):
        layout_phases([("hidden", 4)], 5)


@pytest.mark.parametrize("changes, message", [
    (dict(phases="hidden:2,full:2", steps=5), "--phases add up to 4 steps but --steps is 5"),
    (dict(phases="warmup:2"), "--phases: unknown phase 'warmup'"),
    (dict(phases="hidden:x,full"), "--phases: 'hidden:x' must look like hidden:100"),
    (dict(phases="hidden:2,full:3", steps=None, epochs=1.0), "--phases with --epochs"),
    (dict(temperature_schedule="linear"), "--temperature-schedule linear needs --final-temperature"),
    (dict(final_temperature=2.0), "--final-temperature 2.0 needs a moving --temperature-schedule"),
    (dict(temperature_schedule="steps"), "--temperature-schedule"),
    (dict(final_temperature=-1.0, temperature_schedule="cosine"), "--final-temperature must be"),
    (dict(loss_balance=0.0), "--loss-balance must be a positive fraction"),
    (dict(loss_balance=1.0, alpha=0.0), "--loss-balance .* --alpha 0"),
    (dict(rare_token_weight=1.0), "--rare-token-weight .* must be > 1"),
    (dict(max_grad_norm_alarm=0.0), "--max-grad-norm-alarm must be positive"),
    (dict(alarm_patience=0), "--alarm-patience must be at least 1"),
    (dict(alarms="ignore"), "--alarms"),
    (dict(report_to="mlflow"), "--report-to"),
])
def test_bad_training_controls_are_refused_naming_the_flag(changes, message):
    with pytest.raises(ConfigError, match=message):
        StudentConfig(**({"steps": 4} | changes)).validate()


def test_good_training_controls_validate():
    cfg = StudentConfig(steps=10, phases="hidden:3,kd:2,full", kd_temperature=4.0,
                        final_temperature=1.0, temperature_schedule="cosine").validate()
    assert cfg.parsed_phases() == [("hidden", 3), ("kd", 2), ("full", None)]
    assert cfg.uses_hidden and not StudentConfig(phases="kd:4,full").uses_hidden
    assert StudentConfig(loss_balance=1.0).uses_hidden


def test_rare_token_weights_from_a_tiny_shard_equal_the_hand_computed_ones(tmp_path):
    cap = 3.0
    write_fake_output(tmp_path / "out", shards=2, per_shard=3, attrs=fake_attrs(vocab=12, k=2))
    labels = open_label_set([tmp_path / "out"])
    train = np.array([0, 2, 3, 5])  # samples 1 and 4 held out: their targets do not count
    samples = [s for p in labels.shard_paths for s in read_samples(ShardReader(p))]
    counts = Counter(t for i in train for t in samples[i].completion_token_ids)
    n, distinct = sum(counts.values()), len(counts)
    expected = [min(cap, max(1.0, n / (distinct * counts[v]))) if counts[v] else 1.0
                for v in range(12)]
    assert rare_token_weights(labels, train, cap).tolist() == pytest.approx(expected)
    assert max(expected) > 1.0  # the shard has rare tokens, so the check is not vacuous
    assert weights_from_counts(np.array([6, 3, 1, 0]), cap=2.0).tolist() == \
        pytest.approx([1.0, 10 / 9, 2.0, 1.0])


def test_loss_balance_weight_makes_the_hidden_term_a_fixed_fraction_of_the_soft_loss():
    weight = balanced_weight(soft_mean=2.0, hidden_mean=0.5, fraction=0.25)
    assert weight * 0.5 == pytest.approx(0.25 * 2.0)
    assert balanced_weight(2.0, 0.0, 1.0) == 0.0 and balanced_weight(2.0, math.nan, 1.0) == 0.0


def test_each_alarm_fires_on_its_crafted_step_naming_it():
    monitor = AlarmMonitor(AlarmThresholds(max_grad_norm=10.0, min_grad_norm=1e-3, patience=2,
                                           memory_fraction=0.9))
    assert monitor.check(1, "epoch 0 batch 0", 1.0, 20.0, 0.5) == []
    (alarm,) = monitor.check(2, "epoch 0 batch 1", 1.0, 30.0, 0.5)
    assert (alarm.kind, alarm.step, alarm.where) == ("exploding_gradient", 2, "epoch 0 batch 1")
    assert "--max-grad-norm-alarm 10" in alarm.line() and "epoch 0 batch 1" in alarm.line()
    assert monitor.check(3, "epoch 0 batch 2", 1.0, 1e-4, 0.5) == []
    assert [a.kind for a in monitor.check(4, "epoch 0 batch 3", 1.0, 1e-5, 0.5)] == \
        ["vanishing_gradient"]
    assert [a.kind for a in monitor.check(5, "epoch 0 batch 4", 1.0, 1.0, 0.95)] == ["memory"]
    assert monitor.check(6, "epoch 0 batch 5", 1.0, 1.0, 0.96) == []  # still over: once
    (nan,) = monitor.check(7, "epoch 1 batch 0", math.nan, 1.0, 0.5)
    assert (nan.kind, nan.step, nan.where) == ("non_finite", 7, "epoch 1 batch 0")
    restored = AlarmMonitor(monitor.thresholds)
    restored.load_state_dict(monitor.state_dict())
    assert restored.state_dict() == monitor.state_dict()


def test_training_figure_has_titled_labelled_panels_and_phase_marks():
    records = [{"step": 0, "eval": {"kl": 5.0, "nll": 6.0}}]
    for step in range(1, 9):
        records.append({"step": step, "loss": 3.0 / step, "soft": 2.0 / step, "hard": 4.0 / step,
                        "hidden": 0.5, "lr": 1e-4, "temperature": 4.0 - step * 0.3,
                        "grad_norm": 2.0, "tokens_per_second": 900.0, "peak_memory_mb": 800.0,
                        "cosine": {"-1:-1": 0.5 + step / 20}})
        if step % 4 == 0:
            records.append({"step": step, "eval": {"kl": 5.0 - step / 4, "nll": 6.0 - step / 4}})
    records.append({"step": 6, "alarm": {"kind": "exploding_gradient", "step": 6}})
    fig = training_figure(records, [("hidden", 0), ("full", 4)], {"nll": 1.0},
                          {"grad_clip": 1.0, "max_grad_norm_alarm": 1000.0})
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(PANEL_TITLES)
    for ax in panels:
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel()
        assert ax.get_legend() is not None, ax.get_title()
        assert "phase: full" in [t.get_text() for t in ax.texts], ax.get_title()
    held_out = panels[1].get_legend_handles_labels()[1]
    assert "KL(teacher || student)" in held_out and "teacher NLL" in held_out
    kl_line = panels[1].get_lines()[0]
    assert list(kl_line.get_xdata()) == [0, 4, 8]  # a point at every evaluation
    assert "alarm tripped" in panels[3].get_legend_handles_labels()[1]
    twin_labels = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]
    assert "temperature T (dimensionless)" in twin_labels


def test_comparison_figure_names_every_run():
    runs = {name: [{"step": 0, "eval": {"kl": 3.0, "nll": 4.0}}, {"step": 1, "loss": 2.0},
                   {"step": 1, "eval": {"kl": 2.0, "nll": 3.0}}] for name in ("a", "b")}
    fig = comparison_figure(runs, {"nll": 1.0})
    assert [ax.get_title() for ax in fig.axes] == [
        "Held-out KL(teacher || student)", "Held-out NLL of the teacher's completions",
        "Training loss (back-propagated)"]
    assert fig.axes[1].get_legend_handles_labels()[1] == ["a", "b", "teacher"]


def test_a_hidden_phase_on_labels_without_hidden_states_is_refused_naming_the_flag(tmp_path):
    from stages.student.train import run_train_student

    write_fake_output(tmp_path / "labels")
    cfg = StudentConfig(labels=(str(tmp_path / "labels"),), out=str(tmp_path / "out"), steps=4,
                        phases="hidden:2,full", loader_workers=0)
    with pytest.raises(ConfigError, match=r"--phases: a hidden phase needs labels with hidden "
                                          r"states \(--hidden-layers at the teacher stage"):
        run_train_student(cfg)
