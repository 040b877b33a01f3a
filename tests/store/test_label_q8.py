"""`--label-format q8`: codec bounds, KL to the exact top-k + tail, the write/verify/read
path, bytes per entry, mixing with fp16 outputs, and an end-to-end teacher run."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from conftest import fake_attrs, write_fake_output
from pipeline.store.codecs.label_q8 import (KNEE, MAX_NATS, Q8_DATASET, decode_q8, encode_q8,
                                            q8_error_bound, q8_step)
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import write_shard
from pipeline.store.summary import storage_bytes
from pipeline.store.verify import verify_outputs
from pipeline.student.batches import collate
from pipeline.student.label_set import open_label_set
from schemas.teacher_config import TeacherConfig
from schemas.config_base import ConfigError


def test_round_trip_within_the_documented_bound():
    rng = np.random.default_rng(4)
    rows = -np.sort(rng.exponential(3, (2000, 20)).clip(max=MAX_NATS), axis=1)  # sorted rows
    rows[:, 0] = np.maximum(rows[:, 0], -rng.exponential(0.05, 2000))  # confident top-1
    lp = np.concatenate([rows, -np.linspace(0, MAX_NATS, 20)[None]])
    err = np.abs(decode_q8(encode_q8(lp)) - lp)
    bound = q8_error_bound(lp)
    assert np.all(err <= bound)
    assert np.max(err / bound) > 0.9  # the bound (one code step) is nearly reached
    # the documented values
    assert math.isclose(KNEE * math.expm1(q8_step()), 0.0055, abs_tol=5e-5)
    assert math.isclose((KNEE + 5) * math.expm1(q8_step()), 0.097, abs_tol=5e-4)
    assert math.isclose((KNEE + MAX_NATS) * math.expm1(q8_step()), 0.55, abs_tol=5e-3)


def test_rounding_preserves_each_rows_mass():
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((500, 2000)) * 4
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    top = -np.sort(-lp, axis=1)[:, :20]
    mass_error = np.abs(np.exp(decode_q8(encode_q8(top)).astype(np.float64)).sum(1)
                        - np.exp(top).sum(1))
    # nearest rounding of the same rows, for comparison
    nearest = np.rint(np.log1p(-top / KNEE) / q8_step()).clip(0, 255).astype(np.uint8)
    nearest_error = np.abs(np.exp(decode_q8(nearest).astype(np.float64)).sum(1)
                           - np.exp(top).sum(1))
    assert np.mean(mass_error) <= 0.25 * np.mean(nearest_error)
    # and never worse than one step of the largest entry
    assert np.all(mass_error <= np.exp(top[:, 0]) * math.expm1(q8_step()) * (KNEE - top[:, 0]) + 1e-6)


def test_clamping_and_order():
    codes = encode_q8(np.array([[0.0005, -1e9]]))[0]  # fp16 rounding above 0; far below the range
    assert codes.tolist() == [0, 255]
    assert decode_q8(codes)[1] == pytest.approx(-MAX_NATS, rel=1e-6)
    rows = -np.sort(np.random.default_rng(0).exponential(4, (500, 20)), axis=1)
    assert np.all(np.diff(decode_q8(encode_q8(rows)), axis=1) <= 0)  # descending stays descending
    table = decode_q8(np.arange(256, dtype=np.uint8))[None]
    assert np.array_equal(encode_q8(table)[0], np.arange(256))  # re-encoding a decoded row is exact
    again = decode_q8(encode_q8(rows))
    assert np.array_equal(encode_q8(again), encode_q8(rows))


def kl_with_tail(p_lp: np.ndarray, q_lp: np.ndarray) -> np.ndarray:
    """KL(p || q) per row over the k entries plus one bucket for the rest of the mass."""
    p, q = np.exp(p_lp.astype(np.float64)), np.exp(q_lp.astype(np.float64))
    pt, qt = np.clip(1 - p.sum(1), 1e-12, 1), np.clip(1 - q.sum(1), 1e-12, 1)
    return (p * (p_lp - q_lp)).sum(1) + pt * np.log(pt / qt)


@pytest.mark.parametrize("k", [20, 128])
def test_mean_kl_of_stored_to_exact_topk_plus_tail(k):
    # Teacher-like rows: softmax of Gumbel-ish logits over a 49,152 vocabulary, top-k kept.
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((300, 49152)) * 3.0
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    top = -np.sort(-lp, axis=1)[:, :k].astype(np.float32)
    stored = decode_q8(encode_q8(top))
    kl = kl_with_tail(stored, top)
    assert kl.mean() <= 1e-3, kl.mean()


@pytest.fixture
def q8_output(tmp_path):
    out = tmp_path / "q8"
    write_fake_output(out, attrs=replace(fake_attrs(k=20), label_format="q8"))
    return out


def test_q8_output_verifies_reads_decoded_and_costs_3_bytes_an_entry(tmp_path, q8_output):
    assert not verify_outputs([q8_output]).problems
    m = read_manifest(q8_output)
    assert m.label_format == "q8"
    r = ShardReader(q8_output / m.shards[0].name)
    assert "labels/topk_logprobs" not in r.arrays and r.arrays[Q8_DATASET].dtype == np.uint8
    s = r.sample(0)
    assert s["topk_logprobs"].dtype == np.float32
    # the same samples (same seed) written fp16: q8 reads within the bound of fp16 ones
    fp16 = tmp_path / "fp16"
    write_fake_output(fp16, attrs=fake_attrs(k=20))
    for i in range(len(r)):
        exact = ShardReader(fp16 / m.shards[0].name).sample(i)["topk_logprobs"].astype(np.float32)
        fp16_error = np.abs(exact) * 2.0**-11 + 2.0**-25  # half an fp16 ulp
        assert np.all(np.abs(r.sample(i)["topk_logprobs"] - exact)
                      <= q8_error_bound(exact) + 2 * fp16_error)
    b = storage_bytes(q8_output, m)
    assert b["topk_entry"] == 3.0  # uint16 id + one byte, no per-row overhead
    # per labelled token: k entries, sampled logprob (4), position (4), and the offsets
    t = m.totals()
    offsets = 8 * (t["samples"] + t["shards"])
    assert b["label_token"] == pytest.approx((68 * t["completion_tokens"] + offsets)
                                             / t["completion_tokens"])


def test_rewriting_a_q8_shard_is_lossless(tmp_path, q8_output):
    m = read_manifest(q8_output)
    r = ShardReader(q8_output / m.shards[0].name)
    again = tmp_path / "again.h5"
    write_shard(again, 0, read_samples(r), replace(fake_attrs(k=20), label_format="q8"))
    assert np.array_equal(ShardReader(again).arrays[Q8_DATASET], r.arrays[Q8_DATASET])


def test_manifest_disagreeing_label_format_is_caught(q8_output):
    m = read_manifest(q8_output)
    m.label_format = "fp16"
    write_manifest(q8_output, m)
    problems = verify_outputs([q8_output]).problems
    assert problems and "label_format is 'q8', manifest says 'fp16'" in str(problems[0])


def test_fp16_and_q8_outputs_train_together(tmp_path, q8_output):
    fp16 = tmp_path / "fp16"
    write_fake_output(fp16, attrs=fake_attrs(k=20), prefix="f")
    labels = open_label_set([fp16, q8_output])
    samples = [labels.open_shard(int(labels.shard[j])).sample(int(labels.row[j]))
               for j in range(len(labels))]
    batch = collate(samples)
    assert batch["teacher_logprobs"].dtype.is_floating_point
    assert batch["teacher_logprobs"].shape[1] == 20
    assert bool((batch["teacher_logprobs"] <= 0).all())


def test_old_fp16_output_has_no_label_format_attribute(tmp_path):
    out = tmp_path / "old"
    m = write_fake_output(out)
    assert "label_format" not in ShardReader(out / m.shards[0].name).attrs
    assert json.loads((out / "manifest.json").read_text())["label_format"] == "fp16"
    assert not verify_outputs([out]).problems


def test_config_flag():
    with pytest.raises(ConfigError, match="--label-format must be one of fp16, q8"):
        TeacherConfig(label_format="q4").validate()
    assert "label_format" not in TeacherConfig().identity()  # older outputs still resume
    assert TeacherConfig(label_format="q8").identity()["label_format"] == "q8"
