"""Schema v3's text layout in the store: written, read back, and every broken form refused by kd verify.

Random outputs get their layout from the real teacher tokenizer's byte table
(`token_bytes_table`), and carry the tokenizer's files in `<out>/tokenizer/`, so
`kd verify` checks the stored byte lengths against the ids through it.
"""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import TEACHER, fake_attrs, fake_sample, require_teacher
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import write_shard
from pipeline.store.text_layout import TextRegion, decode_regions, encode_regions
from pipeline.store.text_layout_datasets import (ADD_COMMAND, BYTE_LENGTHS, LAYOUT_DATASETS, REGIONS,
                                                 TOKENIZER_DIR, layout_errors,
                                                 rewrite_with_layout)
from pipeline.store.verify import verify_outputs
from bench.synthetic_output import write_random_output
from pipeline.teacher.text_layouts import TokenBytes
from schemas import SHARD_SCHEMAS


@pytest.fixture(scope="module")
def token_bytes() -> TokenBytes:
    require_teacher()
    from transformers import AutoTokenizer

    return TokenBytes.of(AutoTokenizer.from_pretrained(TEACHER))


def layout_output(tmp_path, token_bytes, with_tokenizer=True):
    out = tmp_path / "out"
    write_random_output(out, fake_attrs(), 2, 3, seed=5, token_bytes=token_bytes)
    if with_tokenizer:
        (out / TOKENIZER_DIR).mkdir()
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (TEACHER / name).is_file():
                shutil.copy(TEACHER / name, out / TOKENIZER_DIR / name)
    return out


def edit_shard(out, name, edit):
    """Apply `edit(h5py file)` to a shard and restamp its checksum (so only the content is wrong)."""
    path = out / name
    with h5py.File(path, "r+") as f:
        edit(f)
    m = read_manifest(out)
    rec = next(r for r in m.shards.values() if r.name == name)
    rec.sha256, rec.bytes = sha256_file(path), path.stat().st_size
    write_manifest(out, m)


def problems_of(out):
    found = verify_outputs([out])
    return [str(p) for p in found.problems], found.notes


def test_the_schema_lists_the_datasets_this_module_writes():
    assert sorted(SHARD_SCHEMAS[3]["text_layout_datasets"]) == sorted(LAYOUT_DATASETS)
    assert SHARD_SCHEMAS[3]["datasets"] == SHARD_SCHEMAS[2]["datasets"]


def test_the_layout_is_written_read_back_and_verified_against_the_ids(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)
    problems, notes = problems_of(out)
    assert problems == [] and notes == []
    r = ShardReader(out / "shard-00000.h5")
    assert r.arrays[BYTE_LENGTHS].dtype == np.uint8
    for i in range(len(r)):
        s = r.sample(i)
        ids = s["token_ids"].tolist()
        assert s["token_byte_lengths"].tolist() == [len(token_bytes.table[t]) for t in ids]
        user, completion = s["regions"]
        prompt = s["prompt_length"]
        assert (user.start, user.end, completion.start) == (0, completion.start, user.end)
        assert completion.end == sum(s["token_byte_lengths"]) and completion.labelled
        assert user.end == sum(len(token_bytes.table[t]) for t in ids[:prompt])


def test_a_rewritten_shard_keeps_its_layout(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)
    r = ShardReader(out / "shard-00000.h5")
    again = tmp_path / "again.h5"
    write_shard(again, 0, read_samples(r), fake_attrs())
    r2 = ShardReader(again)
    assert np.array_equal(r2.arrays[BYTE_LENGTHS], r.arrays[BYTE_LENGTHS])
    assert r2.text_regions() == r.text_regions()


def test_a_token_longer_than_255_bytes_widens_the_dtype(tmp_path, rng):
    sample = fake_sample(rng, "p", prompt_len=2, comp_len=2)
    sample.token_byte_lengths = np.array([300, 0, 1, 2])
    sample.text_regions = [TextRegion("completion", 300, 303, True)]
    write_shard(tmp_path / "s.h5", 0, [sample], fake_attrs())
    r = ShardReader(tmp_path / "s.h5")
    assert r.arrays[BYTE_LENGTHS].dtype == np.uint16
    assert r.sample(0)["token_byte_lengths"].tolist() == [300, 0, 1, 2]


def test_a_shard_stores_the_layout_for_every_sample_or_none(tmp_path, rng):
    a, b = fake_sample(rng, "a"), fake_sample(rng, "b")
    a.token_byte_lengths, a.text_regions = np.ones(len(a.token_ids), int), []
    with pytest.raises(ValueError, match="sample b/0 lacks the text layout"):
        write_shard(tmp_path / "s.h5", 0, [a, b], fake_attrs())
    write_shard(tmp_path / "none.h5", 0, [b], fake_attrs())
    assert ShardReader(tmp_path / "none.h5").text_regions() is None
    assert "token_byte_lengths" not in ShardReader(tmp_path / "none.h5").sample(0)


def change_length(f, token=4, by=1):
    data = f[BYTE_LENGTHS][()]
    data[token] += by
    del f[BYTE_LENGTHS]
    f.create_dataset(BYTE_LENGTHS, data=data)


def change_id(token_bytes):
    """Swap token 4 (prompt of sample 0 or its completion) for an id of another byte length."""
    def edit(f):
        ids = f["samples/token_ids"][()]
        old = len(token_bytes.table[ids[4]])
        ids[4] = next(i for i in range(256, 1000) if len(token_bytes.table[i]) != old)
        f["samples/token_ids"][...] = ids
    return edit


def set_regions(sample, regions):
    def edit(f):
        rows = [s.decode() if isinstance(s, bytes) else s for s in f[REGIONS][()]]
        rows[sample] = encode_regions(regions)
        del f[REGIONS]
        f.create_dataset(REGIONS, data=rows, dtype=h5py.string_dtype("utf-8"))
    return edit


def first_sample_id(out):
    return ShardReader(out / "shard-00000.h5").strings("samples/ids")[0]


def test_a_byte_length_that_does_not_match_its_id_is_refused_naming_sample_and_position(
        tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)
    edit_shard(out, "shard-00000.h5", change_length)
    problems, _ = problems_of(out)
    assert len(problems) == 1, problems
    assert "shard-00000.h5" in problems[0]
    assert f"sample {first_sample_id(out)} token position 4" in problems[0]


def test_a_changed_text_is_refused(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)
    edit_shard(out, "shard-00000.h5", change_id(token_bytes))
    problems, _ = problems_of(out)
    assert len(problems) == 1 and f"sample {first_sample_id(out)} token position 4" in problems[0]


def test_without_a_tokenizer_the_id_check_is_skipped_and_said(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes, with_tokenizer=False)
    edit_shard(out, "shard-00000.h5", change_id(token_bytes))
    problems, notes = problems_of(out)
    assert problems == [] and len(notes) == 1 and "not checked" in notes[0]


@pytest.mark.parametrize("regions, complaint", [
    ([TextRegion("user", 0, 10**6, False)], "outside the text"),
    ([TextRegion("user", 0, 4, False), TextRegion("user", 3, 5, False)], "before the previous one ends"),
    ([TextRegion("user", 5, 9, False), TextRegion("user", 0, 4, False)], "before the previous one ends"),
    ([TextRegion("user", 0, 1, True)], "token position 0: its bytes lie in a labelled region"),
])
def test_broken_regions_are_refused(tmp_path, token_bytes, regions, complaint):
    out = layout_output(tmp_path, token_bytes)
    edit_shard(out, "shard-00000.h5", set_regions(0, regions))
    problems, _ = problems_of(out)
    assert len(problems) == 1 and complaint in problems[0], problems
    assert f"sample {first_sample_id(out)}" in problems[0]


def test_a_region_entry_that_is_not_json_is_refused_naming_the_sample(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)

    def garble(f):
        rows = [s.decode() for s in f[REGIONS][()]]
        rows[0] = rows[0][:-2]
        del f[REGIONS]
        f.create_dataset(REGIONS, data=rows, dtype=h5py.string_dtype("utf-8"))
    edit_shard(out, "shard-00000.h5", garble)
    problems, _ = problems_of(out)
    assert len(problems) == 1 and f"sample {first_sample_id(out)}: {REGIONS} entry" in problems[0]


def test_a_promised_layout_that_is_missing_names_the_command_that_adds_it(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)

    def drop(f):
        del f[BYTE_LENGTHS]
        del f[REGIONS]
    edit_shard(out, "shard-00001.h5", drop)
    problems, _ = problems_of(out)
    assert len(problems) == 1 and "shard-00001.h5" in problems[0] and ADD_COMMAND in problems[0]


def test_half_a_layout_is_refused(tmp_path, token_bytes):
    out = layout_output(tmp_path, token_bytes)
    edit_shard(out, "shard-00000.h5", lambda f: f.__delitem__(REGIONS))
    problems, _ = problems_of(out)
    assert len(problems) == 1 and f"{REGIONS} is missing" in problems[0]


def test_rewrite_with_layout_copies_every_dataset_as_stored(tmp_path, rng):
    samples = [fake_sample(rng, f"p{i}") for i in range(3)]
    path = tmp_path / "s.h5"
    write_shard(path, 0, samples, fake_attrs())
    with h5py.File(path) as f:
        before = {n: f[n][()] for n in ("samples/token_ids", "labels/topk_logprobs", "samples/ids")}
    lengths = np.arange(sum(len(s.token_ids) for s in samples)) % 7
    regions = [[TextRegion("text", 0, 1, False)] for _ in samples]
    rewrite_with_layout(path, lengths, regions, 3)
    with h5py.File(path) as f:
        assert f.attrs["schema_version"] == 3
        for name, data in before.items():
            assert np.array_equal(f[name][()], data), name
        assert f[BYTE_LENGTHS][()].tolist() == lengths.tolist()
        assert [decode_regions(s.decode()) for s in f[REGIONS][()]] == regions
    assert not list(tmp_path.glob(".*.tmp"))
    assert json.loads(ShardReader(path).attrs["hidden_layers"]) == []


def test_a_shard_whose_samples_were_all_dropped_needs_no_layout(tmp_path):
    """A strict filter can keep nothing of a shard: its file holds no samples and no layout
    datasets, and a manifest promising the layout accepts it; a shard with samples does not."""
    from pipeline.student.cross_tokenizer_batches import stored_layouts

    write_shard(tmp_path / "empty.h5", 0, [], fake_attrs())
    empty = ShardReader(tmp_path / "empty.h5")
    assert layout_errors(empty, [], required=True, id_lengths=None) == []
    assert stored_layouts(empty) == []
    full_path = tmp_path / "full.h5"
    write_shard(full_path, 0, [fake_sample(np.random.default_rng(0), "p")], fake_attrs())
    full = ShardReader(full_path)
    assert layout_errors(full, ["p/0"], required=True, id_lengths=None) == [
        f"{BYTE_LENGTHS} and {REGIONS} are missing (add them with {ADD_COMMAND})"]
