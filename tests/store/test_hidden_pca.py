"""`--hidden-format pca`: the basis fit, coefficients within the int8 bound of the exact
projection, the basis checksum, the student reading the projected space, and refusals
to mix it with other hidden spaces."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import fake_attrs, flip_byte, write_fake_output
from pipeline.store.hidden_basis import BASIS_NAME, fit_basis, project, read_basis, reconstruct
from pipeline.store.codecs.hidden_int8 import int8_error_bound
from pipeline.store.manifest import read_manifest
from pipeline.store.shard_reader import ShardReader
from pipeline.store.summary import storage_bytes
from pipeline.store.verify import verify_outputs
from pipeline.student.batches import collate
from pipeline.student.label_set import LabelSetError, open_label_set
from schemas.config_base import ConfigError
from schemas.teacher_config import TeacherConfig

SIZE, RANK = 32, 8


def test_basis_is_orthonormal_sorted_and_exact_on_low_rank_states():
    rng = np.random.default_rng(1)
    scales = np.array([10, 5, 2, 1, 0.5])[:, None]
    h = (rng.standard_normal((4000, 5)) @ (scales * rng.standard_normal((5, SIZE)))) + 3.0
    mean, basis, explained = fit_basis(h, 5)
    assert np.allclose(basis @ basis.T, np.eye(5), atol=1e-5)
    assert np.all(np.diff(explained) <= 0) and explained.sum() == pytest.approx(1, abs=1e-5)
    assert np.allclose(reconstruct(project(h, mean, basis), mean, basis), h, atol=1e-3)
    again = fit_basis(h, 5)
    assert np.array_equal(again[1], basis)  # deterministic, signs fixed


def pca_attrs():
    return replace(fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE), hidden_format="pca",
                   hidden_rank=RANK)


def test_pca_output_verifies_and_reads_coefficients(tmp_path):
    exact, out = tmp_path / "fp32", tmp_path / "pca"
    m = write_fake_output(out, attrs=pca_attrs())
    assert not verify_outputs([out]).problems
    m = read_manifest(out)
    assert (m.hidden_format, m.hidden_rank, m.stored_hidden_size) == ("pca", RANK, RANK)
    write_fake_output(exact, attrs=fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE))
    bases = read_basis(out)
    r, ref = ShardReader(out / m.shards[1].name), ShardReader(exact / m.shards[1].name)
    for i in range(len(r)):
        coeffs = project(ref.sample(i)["hidden_2"].astype(np.float32), *bases[2])
        got = r.sample(i)["hidden_2"]
        assert got.shape == (len(ref.sample(i)["token_ids"]), RANK)
        fp16 = np.abs(coeffs).max(1, keepdims=True) * 2.0**-9  # the reference went through fp16
        assert np.all(np.abs(got - coeffs) <= int8_error_bound(coeffs) + fp16)
    assert storage_bytes(out, m)["hidden_layer_token"] == RANK + 4


def test_corrupt_basis_is_caught(tmp_path):
    out = tmp_path / "pca"
    write_fake_output(out, attrs=pca_attrs())
    flip_byte(out / BASIS_NAME)
    problems = verify_outputs([out]).problems
    assert problems and "hidden_basis.h5: sha256: basis checksum differs" in str(problems[0])


def test_student_reads_the_projected_space(tmp_path):
    write_fake_output(tmp_path / "pca", attrs=pca_attrs())
    labels = open_label_set([tmp_path / "pca"])
    assert labels.hidden_size == RANK
    samples = [labels.open_shard(int(labels.shard[j])).sample(int(labels.row[j]))
               for j in range(len(labels))]
    assert collate(samples, hidden_layers=[0, 2])["teacher_hidden"][0].shape[1] == RANK


def test_pca_is_refused_beside_other_hidden_spaces(tmp_path):
    write_fake_output(tmp_path / "fp16", attrs=fake_attrs(hidden_layers=(0, 2), hidden_size=SIZE))
    write_fake_output(tmp_path / "pca", attrs=pca_attrs(), prefix="q")
    with pytest.raises(LabelSetError) as err:
        open_label_set([tmp_path / "fp16", tmp_path / "pca"])
    assert "hidden_space is 'pca:" in str(err.value) and "'teacher'" in str(err.value)
    assert str(tmp_path / "fp16") in str(err.value) and str(tmp_path / "pca") in str(err.value)
    write_fake_output(tmp_path / "pca2", attrs=pca_attrs(), prefix="z", seed=5)  # another basis
    with pytest.raises(LabelSetError, match="hidden_space is 'pca:"):
        open_label_set([tmp_path / "pca", tmp_path / "pca2"])


def test_config_flags():
    with pytest.raises(ConfigError, match="--hidden-rank must be at least 1"):
        TeacherConfig(hidden_format="pca", hidden_layers="1", hidden_rank=0).validate()
    cfg = TeacherConfig(hidden_format="pca", hidden_layers="1", hidden_rank=32).validate()
    assert cfg.identity()["hidden_rank"] == 32
    assert "hidden_rank" not in TeacherConfig(hidden_format="int8", hidden_layers="1").identity()
