"""The fused LM head's losses and closed-form gradient against autograd over dense logits."""

from __future__ import annotations

import pytest
import torch

from pipeline.student.fused_head import HeadLoss, head_losses
from pipeline.student.kd_losses import combine_losses, fused_head_losses

F64 = torch.float64


def problem(n: int = 13, d: int = 6, vocab: int = 40, padded: int = 44, k: int = 5,
            dtype: torch.dtype = F64) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    states = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(padded, d, dtype=dtype, requires_grad=True)
    ids = torch.argsort(torch.randn(n, vocab), dim=-1)[:, :k]
    lps = torch.log_softmax(torch.randn(n, vocab, dtype=F64), -1).gather(1, ids).float()
    target = torch.randint(0, vocab, (n,))
    return states, weight, ids, lps, target


def reference(states, weight, ids, lps, target, spec: HeadLoss):
    """Autograd over dense logits: the plain computation the fused head must equal."""
    logits = states @ weight[:spec.vocab].T
    soft, hard = fused_head_losses(logits, ids, lps, target, kind=spec.kind, tail=spec.tail,
                                   temperature=spec.temperature, beta=spec.beta,
                                   soft=spec.alpha > 0)
    total = combine_losses(soft, hard, 1, spec.alpha)
    return total, soft, hard


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_losses_and_gradients_equal_autograd_over_dense_logits(kind, tail, temperature, alpha):
    states, weight, ids, lps, target = problem()
    spec = HeadLoss(vocab=40, alpha=alpha, kind=kind, tail=tail, temperature=temperature,
                    beta=0.3, chunk_size=4)
    total, soft, hard = head_losses(states, weight, ids, lps, target, spec)
    want_total, want_soft, want_hard = reference(states, weight, ids, lps, target, spec)
    assert float(soft) == pytest.approx(float(want_soft.detach()), rel=1e-10, abs=1e-12)
    assert float(hard) == pytest.approx(float(want_hard.detach()), rel=1e-10)
    assert float(total.detach()) == pytest.approx(float(want_total.detach()), rel=1e-10)
    got = torch.autograd.grad(3.0 * total, (states, weight))
    want = torch.autograd.grad(3.0 * want_total, (states, weight))
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-9, atol=1e-11)
    assert torch.equal(got[1][40:], torch.zeros_like(got[1][40:]))   # padded head rows


def test_chunking_does_not_change_the_result():
    states, weight, ids, lps, target = problem(n=23)
    results = []
    for chunk in (1, 5, 23, 100):
        spec = HeadLoss(vocab=40, chunk_size=chunk)
        total, soft, hard = head_losses(states, weight, ids, lps, target, spec)
        results.append((float(total.detach()), *torch.autograd.grad(total, (states, weight))))
    for total, g_states, g_weight in results[1:]:
        assert total == pytest.approx(results[0][0], rel=1e-12)
        assert torch.allclose(g_states, results[0][1], atol=1e-12)
        assert torch.allclose(g_weight, results[0][2], atol=1e-12)


def test_float32_matches_float64_and_soft_and_hard_are_detached():
    states, weight, ids, lps, target = problem(dtype=torch.float32)
    spec = HeadLoss(vocab=40, chunk_size=4)
    total, soft, hard = head_losses(states, weight, ids, lps, target, spec)
    assert total.dtype == torch.float32 and total.requires_grad
    assert not soft.requires_grad and not hard.requires_grad
    exact = reference(states.double(), weight.double(), ids, lps, target, spec)[0]
    assert float(total.detach()) == pytest.approx(float(exact.detach()), rel=1e-5)


def test_duplicate_teacher_ids_are_summed_like_autograd():
    states, weight, ids, lps, target = problem()
    ids[:, 1] = ids[:, 0]         # a sampled token listed twice (vLLM's k + 1 entries)
    spec = HeadLoss(vocab=40, tail="renormalize", chunk_size=4)
    total = head_losses(states, weight, ids, lps, target, spec)[0]
    want = reference(states, weight, ids, lps, target, spec)[0]
    got_w, = torch.autograd.grad(total, weight)
    want_w, = torch.autograd.grad(want, weight)
    assert torch.allclose(got_w, want_w, rtol=1e-9, atol=1e-11)


def test_bad_shapes_are_refused():
    states, weight, ids, lps, target = problem()
    with pytest.raises(ValueError, match="states must be"):
        head_losses(states[:, :3], weight, ids, lps, target, HeadLoss(vocab=40))
    with pytest.raises(ValueError, match="fewer than vocab 50"):
        head_losses(states, weight, ids, lps, target, HeadLoss(vocab=50))
    for bad, match in (({"tail": "drop"}, "tail"), ({"kind": "l2"}, "kind"),
                       ({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha"),
                       ({"chunk_size": 0}, "chunk_size")):
        with pytest.raises(ValueError, match=match):
            HeadLoss(vocab=40, **bad)


def test_under_bf16_autocast_matmuls_are_bf16_and_losses_and_gradients_float32():
    states, weight, ids, lps, target = problem(n=64, d=32, vocab=40, padded=44,
                                               dtype=torch.float32)
    spec = HeadLoss(vocab=40, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, soft, hard = head_losses(states, weight, ids, lps, target, spec)
    assert total.dtype == soft.dtype == hard.dtype == torch.float32
    g_states, g_weight = torch.autograd.grad(total, (states, weight))
    assert g_states.dtype == g_weight.dtype == torch.float32
    exact = reference(states, weight, ids, lps, target, spec)[0]
    want_states, want_weight = torch.autograd.grad(exact, (states, weight))
    fp32 = head_losses(states, weight, ids, lps, target, spec)[0]
    assert float(total.detach()) != float(fp32.detach())   # the matmuls did run in bf16
    assert float(total.detach()) == pytest.approx(float(exact.detach()), rel=0.02)
    for g, w in ((g_states, want_states), (g_weight, want_weight)):
        assert float((g - w).norm() / w.norm()) < 0.05
