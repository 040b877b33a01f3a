"""Distillation losses in closed form, against independent numpy arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.kd_losses import (HiddenStateAdapter, combine_losses, hard_label_loss,
                                hidden_state_loss, retemper_teacher, soft_label_loss,
                                student_logprobs_at)



@pytest.fixture(autouse=True)
def float64_default():
    """Closed-form comparisons at 1e-10 need float64; restored for the other test modules."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def example():
    """V = 5, k = 2, two positions; teacher top-k probabilities given explicitly."""
    z = torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.0], [0.2, 0.1, 3.0, -1.0, 0.4]])
    ids = torch.tensor([[3, 0], [2, 4]])
    p = np.array([[0.6, 0.3], [0.7, 0.2]])
    return z, ids, torch.tensor(np.log(p)), p


def test_forward_kl_renormalized_closed_form():
    z, ids, lp, p = example()
    q = np_softmax(z.numpy())
    expected = 0.0
    for r in range(2):
        pr = p[r] / p[r].sum()
        qr = q[r, ids[r].numpy()] / q[r, ids[r].numpy()].sum()
        expected += float((pr * np.log(pr / qr)).sum())
    got = soft_label_loss(z, ids, lp, kind="forward_kl", tail="renormalize")
    assert float(got) == pytest.approx(expected, rel=1e-10)


def bucket_dists(z, ids, p, T=1.0):
    q = np_softmax(z.numpy() / T)
    P, Q = [], []
    for r in range(len(p)):
        qk = q[r, ids[r].numpy()]
        P.append(np.append(p[r], 1 - p[r].sum()))
        Q.append(np.append(qk, 1 - qk.sum()))
    return np.array(P), np.array(Q)


def test_bucket_kinds_closed_form():
    z, ids, lp, p = example()
    P, Q = bucket_dists(z, ids, p)
    fkl = float((P * np.log(P / Q)).sum())
    rkl = float((Q * np.log(Q / P)).sum())
    tvd = float(0.5 * np.abs(P - Q).sum())
    beta = 0.3
    M = (1 - beta) * P + beta * Q
    jsd = float(beta * (P * np.log(P / M)).sum() + (1 - beta) * (Q * np.log(Q / M)).sum())
    for kind, want in [("forward_kl", fkl), ("reverse_kl", rkl), ("tvd", tvd), ("jsd", jsd)]:
        got = soft_label_loss(z, ids, lp, kind=kind, tail="bucket", beta=beta)
        assert float(got) == pytest.approx(want, rel=1e-9), kind


def test_jsd_endpoints_are_forward_and_reverse_kl():
    z, ids, lp, _ = example()
    for beta, kind in [(0.0, "forward_kl"), (1.0, "reverse_kl")]:
        assert float(soft_label_loss(z, ids, lp, kind="jsd", beta=beta)) == pytest.approx(
            float(soft_label_loss(z, ids, lp, kind=kind)))


def test_kl_is_zero_when_the_student_matches_the_teacher():
    z = torch.randn(6, 8)
    ids = torch.argsort(z, dim=-1, descending=True)[:, :3]
    lp = torch.log_softmax(z, -1).gather(1, ids)
    for tail in ("bucket", "renormalize"):
        for kind in ("forward_kl", "reverse_kl", "jsd", "tvd"):
            assert float(soft_label_loss(z, ids, lp, kind=kind, tail=tail)) == pytest.approx(0, abs=1e-12)


def test_bucket_kl_equals_full_kl_when_tails_are_proportional():
    """Chain rule of KL: the bucket loss is exact when the teacher's tail has the student's shape."""
    z = torch.tensor([[0.3, 1.2, -0.5, 0.8, 0.0, -1.0]])
    ids = torch.tensor([[1, 3]])
    q = np_softmax(z.numpy())[0]
    p = q.copy()
    p[[1, 3]] = [0.5, 0.3]
    rest = [0, 2, 4, 5]
    p[rest] = q[rest] / q[rest].sum() * 0.2
    full = float((p * np.log(p / q)).sum())
    got = soft_label_loss(z, ids, torch.tensor(np.log(p[[1, 3]]))[None], tail="bucket")
    assert float(got) == pytest.approx(full, rel=1e-10)


def test_student_tail_bucket_is_the_mass_outside_the_ids():
    z, ids, _, _ = example()
    q = np_softmax(z.numpy())
    got = student_logprobs_at(z, ids, 1.0, "bucket").exp().numpy()
    for r in range(2):
        outside = np.delete(q[r], ids[r].numpy()).sum()
        assert got[r, -1] == pytest.approx(outside)
        assert got[r].sum() == pytest.approx(1.0)


def test_temperature_retempers_and_scales_by_t_squared():
    z, ids, lp, p = example()
    T = 2.0
    assert torch.allclose(retemper_teacher(lp, 1.0, "renormalize"), torch.log_softmax(lp, -1))
    teacher = retemper_teacher(lp, T, "bucket").exp().numpy()
    for r in range(2):
        w = np.append(p[r] ** (1 / T), (1 - p[r].sum()) ** (1 / T))
        np.testing.assert_allclose(teacher[r], w / w.sum())
    P = teacher
    _, Q = bucket_dists(z, ids, p, T)
    want = float((P * np.log(P / Q)).sum()) * T * T
    assert float(soft_label_loss(z, ids, lp, temperature=T)) == pytest.approx(want, rel=1e-9)


def test_chunked_equals_unchunked_values_and_gradients():
    z = torch.randn(10, 7, requires_grad=True)
    ids = torch.argsort(torch.randn(10, 7), -1)[:, :3]
    lp = torch.log_softmax(torch.randn(10, 7), -1).gather(1, ids)
    target = torch.randint(0, 7, (10,))
    grads = []
    for chunk in (None, 3):
        z.grad = None
        loss = soft_label_loss(z, ids, lp, chunk_size=chunk) + hard_label_loss(z, target, chunk)
        loss.backward()
        grads.append((float(loss.detach()), z.grad.clone()))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-12)
    assert torch.allclose(grads[0][1], grads[1][1])


def test_hard_label_loss_is_summed_cross_entropy():
    z = torch.randn(5, 9)
    t = torch.randint(0, 9, (5,))
    expected = -sum(math.log(np_softmax(z[i].numpy())[t[i]]) for i in range(5))
    assert float(hard_label_loss(z, t)) == pytest.approx(expected)


def test_hidden_losses_closed_form_and_identity_adapter():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert float(hidden_state_loss(s, t, "mse")) == pytest.approx((1 + 1) / 2 + (0 + 1) / 2)
    assert float(hidden_state_loss(s, t, "cosine")) == pytest.approx(1.0 + 0.0)
    adapter = HiddenStateAdapter([-1], 2, 2)
    assert float(hidden_state_loss(adapter(-1, s), s, "mse")) == 0.0


def test_combine_normalises_once():
    got = combine_losses(torch.tensor(6.0), torch.tensor(2.0), 4, alpha=0.25,
                         hidden_mean=torch.tensor(0.5), hidden_weight=2.0)
    assert float(got) == pytest.approx((0.25 * 6 + 0.75 * 2) / 4 + 1.0)


@pytest.mark.parametrize("kwargs,name", [({"kind": "kl"}, "kind"), ({"tail": "x"}, "tail"),
                                         ({"temperature": 0.0}, "temperature"),
                                         ({"beta": 1.5}, "beta")])
def test_bad_arguments_name_the_argument(kwargs, name):
    z, ids, lp, _ = example()
    with pytest.raises(ValueError, match=name):
        soft_label_loss(z, ids, lp, **kwargs)
