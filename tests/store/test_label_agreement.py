"""Agreement of two stored labels (pipeline/store/label_agreement.py): KL in closed form for the
two tiny teachers of the merge tests, against a dense oracle, and over two whole outputs."""

import numpy as np
import pytest

from pipeline.store.label_agreement import label_agreement, output_agreement
from pipeline.store.output_alignment import MisalignedOutputs
from test_merge_labels import A_IDS, A_P, A_SAMPLED, B_IDS, B_P, B_SAMPLED, V, write_output

log = np.log
# KL(A || B) by hand: stored ids, then the ids only B stored, then the V - |U| = 7 others;
# A spreads tails .2 and .25 over 8 ids, B .05 and .2.
KL_ROW0 = (0.5 * log(0.5 / 0.00625) + 0.3 * log(0.3 / 0.6) + 0.025 * log(0.025 / 0.35)
           + 7 * 0.025 * log(0.025 / 0.00625))
KL_ROW1 = (0.4 * log(0.4 / 0.025) + 0.35 * log(0.35 / 0.3) + 0.03125 * log(0.03125 / 0.5)
           + 7 * 0.03125 * log(0.03125 / 0.025))


def rows(ids, p):
    return np.array(ids), log(np.array(p))


def test_kl_and_top1_of_two_tiny_teachers_in_closed_form():
    kl, agree = label_agreement(*rows(A_IDS, A_P), *rows(B_IDS, B_P), vocab_size=V)
    np.testing.assert_allclose(kl, [KL_ROW0, KL_ROW1], rtol=1e-12)
    assert agree.tolist() == [False, False]  # A's top-1 are 1 and 4, B's 2 and 6


def test_a_label_against_itself_in_another_order_is_zero_and_agrees():
    ids, lps = rows(A_IDS, A_P)
    kl, agree = label_agreement(ids, lps, ids[:, ::-1], lps[:, ::-1], vocab_size=V)
    np.testing.assert_allclose(kl, [0.0, 0.0], atol=1e-15)
    assert agree.tolist() == [True, True]


def dense(ids, lps, vocab):
    p = np.full(vocab, (1 - np.exp(lps).sum()) / (vocab - len(ids)))
    p[ids] = np.exp(lps)
    return p


def test_kl_equals_the_dense_distributions_kl():
    rng = np.random.default_rng(0)
    vocab, n = 30, 50
    ids_p = np.stack([rng.choice(vocab, 4, replace=False) for _ in range(n)])
    ids_q = np.stack([rng.choice(vocab, 6, replace=False) for _ in range(n)])
    lps_p = log(rng.dirichlet(np.ones(5), n)[:, :4])
    lps_q = log(rng.dirichlet(np.ones(7), n)[:, :6])
    kl, agree = label_agreement(ids_p, lps_p, ids_q, lps_q, vocab_size=vocab)
    for i in range(n):
        p, q = dense(ids_p[i], lps_p[i], vocab), dense(ids_q[i], lps_q[i], vocab)
        assert kl[i] == pytest.approx(float((p * log(p / q)).sum()), rel=1e-10)
        assert agree[i] == (ids_p[i][np.argmax(lps_p[i])] == ids_q[i][np.argmax(lps_q[i])])


def test_mass_outside_a_label_without_tail_is_infinite():
    kl, _ = label_agreement(np.array([[1, 2]]), log(np.array([[0.5, 0.3]])),
                            np.array([[1, 2]]), log(np.array([[0.5, 0.5]])), vocab_size=V)
    assert kl.tolist() == [np.inf]


def test_output_agreement_averages_every_labelled_position(tmp_path):
    a = write_output(tmp_path / "A", "teacher-a", A_IDS, A_P, A_SAMPLED,
                     sample_ids=("doc/w0", "doc2/w0"))
    b = write_output(tmp_path / "B", "teacher-b", B_IDS, B_P, B_SAMPLED,
                     sample_ids=("doc2/w0", "doc/w0"))
    got = output_agreement(a, b)
    assert got["positions"] == 4 and got["top1_agreement"] == 0.0
    assert got["infinite_kl_positions"] == 0
    # float16 storage of the logprobs: a few 1e-4 relative
    assert got["kl"] == pytest.approx((KL_ROW0 + KL_ROW1) / 2, rel=2e-3)
    same = output_agreement(a, a)
    assert same["top1_agreement"] == 1.0 and same["kl"] == 0.0


def test_output_agreement_refuses_a_missing_sample(tmp_path):
    a = write_output(tmp_path / "A", "teacher-a", A_IDS, A_P, A_SAMPLED,
                     sample_ids=("doc/w0", "doc2/w0"))
    b = write_output(tmp_path / "B", "teacher-b", B_IDS, B_P, B_SAMPLED)
    with pytest.raises(MisalignedOutputs, match="has no sample 'doc2/w0' \\(first sample of"):
        output_agreement(a, b)
