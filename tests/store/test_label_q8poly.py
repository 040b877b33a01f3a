"""`--label-format q8poly`: codec round trips (head bound, tail mass, exact curves), KL to the
exact top-k + tail at k = 128, bytes per entry, the write/verify/read path, rewrites,
mixing with fp16 and q8 outputs, and the flag's refusals."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import fake_attrs, write_fake_output
from pipeline.store.codecs.label_q8 import decode_q8, encode_q8, q8_error_bound
from pipeline.store.manifest import read_manifest
from pipeline.store.codecs.label_q8poly import (HEAD, Q8POLY_DATASET, TERMS, decode_q8poly,
                                                encode_q8poly, row_bytes, tail_terms)
from pipeline.store.shard_reader import ShardReader, read_samples
from pipeline.store.shard_writer import write_shard
from pipeline.store.summary import storage_bytes
from pipeline.store.verify import verify_outputs
from pipeline.student.batches import collate
from pipeline.student.label_set import open_label_set
from schemas.config_base import ConfigError
from schemas.teacher_config import TeacherConfig
from test_label_q8 import kl_with_tail
from test_verify import corrupt

K = 128


def teacher_like_rows(rows: int, k: int, seed: int = 7) -> np.ndarray:
    """Top-k of softmax(3 x standard normal) over a 49,152 vocabulary, sorted descending."""
    logits = np.random.default_rng(seed).standard_normal((rows, 49152)) * 3.0
    lp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.sort(-lp, axis=1)[:, :k]


def test_head_within_the_q8_bound_rows_sorted_and_24_bytes():
    top = teacher_like_rows(200, K)
    raw = encode_q8poly(top)
    assert raw.dtype == np.uint8 and raw.shape == (200, HEAD + 2 * TERMS) == (200, row_bytes())
    back = decode_q8poly(raw, K)
    assert back.dtype == np.float32 and back.shape == (200, K)
    assert np.all(np.abs(back[:, :HEAD] - top[:, :HEAD]) <= q8_error_bound(top[:, :HEAD]))
    # the head is exactly q8's coding of the first 16 (same codes, same table)
    assert np.array_equal(raw[:, :HEAD], encode_q8(top[:, :HEAD]))
    assert np.all(np.diff(back, axis=1) <= 0) and np.all(back <= 0)


def test_tail_mass_is_kept_to_float16_rounding_of_c0():
    top = teacher_like_rows(200, K)
    raw = encode_q8poly(top)
    back = decode_q8poly(raw, K).astype(np.float64)
    c0 = np.ascontiguousarray(raw[:, HEAD:]).view("<f2")[:, 0].astype(np.float64)
    curve = np.ascontiguousarray(raw[:, HEAD:]).view("<f2").astype(np.float64) @ tail_terms(K).T
    cut = ~np.all(np.isclose(back[:, HEAD:], curve, atol=1e-5), axis=1)
    assert cut.sum() >= 20  # the cap binds in some rows: their mass is kept too
    exact_mass = np.exp(top[:, HEAD:]).sum(1)
    mass = np.exp(back[:, HEAD:]).sum(1)
    bound = np.expm1(np.abs(c0) * 2.0**-10 + 1e-5) * exact_mass  # a float16 ulp of c0
    assert np.all(np.abs(mass - exact_mass) <= bound)


def test_a_tail_that_is_a_cubic_in_log_rank_decodes_to_itself():
    # oracle: coefficients exactly representable in float16, curve below the head
    coef = np.array([[-6.0, -2.5, 0.75, -0.25], [-9.0, -1.0, -0.5, 0.0]])
    tail = coef @ tail_terms(K).T
    head = np.linspace(-0.05, -5.0, HEAD)[None].repeat(2, 0)
    head = decode_q8(encode_q8(head)).astype(np.float64)  # head values a q8 row decodes to
    back = decode_q8poly(encode_q8poly(np.concatenate([head, tail], 1)), K)
    assert np.allclose(back[:, HEAD:], tail, atol=2e-3)
    assert np.array_equal(back[:, :HEAD], head.astype(np.float32))


def test_mean_kl_of_stored_to_exact_topk_plus_tail_at_k128():
    top = teacher_like_rows(300, K)
    kl = kl_with_tail(decode_q8poly(encode_q8poly(top), K), top)
    assert kl.mean() <= 1e-3, kl.mean()


def test_rows_below_the_q8_range_and_flat_tails_stay_finite():
    rows = np.full((3, K), -40.0)
    rows[1] = 0.0 - np.arange(K) * 1e-9  # one token holds all the mass, then near-ties
    rows[2, :HEAD] = -0.01
    back = decode_q8poly(encode_q8poly(rows), K)
    assert np.all(np.isfinite(back)) and np.all(back >= -30.0) and np.all(np.diff(back, 1) <= 0)


@pytest.fixture
def poly_output(tmp_path):
    out = tmp_path / "q8poly"
    write_fake_output(out, attrs=replace(fake_attrs(k=48), label_format="q8poly"))
    return out


def test_q8poly_output_verifies_reads_decoded_and_costs_its_bytes(tmp_path, poly_output):
    assert not verify_outputs([poly_output]).problems
    m = read_manifest(poly_output)
    assert m.label_format == "q8poly"
    r = ShardReader(poly_output / m.shards[0].name)
    assert "labels/topk_logprobs" not in r.arrays
    assert r.arrays[Q8POLY_DATASET].shape[1] == 24 and r.attrs["label_poly_head"] == HEAD
    s = r.sample(0)
    assert s["topk_logprobs"].dtype == np.float32 and s["topk_logprobs"].shape[1] == 48
    # same seed, fp16: the reader gives the codec's decoding of the same rows (the writer
    # coded float32 rows, fp16 holds them rounded: up to a code step apart)
    fp16 = tmp_path / "fp16"
    write_fake_output(fp16, attrs=fake_attrs(k=48))
    exact = ShardReader(fp16 / m.shards[0].name).sample(0)["topk_logprobs"].astype(np.float32)
    codec = decode_q8poly(encode_q8poly(exact), 48)
    assert np.all(np.abs(s["topk_logprobs"] - codec) <= 2 * q8_error_bound(codec) + 1e-2)
    assert storage_bytes(poly_output, m)["topk_entry"] == pytest.approx((2 * 48 + 24) / 48)


def test_verify_catches_bad_poly_attributes(poly_output):
    corrupt(poly_output, "/", lambda root: root.attrs.__setitem__("label_poly_head", 48))
    problems = str(verify_outputs([poly_output]).problems)
    assert "label_poly_head, label_poly_terms are [48, 4]" in problems


def test_verify_catches_a_wrong_row_width(poly_output):
    corrupt(poly_output, "/", lambda root: root.attrs.__setitem__("label_poly_terms", 3))
    problems = str(verify_outputs([poly_output]).problems)
    assert f"{Q8POLY_DATASET} has shape" in problems and ", 22)" in problems


def test_rewriting_a_q8poly_shard_keeps_its_rows_close(tmp_path):
    # a rewrite (hidden-state pass, merge) decodes and re-encodes: rows the cap did not
    # cut come back to 1e-4 nats (a coefficient near 0 may move by a float16 ulp), and
    # the KL to the exact rows stays what it was
    top = teacher_like_rows(200, K, seed=3)
    raw = encode_q8poly(top)
    once = decode_q8poly(raw, K)
    again = encode_q8poly(once)
    curve = np.ascontiguousarray(raw[:, HEAD:]).view("<f2").astype(np.float64) @ tail_terms(K).T
    uncut = np.all(np.isclose(once[:, HEAD:], curve, atol=1e-5), axis=1)
    twice = decode_q8poly(again, K)
    assert np.array_equal(again[uncut, :HEAD], raw[uncut, :HEAD])
    assert np.abs(twice[uncut] - once[uncut]).max() <= 1e-4
    assert kl_with_tail(twice, top).mean() <= 1.1 * kl_with_tail(once, top).mean() + 1e-6


def test_rewriting_a_q8poly_output_shard_verifies(tmp_path, poly_output):
    m = read_manifest(poly_output)
    r = ShardReader(poly_output / m.shards[0].name)
    again = tmp_path / "again.h5"
    write_shard(again, 0, read_samples(r), replace(fake_attrs(k=48), label_format="q8poly"))
    assert ShardReader(again).arrays[Q8POLY_DATASET].shape == r.arrays[Q8POLY_DATASET].shape


def test_fp16_q8_and_q8poly_outputs_train_together(tmp_path, poly_output):
    for fmt, prefix in (("fp16", "f"), ("q8", "q")):
        write_fake_output(tmp_path / fmt, attrs=replace(fake_attrs(k=48), label_format=fmt),
                          prefix=prefix)
    outs = [tmp_path / "fp16", tmp_path / "q8", poly_output]
    assert not verify_outputs(outs).problems
    labels = open_label_set(outs)
    batch = collate([labels.open_shard(int(labels.shard[j])).sample(int(labels.row[j]))
                     for j in range(len(labels))])
    assert batch["teacher_logprobs"].shape[1] == 48
    assert bool((batch["teacher_logprobs"] <= 0).all())


def test_config_flag():
    with pytest.raises(ConfigError, match="--label-format q8poly needs --top-k >= 32"):
        TeacherConfig(label_format="q8poly", top_k=20).validate()
    with pytest.raises(ConfigError, match="applies to --label-kind topk"):
        TeacherConfig(label_format="q8poly", top_k=64, label_kind="sampled").validate()
    assert TeacherConfig(label_format="q8poly", top_k=128).validate().label_format == "q8poly"
