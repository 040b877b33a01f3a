"""`--hidden-format int8`: codec bound, the write/verify/read path, bytes per layer, and
int8 outputs training beside fp16 ones."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import fake_attrs, write_fake_output
from pipeline.store.codecs.hidden_int8 import (decode_int8, encode_int8, int8_error_bound,
                                               scale_dataset_name)
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.summary import storage_bytes
from pipeline.store.verify import verify_outputs
from pipeline.student.batches import collate
from pipeline.student.label_set import open_label_set
from schemas import hidden_dataset_name
from schemas.config_base import ConfigError
from schemas.teacher_config import TeacherConfig

SIZE = 64


def test_round_trip_within_the_bound_and_cosine():
    rng = np.random.default_rng(3)
    h = rng.standard_normal((2000, SIZE)).astype(np.float32) * rng.uniform(0.01, 100, (2000, 1))
    h[::7, 5] *= 30  # an outlier dimension, as LLM residual streams have
    q, s = encode_int8(h)
    back = decode_int8(q, s)
    assert np.all(np.abs(back - h) <= int8_error_bound(h))
    assert np.max(np.abs(back - h) / int8_error_bound(h)) > 0.95  # the bound is tight
    cos = (back * h).sum(1) / np.linalg.norm(back, axis=1) / np.linalg.norm(h, axis=1)
    assert cos.min() >= 0.999


def test_zero_rows_get_a_positive_scale():
    q, s = encode_int8(np.zeros((3, 4), np.float32))
    assert np.all(s > 0) and np.all(q == 0) and np.all(decode_int8(q, s) == 0)


def int8_attrs(**kw):
    return replace(fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE, **kw), hidden_format="int8")


def test_int8_output_verifies_reads_decoded_and_halves_the_bytes(tmp_path):
    fp16, int8 = tmp_path / "fp16", tmp_path / "int8"
    write_fake_output(fp16, attrs=fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE))
    m = write_fake_output(int8, attrs=int8_attrs())
    assert not verify_outputs([int8]).problems and read_manifest(int8).hidden_format == "int8"
    a, b = ShardReader(fp16 / m.shards[0].name), ShardReader(int8 / m.shards[0].name)
    assert b.arrays[hidden_dataset_name(2)].dtype == np.int8
    for i in range(len(a)):
        exact, got = a.sample(i)["hidden_2"].astype(np.float32), b.sample(i)["hidden_2"]
        assert got.dtype == np.float32
        # the fp16 reference is itself rounded: half an fp16 ulp of the row's largest value,
        # scaled by the codec's sensitivity near 0 (sqrt: d(decoded)/dh is at most 2)
        fp16_error = np.abs(exact).max(1, keepdims=True) * 2.0**-10
        assert np.all(np.abs(got - exact) <= int8_error_bound(exact) + 3 * fp16_error)
    assert storage_bytes(fp16, read_manifest(fp16))["hidden_layer_token"] == 2 * SIZE
    assert storage_bytes(int8, read_manifest(int8))["hidden_layer_token"] == SIZE + 4


def test_bad_scale_is_caught(tmp_path):
    out = tmp_path / "int8"
    m = write_fake_output(out, attrs=int8_attrs())
    path = out / m.shards[0].name
    import h5py
    with h5py.File(path, "r+") as f:
        f[scale_dataset_name(0)][1] = 0.0
    from pipeline.store.atomic_commit import sha256_file
    m.shards[0].sha256 = sha256_file(path)
    write_manifest(out, m)
    problems = verify_outputs([out]).problems
    assert problems and "hidden/layer_00_scale has scales that are not finite and positive" \
        in str(problems[0])


def test_fp16_and_int8_outputs_train_together(tmp_path):
    write_fake_output(tmp_path / "a", attrs=fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE))
    write_fake_output(tmp_path / "b", attrs=int8_attrs(), prefix="q")
    labels = open_label_set([tmp_path / "a", tmp_path / "b"])
    samples = [labels.open_shard(int(labels.shard[j])).sample(int(labels.row[j]))
               for j in range(len(labels))]
    batch = collate(samples, hidden_layers=[0, 2])
    assert batch["teacher_hidden"][2].shape[1] == SIZE


def test_config_flag():
    with pytest.raises(ConfigError, match="--hidden-format int8 needs --hidden-layers"):
        TeacherConfig(hidden_format="int8").validate()
    with pytest.raises(ConfigError, match="--hidden-format must be one of"):
        TeacherConfig(hidden_format="bf16", hidden_layers="1").validate()
    assert TeacherConfig(hidden_format="int8", hidden_layers="1").identity()["hidden_format"] == "int8"
