"""The fused cross-tokenizer head (pipeline.student.cross_head) against the dense losses.

Oracle: `cross_tokenizer_losses` over the explicit (N, V) logits and autograd through
them, on a real Qwen3 student batch (multi-token chunks, unmapped teacher entries).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.student.cross_head import chunk_splits, fused_cross_losses
from pipeline.student.cross_tokenizer_batches import StudentSide, collate_cross
from pipeline.student.cross_tokenizer_loss import cross_tokenizer_losses
from tests.conftest import require_tokenizer
from tests.student.test_cross_tokenizer_loss import teacher_side, window_sample
from tests.student.test_token_alignment import TRICKY, tokenizer_and_table


def test_a_chunk_longer_than_the_size_gets_its_own_split():
    row_chunk = torch.tensor([0] * 10 + [1] * 10 + [2] * 2)
    assert [(s.start, s.stop) for s in chunk_splits(row_chunk, 3)] == [(0, 10), (10, 20), (20, 22)]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_chunk_splits_cover_the_rows_and_end_on_chunk_boundaries(rng, size):
    row_chunk = torch.from_numpy(rng.integers(0, 4, 60)).cumsum(0)
    splits = chunk_splits(row_chunk, size)
    assert splits[0].start == 0 and splits[-1].stop == 60
    assert all(a.stop == b.start for a, b in zip(splits, splits[1:]))
    for s in splits[:-1]:
        assert row_chunk[s.stop - 1] != row_chunk[s.stop]
    for s in splits:  # longer than size only when one chunk alone is
        assert s.stop - s.start <= size or len(set(row_chunk[s].tolist())) == 1


@pytest.fixture(scope="module")
def qwen_batch():
    rng = np.random.default_rng(7)
    s_tok, _, _ = tokenizer_and_table(str(require_tokenizer("qwen3")))
    tok, table, _ = teacher_side()
    side = StudentSide.build(s_tok, tok)
    samples = [window_sample(tok, table, text, 5, rng) for text in TRICKY]
    return collate_cross([s for s, _ in samples], [side.align(s, lay) for s, lay in samples],
                         side.vocab_map), len(s_tok)


@pytest.mark.parametrize("alpha,temperature,alm_t,chunk", [(0.5, 1.0, 1.0, 4), (1.0, 2.0, 3.0, 1),
                                                           (0.0, 1.0, 1.0, 16), (0.3, 1.0, 1.0, 4096)])
def test_fused_cross_losses_match_the_dense_ones_and_their_gradient(alpha, temperature, alm_t,
                                                                    chunk, qwen_batch):
    batch, vocab = qwen_batch
    n = len(batch["loss_rows"])
    states = torch.randn(n, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab + 13, 8, dtype=torch.float64, requires_grad=True)  # padded rows
    options = dict(alpha=alpha, temperature=temperature, alm_temperature=alm_t)
    dense = cross_tokenizer_losses(states @ weight[:vocab].T, batch, **options)
    dense.weighted.backward()
    g_states, g_weight = states.grad.clone(), weight.grad.clone()
    states.grad = weight.grad = None
    fused = fused_cross_losses(states, weight, batch, vocab=vocab, chunk_size=chunk, **options)
    fused.weighted.backward()
    assert fused.weighted.item() == pytest.approx(dense.weighted.item(), rel=1e-5)
    assert fused.ce.item() == pytest.approx(dense.ce.item(), rel=1e-9)
    assert fused.alm.item() == pytest.approx((dense.alm + dense.kl).item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(states.grad, g_states, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, g_weight, rtol=1e-5, atol=1e-7)
    assert not weight.grad[vocab:].any()
