"""Schema v2 (labelled positions) and the v1 outputs written before it.

A v1 output is made here the way the v1 writer made it: the same shards without
`labels/positions`, `schema_version` 1, an index without `tokens`, a manifest
without `mode` and `planned_samples`. It must still verify, index and batch
exactly like the v2 output it came from.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import fake_attrs, write_fake_output
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.manifest import read_manifest
from pipeline.store.sample_index import INDEX_NAME, part_name
from pipeline.store.shard_reader import ShardReader
from pipeline.store.shard_writer import write_shard
from pipeline.store.verify import verify_outputs, verify_shard
from pipeline.student.batches import PlannedBatches
from pipeline.student.label_set import open_label_set
from bench.synthetic_output import random_sample, write_random_output


def downgrade_to_v1(out):
    """Rewrite a generate-mode v2 output as the v1 writer wrote it."""
    manifest = json.loads((out / "manifest.json").read_text())
    for rec in manifest["shards"]:
        path = out / rec["name"]
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            data = {}

            def read(name, obj):  # visititems stops at the first non-None return
                if isinstance(obj, h5py.Dataset):
                    data[name] = obj[()]
            f.visititems(read)
        del data["labels/positions"]
        attrs["schema_version"] = 1
        path.unlink()
        with h5py.File(path, "w", libver="latest", track_order=True) as f:
            f.attrs.update(attrs)
            for name, values in data.items():
                kind = h5py.string_dtype("utf-8") if values.dtype.kind == "O" else None
                f.create_dataset(name, data=values, dtype=kind)
        rec["sha256"], rec["bytes"] = sha256_file(path), path.stat().st_size
        part = out / part_name(rec["index"])
        pq.write_table(pq.read_table(part).drop(["tokens"]), part)
        rec["index_sha256"] = sha256_file(part)
    pq.write_table(pq.read_table(out / INDEX_NAME).drop(["tokens"]), out / INDEX_NAME)
    manifest["schema_version"] = 1
    for key in ("mode", "planned_samples"):
        del manifest[key]
    (out / "manifest.json").write_text(json.dumps(manifest))


def batches_of(dirs, verify="full"):
    """The label set, and all of it as one batch in sample order."""
    labels = open_label_set(dirs, verify)
    return labels, PlannedBatches(labels, [np.arange(len(labels))])[0]


@pytest.mark.parametrize("verify", ["full", "lazy"])
def test_a_v1_output_verifies_and_batches_like_the_v2_it_came_from(tmp_path, verify):
    write_fake_output(tmp_path / "v2", shards=2)
    write_fake_output(tmp_path / "v1", shards=2)
    downgrade_to_v1(tmp_path / "v1")
    assert read_manifest(tmp_path / "v1").schema_version == 1
    assert ShardReader(tmp_path / "v1" / "shard-00000.h5").version == 1
    assert not verify_outputs([tmp_path / "v1"]).problems
    _, old = batches_of([tmp_path / "v1"], verify)
    _, new = batches_of([tmp_path / "v2"], verify)
    for key in ("input_ids", "loss_rows", "target_ids", "teacher_ids", "teacher_logprobs"):
        assert np.array_equal(old[key].numpy(), new[key].numpy()), key


def test_scored_and_generated_outputs_train_together_on_their_labelled_positions(tmp_path):
    write_fake_output(tmp_path / "gen", shards=1, per_shard=4)
    write_random_output(tmp_path / "score", fake_attrs(), 2, 3, seed=1, prefix="d", scored=True)
    labels, batch = batches_of([tmp_path / "gen", tmp_path / "score"])
    width = batch["input_ids"].shape[1]
    expected_rows, expected_targets = [], []
    for b in range(len(labels)):
        s = ShardReader(labels.shard_paths[labels.shard[b]]).sample(int(labels.row[b]))
        expected_rows += (b * width + s["positions"] - 1).tolist()
        expected_targets += s["token_ids"][s["positions"]].tolist()
    assert batch["loss_rows"].tolist() == expected_rows
    assert batch["target_ids"].tolist() == expected_targets
    assert batch["teacher_ids"].shape[0] == len(expected_rows) == int(labels.label_count.sum())
    assert int(labels.label_count.sum()) < int((labels.length - labels.prompt_length).sum())


@pytest.mark.parametrize("positions, complaint", [
    ([3, 3], "increase"), ([4, 5], "start at the prompt length 3"), ([3, 9], "below the sample")])
def test_broken_labelled_positions_are_named(tmp_path, positions, complaint):
    rng = np.random.default_rng(0)
    good = write_fake_output(tmp_path, shards=1, per_shard=1)
    sample = random_sample(rng, "x", prompt_len=3, comp_len=6, k=4)
    sample.label_positions = np.array(positions)
    sample.topk_ids, sample.topk_logprobs = sample.topk_ids[:2], sample.topk_logprobs[:2]
    sample.sampled_logprobs = sample.sampled_logprobs[:2]
    good.shards[0] = write_shard(tmp_path / "shard-00000.h5", 0, [sample], fake_attrs())
    good.shards[0].samples = 1
    problems, _ = verify_shard(tmp_path / "shard-00000.h5", 0, good, checksum=False)
    assert len(problems) == 1 and "labels/positions" in problems[0].detail
    assert complaint in problems[0].detail
