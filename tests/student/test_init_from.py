"""`kd train-student --init-from`: a new run continues from an exported student's weights
(fresh optimizer), and a model whose tokenizer does not match the labels is refused.

Labels are synthetic (random, with the embedded teacher's tokenizer fingerprint and
vocabulary), the student a 2-layer, 64-wide model: no vLLM, seconds on a CPU.
"""

from __future__ import annotations

import shutil

import pytest

from conftest import TEACHER, require_teacher
from pipeline.store.shard_writer import ShardAttrs
from bench.synthetic_output import write_random_output
from schemas.config_base import ConfigError
from schemas.student_config import StudentConfig


@pytest.fixture(scope="module")
def matching(tmp_path_factory):
    """(labels, tiny student) sharing the embedded teacher's tokenizer."""
    require_teacher()
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from pipeline.store.fingerprint import tokenizer_fingerprint
    from stages.student.model import narrow_config

    root = tmp_path_factory.mktemp("init_from")
    tok = AutoTokenizer.from_pretrained(TEACHER)
    config = AutoConfig.from_pretrained(TEACHER)
    attrs = ShardAttrs(str(TEACHER), tokenizer_fingerprint(tok), config.vocab_size, 4,
                       {"mode": "score"})
    write_random_output(root / "labels", attrs, 2, 8, seed=3, comp_len=12, scored=True)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(narrow_config(config, 64, 2)).save_pretrained(root / "tiny")
    tok.save_pretrained(root / "tiny")
    return root / "labels", root / "tiny"


def config(labels, out, **changes) -> StudentConfig:
    base = dict(labels=(str(labels),), out=str(out), steps=2, batch_tokens=128, lr=1e-3,
                warmup_steps=0, eval_every=0, checkpoint_every=0, loader_workers=0,
                eval_fraction=0.25)
    return StudentConfig(**(base | changes)).validate()


def test_init_from_starts_where_the_previous_round_ended(matching, tmp_path):
    from stages.student.train import run_train_student

    labels, tiny = matching
    first = run_train_student(config(labels, tmp_path / "r1", student=str(tiny)))
    second = run_train_student(config(labels, tmp_path / "r2", init_from=str(tmp_path / "r1/model"),
                                      steps=1))
    # same held-out positions, same weights: the new run's "before" is the old run's "after"
    assert second.evals["student_before"] == pytest.approx(first.evals["student_after"], rel=1e-6)
    assert second.steps == 1 and (tmp_path / "r2/model/config.json").is_file()


def test_init_from_refuses_a_model_whose_tokenizer_does_not_match(matching, tmp_path):
    from transformers import AutoTokenizer

    from stages.student.train import run_train_student

    labels, tiny = matching
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["<not-in-the-teacher>"])
    tok.save_pretrained(other)
    with pytest.raises(ConfigError, match=r"tokenizer mismatch: the student \(--init-from .*other\)"):
        run_train_student(config(labels, tmp_path / "out", init_from=str(other)))


def test_init_from_refuses_a_directory_without_a_model(matching, tmp_path):
    from stages.student.train import run_train_student

    with pytest.raises(ConfigError, match="--init-from .*no config.json"):
        run_train_student(config(matching[0], tmp_path / "out", init_from=str(tmp_path)))


def test_init_from_replaces_student():
    with pytest.raises(ConfigError, match="--init-from .* replaces --student"):
        StudentConfig(steps=1, student="some/model", init_from="r1/model").validate()


def test_onpolicy_term_trains_end_to_end_and_counts_in_the_loss(matching, tmp_path):
    import json
    import math

    from stages.student.train import run_train_student

    labels, tiny = matching
    base = run_train_student(config(labels, tmp_path / "base", student=str(tiny), steps=1,
                                    alpha=1.0))
    onp = run_train_student(config(labels, tmp_path / "onp", student=str(tiny), steps=1,
                                   alpha=1.0, onpolicy_weight=1.0))
    losses = [[json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()
               if "loss" in json.loads(x)] for d in (tmp_path / "base", tmp_path / "onp")]
    assert all(math.isfinite(v) for v in losses[1]) and losses[0] != losses[1]
    assert base.steps == onp.steps == 1
