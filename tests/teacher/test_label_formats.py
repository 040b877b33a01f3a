"""`--label-format q8`/`q8poly` and `--hidden-format int8` end to end with the fake engine (and the
real transformers teacher for hidden states): the run writes shards that verify and
decode within the codecs' bounds of an fp16 run of the same records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import TEACHER, require_teacher
from fake_engine import run_fake
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.hidden_basis import BASIS_NAME, project, read_basis
from pipeline.store.codecs.hidden_int8 import int8_error_bound
from pipeline.store.codecs.label_q8 import KNEE, Q8_DATASET, q8_error_bound, q8_step
from pipeline.store.codecs.label_q8poly import HEAD, Q8POLY_DATASET
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.summary import summarise_output
from pipeline.store.verify import verify_outputs


def args(out, *extra):
    return ["teacher-labels", "--teacher", str(TEACHER), "--prompts", "data/prompts/demo.jsonl",
            "--limit", "6", "--shard-size", "4", "--top-k", "5", "--max-tokens", "16",
            "--max-model-len", "256", "--min-mean-logprob", "none", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    require_teacher()
    root = tmp_path_factory.mktemp("formats")
    for name, fmt, hidden in (("fp16", "fp16", "fp16"), ("q8", "q8", "int8"),
                              ("pca", "fp16", "pca")):
        proc = run_fake(args(root / name, "--label-format", fmt, "--hidden-format", hidden,
                             "--hidden-rank", "16", "--hidden-layers", "3,-1", "--dtype",
                             "float32"))
        assert proc.returncode == 0, proc.stderr[-2000:]
    return root


def test_q8_run_verifies_and_matches_fp16_within_the_bound(runs):
    m = read_manifest(runs / "q8")
    assert m.label_format == "q8" and m.config["label_format"] == "q8"
    assert not verify_outputs([runs / "q8"]).problems
    for rec in m.shards.values():
        q8, fp16 = ShardReader(runs / "q8" / rec.name), ShardReader(runs / "fp16" / rec.name)
        assert Q8_DATASET in q8.arrays and "labels/topk_logprobs" not in q8.arrays
        assert np.array_equal(q8.arrays["labels/topk_ids"], fp16.arrays["labels/topk_ids"])
        exact = np.asarray(fp16.stored_logprobs, np.float32)
        got = q8.logprobs(slice(None))
        slack = np.abs(exact) * 2.0**-10 + 2.0**-24  # fp16's own rounding of the reference
        assert np.all(np.abs(got - exact) <= q8_error_bound(exact) + slack)
    text = summarise_output(runs / "q8", decode=lambda ids: str(ids))
    assert "labels top-5 q8:" in text and "3.00 per top-k entry" in text


def test_int8_hidden_states_of_the_real_teacher(runs):
    m = read_manifest(runs / "q8")
    assert m.hidden_format == "int8" and not verify_outputs([runs / "q8"]).problems
    cosines = []
    for rec in m.shards.values():
        q8, fp16 = ShardReader(runs / "q8" / rec.name), ShardReader(runs / "fp16" / rec.name)
        n = len(q8.arrays["samples/token_ids"])
        for layer in m.hidden_layers:
            exact = fp16.hidden(layer, slice(0, n)).astype(np.float32)
            got = q8.hidden(layer, slice(0, n))
            fp16_error = np.abs(exact).max(1, keepdims=True) * 2.0**-10
            assert np.all(np.abs(got - exact) <= int8_error_bound(exact) + 3 * fp16_error)
            cosines.append((got * exact).sum(1) / np.linalg.norm(got, axis=1)
                           / np.linalg.norm(exact, axis=1))
    cos = np.concatenate(cosines)
    print(f"int8 cosine to fp16: mean {cos.mean():.6f} min {cos.min():.6f}")
    assert cos.min() >= 0.999


@pytest.mark.parametrize("mode", ["generate", "score"])
def test_sampled_run_is_reproducible_and_verifies(tmp_path, mode):
    require_teacher()
    extra = ["--label-kind", "sampled", "--samples-per-position", "30"]
    if mode == "score":
        extra += ["--mode", "score", "--prompts", "data/corpus/train.jsonl", "--max-model-len",
                  "128", "--window-overlap", "16"]
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        proc = run_fake(args(out, *extra))
        assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_manifest(outs[0])
    assert (m.label_kind, m.samples_per_position) == ("sampled", 30)
    assert not verify_outputs(outs[:1]).problems
    for rec in m.shards.values():
        a, b = ShardReader(outs[0] / rec.name), ShardReader(outs[1] / rec.name)
        assert a.attrs["label_source_k"] == 256
        for name in ("labels/sample_ids", "labels/sample_counts", "labels/sample_tail_counts"):
            assert np.array_equal(a.arrays[name], b.arrays[name])  # seeded draws


def test_pca_run_stores_coefficients_on_its_checksummed_basis(runs):
    m = read_manifest(runs / "pca")
    assert (m.hidden_format, m.hidden_rank) == ("pca", 16) and m.hidden_basis_sha256
    assert sha256_file(runs / "pca" / BASIS_NAME) == m.hidden_basis_sha256
    assert not verify_outputs([runs / "pca"]).problems
    bases = read_basis(runs / "pca")
    for rec in m.shards.values():
        pca, fp16 = ShardReader(runs / "pca" / rec.name), ShardReader(runs / "fp16" / rec.name)
        assert pca.attrs["hidden_basis_sha256"] == m.hidden_basis_sha256
        n = len(pca.arrays["samples/token_ids"])
        for layer in m.hidden_layers:
            want = project(fp16.hidden(layer, slice(0, n)).astype(np.float32), *bases[layer])
            got = pca.hidden(layer, slice(0, n))
            slack = np.abs(want).max(1, keepdims=True) * 2.0**-8  # fp16 reference states
            assert got.shape == (n, 16)
            assert np.all(np.abs(got - want) <= int8_error_bound(want) + slack)
    # a rerun reuses every shard and the basis
    proc = run_fake(args(runs / "pca", "--hidden-format", "pca", "--hidden-rank", "16",
                         "--hidden-layers", "3,-1", "--dtype", "float32"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_manifest(runs / "pca").hidden_basis_sha256 == m.hidden_basis_sha256


def test_q8poly_run_verifies_and_decodes_the_fp16_rows_as_the_codec_does(tmp_path):
    require_teacher()
    for name, fmt in (("fp16", "fp16"), ("q8poly", "q8poly")):
        proc = run_fake([*args(tmp_path / name, "--label-format", fmt), "--top-k", "40"])
        assert proc.returncode == 0, proc.stderr[-2000:]
    m = read_manifest(tmp_path / "q8poly")
    assert (m.label_format, m.top_k, m.config["label_format"]) == ("q8poly", 40, "q8poly")
    assert not verify_outputs([tmp_path / "q8poly"]).problems
    for rec in m.shards.values():
        poly = ShardReader(tmp_path / "q8poly" / rec.name)
        fp16 = ShardReader(tmp_path / "fp16" / rec.name)
        assert np.array_equal(poly.arrays["labels/topk_ids"], fp16.arrays["labels/topk_ids"])
        exact = np.asarray(fp16.stored_logprobs, np.float32)
        got = poly.logprobs(slice(None))
        assert got.shape == exact.shape and poly.arrays[Q8POLY_DATASET].shape[1] == 24
        # the run coded the engine's float32 rows, fp16 holds them rounded: the head is
        # within q8's bound of them, and each row's total mass (what the tail bucket sees)
        # within the sum of: fp16's rounding, the head's q8 remainder (one step of its top
        # entry, as in test_label_q8) and a float16 ulp of c_0 on the tail's mass
        slack = np.abs(exact) * 2.0**-10 + 2.0**-24
        assert np.all(np.abs(got[:, :HEAD] - exact[:, :HEAD])
                      <= q8_error_bound(exact[:, :HEAD]) + slack[:, :HEAD])
        p = np.exp(exact.astype(np.float64))
        c0 = np.ascontiguousarray(poly.arrays[Q8POLY_DATASET][:, HEAD:]).view("<f2")[:, 0]
        bound = ((p * slack).sum(1) + p[:, 0] * math.expm1(q8_step()) * (KNEE - exact[:, 0])
                 + p[:, HEAD:].sum(1) * np.expm1(np.abs(c0.astype(np.float64)) * 2.0**-10))
        mass = np.exp(got.astype(np.float64)).sum(1) - p.sum(1)
        assert np.all(np.abs(mass) <= 1.01 * bound)
    text = summarise_output(tmp_path / "q8poly", decode=lambda ids: str(ids))
    assert "labels top-40 q8poly:" in text and f"{(80 + 24) / 40:.2f} per top-k entry" in text
