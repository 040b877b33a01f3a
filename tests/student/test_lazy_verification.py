"""`--verify lazy`: cheap checks at start, each shard verified in full at its first read, a cache
of verified shards; and the bounded evaluation's choice of held-out samples."""

import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

import pipeline.store.verify as verify_module
from conftest import fake_attrs, flip_byte, write_fake_output
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.verified_shards import VerifiedShards
from pipeline.student.batch_plan import bounded_eval, plan_batches
from pipeline.student.batches import PlannedBatches
from pipeline.student.label_set import LabelSetError, open_label_set
from pipeline.student.shard_gate import ShardVerificationError
from stages.student.train import last_line


def open_lazy(path, cache):
    return open_label_set([path], verify="lazy", verify_cache=str(cache))


def batches_of_shard(labels, shard):
    """One batch per sample of `shard`, so that reading them opens that shard only."""
    return [np.array([i]) for i in np.flatnonzero(labels.shard == shard)]


@pytest.fixture
def count_hashes(monkeypatch):
    hashed = []
    real = verify_module.sha256_file

    def counting(path, *args):
        if str(path).endswith(".h5"):
            hashed.append(os.path.basename(path))
        return real(path, *args)
    monkeypatch.setattr(verify_module, "sha256_file", counting)
    return hashed


def test_lazy_and_full_index_the_same_samples(tmp_path):
    write_fake_output(tmp_path / "run", shards=3, per_shard=4, attrs=fake_attrs(hidden_layers=(1,),
                                                                                hidden_size=8))
    full = open_label_set([tmp_path / "run"], verify="full")
    lazy = open_lazy(tmp_path / "run", tmp_path / "cache")
    for key in ("shard", "row", "length", "prompt_length", "prompt_hash"):
        np.testing.assert_array_equal(getattr(full, key), getattr(lazy, key))
    assert full.shard_paths == lazy.shard_paths and lazy.first_sample.tolist() == [0, 4, 8, 12]


def test_start_up_reads_no_shard_content(tmp_path, count_hashes):
    write_fake_output(tmp_path / "run", shards=3)
    open_lazy(tmp_path / "run", tmp_path / "cache")
    assert count_hashes == []
    open_label_set([tmp_path / "run"], verify="full")
    assert sorted(count_hashes) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]


def test_corrupt_shard_is_caught_at_first_read_before_use(tmp_path):
    write_fake_output(tmp_path / "run", shards=3)
    flip_byte(tmp_path / "run" / "shard-00001.h5")
    with pytest.raises(LabelSetError, match=r"shard-00001\.h5: sha256"):
        open_label_set([tmp_path / "run"], verify="full")
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")  # cheap checks cannot see it
    good = PlannedBatches(labels, batches_of_shard(labels, 0))
    assert len(good[0]["input_ids"]) == 1
    bad = PlannedBatches(labels, batches_of_shard(labels, 1))
    path = tmp_path / "run" / "shard-00001.h5"
    with pytest.raises(ShardVerificationError) as err:
        bad[0]
    assert str(err.value) == (f"{path}: sha256: checksum differs from the manifest (corrupt); "
                              f"stopped before training on it (run kd verify {path.parent})")
    assert not bad._readers  # no reader of the bad shard was ever handed out


def test_a_worker_process_error_reaches_the_trainer_as_one_line(tmp_path):
    write_fake_output(tmp_path / "run", shards=2)
    flip_byte(tmp_path / "run" / "shard-00000.h5")
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")
    loader = DataLoader(PlannedBatches(labels, batches_of_shard(labels, 0)), batch_size=None,
                        num_workers=1, multiprocessing_context="fork")
    with pytest.raises(ShardVerificationError) as err:
        next(iter(loader))
    assert "Traceback" in str(err.value)  # what torch re-raises from its worker
    assert last_line(err.value).startswith(f"{tmp_path / 'run' / 'shard-00000.h5'}: sha256: ")


def test_cheap_checks_still_refuse_at_start(tmp_path):
    write_fake_output(tmp_path / "size", shards=2)
    shard = tmp_path / "size" / "shard-00001.h5"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(LabelSetError, match=r"size/shard-00001\.h5: size: "):
        open_lazy(tmp_path / "size", tmp_path / "cache")
    write_fake_output(tmp_path / "k", shards=2)
    m = read_manifest(tmp_path / "k")
    m.top_k = 9
    write_manifest(tmp_path / "k", m)
    with pytest.raises(LabelSetError, match=r"k/shard-00000\.h5: invariant: attribute top_k is 4, "
                                            r"manifest says 9"):
        open_lazy(tmp_path / "k", tmp_path / "cache")


def test_an_index_that_lies_about_a_shard_is_caught_at_first_read(tmp_path):
    write_fake_output(tmp_path / "run", shards=2, per_shard=3)
    index_path = tmp_path / "run" / "index.parquet"
    table = pq.read_table(index_path)
    tokens = table["prompt_tokens"].to_pylist()
    tokens[4] += 1  # shard 1, row 1
    pq.write_table(table.set_column(table.schema.get_field_index("prompt_tokens"), "prompt_tokens",
                                    pa.array(tokens, pa.int32())), index_path)
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")
    PlannedBatches(labels, batches_of_shard(labels, 0))[0]
    with pytest.raises(ShardVerificationError, match=r"shard-00001\.h5: index: sample 1: prompt lengths"):
        PlannedBatches(labels, batches_of_shard(labels, 1))[0]


def test_verified_shards_are_remembered_until_they_change(tmp_path, count_hashes):
    write_fake_output(tmp_path / "run", shards=2)
    for expected in (["shard-00000.h5", "shard-00001.h5"], []):  # a second student: no hashing
        count_hashes.clear()
        labels = open_lazy(tmp_path / "run", tmp_path / "cache")
        PlannedBatches(labels, [np.arange(len(labels))])[0]
        assert sorted(count_hashes) == expected
    shard = tmp_path / "run" / "shard-00001.h5"
    stat = shard.stat()
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewrite, as far as we know
    count_hashes.clear()
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")
    PlannedBatches(labels, [np.arange(len(labels))])[0]
    assert count_hashes == ["shard-00001.h5"]
    flip_byte(shard)  # content changed after it was verified: never trusted from the cache
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")
    with pytest.raises(ShardVerificationError, match="sha256"):
        PlannedBatches(labels, batches_of_shard(labels, 1))[0]


def test_a_new_verifier_version_verifies_cached_shards_again(tmp_path, count_hashes, monkeypatch):
    write_fake_output(tmp_path / "run", shards=2)
    version = verify_module.VERIFIER_VERSION
    for bump, expected in ((0, ["shard-00000.h5", "shard-00001.h5"]), (0, []),
                           (1, ["shard-00000.h5", "shard-00001.h5"]), (1, [])):
        monkeypatch.setattr(verify_module, "VERIFIER_VERSION", version + bump)
        count_hashes.clear()
        labels = open_lazy(tmp_path / "run", tmp_path / "cache")
        PlannedBatches(labels, [np.arange(len(labels))])[0]
        assert sorted(count_hashes) == expected, f"verifier version {version + bump}"


def test_same_size_same_mtime_corruption_is_outside_what_the_cache_sees(tmp_path):
    """Documented limit (pipeline.store.verified_shards): bytes changed under an unchanged size
    and mtime keep the key, so only kd verify or --verify full finds them."""
    write_fake_output(tmp_path / "run", shards=1)
    labels = open_lazy(tmp_path / "run", tmp_path / "cache")
    PlannedBatches(labels, [np.arange(len(labels))])[0]
    shard = tmp_path / "run" / "shard-00000.h5"
    stat = shard.stat()
    flip_byte(shard)
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    sha = read_manifest(tmp_path / "run").shards[0].sha256
    assert VerifiedShards(tmp_path / "cache").has(shard, sha)  # still trusted by the cache
    with pytest.raises(LabelSetError, match="shard-00000.h5: sha256"):
        open_label_set([tmp_path / "run"], verify="full")


def test_cache_folder_is_read_when_first_used(tmp_path, monkeypatch):
    shard = tmp_path / "shard-00000.h5"
    shard.write_bytes(b"x")
    cache = VerifiedShards()
    monkeypatch.setenv("KD_VERIFY_CACHE", str(tmp_path / "moved-here"))
    cache.add(shard, "0" * 64)
    assert cache.root == tmp_path / "moved-here" and any((tmp_path / "moved-here").iterdir())


def test_one_process_at_a_time_holds_a_shards_claim(tmp_path):
    shard = tmp_path / "shard-00000.h5"
    shard.write_bytes(b"x")
    cache, events = VerifiedShards(tmp_path / "cache"), []

    def hold(name):
        with cache.claim(shard, "0" * 64):
            events.append(f"{name} in")
            time.sleep(0.2)
            events.append(f"{name} out")
    threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    assert events == ["a in", "a out", "b in", "b out"]


def test_bounded_eval_picks_a_fixed_subset_within_the_bound():
    rng = np.random.default_rng(0)
    completion = rng.integers(1, 50, 400)
    eval_idx = np.sort(rng.choice(400, 120, replace=False))
    prompts = np.array([f"p{i // 2}" for i in range(400)])
    chosen = bounded_eval(completion, eval_idx, prompts, 600, seed=3)
    assert set(chosen) <= set(eval_idx) and np.all(np.diff(chosen) > 0)
    assert completion[chosen].sum() <= 600 < completion[chosen].sum() + 50
    np.testing.assert_array_equal(chosen, bounded_eval(completion, eval_idx, prompts, 600, seed=3))
    assert not np.array_equal(chosen, bounded_eval(completion, eval_idx, prompts, 600, seed=4))
    np.testing.assert_array_equal(bounded_eval(completion, eval_idx, prompts, 0, seed=3), eval_idx)
    # a larger bound extends the same order: every evaluation at a smaller bound is a prefix
    assert set(chosen) <= set(bounded_eval(completion, eval_idx, prompts, 2000, seed=3))
    plan = plan_batches(np.full(400, 10), chosen, 100, seed=0, epoch=0)
    assert sorted(np.concatenate(plan).tolist()) == chosen.tolist()
