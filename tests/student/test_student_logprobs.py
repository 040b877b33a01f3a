"""The sampling student's logprobs (`labels/student_logprobs`) from shard to loss.

Written by the shard writer, read back exactly, checked by `kd verify` (shape,
dtype, finite, <= 0), exposed by the batches as `student_sampled_logprobs`
(NaN on rows of outputs without them), and used by the on-policy loss as the
behaviour logprob: rho = p_current / p_behaviour where given, 1 on NaN rows.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest
import torch

from conftest import fake_attrs, write_fake_output
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import write_shard
from pipeline.store.verify import verify_outputs
from pipeline.student.batch_plan import plan_batches
from pipeline.student.batches import PlannedBatches, collate
from pipeline.student.kd_losses import onpolicy_reverse_kl
from pipeline.student.label_set import open_label_set
from bench.synthetic_output import random_sample, write_random_output
from schemas import STUDENT_LOGPROBS


def with_logprobs(out, seed=0, prefix="s"):
    return write_random_output(out, fake_attrs(), 2, 3, seed=seed, prefix=prefix, scored=True,
                               student_logprobs=True)


def test_student_logprobs_round_trip_and_verify(tmp_path):
    with_logprobs(tmp_path / "a")
    assert verify_outputs([tmp_path / "a"]).problems == []
    shard = tmp_path / "a/shard-00000.h5"
    samples = read_samples(ShardReader(shard))
    with h5py.File(shard) as f:
        stored = f[STUDENT_LOGPROBS][()]
        assert stored.dtype == np.float32 and stored.shape == f["labels/sampled_logprobs"].shape
    np.testing.assert_array_equal(np.concatenate([s.student_logprobs for s in samples]), stored)


@pytest.mark.parametrize("bad, check", [
    (lambda x: x.astype(np.float16), "expected .* float32"),
    (lambda x: x[:-1], "has shape"),
    (lambda x: np.where(np.arange(len(x)) == 0, np.nan, x).astype(np.float32), "not finite"),
    (lambda x: (x + 5).astype(np.float32), "not finite and <= 0"),
])
def test_verify_names_a_broken_student_logprobs_dataset(tmp_path, bad, check):
    with_logprobs(tmp_path / "a")
    shard = tmp_path / "a/shard-00001.h5"
    with h5py.File(shard, "r+") as f:
        data = bad(f[STUDENT_LOGPROBS][()])
        del f[STUDENT_LOGPROBS]
        f.create_dataset(STUDENT_LOGPROBS, data=data)
    manifest = read_manifest(tmp_path / "a")  # the manifest agrees: only the checks can tell
    manifest.shards[1].bytes, manifest.shards[1].sha256 = shard.stat().st_size, sha256_file(shard)
    write_manifest(tmp_path / "a", manifest)
    problems = [str(p) for p in verify_outputs([tmp_path / "a"]).problems]
    assert any("shard-00001.h5" in p and STUDENT_LOGPROBS in p for p in problems), problems
    assert any(re.search(check, p) for p in problems), problems


def test_a_shard_is_written_with_student_logprobs_for_every_row_or_refused(tmp_path):
    rng = np.random.default_rng(0)
    samples = [random_sample(rng, f"p{i}") for i in range(2)]
    samples[0].student_logprobs = np.full(samples[0].label_count, -1.0, np.float32)
    with pytest.raises(ValueError, match="1 of 2 samples lack the student logprobs"):
        write_shard(tmp_path / "shard-00000.h5", 0, samples, fake_attrs())


def test_batches_expose_them_and_nan_where_an_output_lacks_them(tmp_path):
    with_logprobs(tmp_path / "on")
    write_fake_output(tmp_path / "off", shards=1, per_shard=3, prefix="t", seed=5)
    labels = open_label_set([tmp_path / "on", tmp_path / "off"])
    plan = plan_batches(labels.length, np.arange(len(labels)), 10_000, seed=0, epoch=0)
    ds = PlannedBatches(labels, plan)
    (batch,) = [ds[i] for i in range(len(ds))]
    got = batch["student_sampled_logprobs"]
    assert got.shape == batch["teacher_sampled_logprobs"].shape and got.dtype == torch.float32
    want = []
    for s in ds.samples(0):
        want.append(np.asarray(s["student_logprobs"]) if "student_logprobs" in s
                    else np.full(len(s["positions"]), np.nan))
    np.testing.assert_array_equal(got.numpy(), np.concatenate(want).astype(np.float32))
    assert torch.isnan(got).any() and not torch.isnan(got).all()
    only_off = collate([s for s in ds.samples(0) if "student_logprobs" not in s])
    assert "student_sampled_logprobs" not in only_off


def test_the_loss_weights_by_rho_where_given_and_by_one_on_nan_rows():
    current = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([-1.5, -1.0, -0.25], dtype=torch.float64)
    behaviour = torch.tensor([-2.0, float("nan"), -0.5], dtype=torch.float64)
    loss = onpolicy_reverse_kl(current, teacher, behaviour)
    rho = torch.tensor([np.exp(-1.0 + 2.0), 1.0, 1.0], dtype=torch.float64)
    k = (current - teacher).detach()
    assert loss.item() == pytest.approx(float((rho * k).sum()))
    loss.backward()
    # d/ds rho * stopgrad(k) = rho * k
    np.testing.assert_allclose(current.grad.numpy(), (rho * k).numpy())
