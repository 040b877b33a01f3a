"""A student trains from an imported DistillKit dataset like from any output (real teacher labels)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from conftest import TEACHER
from pipeline.student.label_set import open_label_set
from schemas.student_config import StudentConfig
from stages.cli.main import main
from stages.student.train import run_train_student

pytestmark = pytest.mark.engine


def test_a_student_trains_from_real_labels_exported_to_distillkit_and_imported(
        score_labels, tiny_student, tmp_path):
    runner = CliRunner()
    exported = runner.invoke(main, ["export", "--format", "distillkit", "--labels",
                                    str(score_labels), "--out", str(tmp_path / "dk")])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(main, ["import", "--format", "distillkit", "--in", str(tmp_path / "dk"),
                                    "--teacher", str(TEACHER), "--out", str(tmp_path / "back")])
    assert imported.exit_code == 0, imported.output
    original, back = open_label_set([score_labels]), open_label_set([tmp_path / "back"])
    assert sorted(back.label_count.tolist()) == sorted(original.label_count.tolist())
    cfg = StudentConfig(labels=(str(tmp_path / "back"),), student=str(tiny_student),
                        out=str(tmp_path / "student"), steps=6, batch_tokens=512, lr=1e-3,
                        warmup_steps=1, eval_every=0, loader_workers=0,
                        eval_fraction=0.25).validate()
    result = run_train_student(cfg)
    assert result.steps == 6
    assert result.evals["student_after"]["kl"] < result.evals["student_before"]["kl"]
