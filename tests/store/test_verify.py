import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import fake_attrs, flip_byte, write_fake_output
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.verify import verify_outputs
from stages.cli.main import main


def test_valid_output_verifies(tmp_path):
    write_fake_output(tmp_path, shards=3)
    found = verify_outputs([tmp_path])
    assert found.problems == [] and found.manifests[str(tmp_path)].totals()["shards"] == 3
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 0 and "OK" in result.output


def test_flipped_byte_is_caught_and_named(tmp_path):
    write_fake_output(tmp_path, shards=2)
    flip_byte(tmp_path / "shard-00001.h5")
    problems = verify_outputs([tmp_path]).problems
    assert [(p.where, p.check) for p in problems] == [("shard-00001.h5", "sha256")]
    result = CliRunner().invoke(main, ["verify", str(tmp_path)])
    assert result.exit_code == 1 and "shard-00001.h5: sha256" in result.output


def test_truncated_shard_is_caught(tmp_path):
    write_fake_output(tmp_path)
    path = tmp_path / "shard-00000.h5"
    path.write_bytes(path.read_bytes()[:-100])
    problems = verify_outputs([tmp_path]).problems
    assert [(p.where, p.check) for p in problems] == [("shard-00000.h5", "size")]


def corrupt(out, name, mutate):
    """Rewrite a dataset in place, then re-seal the manifest so only invariants can catch it."""
    path = out / "shard-00000.h5"
    with h5py.File(path, "r+") as f:
        mutate(f[name])
    m = read_manifest(out)
    m.shards[0].sha256, m.shards[0].bytes = sha256_file(path), path.stat().st_size
    write_manifest(out, m)


@pytest.mark.parametrize("name,mutate,message", [
    ("labels/topk_logprobs", lambda d: d.__setitem__((0, 0), np.nan), "non-finite"),
    ("labels/topk_logprobs", lambda d: d.__setitem__((0, slice(None)), [-5, -1, -2, -3]),
     "not sorted descending"),
    ("labels/topk_ids", lambda d: d.__setitem__((0, 0), 1000), "ids >= vocab_size"),
    ("samples/token_ids", lambda d: d.__setitem__(0, 5000), "ids >= vocab_size"),
    ("samples/prompt_lengths", lambda d: d.__setitem__(0, 10_000), "prompt length"),
    ("samples/offsets", lambda d: d.__setitem__(1, 10_000), "samples/offsets"),
    ("labels/sampled_logprobs", lambda d: d.__setitem__(0, 3.0), "positive logprobs"),
])
def test_broken_invariants_are_named(tmp_path, name, mutate, message):
    write_fake_output(tmp_path, shards=1)
    corrupt(tmp_path, name, mutate)
    problems = verify_outputs([tmp_path]).problems
    assert problems and problems[0].where == "shard-00000.h5"
    assert message in problems[0].detail


def test_attribute_disagreeing_with_manifest_is_caught(tmp_path):
    write_fake_output(tmp_path, shards=1)
    corrupt(tmp_path, "labels/topk_ids", lambda d: d.parent.parent.attrs.__setitem__("top_k", 9))
    problems = verify_outputs([tmp_path]).problems
    assert any("attribute top_k is 9" in p.detail for p in problems)


def test_missing_manifest_and_missing_shard(tmp_path):
    problems = verify_outputs([tmp_path]).problems
    assert problems[0].check == "manifest"
    assert str(problems[0]).startswith(f"{tmp_path}/manifest.json: manifest: no manifest")
    write_fake_output(tmp_path, shards=2)
    (tmp_path / "shard-00001.h5").unlink()
    problems = verify_outputs([tmp_path]).problems
    assert [(p.where, p.check) for p in problems] == [("shard-00001.h5", "present")]


def test_duplicate_sample_ids_across_shards_are_caught(tmp_path):
    write_fake_output(tmp_path, shards=2)
    m = read_manifest(tmp_path)
    (tmp_path / "shard-00001.h5").write_bytes((tmp_path / "shard-00000.h5").read_bytes())
    with h5py.File(tmp_path / "shard-00001.h5", "r+") as f:
        f.attrs["shard_index"] = 1
    p = tmp_path / "shard-00001.h5"
    m.shards[1] = type(m.shards[0])(**{**m.shards[0].to_json(), "name": p.name,
                                       "sha256": sha256_file(p), "bytes": p.stat().st_size,
                                       "index_sha256": m.shards[1].index_sha256})
    write_manifest(tmp_path, m)
    problems = verify_outputs([tmp_path]).problems
    assert problems and problems[0].check == "unique ids"


def test_union_of_worker_outputs_verifies(tmp_path):
    write_fake_output(tmp_path / "w0", prefix="a")
    write_fake_output(tmp_path / "w1", prefix="b", seed=1)
    found = verify_outputs([tmp_path / "w0", tmp_path / "w1"])
    assert found.problems == [] and len(found.manifests) == 2


def test_union_with_another_k_is_refused_naming_the_field(tmp_path):
    write_fake_output(tmp_path / "w0", prefix="a")
    write_fake_output(tmp_path / "w1", prefix="b", attrs=fake_attrs(k=3))
    problems = verify_outputs([tmp_path / "w0", tmp_path / "w1"]).problems
    assert [(p.check, p.detail.split()[0]) for p in problems] == [("compatible", "top_k")]


def test_union_sharing_sample_ids_is_refused(tmp_path):
    write_fake_output(tmp_path / "w0")
    write_fake_output(tmp_path / "w1", seed=1)
    problems = verify_outputs([tmp_path / "w0", tmp_path / "w1"]).problems
    assert {p.check for p in problems} == {"unique ids"}
    assert str(problems[0]).startswith(f"{tmp_path / 'w1'}/shard-00000.h5: unique ids: ")
    assert f"also in {tmp_path / 'w0'}/shard-00000.h5, first 'p0-0/0'" in str(problems[0])


def test_complete_output_must_account_for_every_prompt(tmp_path):
    m = write_fake_output(tmp_path, shards=2)
    m.accepted_prompts += 1
    m.input_records += 1
    m.planned_samples += 1  # the accepted prompt's sample never landed in a shard
    write_manifest(tmp_path, m)
    problems = verify_outputs([tmp_path]).problems
    assert [(p.where, p.check) for p in problems] == [("manifest.json", "accounting")]
    assert "6 samples made, expected 7" in str(problems[0])


def test_corrupt_index_part_is_caught(tmp_path):
    write_fake_output(tmp_path, shards=2)
    part = tmp_path / "index/part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-3] + b"xyz")
    problems = verify_outputs([tmp_path]).problems
    assert [(p.where, p.check) for p in problems] == [("index/part-00001.parquet", "sha256")]
