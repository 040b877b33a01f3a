"""QAT through torchao (`pipeline.student.qat`) on the tiny student, without labels or vLLM.

Properties: fake quantizers sit on every decoder Linear (not on the head) and
change the output while letting gradients through to the float weights;
switched off the student is bit-identical to the float one; conversion leaves
no fake quantizer and computes exactly what the fake-quantized student did;
the converted directory loads back equal; layers torchao cannot handle, and
inconsistent flags, are refused by name.
"""

from __future__ import annotations

import pytest
import torch

from conftest import require_teacher, save_tiny_student
from pipeline.student.qat import (convert_qat, fake_quantized_layers, is_quantized_dir,
                                  load_quantized, prepare_qat, save_quantized, set_fake_quant)
from schemas.config_base import ConfigError
from schemas.deploy_config import QAT_SCHEMES
from schemas.student_config import StudentConfig

LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    require_teacher()
    return save_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


IDS = torch.arange(100, 164).reshape(2, 32)


@pytest.mark.parametrize("scheme", QAT_SCHEMES)
def test_fake_quant_trains_the_float_weights_and_conversion_computes_the_same(tiny, tmp_path,
                                                                            scheme):
    from transformers import AutoTokenizer

    float_model, model = load(tiny), load(tiny)
    prepare_qat(model, scheme, 32)
    names = fake_quantized_layers(model)
    assert len(names) == LINEARS_PER_LAYER * model.config.num_hidden_layers
    assert all(".layers." in n for n in names) and "lm_head" not in names
    reference = float_model(IDS).logits
    set_fake_quant(model, False)
    assert torch.equal(model(IDS).logits, reference)
    set_fake_quant(model, True)
    fake = model(IDS).logits
    assert not torch.allclose(fake, reference, atol=1e-4)
    fake.square().mean().backward()
    weight = model.model.layers[0].mlp.down_proj.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0  # straight-through
    convert_qat(model, scheme, 32)
    assert fake_quantized_layers(model) == []
    assert type(weight := model.model.layers[0].mlp.down_proj.weight).__name__ == \
        "IntxUnpackedToInt8Tensor"
    with torch.no_grad():
        converted = model(IDS).logits
    torch.testing.assert_close(converted, fake.detach(), rtol=0, atol=1e-5)
    save_quantized(model, AutoTokenizer.from_pretrained(tiny), tmp_path / "q", scheme, 32)
    assert is_quantized_dir(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(load_quantized(tmp_path / "q")(IDS).logits, converted)


@pytest.mark.parametrize("scheme", QAT_SCHEMES)
def test_post_training_quantization_equals_converting_the_untrained_fake_quant(tiny, scheme):
    """PTQ of the float student (convert without prepare) is QAT's convert at step 0."""
    ptq, qat = load(tiny), load(tiny)
    convert_qat(ptq, scheme, 32)
    prepare_qat(qat, scheme, 32)
    convert_qat(qat, scheme, 32)
    assert fake_quantized_layers(ptq) == []
    with torch.no_grad():
        assert torch.equal(ptq(IDS).logits, qat(IDS).logits)
        assert not torch.allclose(ptq(IDS).logits, load(tiny)(IDS).logits, atol=1e-4)


def test_int4_weights_move_the_output_more_than_int8(tiny):
    """An independent check that the schemes are what they say: 16 levels lose more than 256."""
    reference = load(tiny)(IDS).logits
    errors = {}
    for scheme in QAT_SCHEMES:
        model = load(tiny)
        prepare_qat(model, scheme, 32)
        errors[scheme] = float((model(IDS).logits - reference).abs().max().detach())
    assert errors["int8w"] < errors["int8da-int4w"] / 4


def test_a_layer_torchao_cannot_handle_is_refused_naming_its_type():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match=r"--qat int8w: layer 0\.attn\.c_attn is a Conv1D .*"
                                          r"torch\.nn\.Linear layers only"):
        prepare_qat(model, "int8w", 32)


def test_a_group_size_that_does_not_divide_a_layer_is_refused(tiny):
    with pytest.raises(ConfigError, match=r"layer 0\.self_attn\.q_proj has 64 inputs, not a "
                                          r"multiple of --qat-group-size 48"):
        prepare_qat(load(tiny), "int8da-int4w", 48)


@pytest.mark.parametrize("changes, message", [
    (dict(qat="int3"), "--qat must be one of int8da-int4w, int8w"),
    (dict(phases="full:2,qat:2"), "a qat phase needs --qat SCHEME"),
    (dict(phases="qat:2,full:2", qat="int8w"), "the qat phase must be the last one"),
    (dict(qat="int8w", qat_group_size=0), "--qat-group-size must be at least 1"),
])
def test_inconsistent_qat_flags_are_refused_naming_them(changes, message):
    with pytest.raises(ConfigError, match=message):
        StudentConfig(labels=("x",), steps=4, **changes).validate()


def test_a_final_qat_phase_is_a_full_phase_that_comes_last():
    cfg = StudentConfig(labels=("x",), steps=4, phases="full:3,qat:1", qat="int8w").validate()
    assert cfg.parsed_phases() == [("full", 3), ("qat", 1)]


def test_fake_quant_is_on_from_the_first_step_or_in_the_qat_phase_only():
    from pipeline.student.phases import layout_phases
    from pipeline.student.qat import fake_quant_on

    def on(**changes):
        cfg = StudentConfig(labels=("x",), steps=4, **changes).validate()
        return [fake_quant_on(cfg, p) for p in layout_phases(cfg.parsed_phases(), 4)]

    assert on() == [False]
    assert on(qat="int8w") == [True]
    assert on(qat="int8w", phases="kd:1,full:1,qat:2") == [False, False, True]
