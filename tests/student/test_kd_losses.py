"""Distillation losses against closed forms and independent numpy arithmetic (CPU, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.student.kd_losses import (KINDS, MIN_TAIL, TAILS, HiddenStateAdapter, combine_losses, forward_kl,
                                generalized_jsd, hard_label_loss, hidden_state_loss,
                                retemper_teacher, reverse_kl, soft_label_loss,
                                student_logprobs_at, total_variation)

F64 = torch.float64


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * np.log(a / b)).sum())


def two_positions():
    """V = 5, k = 2; the teacher's top-2 probabilities are given explicitly (tails 0.1 and 0.1)."""
    z = torch.tensor([[1.0, 0.5, -0.3, 2.0, 0.0], [0.2, 0.1, 3.0, -1.0, 0.4]], dtype=F64)
    ids = torch.tensor([[3, 0], [2, 4]])
    p = np.array([[0.6, 0.3], [0.7, 0.2]])
    return z, ids, torch.tensor(np.log(p)), p


def np_buckets(z: torch.Tensor, ids: torch.Tensor, p: np.ndarray, T: float = 1.0):
    """(P, Q) over k + 1 buckets by hand; the teacher's tail is tempered as one lump."""
    q = np_softmax(z.numpy() / T)
    P, Q = [], []
    for r in range(len(p)):
        w = np.append(p[r], 1 - p[r].sum()) ** (1 / T)
        qk = q[r, ids[r].numpy()]
        P.append(w / w.sum())
        Q.append(np.append(qk, 1 - qk.sum()))
    return np.array(P), np.array(Q)


def test_forward_kl_renormalized_matches_hand_arithmetic():
    z, ids, lp, p = two_positions()
    q = np_softmax(z.numpy())
    expected = 0.0
    for r in range(2):
        pr = p[r] / p[r].sum()
        qr = q[r, ids[r].numpy()] / q[r, ids[r].numpy()].sum()
        expected += np_kl(pr, qr)
    got = soft_label_loss(z, ids, lp, kind="forward_kl", tail="renormalize")
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_kl_is_zero_when_the_student_is_the_teacher():
    logits = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.0, 0.2]], dtype=F64)
    ids = torch.tensor([[2, 0, 1], [0, 2, 1]])   # V = k: the support is the whole vocabulary
    lp = torch.log_softmax(logits, -1).gather(1, ids)
    for kind in KINDS:
        assert float(soft_label_loss(logits, ids, lp, kind=kind, tail="renormalize")) == \
            pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("tail", TAILS)
def test_reverse_kl_and_tvd_closed_forms(tail):
    z, ids, lp, p = two_positions()
    P, Q = np_buckets(z, ids, p)
    if tail == "renormalize":
        P, Q = P[:, :-1] / P[:, :-1].sum(1, keepdims=True), Q[:, :-1] / Q[:, :-1].sum(1, keepdims=True)
    rkl = sum(np_kl(Q[r], P[r]) for r in range(2))
    tvd = float(0.5 * np.abs(P - Q).sum())
    assert float(soft_label_loss(z, ids, lp, kind="reverse_kl", tail=tail)) == pytest.approx(rkl, rel=1e-12)
    assert float(soft_label_loss(z, ids, lp, kind="tvd", tail=tail)) == pytest.approx(tvd, rel=1e-12)


def test_jsd_endpoints_are_forward_and_reverse_kl():
    z, ids, lp, _ = two_positions()
    P = retemper_teacher(lp, 1.0, "bucket")
    Q = student_logprobs_at(z, ids, 1.0, "bucket")
    assert torch.equal(generalized_jsd(P, Q, 0.0), forward_kl(P, Q))
    assert torch.equal(generalized_jsd(P, Q, 1.0), reverse_kl(P, Q))
    assert not torch.allclose(forward_kl(P, Q), reverse_kl(P, Q))   # the endpoints differ here


def test_jsd_middle_beta_uses_the_gkd_trl_mixture():
    z, ids, lp, p = two_positions()
    P, Q = np_buckets(z, ids, p)
    beta = 0.3
    M = beta * P + (1 - beta) * Q   # GKD paper / trl: the teacher carries weight beta
    want = sum(beta * np_kl(P[r], M[r]) + (1 - beta) * np_kl(Q[r], M[r]) for r in range(2))
    assert float(soft_label_loss(z, ids, lp, kind="jsd", beta=beta)) == pytest.approx(want, rel=1e-12)


def test_small_beta_jsd_behaves_like_forward_kl():
    """JSD_beta / beta -> KL(P || Q) as beta -> 0: the interpolation starts at its beta = 0 endpoint."""
    P = torch.tensor([[0.6, 0.3, 0.1]], dtype=F64).log()
    Q = torch.tensor([[0.2, 0.5, 0.3]], dtype=F64).log()
    beta = 1e-4
    assert float(generalized_jsd(P, Q, beta)) / beta == pytest.approx(float(forward_kl(P, Q)), rel=1e-3)
    assert float(generalized_jsd(P, Q, 1 - beta)) / beta == pytest.approx(float(reverse_kl(P, Q)), rel=1e-3)


def test_bucket_tails_on_both_sides():
    z, ids, lp, p = two_positions()
    q = np_softmax(z.numpy())
    student = student_logprobs_at(z, ids, 1.0, "bucket")
    teacher = retemper_teacher(lp, 1.0, "bucket")
    assert student.shape == teacher.shape == (2, 3)
    for r in range(2):
        others = np.delete(q[r], ids[r].numpy())
        assert len(others) == 3
        assert float(student[r, -1]) == pytest.approx(math.log(others.sum()), rel=1e-12)
        assert float(teacher[r, -1].exp()) == pytest.approx(1 - p[r].sum(), rel=1e-12)
        np.testing.assert_allclose(teacher[r, :-1].exp().numpy(), p[r], rtol=1e-12)


def test_student_tail_keeps_its_precision_when_the_student_is_confident():
    """float32, tail mass ~2.5e-6: 1 - sum(top-k) is off by ~0.4% here, more as the tail shrinks."""
    z = torch.tensor([[14.0, 0.0, 0.0, 0.0]])
    got = float(student_logprobs_at(z, torch.tensor([[0]]), 1.0, "bucket")[0, -1].exp())
    want = 3 * math.exp(-14.0) / (1 + 3 * math.exp(-14.0))
    assert got == pytest.approx(want, rel=1e-5)


def test_tail_buckets_are_floored():
    lp = torch.tensor([[0.0, -40.0]], dtype=F64)   # a certain teacher: nothing left for the tail
    assert float(retemper_teacher(lp, 1.0, "bucket")[0, -1].exp()) == pytest.approx(MIN_TAIL, rel=1e-6)
    z = torch.tensor([[50.0, 0.0, 0.0]], dtype=F64)
    tail = student_logprobs_at(z, torch.tensor([[0]]), 1.0, "bucket")[0, -1]
    assert float(tail) == pytest.approx(math.log(MIN_TAIL), rel=1e-12)


def proportional_tail_example():
    """V = 6, k = 2, and the teacher's mass outside its top-k has exactly the student's shape."""
    z = torch.tensor([[0.3, 1.2, -0.5, 0.8, 0.0, -1.0]], dtype=F64)
    ids = torch.tensor([[1, 3]])
    q = np_softmax(z.numpy())[0]
    p = np.empty_like(q)
    p[[1, 3]] = [0.5, 0.3]
    rest = [0, 2, 4, 5]
    p[rest] = q[rest] / q[rest].sum() * 0.2
    return z, ids, torch.tensor(np.log(p[[1, 3]]))[None], p, q


def test_bucket_kl_equals_full_vocabulary_kl_when_tails_are_proportional():
    z, ids, lp, p, q = proportional_tail_example()
    assert float(soft_label_loss(z, ids, lp, kind="forward_kl")) == pytest.approx(np_kl(p, q), rel=1e-12)
    assert float(soft_label_loss(z, ids, lp, kind="reverse_kl")) == pytest.approx(np_kl(q, p), rel=1e-12)


def test_bucket_kl_is_below_full_kl_otherwise():
    z, ids, lp, p, q = proportional_tail_example()
    p[[0, 2, 4, 5]] = [0.1, 0.05, 0.03, 0.02]   # same tail mass, another shape
    assert float(soft_label_loss(z, ids, lp, kind="forward_kl")) < np_kl(p, q) - 1e-3


def test_temperature_one_is_the_identity():
    _, _, lp, p = two_positions()
    assert torch.allclose(retemper_teacher(lp, 1.0, "renormalize"), torch.log_softmax(lp, -1),
                          rtol=0, atol=1e-15)
    bucket = retemper_teacher(lp, 1.0, "bucket").exp().numpy()
    np.testing.assert_allclose(bucket, np.c_[p, 1 - p.sum(1)], rtol=1e-12)


def test_temperature_two_closed_form():
    lp = torch.tensor([[math.log(0.5), math.log(0.3)]], dtype=F64)
    s5, s3, s2 = math.sqrt(0.5), math.sqrt(0.3), math.sqrt(0.2)
    renorm = retemper_teacher(lp, 2.0, "renormalize").exp()[0].tolist()
    assert renorm == pytest.approx([s5 / (s5 + s3), s3 / (s5 + s3)], rel=1e-12)
    bucket = retemper_teacher(lp, 2.0, "bucket").exp()[0].tolist()
    total = s5 + s3 + s2
    assert bucket == pytest.approx([s5 / total, s3 / total, s2 / total], rel=1e-12)
    z = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    student = student_logprobs_at(z, torch.tensor([[2, 0]]), 2.0, "renormalize").exp()[0].tolist()
    assert student == pytest.approx(np_softmax(np.array([0.25, 0.5])).tolist(), rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_soft_loss_is_the_tempered_divergence_times_t_squared(kind):
    z, ids, lp, p = two_positions()
    T, beta = 2.0, 0.4
    P, Q = np_buckets(z, ids, p, T)
    M = beta * P + (1 - beta) * Q
    per_kind = {"forward_kl": lambda r: np_kl(P[r], Q[r]), "reverse_kl": lambda r: np_kl(Q[r], P[r]),
                "tvd": lambda r: 0.5 * np.abs(P[r] - Q[r]).sum(),
                "jsd": lambda r: beta * np_kl(P[r], M[r]) + (1 - beta) * np_kl(Q[r], M[r])}[kind]
    want = 4.0 * sum(per_kind(r) for r in range(2))
    got = soft_label_loss(z, ids, lp, kind=kind, tail="bucket", temperature=T, beta=beta)
    assert float(got) == pytest.approx(want, rel=1e-12)


def random_batch(n: int = 10, v: int = 7, k: int = 3):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, v, dtype=F64, generator=gen)
    ids = torch.argsort(torch.randn(n, v, generator=gen), -1)[:, :k]
    lp = torch.log_softmax(torch.randn(n, v, dtype=F64, generator=gen), -1).gather(1, ids)
    return z, ids, lp, torch.randint(0, v, (n,), generator=gen)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("tail", TAILS)
def test_chunked_equals_unchunked_values_and_gradients(kind, tail):
    z, ids, lp, target = random_batch()
    results = []
    for chunk in (None, 3):
        logits = z.clone().requires_grad_(True)
        loss = soft_label_loss(logits, ids, lp, kind=kind, tail=tail, temperature=1.5,
                               chunk_size=chunk) + hard_label_loss(logits, target, chunk_size=chunk)
        loss.backward()
        results.append((float(loss.detach()), logits.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-14)
    assert results[0][1].abs().sum() > 0


def test_chunked_without_gradients():
    z, ids, lp, target = random_batch()
    with torch.no_grad():
        assert float(soft_label_loss(z, ids, lp, chunk_size=4)) == \
            pytest.approx(float(soft_label_loss(z, ids, lp)), rel=1e-12)
        assert float(hard_label_loss(z, target, chunk_size=4)) == \
            pytest.approx(float(F.cross_entropy(z, target, reduction="sum")), rel=1e-12)


def test_gradients_stay_finite_with_an_empty_teacher_tail():
    z = torch.tensor([[0.5, -0.2, 1.0, 0.3]], dtype=F64, requires_grad=True)
    ids = torch.tensor([[2, 0]])
    lp = torch.tensor([[math.log(0.75), math.log(0.25)]], dtype=F64)   # top-k hold all the mass
    for kind in KINDS:
        z.grad = None
        loss = soft_label_loss(z, ids, lp, kind=kind, tail="bucket", temperature=2.0)
        loss.backward()
        assert math.isfinite(float(loss.detach())) and torch.isfinite(z.grad).all(), kind


def test_hard_label_loss_is_summed_cross_entropy():
    z, _, _, target = random_batch()
    got = hard_label_loss(z, target)
    assert float(got) == pytest.approx(float(F.cross_entropy(z, target, reduction="sum")), rel=1e-14)
    by_hand = -sum(math.log(np_softmax(z[i].numpy())[int(target[i])]) for i in range(len(target)))
    assert float(got) == pytest.approx(by_hand, rel=1e-12)


def test_hidden_losses_closed_form():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]], dtype=F64)
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0], [4.0, 3.0]], dtype=F64)
    assert float(hidden_state_loss(s, t, "mse")) == pytest.approx((1 + 1) / 2 + (0 + 1) / 2 + (1 + 1) / 2)
    # cosines: 0, 1 and 24 / 25
    assert float(hidden_state_loss(s, t, "cosine")) == pytest.approx(1.0 + 0.0 + 1 / 25, rel=1e-12)


def test_adapter_starts_as_the_identity_on_equal_widths():
    adapter = HiddenStateAdapter([4, -1], 3, 3).double()
    h = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=F64)
    for layer in (4, -1):
        assert float(hidden_state_loss(adapter(layer, h), h, "mse").detach()) == 0.0
    loss = hidden_state_loss(adapter(4, h), h + 1, "mse")
    loss.backward()
    assert adapter.proj["4"].weight.grad.abs().sum() > 0
    assert adapter.proj["-1"].weight.grad is None


def test_adapter_maps_to_the_teacher_width():
    adapter = HiddenStateAdapter([-1], 3, 5)
    assert adapter(-1, torch.randn(4, 3)).shape == (4, 5)
    with pytest.raises(KeyError):
        adapter(2, torch.randn(4, 3))


def test_combine_normalises_the_token_sums_once():
    soft, hard, hidden = torch.tensor(6.0), torch.tensor(2.0), torch.tensor(0.5)
    got = combine_losses(soft, hard, 4, alpha=0.25, hidden_mean=hidden, hidden_weight=2.0)
    assert float(got) == pytest.approx((0.25 * 6 + 0.75 * 2) / 4 + 2.0 * 0.5)
    assert float(combine_losses(soft, hard, torch.tensor(4), alpha=0.25)) == pytest.approx(0.75)
    assert float(combine_losses(soft, hard, 0, alpha=0.5)) == pytest.approx(4.0)   # n_tokens >= 1
    assert float(combine_losses(soft, torch.tensor(math.nan), 4, alpha=1.0)) == pytest.approx(1.5)


@pytest.mark.parametrize("kwargs,name", [
    ({"kind": "kl"}, "kind"), ({"tail": "drop"}, "tail"), ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"), ({"temperature": math.inf}, "temperature"),
    ({"beta": 1.5}, "beta"), ({"beta": -0.1}, "beta"), ({"chunk_size": 0}, "chunk_size")])
def test_bad_soft_arguments_name_the_argument(kwargs, name):
    z, ids, lp, _ = two_positions()
    with pytest.raises(ValueError, match=name):
        soft_label_loss(z, ids, lp, **kwargs)


def test_other_bad_arguments_name_the_argument():
    z, ids, lp, _ = two_positions()
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="teacher_ids"):
        soft_label_loss(z, ids[:1], lp[:1])
    with pytest.raises(ValueError, match="target_ids"):
        hard_label_loss(z, target[:1])
    with pytest.raises(ValueError, match="kind"):
        hidden_state_loss(z, z, "l1")
    with pytest.raises(ValueError, match="alpha"):
        combine_losses(torch.tensor(1.0), torch.tensor(1.0), 1, alpha=1.5)
    with pytest.raises(ValueError, match="hidden_weight"):
        combine_losses(torch.tensor(1.0), torch.tensor(1.0), 1, alpha=0.5, hidden_weight=-1.0)
    with pytest.raises(ValueError, match="tail"):
        retemper_teacher(lp, 1.0, "drop")
    with pytest.raises(ValueError, match="temperature"):
        student_logprobs_at(z, ids, 0.0, "bucket")
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(lp, lp, 2.0)
    assert torch.equal(total_variation(lp, lp), torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_fused_head_losses_equal_the_separate_losses(kind, tail, temperature):
    from pipeline.student.kd_losses import fused_head_losses

    torch.manual_seed(0)
    logits = torch.randn(12, 50, dtype=torch.float64, requires_grad=True)
    ids = torch.argsort(torch.randn(12, 50), dim=-1)[:, :5]
    lps = torch.log_softmax(torch.randn(12, 50, dtype=torch.float64), -1).gather(1, ids)
    target = torch.randint(0, 50, (12,))
    soft, hard = fused_head_losses(logits, ids, lps, target, kind=kind, tail=tail,
                                   temperature=temperature, beta=0.3)
    want_soft = soft_label_loss(logits, ids, lps, kind=kind, tail=tail, temperature=temperature,
                                beta=0.3)
    assert float(soft.detach()) == pytest.approx(float(want_soft.detach()), rel=1e-9)
    assert float(hard.detach()) == pytest.approx(float(hard_label_loss(logits, target).detach()),
                                                 rel=1e-12)
    g1 = torch.autograd.grad(soft + hard, logits)[0]
    g2 = torch.autograd.grad(want_soft + hard_label_loss(logits, target), logits)[0]
    assert torch.allclose(g1, g2, atol=1e-9)
    none, _ = fused_head_losses(logits, ids, lps, target, soft=False)
    assert float(none) == 0.0
