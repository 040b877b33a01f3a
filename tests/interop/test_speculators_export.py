"""`kd export --format speculators` read back by speculators' own loader (vendored verbatim,
`speculators_vendored/`): `ArrowDataset` + `CollateFn` with its file and FP8 transfers.

Sources are small synthetic eagle3 outputs (random states, int8 and fp16 storage, two
workers' outputs read together); the oracle is what `ShardReader` decodes from them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import fake_attrs, write_fake_output
from pipeline.interop.speculators_rows import fp8_error_bound
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.student.label_set import LabelSetError
from schemas import shard_name
from schemas.config_base import ConfigError
from schemas.eagle3 import eagle3_layers
from schemas.interop_config import ExportConfig
from speculators_reference import load
from stages.interop.label_export import SIDECAR, run_export

LAYERS = eagle3_layers(30)
H = 16


def source(out: Path, layers=LAYERS, fmt: str = "int8", seed: int = 0, prefix: str = "p") -> Path:
    attrs = replace(fake_attrs(hidden_layers=layers, hidden_size=H), hidden_format=fmt)
    write_fake_output(out, shards=2, per_shard=3, seed=seed, attrs=attrs, prefix=prefix)
    m = read_manifest(out)
    m.teacher_num_layers = 30  # a 30-block teacher, as the eagle3 layers above
    write_manifest(out, m)
    return out


def stored(dirs: list[Path]) -> list[dict]:
    """Every sample of the sources, in export order, as the reader decodes it."""
    out = []
    for d in dirs:
        for index in sorted(read_manifest(d).shards):
            reader = ShardReader(d / shard_name(index))
            out += [reader.sample(i) for i in range(len(reader))]
    return out


def export(tmp_path: Path, dirs: list[Path], dtype: str) -> Path:
    out = tmp_path / f"spec-{dtype}"
    run_export(ExportConfig(labels=tuple(map(str, dirs)), format="speculators", out=str(out),
                            hidden_dtype=dtype))
    return out


@pytest.fixture(scope="module")
def spec():
    return load()


@pytest.fixture
def sources(tmp_path) -> list[Path]:
    return [source(tmp_path / "w0", fmt="int8", seed=1, prefix="a"),
            source(tmp_path / "w1", fmt="fp16", seed=2, prefix="b")]


def arrow_dataset(spec, out: Path, fp8: bool = False):
    transfer = spec.transfer.FP8Transfer(out / "hidden_states") if fp8 else None
    return spec.data.ArrowDataset(max_len=4096, datapath=str(out), on_missing="raise",
                                  transfer=transfer)


def test_bf16_export_loads_in_speculators_equal_to_the_stored_states(spec, sources, tmp_path):
    out = export(tmp_path, sources, "bf16")
    want = stored(sources)
    ds = arrow_dataset(spec, out)
    assert len(ds) == len(want) == 12
    for i, s in enumerate(want):
        got = ds[i]  # None would mean speculators found token_ids != input_ids
        states = torch.from_numpy(np.stack([np.asarray(s[f"hidden_{layer}"], np.float32)
                                            for layer in LAYERS], 1))
        exact = states.to(torch.bfloat16)
        assert torch.equal(got["hidden_states"], exact[:, :3].flatten(1))
        assert torch.equal(got["verifier_last_hidden_states"], exact[:, 3])
        assert got["input_ids"].tolist() == s["token_ids"].tolist()
        mask = got["loss_mask"]
        assert mask.dtype == torch.int64
        assert torch.nonzero(mask).flatten().tolist() == s["positions"].tolist()
    batch = spec.data.CollateFn(max_len=64, hidden_size=H)([ds[0], ds[1]])
    assert batch["hidden_states"].shape == (1, 64, 3 * H)
    assert batch["loss_mask"].sum() == len(want[0]["positions"]) + len(want[1]["positions"])


def test_fp8_export_within_the_e4m3_bound_and_speculators_dequantizes_it(spec, sources, tmp_path):
    out = export(tmp_path, sources, "fp8")
    want = stored(sources)
    ds = arrow_dataset(spec, out, fp8=True)
    for i, s in enumerate(want):
        states = torch.from_numpy(np.stack([np.asarray(s[f"hidden_{layer}"], np.float32)
                                            for layer in LAYERS], 1))
        raw = load_file(out / "hidden_states" / f"hs_{i}.safetensors")
        assert raw["hidden_states"].dtype == torch.float8_e4m3fn
        assert raw["hidden_states_scales"].shape == (len(states), 1, 1)
        # byte-identical to speculators' own quantizer, one scale per token across the layers
        values, scales = spec.fp8_utils.quantize_tensor_to_fp8(states)
        assert torch.equal(raw["hidden_states"].view(torch.uint8), values.view(torch.uint8))
        assert torch.equal(raw["hidden_states_scales"], scales)
        decoded = spec.fp8_utils.dequantize_fp8_tensor(raw["hidden_states"], raw["hidden_states_scales"],
                                                       dtype=torch.float32)
        bound = fp8_error_bound(states)
        assert torch.all((decoded - states).abs() <= bound)
        got = ds[i]  # FP8Transfer's bf16 dequantisation adds bf16 rounding of value and scale
        loaded = torch.cat([got["hidden_states"].unflatten(1, (3, H)),
                            got["verifier_last_hidden_states"][:, None]], 1).float()
        assert torch.all((loaded - states).abs() <= bound + 2.0**-7 * decoded.abs())


def test_token_freq_is_what_speculators_counts_over_the_loss_masked_tokens(spec, sources, tmp_path):
    out = export(tmp_path, sources, "bf16")
    from datasets import load_from_disk

    theirs = tmp_path / "theirs.pt"
    spec.vocab_mapping.save_token_frequency_distribution(load_from_disk(str(out)), theirs)
    ours = torch.load(out / "token_freq.pt", weights_only=True)
    assert ours == torch.load(theirs, weights_only=True) and sum(ours.values()) == sum(
        len(s["positions"]) for s in stored(sources))


def test_rows_are_in_a_fixed_order_named_in_the_sidecar(sources, tmp_path):
    import yaml

    a, b = export(tmp_path / "a", sources, "bf16"), export(tmp_path / "b", sources, "bf16")
    ids = yaml.safe_load((a / SIDECAR).read_text())["row_sample_ids"]
    assert ids == yaml.safe_load((b / SIDECAR).read_text())["row_sample_ids"]
    assert [i[0] for i in ids] == ["a"] * 6 + ["b"] * 6
    for i in range(12):
        assert (a / f"hidden_states/hs_{i}.safetensors").read_bytes() == \
            (b / f"hidden_states/hs_{i}.safetensors").read_bytes()


def test_an_output_without_the_eagle3_states_is_refused_naming_what_is_missing(tmp_path):
    src = source(tmp_path / "plain", layers=(2, 15, 30))
    with pytest.raises(LabelSetError, match=r"missing layer 27 \(input of block 27\), the last "
                                            r"layer before the final norm \(hidden/final_pre_norm\)"):
        export(tmp_path, [src], "bf16")
    assert not (tmp_path / "spec-bf16").exists()
    pca = source(tmp_path / "pca", fmt="pca")
    with pytest.raises(LabelSetError, match="pca stores coefficients"):
        export(tmp_path, [pca], "bf16")


def test_hidden_dtype_is_checked():
    with pytest.raises(ConfigError, match="--hidden-dtype must be one of bf16, fp8"):
        ExportConfig(labels=("x",), format="speculators", out="o", hidden_dtype="fp16").validate()
    with pytest.raises(ConfigError, match="--hidden-dtype fp8 applies to --format speculators"):
        ExportConfig(labels=("x",), format="parquet", out="o", hidden_dtype="fp8").validate()
