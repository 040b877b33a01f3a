"""`kd eval --samples`: the teacher's NLL of a model's own text, from a score-mode output of it.

Against an independent oracle (the stored datasets read with h5py), over every
sample (--all) and over the held-out split's prompts only; the table shows the
new columns, with "-" where a row has no such number.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import fake_attrs
from pipeline.student.batch_plan import split_by_prompt
from bench.synthetic_output import write_random_output
from schemas import STUDENT_LOGPROBS
from schemas.config_base import ConfigError
from schemas.student_config import EvalConfig
from stages.student.evaluate import format_table, sample_scores


def stored(out, held_out=None):
    """(teacher logprobs, student logprobs) of every sample, or of those whose prompt id is in held_out."""
    teacher, student = [], []
    for shard in sorted(out.glob("shard-*.h5")):
        with h5py.File(shard) as f:
            ids = [s.decode() for s in f["samples/ids"][()]]
            offsets = f["labels/offsets"][()]
            for i, sid in enumerate(ids):
                if held_out is None or sid.rsplit("/", 1)[0] in held_out:
                    rows = slice(offsets[i], offsets[i + 1])
                    teacher.append(f["labels/sampled_logprobs"][rows])
                    student.append(f[STUDENT_LOGPROBS][rows])
    return np.concatenate(teacher).astype(np.float64), np.concatenate(student).astype(np.float64)


@pytest.fixture
def samples(tmp_path):
    write_random_output(tmp_path / "s", fake_attrs(), 3, 8, seed=2, prefix="q", scored=True,
                        student_logprobs=True)
    return tmp_path / "s"


def test_all_samples_give_the_teacher_nll_and_the_reverse_kl_estimate(samples):
    got = sample_scores(str(samples), EvalConfig(all=True, samples=(f"m={samples}",)))
    t, s = stored(samples)
    assert got["sample_positions"] == len(t)
    assert got["teacher_nll_of_samples"] == pytest.approx(-t.mean())
    assert got["student_nll_of_samples"] == pytest.approx(-s.mean())
    assert got["reverse_kl_estimate"] == pytest.approx((s - t).mean())


def test_without_all_only_the_held_out_prompts_count(samples):
    cfg = EvalConfig(eval_fraction=0.3, seed=4)
    got = sample_scores(str(samples), cfg)
    prompts = [f"q{i}-{j}" for i in range(3) for j in range(8)]
    held = {prompts[i] for i in split_by_prompt(prompts, 0.3, 4)[1]}
    t, _ = stored(samples, held)
    assert 0 < len(held) < len(prompts)
    assert (got["sample_positions"], got["teacher_nll_of_samples"]) == (len(t), pytest.approx(-t.mean()))


def test_the_table_shows_the_sample_columns_only_when_asked():
    plain = {"teacher": {"kl": 0.0, "top1_agreement": 1.0, "nll": 2.0, "perplexity": 7.39,
                         "positions": 10}}
    assert "its samples" not in format_table(plain)
    table = format_table(plain | {"r1": {"teacher_nll_of_samples": 1.25, "sample_positions": 4}})
    header, _, teacher, r1 = table.splitlines()
    assert "teacher NLL of its samples" in header and "reverse-KL estimate" in header
    assert teacher.endswith("| 10 | - | - | - |")
    assert r1 == "| r1 | - | - | - | - | - | 1.2500 | - | 4 |"


def test_samples_need_a_name_unless_one_model_and_one_output():
    assert EvalConfig(model=("m",), samples=("s",)).validate().named_samples() == {"model": "s"}
    with pytest.raises(ConfigError, match="--samples"):
        EvalConfig(model=("a=m", "b=n"), samples=("s",)).validate()
    with pytest.raises(ConfigError, match="--samples"):
        EvalConfig(samples=("x=s", "x=t")).validate()
