"""kd train-student --qat on real teacher labels: resume after SIGKILL, conversion, kd eval, refusal.

A run of two full steps then two fake-quantized ones (`--phases full:2,qat:2`)
is killed at checkpoints on both sides of the phase switch and while writing
the converted model; resumed, its float and quantized exports are
bit-identical to an uninterrupted run's. The converted model loads for
`kd eval` and scores what the fake-quantized student scored at the end.
"""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from conftest import TEACHER
from pipeline.student.qat import QUANTIZED_WEIGHTS, fake_quantized_layers, load_quantized
from schemas.student_config import EvalConfig
from stages.student.evaluate import run_eval
from test_student_crash_sweep import run, student_args

pytestmark = pytest.mark.engine

QAT = ["--qat", "int8da-int4w", "--phases", "full:2,qat:2"]


def exports(out) -> dict[str, torch.Tensor]:
    """The float export's tensors and the converted one's (quantized values and scales)."""
    found = {f"float.{k}": v for k, v in load_file(out / "model" / "model.safetensors").items()}
    state = torch.load(out / "model-quantized" / QUANTIZED_WEIGHTS, weights_only=False)
    for key, value in state.items():
        if type(value).__name__ == "IntxUnpackedToInt8Tensor":
            found[f"q.{key}.qdata"], found[f"q.{key}.scale"] = value.qdata, value.scale
        else:
            found[f"q.{key}"] = value
    return found


@pytest.fixture(scope="module")
def straight(engine_labels, tiny_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("qat-straight") / "out"
    proc = run(student_args(engine_labels, tiny_student, out) + QAT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.parametrize("point", ["renamed:step-0000002", "written:step-0000004",
                                   "written:model-quantized"])
def test_a_qat_run_killed_then_resumed_is_bit_identical(engine_labels, tiny_student, tmp_path,
                                                        straight, point):
    out = tmp_path / "out"
    args = student_args(engine_labels, tiny_student, out) + QAT
    crashed = run(args, KD_CRASH_AT=point)
    assert crashed.returncode == -9, crashed.stderr[-2000:]
    resumed = run(args + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got, want = exports(out), exports(straight)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)


def test_the_converted_student_is_evaluated_as_it_ended_training(engine_labels, straight):
    import json

    model = load_quantized(straight / "model-quantized")
    assert fake_quantized_layers(model) == []
    report = json.loads((straight / "report.json").read_text())
    rows = run_eval(EvalConfig(labels=(str(engine_labels),),
                               model=(f"q={straight / 'model-quantized'}",
                                      f"float={straight / 'model'}"),
                               eval_fraction=0.25, batch_tokens=256))
    after = report["eval"]["student_after"]
    assert rows["q"]["kl"] == pytest.approx(after["kl"], abs=1e-5)
    assert rows["q"]["positions"] == after["positions"]
    # The float weights alone are another model: quantization changed the scores.
    assert rows["float"]["kl"] != pytest.approx(after["kl"], abs=1e-5)


def test_qat_on_a_student_torchao_cannot_handle_is_refused_naming_the_layer(engine_labels,
                                                                          tmp_path):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=49152)).save_pretrained(gpt2)
    AutoTokenizer.from_pretrained(TEACHER).save_pretrained(gpt2)
    proc = run(student_args(engine_labels, gpt2, tmp_path / "out") + ["--qat", "int8w"])
    assert proc.returncode == 1
    assert "layer 0.attn.c_attn is a Conv1D" in proc.stderr and "Traceback" not in proc.stderr
