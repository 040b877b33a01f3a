"""kd export-model --format gguf: round trips through transformers' GGUF reader, and refusals.

Students: the tiny random one (2 layers, 64 wide, the teacher's tokenizer) and a
2-layer student cut from the embedded teacher (real weights, so its
next-token distributions are peaked like a trained model's, which is what the
q8_0 KL bound is about). No vLLM: these run on any machine with the converter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TEACHER, require_teacher, save_tiny_student
from pipeline.interop.gguf_model import read_gguf_summary

Q8_KL_BOUND = 5e-3
"""Mean per-position KL(student || q8_0 GGUF) on 256 held-out tokens, nats: measured 2.47e-3 for
the 2-layer student cut from the teacher (bench/results/deploy.json has the demo student's);
the bound is twice that."""


def export(model: Path, out: Path, quant: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stages.cli.main", "export-model", "--model",
                           str(model), "--quant", quant, "--out", str(out), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def heldout_ids(tokenizer, docs: int = 3, length: int = 256) -> torch.Tensor:
    lines = (ROOT / "data/corpus/heldout.jsonl").read_text().splitlines()[:docs]
    text = "\n\n".join(json.loads(line)["text"] for line in lines)
    return tokenizer(text, return_tensors="pt").input_ids[:, :length]


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                                 dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def half_rounded(model):
    """The student with every matrix rounded to float16, as --quant f16 stores it (norms stay f32)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(p.half().float())
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    require_teacher()
    return save_tiny_student(tmp_path_factory.mktemp("tiny") / "student")


@pytest.fixture(scope="module")
def cut_teacher(tmp_path_factory) -> Path:
    """Two of the teacher's layers, weights and all, saved as a student directory."""
    require_teacher()
    from transformers import AutoTokenizer

    from stages.student.model import derive_from_teacher

    path = tmp_path_factory.mktemp("cut") / "student"
    derive_from_teacher(str(TEACHER), 2).save_pretrained(path)
    AutoTokenizer.from_pretrained(TEACHER).save_pretrained(path)
    return path


def test_f16_logits_equal_the_students_within_float16_rounding(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tiny-f16.gguf"
    proc = export(tiny, out, "f16")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "F16" in proc.stdout and "chat template" in proc.stdout
    gguf_model, gguf_tokenizer = load_gguf(out)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = heldout_ids(tokenizer)
    assert torch.equal(heldout_ids(gguf_tokenizer), ids)
    student = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    with torch.no_grad():
        exact = student(ids).logits
        rounded = half_rounded(student)(ids).logits
        got = gguf_model(ids).logits
    assert torch.allclose(got, rounded, rtol=0, atol=1e-5)
    # ... and the rounding is what separates it from the float student at all.
    assert not torch.allclose(got, exact, rtol=0, atol=1e-6)


def mean_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    p, q = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_q8_0_stays_within_the_kl_bound_and_carries_tokenizer_and_template(cut_teacher,
                                                                         tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "cut-q8_0.gguf"
    proc = export(cut_teacher, out, "q8_0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = read_gguf_summary(out)
    tokenizer = AutoTokenizer.from_pretrained(cut_teacher)
    assert summary.architecture == "llama" and summary.tokenizer_model == "gpt2"
    assert summary.tokens == len(tokenizer)
    assert summary.chat_template == tokenizer.chat_template
    assert summary.tensor_types["Q8_0"] == 1 + 2 * 7  # embeddings (tied head) + 7 per layer
    gguf_model, _ = load_gguf(out)
    student = AutoModelForCausalLM.from_pretrained(cut_teacher, dtype=torch.float32).eval()
    ids = heldout_ids(tokenizer)
    with torch.no_grad():
        kl = mean_kl(student(ids).logits, gguf_model(ids).logits)
    assert 0 < kl < Q8_KL_BOUND


def test_k_quants_and_other_architectures_are_refused_by_name(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    proc = export(gpt2, tmp_path / "g.gguf", "q8_0")
    assert proc.returncode == 1
    assert "is a GPT2LMHeadModel" in proc.stderr and "LlamaForCausalLM" in proc.stderr
    proc = export(gpt2, tmp_path / "g.gguf", "q4_k_m")
    assert proc.returncode == 1 and "is a GPT2LMHeadModel" in proc.stderr
    assert not (tmp_path / "g.gguf").exists()


def test_k_quants_without_llama_cpp_python_are_refused_with_the_way_to_get_them(tiny, tmp_path):
    """Runs everywhere (CI has no llama-cpp-python): `import llama_cpp` is made to fail."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "llama_cpp.py").write_text("raise ImportError('blocked by the test')\n")
    proc = subprocess.run([sys.executable, "-m", "stages.cli.main", "export-model", "--model",
                           str(tiny), "--quant", "q4_k_m", "--out", str(tmp_path / "t.gguf")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=os.environ | {"PYTHONPATH": str(block)})
    assert proc.returncode == 1
    assert "make llama-cpp" in proc.stderr and "llama-quantize" in proc.stderr
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))


def test_q4_k_m_through_llama_cpp_is_smaller_than_q8_0_and_further_from_the_student(
        cut_teacher, tmp_path):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (`make "
                        "llama-cpp` compiles it); the refusal without it is tested above")
    from transformers import AutoModelForCausalLM

    sizes, kls = {}, {}
    student = AutoModelForCausalLM.from_pretrained(cut_teacher, dtype=torch.float32).eval()
    for quant in ("q8_0", "q4_k_m"):
        out = tmp_path / f"cut-{quant}.gguf"
        proc = export(cut_teacher, out, quant)
        assert proc.returncode == 0, proc.stderr
        summary = read_gguf_summary(out)
        sizes[quant] = out.stat().st_size
        gguf_model, tokenizer = load_gguf(out)
        ids = heldout_ids(tokenizer)
        with torch.no_grad():
            kls[quant] = mean_kl(student(ids).logits, gguf_model(ids).logits)
    assert "Q4_K" in summary.tensor_types
    assert not list(tmp_path.glob(".*tmp"))
    assert sizes["q4_k_m"] < sizes["q8_0"] and kls["q8_0"] < kls["q4_k_m"]


def test_an_existing_file_is_kept_without_overwrite(tiny, tmp_path):
    out = tmp_path / "t.gguf"
    out.write_bytes(b"keep")
    proc = export(tiny, out, "f16")
    assert proc.returncode == 1 and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"keep"
    assert export(tiny, out, "f16", "--overwrite").returncode == 0
    assert read_gguf_summary(out).tensor_types["F16"] > 0


def test_the_torchao_converted_model_is_refused_for_its_float_one(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.student.qat import convert_qat, save_quantized

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    convert_qat(model, "int8w", 32)
    save_quantized(model, AutoTokenizer.from_pretrained(tiny), tmp_path / "model-quantized",
                   "int8w", 32)
    proc = export(tmp_path / "model-quantized", tmp_path / "q.gguf", "q8_0")
    assert proc.returncode == 1 and "holds torchao-quantized weights" in proc.stderr
    assert not (tmp_path / "q.gguf").exists()
