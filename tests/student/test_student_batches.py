"""Split, batch plans, rank shares, resumable order, and the Dataset's tensors vs h5py reads."""

import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import fake_attrs, write_fake_output
from pipeline.student.batches import PlannedBatches
from pipeline.student.label_set import open_label_set
from pipeline.student.batch_plan import (batches_for_rank, plan_batches, prompt_keys,
                                    split_by_prompt)

LAYERS = (0, 2)


@pytest.fixture
def labels(tmp_path):
    attrs = fake_attrs(hidden_layers=LAYERS, hidden_size=8)
    write_fake_output(tmp_path / "w0", shards=3, per_shard=5, prefix="a", attrs=attrs)
    write_fake_output(tmp_path / "w1", shards=2, per_shard=5, prefix="b", seed=1, attrs=attrs)
    return open_label_set([tmp_path / "w0", tmp_path / "w1"])


def full_plan(labels, batch_tokens=40, seed=0, epoch=0):
    return plan_batches(labels.length, np.arange(len(labels)), batch_tokens, seed, epoch)


def h5_sample(labels, i):
    """Sample i read with h5py, bypassing the memmaps."""
    with h5py.File(labels.shard_paths[labels.shard[i]], "r") as f:
        r = labels.row[i]
        t0, t1 = f["samples/offsets"][r:r + 2]
        l0, l1 = f["labels/offsets"][r:r + 2]
        return {"tokens": f["samples/token_ids"][t0:t1], "p": int(f["samples/prompt_lengths"][r]),
                "ids": f["labels/topk_ids"][l0:l1], "lps": f["labels/topk_logprobs"][l0:l1],
                "sampled": f["labels/sampled_logprobs"][l0:l1],
                "hidden": {layer: f[f"hidden/layer_{layer:02d}"][t0:t1] for layer in LAYERS}}


# --- the split -------------------------------------------------------------------------------

def test_split_keeps_prompts_whole_and_is_stable_when_prompts_are_added():
    ids = [f"q{i % 300}" for i in range(900)]  # three samples per prompt
    train, held = split_by_prompt(ids, 0.2, seed=7)
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(900))
    assert not {ids[i] for i in train} & {ids[i] for i in held}
    assert 0.1 < len(held) / 900 < 0.3
    more = ids + [f"new{i}" for i in range(500)]
    train2, held2 = split_by_prompt(more, 0.2, seed=7)
    assert set(held2[held2 < 900].tolist()) == set(held.tolist())
    assert not np.array_equal(split_by_prompt(ids, 0.2, seed=8)[1], held)


def test_split_takes_hashes_or_strings_alike():
    ids = [f"q{i}" for i in range(50)]
    by_str, by_hash = split_by_prompt(ids, 0.3, 1), split_by_prompt(prompt_keys(ids), 0.3, 1)
    assert all(np.array_equal(x, y) for x, y in zip(by_str, by_hash))


def test_split_small_sets_follow_the_documented_rule():
    assert len(split_by_prompt(["x", "y"], 1e-9, 0)[1]) == 1  # at least one prompt held out
    assert len(split_by_prompt(["x", "y"], 1.0, 0)[0]) == 1  # and at least one trains
    assert len(split_by_prompt(["x", "x"], 0.5, 0)[1]) in (0, 2)  # one prompt: never split
    assert len(split_by_prompt(["x", "y", "z"], 0.0, 0)[1]) == 0


def test_split_of_a_label_set(labels):
    train, held = split_by_prompt(labels.prompt_hash, 0.3, 0)
    assert len(held) > 0 and not set(labels.prompt_hash[train]) & set(labels.prompt_hash[held])


# --- batch plans -----------------------------------------------------------------------------

def random_lengths(n=2000, seed=0):
    return np.random.default_rng(seed).integers(1, 500, n)


def test_every_sample_once_per_epoch_within_budget():
    lengths, budget = random_lengths(), 2048
    subset = np.arange(0, 2000, 3)
    plan = plan_batches(lengths, subset, budget, seed=1, epoch=0)
    assert sorted(np.concatenate(plan).tolist()) == subset.tolist()
    assert all(lengths[b].max() * len(b) <= budget for b in plan)
    padded = sum(lengths[b].max() * len(b) for b in plan)
    assert padded / lengths[subset].sum() < 1.1  # length bucketing keeps padding small


def test_plans_are_deterministic_and_differ_across_epochs():
    lengths = random_lengths()
    a, b = (plan_batches(lengths, np.arange(2000), 2048, 3, 0) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    c = plan_batches(lengths, np.arange(2000), 2048, 3, 1)
    assert [x.tolist() for x in a] != [x.tolist() for x in c]


def test_oversized_sample_gets_its_own_untruncated_batch():
    lengths = np.array([5, 5, 100, 5, 5, 60])
    plan = plan_batches(lengths, np.arange(6), 50, 0, 0)
    assert sorted(np.concatenate(plan).tolist()) == list(range(6))
    for b in plan:
        assert lengths[b].max() * len(b) <= 50 or len(b) == 1
    assert [2] in [b.tolist() for b in plan] and [5] in [b.tolist() for b in plan]


def test_ranks_get_disjoint_equal_shares():
    plan = plan_batches(random_lengths(), np.arange(2000), 2048, 0, 0)
    world = 3
    shares = [batches_for_rank(plan, r, world) for r in range(world)]
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(plan) // world
    seen = np.concatenate([np.concatenate(s) for s in shares])
    assert len(seen) == len(set(seen.tolist()))
    dropped = len(plan) % world
    assert len(seen) == sum(len(b) for b in plan[:len(plan) - dropped])


def test_every_layout_of_a_global_batch_takes_the_same_whole_steps():
    plan = plan_batches(random_lengths(), np.arange(2000), 2048, 0, 0)[:-2]
    assert len(plan) % 4 == 2     # a remainder to drop
    one = batches_for_rank(plan, 0, 1, grad_accum=4)
    two = [batches_for_rank(plan, r, 2, grad_accum=2) for r in range(2)]
    four = [batches_for_rank(plan, r, 4) for r in range(4)]
    assert len(one) == len(plan) - len(plan) % 4
    steps_one = [[b.tolist() for b in one[i:i + 4]] for i in range(0, len(one), 4)]
    steps_two = [[b.tolist() for r in range(2) for b in two[r][i:i + 2]]
                 for i in range(0, len(two[0]), 2)]
    steps_four = [[four[r][i].tolist() for r in range(4)] for i in range(len(four[0]))]
    as_sets = [[sorted(map(tuple, step)) for step in steps] for steps in
               (steps_one, steps_two, steps_four)]
    assert as_sets[0] == as_sets[1] == as_sets[2]


# --- the Dataset -----------------------------------------------------------------------------

def test_batches_equal_direct_h5py_reads(labels):
    ds = PlannedBatches(labels, full_plan(labels), with_hidden=True)
    for bi, samples in enumerate(ds.plan):
        batch = ds[bi]
        width = batch["input_ids"].shape[1]
        n_rows = hidden_at = 0
        for b, i in enumerate(samples):
            ref = h5_sample(labels, i)
            n, c = len(ref["tokens"]), len(ref["tokens"]) - ref["p"]
            assert batch["input_ids"][b, :n].tolist() == ref["tokens"].tolist()
            assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)
            assert batch["input_ids"][b, n:].eq(0).all()
            rows = slice(n_rows, n_rows + c)
            start = b * width + ref["p"] - 1
            assert batch["loss_rows"][rows].tolist() == list(range(start, start + c))
            assert np.array_equal(batch["teacher_ids"][rows].numpy(), ref["ids"].astype(np.int64))
            assert np.array_equal(batch["teacher_logprobs"][rows].numpy(),
                                  ref["lps"].astype(np.float32))
            assert np.array_equal(batch["teacher_sampled_logprobs"][rows].numpy(), ref["sampled"])
            for layer in LAYERS:
                got = batch["teacher_hidden"][layer][hidden_at:hidden_at + n].numpy()
                assert np.array_equal(got, ref["hidden"][layer].astype(np.float32))
            hidden_rows = batch["hidden_rows"][hidden_at:hidden_at + n].tolist()
            assert hidden_rows == list(range(b * width, b * width + n))
            n_rows, hidden_at = n_rows + c, hidden_at + n
        assert len(batch["loss_rows"]) == n_rows
        assert batch["teacher_ids"].shape == (n_rows, labels.top_k)


def test_loss_rows_predict_the_next_token(labels):
    for batch in PlannedBatches(labels, full_plan(labels)):
        flat_ids, flat_mask = batch["input_ids"].view(-1), batch["attention_mask"].view(-1)
        rows = batch["loss_rows"]
        assert torch.equal(flat_ids[rows + 1], batch["target_ids"])
        assert flat_mask[rows].all() and flat_mask[rows + 1].all()
        assert batch["loss_rows"].dtype == batch["teacher_ids"].dtype == torch.int64
        assert "teacher_hidden" not in batch and "prompt_rows" not in batch


def test_prompt_rows_are_hard_labels_disjoint_from_loss_rows(labels):
    ds = PlannedBatches(labels, full_plan(labels), mask_prompt=False)
    for bi in range(len(ds)):
        batch = ds[bi]
        flat_ids, rows = batch["input_ids"].view(-1), batch["prompt_rows"]
        assert torch.equal(flat_ids[rows + 1], batch["prompt_targets"])
        assert len(rows) == int(labels.prompt_length[ds.plan[bi]].sum()) - len(ds.plan[bi])
        assert not set(rows.tolist()) & set(batch["loss_rows"].tolist())


def test_hidden_on_completion_covers_completion_tokens_only(labels):
    ds = PlannedBatches(labels, full_plan(labels), with_hidden=True, hidden_on="completion")
    batch = ds[0]
    assert torch.equal(batch["hidden_rows"], batch["loss_rows"] + 1)  # completion positions
    refs = [h5_sample(labels, i) for i in ds.plan[0]]
    want = np.concatenate([ref["hidden"][2][ref["p"]:] for ref in refs]).astype(np.float32)
    assert np.array_equal(batch["teacher_hidden"][2].numpy(), want)
    assert batch["teacher_hidden"][2].shape == (len(batch["loss_rows"]), 8)


def batches_as_lists(loader):
    return [{k: (v.tolist() if torch.is_tensor(v) else {l: t.tolist() for l, t in v.items()})
             for k, v in batch.items()} for batch in loader]


def test_dataloader_workers_give_identical_batches(labels):
    ds = PlannedBatches(labels, full_plan(labels), with_hidden=True)
    ds[0]  # open readers in this process first: workers must not use them
    serial = batches_as_lists(DataLoader(ds, batch_size=None, num_workers=0))
    forked = batches_as_lists(DataLoader(ds, batch_size=None, num_workers=2,
                                         multiprocessing_context="fork"))
    assert serial == forked and len(serial) == len(ds)


def test_dataset_pickles_small_and_without_readers(tmp_path):
    sizes = {}
    for shards in (2, 20):
        write_fake_output(tmp_path / str(shards), shards=shards, per_shard=5)
        labels = open_label_set([tmp_path / str(shards)], verify="lazy")
        ds = PlannedBatches(labels, full_plan(labels))
        before = len(pickle.dumps(ds))
        ds[0]
        assert len(pickle.dumps(ds)) == before and b"ShardReader" not in pickle.dumps(ds)
        sizes[shards] = (before, len(labels))
    (small, n_small), (big, n_big) = sizes[2], sizes[20]
    # Growth is the index (shard, row) and the plan, 8 bytes each per sample, plus small overheads
    # per batch array and per shard (its path and manifest record, what `--verify lazy` checks
    # it against at first read); never token data.
    assert big - small < 64 * (n_big - n_small) + 1024 * (20 - 2)
