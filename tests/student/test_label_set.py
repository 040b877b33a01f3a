"""open_label_set: the union of teacher outputs, refused when unfit, indexed without token data."""

import dataclasses
import json

import h5py
import numpy as np
import pytest

from conftest import fake_attrs, flip_byte, write_fake_output
from pipeline.store.fingerprint import stable_hash
from pipeline.student.label_set import LabelSetError, open_label_set


def two_outputs(tmp_path, attrs_b=None, prefix_b="b", **kw):
    a, b = tmp_path / "w0", tmp_path / "w1"
    write_fake_output(a, prefix="a", **kw)
    write_fake_output(b, prefix=prefix_b, seed=1, attrs=attrs_b, **kw)
    return a, b


def test_index_matches_the_shards(tmp_path):
    a, b = two_outputs(tmp_path, shards=3, per_shard=4)
    labels = open_label_set([a, b])
    assert len(labels) == 24 and len(labels.shard_paths) == 6
    assert (labels.teacher, labels.top_k, labels.vocab_size) == ("fake-teacher", 4, 1000)
    for i in range(len(labels)):
        with h5py.File(labels.shard_paths[labels.shard[i]], "r") as f:
            row, offsets = labels.row[i], f["samples/offsets"][()]
            assert labels.length[i] == offsets[row + 1] - offsets[row]
            assert labels.prompt_length[i] == f["samples/prompt_lengths"][row]
            prompt_id = f["samples/ids"][row].decode().rsplit("/", 1)[0]
            assert labels.prompt_hash[i] == stable_hash(prompt_id)
            label_offsets = f["labels/offsets"][()]
            assert labels.label_count[i] == label_offsets[row + 1] - label_offsets[row]


def test_index_is_a_few_small_ints_per_sample(tmp_path):
    labels = open_label_set([write_fake_output(tmp_path, shards=2, per_shard=5) and tmp_path])
    arrays = [labels.shard, labels.row, labels.length, labels.prompt_length, labels.prompt_hash]
    assert sum(a.nbytes for a in arrays) == 24 * len(labels)
    assert all(not isinstance(a, np.memmap) for a in arrays)


def test_missing_manifest_is_refused_naming_the_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelSetError, match="empty.*no manifest"):
        open_label_set([tmp_path / "empty"])


@pytest.mark.parametrize("verify", ["full", "lazy"])
def test_incomplete_run_is_refused_naming_the_dir(tmp_path, verify):
    write_fake_output(tmp_path / "run")
    path = tmp_path / "run" / "manifest.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"complete": False}))
    with pytest.raises(LabelSetError, match=r"run: .*not complete"):
        open_label_set([tmp_path / "run"], verify=verify)


@pytest.mark.parametrize("field, attrs_b, values", [
    ("top_k", fake_attrs(k=3), ("3", "4")),
    ("tokenizer_fingerprint", dataclasses.replace(fake_attrs(), tokenizer_fingerprint="e" * 64),
     ("e" * 64, "f" * 64)),
    ("hidden_layers", fake_attrs(hidden_layers=(1,), hidden_size=8), ("[1]", "[]")),
])
def test_disagreeing_outputs_are_refused_naming_the_field(tmp_path, field, attrs_b, values):
    a, b = two_outputs(tmp_path, attrs_b=attrs_b)
    for verify in ("full", "lazy"):
        with pytest.raises(LabelSetError) as err:
            open_label_set([a, b], verify=verify)
        message = str(err.value)
        assert field in message and str(a) in message and str(b) in message
        assert all(v in message for v in values)


def test_corrupt_shard_is_refused_naming_the_shard_and_check(tmp_path):
    write_fake_output(tmp_path / "run", shards=3)
    flip_byte(tmp_path / "run" / "shard-00001.h5")
    with pytest.raises(LabelSetError, match=r"run/shard-00001\.h5: sha256"):
        open_label_set([tmp_path / "run"])


@pytest.mark.parametrize("verify", ["full", "lazy"])
def test_sample_id_in_two_outputs_is_refused_naming_it(tmp_path, verify):
    a, b = two_outputs(tmp_path, prefix_b="a")  # both hold prompts a0-0, a0-1, ...
    with pytest.raises(LabelSetError) as err:
        open_label_set([a, b], verify=verify)
    message = str(err.value)
    assert "'a0-0/0'" in message and str(a) in message and str(b) in message


def test_same_dir_twice_is_refused(tmp_path):
    write_fake_output(tmp_path / "run")
    with pytest.raises(LabelSetError, match="given twice"):
        open_label_set([tmp_path / "run", tmp_path / "run"], verify="lazy")


def test_hidden_attributes_are_carried(tmp_path):
    write_fake_output(tmp_path, attrs=fake_attrs(hidden_layers=(0, 2), hidden_size=8))
    labels = open_label_set([tmp_path])
    assert (labels.hidden_layers, labels.hidden_size) == ([0, 2], 8)
