"""DistillKit: our export decoded by DistillKit's own code; its compressed datasets imported."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

import dk_reference as dk
from conftest import TEACHER, fake_attrs, require_teacher
from interop_data import originals, write_distribution_output
from pipeline.interop.distillkit_codec import decode_indices, decode_logprobs
from pipeline.interop.distillkit_config import parse_config
from pipeline.student.label_set import open_label_set
from stages.cli.main import main

VOCAB, K = 49152, 20
BIG_K = 32
SETTINGS = {
    "polynomial tail + residual bins": dict(
        exact_k=4, exact_dtype="float32", polynomial_terms=[0, 1, 2, "sqrt"],
        residual_bins=[dict(scale_dtype="float16", element_bits=8, num_elements=12),
                       dict(scale_dtype="float32", element_bits=4, num_elements=16)],
        delta_encoding=False),
    "delta encoding + residual bins": dict(
        exact_k=1, exact_dtype="float32", residual_bins=[
            dict(scale_dtype="float32", element_bits=6, num_elements=31)], delta_encoding=True),
    "recommended (bf16 exact, polynomial only)": dict(
        exact_k=16, exact_dtype="bfloat16", polynomial_terms=[0, 1, 2, 3, 4, "sqrt"],
        residual_bins=[], delta_encoding=False),
    "error diffusion, normalized t, 1-bit bin": dict(
        exact_k=2, exact_dtype="float16", polynomial_terms=[0, 1, "exp"], normalize_t=True,
        residual_bins=[dict(scale_dtype="bfloat16", element_bits=1, num_elements=8),
                       dict(scale_dtype="float16", element_bits=3, num_elements=22)],
        delta_encoding=True, error_diffusion=True),
}


def cli(*args: str):
    return CliRunner().invoke(main, list(args))


def reference_compress(config, ids: np.ndarray, values: np.ndarray):
    """DistillKit's LogprobCompressor.compress_from_sparse, from the vendored functions."""
    lps = torch.tensor(values, dtype=torch.float32)
    order = torch.argsort(lps, dim=-1, descending=True)
    bits = int(torch.log2(torch.tensor(config.d, dtype=torch.float32)).ceil().item())
    sorted_ids = torch.tensor(ids).gather(-1, order)
    return (dk.compress_monotonic_logprobs(lps.gather(-1, order), config).numpy(),
            dk.pack_to_bytes(sorted_ids, bits).numpy())


def reference_decompress(config, compressed: np.ndarray, packed: np.ndarray):
    values = dk.decompress_monotonic_logprobs(torch.tensor(compressed), config).float().numpy()
    bits = int(torch.log2(torch.tensor(config.d, dtype=torch.float32)).ceil().item())
    return dk.unpack_from_bytes(torch.tensor(packed), bits, values.shape[-1]).numpy(), values


@pytest.fixture
def labels(tmp_path):
    attrs = fake_attrs(vocab=VOCAB, k=K)
    gen, scored = tmp_path / "gen", tmp_path / "scored"
    write_distribution_output(gen, attrs, 2, 3, seed=5, prefix="g", prompt_len=4, comp_len=7)
    write_distribution_output(scored, attrs, 1, 4, seed=6, prefix="s", prompt_len=3, comp_len=9,
                              scored=True)
    return [gen, scored]




def export(dirs, out):
    args = ["export", "--format", "distillkit", "--out", str(out)]
    for d in dirs:
        args += ["--labels", str(d)]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    return out


def test_distillkits_own_decoder_reads_our_export(labels, tmp_path):
    out = export(labels, tmp_path / "dk")
    config = dk.DistributionQuantizationConfig.model_validate(
        yaml.safe_load((out / "compression_config.yaml").read_text()))
    assert (config.k, config.exact_k, config.d) == (K, K, VOCAB)
    rows = pq.read_table(out / "data-00000.parquet").to_pylist()
    ids = yaml.safe_load((out / "offline_kd_export.yaml").read_text())["row_sample_ids"]
    samples = originals(labels)
    assert sorted(ids) == sorted(samples)
    for row, sid in zip(rows, ids):
        s = samples[sid]
        assert row["input_ids"] == s["token_ids"].tolist()
        got_ids, got = reference_decompress(config, np.array(row["compressed_logprobs"], np.uint8),
                                            np.array(row["bytepacked_indices"], np.uint8))
        assert len(got) == len(row["input_ids"]) - 1  # row t predicts token t + 1
        labelled = np.flatnonzero(np.array(row["labels"]) >= 0)
        assert np.array_equal(labelled + 1, s["positions"])
        assert np.array_equal(got_ids[labelled], s["topk_ids"])
        assert np.array_equal(got[labelled], s["topk_logprobs"].astype(np.float32))


def test_round_trip_export_import_gives_identical_labels(labels, tmp_path):
    require_teacher()
    out = export(labels, tmp_path / "dk")
    result = cli("import", "--format", "distillkit", "--in", str(out), "--teacher", str(TEACHER),
                 "--out", str(tmp_path / "back"))
    assert result.exit_code == 0, result.output
    assert len(open_label_set([tmp_path / "back"])) == 10  # verified as the student opens it
    ids = yaml.safe_load((out / "offline_kd_export.yaml").read_text())["row_sample_ids"]
    back = originals([tmp_path / "back"])
    for row, sid in enumerate(ids):
        s, b = originals(labels)[sid], back[f"data-00000-{row}/0"]
        for key in ("token_ids", "positions", "topk_ids", "topk_logprobs"):
            assert np.array_equal(b[key], s[key]), key
        # DistillKit keeps no token logprob: each labelled token is in the top k here, so it comes
        # back as its top-k value (float16, as stored)
        assert np.array_equal(b["sampled_logprobs"], s["topk_logprobs"][:, 0].astype(np.float32))


@pytest.mark.parametrize("setting", SETTINGS)
def test_compressed_rows_decode_as_distillkit_decodes_them(setting, rng):
    config = dk.DistributionQuantizationConfig(d=VOCAB, k=BIG_K, **SETTINGS[setting])
    logits = rng.normal(0, 3, (40, VOCAB))
    lps = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ids = np.argsort(-lps, axis=1)[:, :BIG_K]
    values = np.take_along_axis(lps, ids, 1)
    compressed, packed = reference_compress(config, ids, values)
    ours = parse_config(config.model_dump(mode="json"), "test")
    assert compressed.shape[1] == ours.logprob_bytes() == config.logprob_bits() // 8
    ref_ids, ref_values = reference_decompress(config, compressed, packed)
    assert np.array_equal(decode_indices(packed, ours), ref_ids)
    # DistillKit sums in float32 and rounds a delta-decoded row to exact_dtype; we keep float64
    assert np.allclose(decode_logprobs(compressed, ours), ref_values, rtol=2e-3, atol=1e-4)


def write_dataset(path, config, rng, rows: int = 6, with_config: bool = True):
    """A DistillKit capture: input_ids of L tokens, L - 1 compressed rows, its config beside."""
    path.mkdir()
    records, truth = [], []
    for _ in range(rows):
        length = int(rng.integers(3, 12))
        logits = rng.normal(0, 3, (length - 1, VOCAB))
        lps = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        ids = np.argsort(-lps, axis=1)[:, : config.k]
        compressed, packed = reference_compress(config, ids, np.take_along_axis(lps, ids, 1))
        records.append({"input_ids": rng.integers(0, VOCAB, length).tolist(),
                        "compressed_logprobs": compressed.tolist(),
                        "bytepacked_indices": packed.tolist()})
        truth.append(reference_decompress(config, compressed, packed))
    schema = pa.schema([("input_ids", pa.list_(pa.uint64())),
                        ("compressed_logprobs", pa.list_(pa.list_(pa.uint8()))),
                        ("bytepacked_indices", pa.list_(pa.list_(pa.uint8())))])
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path / "data_0.parquet")
    if with_config:
        (path / "compression_config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    return records, truth


def test_polynomial_tail_and_residual_bins_import_within_the_schemes_error(tmp_path, rng):
    require_teacher()
    config = dk.DistributionQuantizationConfig(
        d=VOCAB, k=BIG_K, **SETTINGS["polynomial tail + residual bins"])
    records, truth = write_dataset(tmp_path / "ds", config, rng)
    result = cli("import", "--in", str(tmp_path / "ds"), "--teacher", str(TEACHER),
                 "--out", str(tmp_path / "imp"))
    assert result.exit_code == 0, result.output
    back = originals([tmp_path / "imp"])
    for row, (record, (ref_ids, ref_values)) in enumerate(zip(records, truth)):
        b = back[f"data_0-{row}/0"]
        assert b["token_ids"].tolist() == record["input_ids"]
        assert b["positions"].tolist() == list(range(1, len(record["input_ids"])))
        for t in range(len(ref_ids)):  # same ids, each with DistillKit's decoded value
            want = dict(zip(ref_ids[t].tolist(), np.minimum(ref_values[t], 0).tolist()))
            got = dict(zip(b["topk_ids"][t].tolist(), b["topk_logprobs"][t].astype(float).tolist()))
            assert got.keys() == want.keys()
            assert np.allclose([got[i] for i in want], list(want.values()), rtol=1e-3, atol=1e-3)


def test_dataset_without_configuration_is_refused(tmp_path, rng):
    config = dk.DistributionQuantizationConfig(d=VOCAB, k=BIG_K, **SETTINGS["delta encoding + residual bins"])
    write_dataset(tmp_path / "ds", config, rng, rows=2, with_config=False)
    result = cli("import", "--in", str(tmp_path / "ds"), "--teacher", str(TEACHER),
                 "--out", str(tmp_path / "imp"))
    assert result.exit_code == 1
    assert "no compression_config.yaml" in result.output and "--distillkit-config" in result.output
    assert not (tmp_path / "imp").exists()


def test_configuration_inconsistent_with_rows_is_refused(tmp_path, rng):
    require_teacher()
    config = dk.DistributionQuantizationConfig(d=VOCAB, k=BIG_K, **SETTINGS["delta encoding + residual bins"])
    write_dataset(tmp_path / "ds", config, rng, rows=2)
    other = config.model_dump(mode="json") | {"exact_k": 0}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    result = cli("import", "--in", str(tmp_path / "ds"), "--distillkit-config",
                 str(tmp_path / "other.yaml"), "--teacher", str(TEACHER), "--out", str(tmp_path / "imp"))
    assert result.exit_code == 1
    assert "data_0.parquet row 0: compressed_logprobs rows have" in result.output
    assert "do not match" in result.output and not (tmp_path / "imp").exists()


def test_mixed_tokenizers_are_refused(labels, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(labels[0], other)
    attrs = fake_attrs(vocab=VOCAB, k=K)
    attrs = type(attrs)(attrs.teacher, "0" * 64, VOCAB, K, attrs.sampling)
    shutil.rmtree(other)
    write_distribution_output(other, attrs, 1, 2, seed=9, prefix="o", prompt_len=3, comp_len=4)
    for fmt in ("distillkit", "axolotl", "parquet"):
        result = cli("export", "--format", fmt, "--labels", str(labels[0]), "--labels", str(other),
                     "--out", str(tmp_path / fmt))
        assert result.exit_code == 1 and "tokenizer" in result.output, result.output
        assert not (tmp_path / fmt).exists()
