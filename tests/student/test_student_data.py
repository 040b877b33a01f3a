"""Student data: label sets, the split, batch plans, memmapped batches and their alignment."""

from __future__ import annotations

import pickle

import h5py
import numpy as np
import pytest
import torch

from conftest import fake_attrs, flip_byte, write_fake_output
from pipeline.student.batch_plan import batches_for_rank, plan_batches, split_by_prompt
from pipeline.student.batches import PlannedBatches
from pipeline.student.label_set import LabelSetError, open_label_set


def test_label_set_indexes_the_union_of_outputs(tmp_path):
    write_fake_output(tmp_path / "a", shards=2, per_shard=3, prefix="a")
    write_fake_output(tmp_path / "b", shards=1, per_shard=4, prefix="b", seed=1)
    labels = open_label_set([tmp_path / "a", tmp_path / "b"])
    assert len(labels) == 10 and len(labels.shard_paths) == 3
    assert labels.row.tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3]


def test_corrupt_shard_is_refused_naming_it(tmp_path):
    write_fake_output(tmp_path, shards=2)
    flip_byte(tmp_path / "shard-00001.h5")
    with pytest.raises(LabelSetError, match="shard-00001.h5: sha256"):
        open_label_set([tmp_path])


def test_incompatible_outputs_are_refused_naming_the_field(tmp_path):
    write_fake_output(tmp_path / "a", prefix="a")
    write_fake_output(tmp_path / "b", prefix="b", attrs=fake_attrs(k=3))
    with pytest.raises(LabelSetError, match="top_k"):
        open_label_set([tmp_path / "a", tmp_path / "b"])


def test_split_keeps_prompts_whole_and_stable():
    hashes = np.repeat(np.arange(1, 201, dtype=np.uint64) * np.uint64(2654435761), 3)
    train, held = split_by_prompt(hashes, 0.2, seed=7)
    assert not set(hashes[train]) & set(hashes[held])
    assert sorted(np.concatenate([train, held]).tolist()) == list(range(600))
    assert 0.1 < len(held) / 600 < 0.3
    more = np.concatenate([hashes, np.arange(500, 600, dtype=np.uint64)])
    _, held_more = split_by_prompt(more, 0.2, seed=7)
    assert set(held.tolist()) <= set(held_more.tolist())


def test_plan_covers_every_sample_once_within_budget_and_ranks_are_disjoint():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 300, 500)
    idx = np.arange(0, 500, 2)
    plan = plan_batches(lengths, idx, 1024, seed=3, epoch=0)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == idx.tolist()
    assert all(lengths[b].max() * len(b) <= 1024 or len(b) == 1 for b in plan)
    assert [b.tolist() for b in plan] == [b.tolist() for b in plan_batches(lengths, idx, 1024, 3, 0)]
    assert [b.tolist() for b in plan] != [b.tolist() for b in plan_batches(lengths, idx, 1024, 3, 1)]
    shares = [batches_for_rank(plan, r, 3) for r in range(3)]
    assert len({len(s) for s in shares}) == 1
    seen = [i for s in shares for b in s for i in b.tolist()]
    assert len(seen) == len(set(seen))


def test_oversized_sample_gets_its_own_batch():
    plan = plan_batches(np.array([10, 5000, 10]), np.arange(3), 100, 0, 0)
    assert sorted(len(b) for b in plan) == [1, 2]


def test_batches_equal_h5py_reads_and_targets_align(tmp_path):
    write_fake_output(tmp_path, shards=2, per_shard=4)
    labels = open_label_set([tmp_path])
    plan = plan_batches(labels.length, np.arange(len(labels)), 64, 0, 0)
    ds = PlannedBatches(labels, plan)
    for i, b in enumerate(ds):
        flat_ids = b["input_ids"].view(-1)
        assert torch.equal(flat_ids[b["loss_rows"] + 1], b["target_ids"])
        rows = []
        for j in plan[i]:
            with h5py.File(labels.shard_paths[labels.shard[j]], "r") as f:
                lo, hi = f["labels/offsets"][labels.row[j]:labels.row[j] + 2]
                rows.append(f["labels/topk_logprobs"][lo:hi].astype(np.float32))
                t0 = f["samples/offsets"][labels.row[j]]
                p = f["samples/prompt_lengths"][labels.row[j]]
                assert b["teacher_ids"].shape[1] == f.attrs["top_k"]
                assert int(f["samples/token_ids"][t0]) in flat_ids.tolist()
                assert p >= 1
        assert np.array_equal(np.concatenate(rows), b["teacher_logprobs"].numpy())
        assert int(b["attention_mask"].sum()) == int(labels.length[plan[i]].sum())


def test_dataloader_workers_give_identical_batches(tmp_path):
    write_fake_output(tmp_path, shards=3, per_shard=5)
    labels = open_label_set([tmp_path])
    plan = plan_batches(labels.length, np.arange(len(labels)), 48, 0, 0)
    ds = PlannedBatches(labels, plan)
    ds[0]  # opens readers in this process: workers must not reuse them
    serial = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0))
    forked = list(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2))
    for a, b in zip(serial, forked):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(pickle.dumps(ds)) < 4096 + 200 * len(labels)


def test_hidden_rows_carry_teacher_states(tmp_path):
    write_fake_output(tmp_path, shards=1, per_shard=3,
                      attrs=fake_attrs(hidden_layers=(2,), hidden_size=8))
    labels = open_label_set([tmp_path])
    ds = PlannedBatches(labels, [np.arange(3)], with_hidden=True)
    b = ds[0]
    assert b["teacher_hidden"][2].shape == (int(labels.length.sum()), 8)
    assert b["hidden_rows"].numel() == int(b["attention_mask"].sum())
