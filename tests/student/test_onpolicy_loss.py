"""The on-policy reverse-KL term: closed-form value and gradient, importance weights, and the
fused head's gradient against autograd over dense logits."""

from __future__ import annotations

import pytest
import torch

from pipeline.student.fused_head import HeadLoss, head_losses
from pipeline.student.kd_losses import combine_losses, fused_head_losses, onpolicy_reverse_kl
from schemas.config_base import ConfigError
from schemas.student_config import StudentConfig

F64 = torch.float64


def test_value_is_the_summed_reverse_kl_estimate_and_gradient_its_policy_gradient():
    s = torch.tensor([-0.5, -2.0, -1.0], dtype=F64, requires_grad=True)
    t = torch.tensor([-1.0, -0.5, -1.0], dtype=F64)
    loss = onpolicy_reverse_kl(s, t)
    assert loss.item() == pytest.approx(0.5 - 1.5 + 0.0)
    (g,) = torch.autograd.grad(loss, s)
    assert g.tolist() == pytest.approx([0.5, -1.5, 0.0])       # k_t * d log p / d log p


def test_behaviour_logprobs_importance_weight_each_token():
    s = torch.tensor([-0.5, -2.0], dtype=F64, requires_grad=True)
    t = torch.tensor([-1.0, -0.5], dtype=F64)
    behaviour = torch.tensor([-0.7, -1.0], dtype=F64)
    rho = torch.exp(s.detach() - behaviour)
    loss = onpolicy_reverse_kl(s, t, behaviour)
    k = (s.detach() - t)
    assert loss.item() == pytest.approx(float((rho * k).sum()))
    (g,) = torch.autograd.grad(loss, s)
    assert g.tolist() == pytest.approx((rho * k).tolist())     # rho_t * k_t * grad log p


@pytest.mark.parametrize("behaviour", [False, True])
def test_fused_head_gradient_equals_autograd_over_dense_logits(behaviour):
    torch.manual_seed(0)
    n, d, vocab, k = 11, 6, 40, 5
    states = torch.randn(n, d, dtype=F64, requires_grad=True)
    weight = torch.randn(44, d, dtype=F64, requires_grad=True)
    ids = torch.argsort(torch.randn(n, vocab), dim=-1)[:, :k]
    teacher = torch.log_softmax(torch.randn(n, vocab, dtype=F64), -1)
    lps = teacher.gather(1, ids).float()
    target = torch.randint(0, vocab, (n,))
    t_sampled = teacher.gather(1, target[:, None])[:, 0].float()
    b = (torch.randn(n, dtype=F64) - 3).float() if behaviour else None
    spec = HeadLoss(vocab=vocab, alpha=0.7, chunk_size=4, onpolicy_weight=0.5)
    total, _, _ = head_losses(states, weight, ids, lps, target, spec, None, t_sampled, b)
    logits = states @ weight[:vocab].T
    soft, hard = fused_head_losses(logits, ids, lps, target)
    student = torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
    want = combine_losses(soft, hard, 1, 0.7) + 0.5 * onpolicy_reverse_kl(
        student, t_sampled.double(), None if b is None else b.double())
    assert float(total.detach()) == pytest.approx(float(want.detach()), rel=1e-9)
    for g, w in zip(torch.autograd.grad(total, (states, weight)),
                    torch.autograd.grad(want, (states, weight))):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-10)


def test_weight_zero_leaves_the_loss_unchanged_and_negative_is_refused():
    with pytest.raises(ConfigError, match="--onpolicy-weight"):
        StudentConfig(steps=1, onpolicy_weight=-1.0).validate()
    with pytest.raises(ValueError, match="onpolicy_weight"):
        HeadLoss(vocab=4, onpolicy_weight=-0.1)
