import json

import h5py
import numpy as np

from conftest import fake_attrs, fake_sample
from pipeline.store.shard_reader import ShardReader
from pipeline.store.shard_writer import write_shard
from schemas import SHARD_SCHEMA


def test_round_trip_preserves_every_sample(tmp_path, rng):
    samples = [fake_sample(rng, f"p{i}", index=i % 2) for i in range(7)]
    rec = write_shard(tmp_path / "shard-00000.h5", 0, samples, fake_attrs())
    r = ShardReader(tmp_path / "shard-00000.h5")
    assert len(r) == rec.samples == 7
    assert rec.completion_tokens == sum(s.completion_length for s in samples)
    assert r.strings("samples/ids") == [s.sample_id for s in samples]
    assert r.strings("samples/finish_reasons") == [s.finish_reason for s in samples]
    for i, s in enumerate(samples):
        got = r.sample(i)
        assert got["token_ids"].tolist() == s.token_ids
        assert got["prompt_length"] == len(s.prompt_token_ids)
        assert got["topk_ids"].tolist() == s.topk_ids.tolist()
        np.testing.assert_array_equal(got["topk_logprobs"], s.topk_logprobs.astype(np.float16))
        np.testing.assert_array_equal(got["sampled_logprobs"], s.sampled_logprobs)


def test_memmap_reads_equal_h5py_reads(tmp_path, rng):
    samples = [fake_sample(rng, f"p{i}", hidden={3: 8}) for i in range(5)]
    write_shard(tmp_path / "s.h5", 0, samples, fake_attrs(hidden_layers=(3,), hidden_size=8))
    r = ShardReader(tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as f:
        for name, arr in r.arrays.items():
            assert isinstance(arr, np.memmap), name
            assert f[name].chunks is None and f[name].compression is None
            np.testing.assert_array_equal(np.asarray(arr), f[name][()], err_msg=name)
    assert set(r.arrays) >= {n for n, spec in SHARD_SCHEMA["datasets"].items()
                             if "utf8" not in spec["dtype"]} | {"hidden/layer_03"}


def test_root_attributes_follow_the_schema(tmp_path, rng):
    write_shard(tmp_path / "s.h5", 5, [fake_sample(rng, "p")], fake_attrs())
    r = ShardReader(tmp_path / "s.h5")
    assert set(SHARD_SCHEMA["root_attributes"]) <= set(r.attrs)
    assert r.attrs["schema"] == "offline-kd/shard" and r.attrs["schema_version"] == 3
    assert r.attrs["shard_index"] == 5 and r.attrs["top_k"] == 4
    assert json.loads(r.attrs["sampling"]) == {"n": 1, "temperature": 1.0}


def test_id_dtype_follows_vocabulary_size(tmp_path, rng):
    big = 70_000
    write_shard(tmp_path / "a.h5", 0, [fake_sample(rng, "p")], fake_attrs())
    write_shard(tmp_path / "b.h5", 0, [fake_sample(rng, "p", vocab=big)], fake_attrs(vocab=big))
    assert ShardReader(tmp_path / "a.h5").arrays["labels/topk_ids"].dtype == np.uint16
    assert ShardReader(tmp_path / "b.h5").arrays["labels/topk_ids"].dtype == np.uint32


def test_empty_shard_is_readable(tmp_path):
    rec = write_shard(tmp_path / "s.h5", 0, [], fake_attrs())
    r = ShardReader(tmp_path / "s.h5")
    assert len(r) == rec.samples == 0
    assert r.arrays["labels/topk_ids"].shape == (0, 4)


def test_no_temporary_file_survives_a_write(tmp_path, rng):
    write_shard(tmp_path / "s.h5", 0, [fake_sample(rng, "p")], fake_attrs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
