"""Cross-tokenizer losses and batches (pipeline.student.cross_tokenizer_loss / _batches).

Oracles: closed forms (the binary KL, tokenkit's binary_ce gradient), the ordinary KD loss
(`kd_losses.soft_label_loss`) for identical tokenizers, and exact round trips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.store.shard_reader import ShardReader
from pipeline.student.batches import collate
from pipeline.student.cross_tokenizer_batches import (AlignmentCache, StudentSide, TextLayoutMissing,
                                                      collate_cross, stored_layouts)
from pipeline.student.cross_tokenizer_loss import (ALM_EPSILON, alm_chunk_loss, chunk_logprobs,
                                                   cross_tokenizer_losses, mapped_topk,
                                                   one_to_one_kl)
from pipeline.student.kd_losses import soft_label_loss
from tests.student.window_layout import derived_window_layout
from tests.conftest import TEACHER, require_teacher, require_tokenizer, write_fake_output
from tests.student.test_token_alignment import TRICKY, tokenizer_and_table


def test_chunk_logprobs_sum_to_the_token_logprobs(rng):
    lp = torch.from_numpy(-rng.exponential(size=50))
    chunk = torch.from_numpy(np.sort(rng.integers(0, 12, 50)))
    sums = chunk_logprobs(lp, chunk, 12)
    assert torch.isclose(sums.sum(), lp.sum(), rtol=0, atol=1e-9)
    for c in range(12):
        assert torch.isclose(sums[c], lp[chunk == c].sum(), rtol=0, atol=1e-12)


def test_alm_loss_is_the_binary_kl_by_hand_with_tokenkits_gradient():
    t_lp, s_lp, temp = -1.0, -2.0, 2.0
    p, q = math.exp(t_lp / temp - ALM_EPSILON), math.exp(s_lp / temp - ALM_EPSILON)
    by_hand = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    s = torch.tensor([s_lp], dtype=torch.float64, requires_grad=True)
    loss = alm_chunk_loss(torch.tensor([t_lp]), s, temperature=temp)
    assert loss.item() == pytest.approx(by_hand, rel=1e-5)
    loss.backward()
    # tokenkit's binary_ce(-(p log q + (1 - p) log(1 - q))): d/ds = (-p + (1 - p) q / (1 - q)) / T
    assert s.grad.item() == pytest.approx((-p + (1 - p) * q / (1 - q)) / temp, rel=1e-4)


def test_mapped_topk_sends_unmapped_mass_to_the_tail():
    ids, lps, keep = mapped_topk(torch.tensor([[3, -1, 5], [-1, -1, -1]]),
                                 torch.log(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.3]])))
    assert keep.tolist() == [True, False] and ids.tolist() == [[3, 3, 5]]
    assert torch.isneginf(lps[0, 1]) and lps[0, 0].item() == pytest.approx(math.log(0.5))


def window_sample(tok, table, text: str, k: int, rng, logits_of=None):
    """A scored window of `text` under the teacher's tokenizer with top-k labels (random, or
    from `logits_of(ids)` (T, V) so the labels are exactly those logits' distribution)."""
    ids = np.array(tok(text, add_special_tokens=False)["input_ids"], np.int64)
    positions = np.arange(3, len(ids))
    if logits_of is None:
        topk = rng.integers(0, len(table), (len(positions), k))
        lps = np.sort(np.log(rng.dirichlet(np.ones(k + 1))[:k]))[:, None].T.repeat(len(positions), 0)
        sampled = np.log(rng.uniform(0.05, 0.9, len(positions)))
    else:
        full = torch.log_softmax(logits_of(ids)[positions - 1], -1)
        lps, topk = (x.numpy() for x in full.topk(k, -1))
        sampled = full.gather(-1, torch.from_numpy(ids[positions])[:, None]).squeeze(-1).numpy()
    sample = {"token_ids": ids, "positions": positions, "topk_ids": topk,
              "topk_logprobs": lps.astype(np.float32), "sampled_logprobs": sampled.astype(np.float32),
              "prompt_length": 3}
    return sample, derived_window_layout(ids, positions, table)


def teacher_side():
    require_teacher()
    tok, table, _ = tokenizer_and_table(str(TEACHER))
    return tok, table, StudentSide.build(tok, tok)


def test_identical_tokenizers_give_the_ordinary_kd_loss(rng):
    tok, table, side = teacher_side()
    samples = [window_sample(tok, table, text, 5, rng) for text in TRICKY[:3]]
    cross = collate_cross([s for s, _ in samples], [side.align(s, lay) for s, lay in samples],
                          side.vocab_map)
    plain = collate([s for s, _ in samples])
    torch.testing.assert_close(cross["input_ids"], plain["input_ids"])
    logits = torch.randn(cross["input_ids"].numel(), len(table), dtype=torch.float64)
    assert len(cross["one_rows"]) == len(cross["loss_rows"]) == len(plain["loss_rows"])
    rows = logits[cross["loss_rows"]]
    ours = one_to_one_kl(rows[cross["one_rows"]], cross["one_teacher_ids"],
                         cross["one_teacher_logprobs"], temperature=2.0)
    ordinary = soft_label_loss(logits[plain["loss_rows"]], plain["teacher_ids"],
                               plain["teacher_logprobs"], tail="bucket", temperature=2.0)
    assert ours.item() == pytest.approx(ordinary.item(), rel=1e-12)
    ce = cross_tokenizer_losses(rows, cross, alpha=0.0).ce
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(
        logits[plain["loss_rows"]], plain["target_ids"], reduction="sum").item(), rel=1e-9)


def test_a_student_equal_to_the_teacher_has_zero_loss_beyond_the_tail(rng):
    tok, table, side = teacher_side()
    weights = torch.randn(len(table), 16, dtype=torch.float64)
    embed = torch.randn(len(table), 16, dtype=torch.float64)

    def logits_of(ids):
        return torch.from_numpy(ids)[:, None].eq(torch.arange(len(table))).double() @ embed @ weights.T

    samples = [window_sample(tok, table, text, 20, rng, logits_of) for text in TRICKY[:2]]
    batch = collate_cross([s for s, _ in samples], [side.align(s, lay) for s, lay in samples],
                          side.vocab_map)
    ids = batch["input_ids"].reshape(-1).numpy()
    rows = logits_of(ids)[batch["loss_rows"]]
    sums = cross_tokenizer_losses(rows, batch, alpha=1.0)
    assert abs(sums.kl.item()) < 1e-5 and abs(sums.alm.item()) < 1e-9


def test_qwen_student_batch_keys_and_chunk_sums(rng):
    require_tokenizer("qwen3")
    tok, table, _ = teacher_side()
    s_tok, _, _ = tokenizer_and_table(str(require_tokenizer("qwen3")))
    side = StudentSide.build(s_tok, tok)
    samples = [window_sample(tok, table, text, 5, rng) for text in TRICKY]
    aligned = [side.align(s, lay) for s, lay in samples]
    batch = collate_cross([s for s, _ in samples], aligned, side.vocab_map)
    flat = batch["input_ids"].reshape(-1)
    assert (flat[batch["loss_rows"] + 1] == batch["target_ids"]).all()
    teacher_total = sum(float(s["sampled_logprobs"].astype(np.float64).sum()) for s, _ in samples)
    assert batch["chunk_teacher_logprobs"].double().sum().item() == pytest.approx(teacher_total,
                                                                                    rel=1e-6)
    assert int(batch["chunk_bytes"].sum()) == sum(int(lay[1][1].end - lay[1][1].start)
                                                  for _, lay in samples)
    assert 0 < len(batch["one_rows"]) < len(batch["loss_rows"])


@pytest.mark.parametrize("name,word", [("qwen3", "Ġthe"), ("gemma3", "▁the")])
def test_byte_vocab_map_joins_same_strings_and_end_of_turn(name, word):
    tok, _, _ = teacher_side()
    s_tok, _, _ = tokenizer_and_table(str(require_tokenizer(name)))
    side = StudentSide.build(s_tok, tok)
    assert side.vocab_map[tok.convert_tokens_to_ids("Ġthe")] == s_tok.convert_tokens_to_ids(word)
    eot = {"qwen3": "<|im_end|>", "gemma3": "<end_of_turn>"}[name]
    assert side.vocab_map[tok.convert_tokens_to_ids("<|im_end|>")] == s_tok.convert_tokens_to_ids(eot)


def test_alignment_cache_round_trip(tmp_path, rng):
    tok, table, side = teacher_side()
    samples = [window_sample(tok, table, text, 3, rng) for text in TRICKY[:2]]
    computed = [side.align(s, lay) for s, lay in samples]
    calls = []
    shard = tmp_path / "shard-00000.h5"
    shard.write_bytes(b"labels")
    cache = AlignmentCache(tmp_path / "alignment", side.fingerprint)
    cache.shard(str(shard), lambda: calls.append(1) or computed)
    again = AlignmentCache(tmp_path / "alignment", side.fingerprint).shard(str(shard), lambda: 1 / 0)
    assert calls == [1] and len(again) == 2
    shard.write_bytes(b"other labels")  # a shard rewritten in place is aligned again
    AlignmentCache(tmp_path / "alignment", side.fingerprint).shard(str(shard),
                                                                  lambda: calls.append(2) or computed)
    assert calls == [1, 2]
    for a, b in zip(computed, again):
        for k, v in a.arrays().items():
            np.testing.assert_array_equal(v, b.arrays()[k])


def test_an_output_without_the_text_layout_is_refused_naming_the_command(tmp_path):
    write_fake_output(tmp_path / "out", shards=1)
    reader = ShardReader(next((tmp_path / "out").glob("*.h5")))
    with pytest.raises(TextLayoutMissing, match=r"run `kd add-text-layout .*out`"):
        stored_layouts(reader)


def with_hidden(sample: dict, layer: int, rng) -> dict:
    """`sample` with a stored hidden state (random, 4 wide) for every token, as a reader gives."""
    return sample | {f"hidden_{layer}": rng.normal(size=(len(sample["token_ids"]), 4))
                     .astype(np.float32)}


def test_identical_tokenizers_align_hidden_states_at_every_labelled_token(rng):
    tok, table, side = teacher_side()
    samples = [(with_hidden(s, 7, rng), lay) for s, lay in
               (window_sample(tok, table, text, 5, rng) for text in TRICKY[:3])]
    batch = collate_cross([s for s, _ in samples], [side.align(s, lay) for s, lay in samples],
                          side.vocab_map, hidden_layers=[7])
    width = batch["input_ids"].shape[1]
    # Every chunk is one token on both sides: its end is the labelled token itself.
    expected = np.concatenate([b * width + s["positions"] for b, (s, _) in enumerate(samples)])
    np.testing.assert_array_equal(batch["hidden_rows"].numpy(), expected)
    np.testing.assert_array_equal(batch["teacher_hidden"][7].numpy(), np.concatenate(
        [s["hidden_7"][s["positions"]] for s, _ in samples]))


def test_qwen_hidden_rows_close_the_same_chunk_on_both_sides(rng):
    tok, table, _ = teacher_side()
    s_tok, _, _ = tokenizer_and_table(str(require_tokenizer("qwen3")))
    side = StudentSide.build(s_tok, tok)
    for text in TRICKY:
        sample, layout = window_sample(tok, table, text, 5, rng)
        sample["hidden_3"] = np.arange(len(sample["token_ids"]), dtype=np.float32)[:, None]
        a = side.align(sample, layout)
        batch = collate_cross([sample], [a], side.vocab_map, hidden_layers=[3])
        s_end = batch["hidden_rows"].numpy()
        t_end = batch["teacher_hidden"][3].numpy()[:, 0].astype(np.int64)
        assert len(s_end) == a.chunks  # plain text: every chunk has tokens on both sides
        np.testing.assert_array_equal(a.student_chunk[s_end], np.arange(a.chunks))
        np.testing.assert_array_equal(a.teacher_chunk[t_end], np.arange(a.chunks))
        # ... and each is its chunk's last token: the next one (if any) opens another chunk.
        for chunk, end in ((a.student_chunk, s_end), (a.teacher_chunk, t_end)):
            nxt = np.append(chunk, -1)[end + 1]
            assert (nxt != chunk[end]).all()
