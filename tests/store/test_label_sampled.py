"""`--label-kind sampled`: draws reproduce the teacher's distribution (chi-square), the
ragged storage round-trips, verify checks counts, the student's loss takes counts / N
as its target, and mixing sampled with top-k outputs is refused naming the field."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import fake_attrs, write_fake_output
from pipeline.store.atomic_commit import sha256_file
from pipeline.store.manifest import read_manifest, write_manifest
from pipeline.store.codecs.kind_sampled import padded_rows, ragged_rows
from pipeline.store.shard_reader import ShardReader
from pipeline.store.verify import verify_outputs
from pipeline.student.batches import collate
from pipeline.student.kd_losses import soft_label_loss
from pipeline.student.label_set import LabelSetError, open_label_set
from pipeline.teacher.label_sampling import draw_counts, draw_rows
from schemas.config_base import ConfigError
from schemas.teacher_config import TeacherConfig

N = 50


def chi2_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: p = 0.999)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def test_counts_reproduce_the_distribution_chi_square():
    p = np.array([0.4, 0.2, 0.1, 0.05, 0.05, 0.03, 0.02])  # tail bucket: 0.15
    rows = 20_000
    counts = draw_counts(np.tile(p, (rows, 1)), N, np.random.default_rng(11))
    assert np.all(counts.sum(1) == N)
    observed = counts.sum(0)
    expected = rows * N * np.append(p, 1 - p.sum())
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < chi2_critical(len(expected) - 1), chi2
    # unbiased: the mean of counts / N is p, within 4 standard errors of the estimate
    se = np.sqrt(np.append(p, 1 - p.sum()) * (1 - np.append(p, 1 - p.sum())) / (rows * N))
    assert np.all(np.abs(observed / (rows * N) - np.append(p, 1 - p.sum())) < 4 * se)


def test_draws_are_seeded_and_rows_are_most_drawn_first():
    ids = np.array([[10, 20, 30, 40]] * 3)
    lps = np.log(np.array([[0.1, 0.6, 0.2, 0.05]] * 3))
    a = draw_rows(ids, lps, N, np.random.default_rng(5))
    b = draw_rows(ids, lps, N, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    probs = np.exp(a[1])
    assert np.all(np.diff(probs, axis=1) <= 0)
    assert np.allclose(np.rint(probs * N), probs * N, atol=1e-4)


def test_ragged_round_trip_is_exact():
    rng = np.random.default_rng(2)
    ids = rng.integers(0, 1000, (40, 8))
    counts = draw_counts(np.full((40, 8), 0.11), N, rng)[:, :-1]
    keep = counts > 0
    offsets = np.concatenate([[0], np.cumsum(keep.sum(1))])
    padded = padded_rows(offsets, ids[keep], counts[keep], N)
    back = ragged_rows(*padded, N)
    assert np.array_equal(back[0], offsets) and np.array_equal(back[1], ids[keep])
    assert np.array_equal(back[2], counts[keep])
    assert np.array_equal(back[3], N - counts.sum(1))


def sampled_attrs(n: int = N):
    return replace(fake_attrs(k=4), label_kind="sampled", samples_per_position=n,
                   label_source_k=4)


def test_sampled_output_verifies_and_reads(tmp_path):
    out = tmp_path / "s"
    m = write_fake_output(out, attrs=sampled_attrs())
    assert not verify_outputs([out]).problems
    assert read_manifest(out).label_kind == "sampled"
    r = ShardReader(out / m.shards[0].name)
    assert "labels/topk_ids" not in r.arrays
    s = r.sample(0)
    assert s["topk_ids"].shape == (len(s["positions"]), N)
    total = np.rint(np.exp(s["topk_logprobs"]) * N).sum(1) \
        + r.arrays["labels/sample_tail_counts"][:len(s["positions"])]
    assert np.all(total == N)


def test_bad_counts_are_caught(tmp_path):
    out = tmp_path / "s"
    m = write_fake_output(out, attrs=sampled_attrs())
    path = out / m.shards[0].name
    import h5py
    with h5py.File(path, "r+") as f:
        f["labels/sample_tail_counts"][2] += 1
    m.shards[0].sha256 = sha256_file(path)
    write_manifest(out, m)
    problems = verify_outputs([out]).problems
    assert problems and "label row 2: sample counts plus tail sum to 51, expected " \
        "samples_per_position 50" in str(problems[0])


def test_student_loss_uses_counts_over_n_as_target(tmp_path):
    out = tmp_path / "s"
    write_fake_output(out, attrs=sampled_attrs())
    labels = open_label_set([out])
    samples = [labels.open_shard(int(labels.shard[j])).sample(int(labels.row[j]))
               for j in range(len(labels))]
    batch = collate(samples)
    ids, lps = batch["teacher_ids"], batch["teacher_logprobs"]
    logits = torch.randn(len(ids), 1000, dtype=torch.float64)
    for kind in ("forward_kl", "reverse_kl", "jsd", "tvd"):
        for tail in ("bucket", "renormalize"):
            got = soft_label_loss(logits, ids, lps, kind=kind, tail=tail)
            assert torch.isfinite(got), (kind, tail)
    # forward KL with the tail bucket equals the KL to the dense target counts / N + tail
    got = soft_label_loss(logits, ids, lps, kind="forward_kl", tail="bucket")
    logq = torch.log_softmax(logits, -1)
    want = 0.0
    for row in range(len(ids)):
        p = {}
        for i, lp in zip(ids[row].tolist(), lps[row].tolist()):
            if math.isfinite(lp):
                p[i] = math.exp(lp)
        tail = max(1 - sum(p.values()), 1e-7)
        q_tail = 1 - sum(logq[row, i].exp().item() for i in p)
        want += sum(v * (math.log(v) - logq[row, i].item()) for i, v in p.items())
        want += tail * (math.log(tail) - math.log(q_tail))
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_sampled_and_topk_outputs_are_refused_together(tmp_path):
    write_fake_output(tmp_path / "topk")
    write_fake_output(tmp_path / "sampled", attrs=sampled_attrs(), prefix="s")
    with pytest.raises(LabelSetError) as err:
        open_label_set([tmp_path / "topk", tmp_path / "sampled"])
    text = str(err.value)
    assert "label_kind is 'sampled' but" in text
    assert str(tmp_path / "topk") in text and str(tmp_path / "sampled") in text
    write_fake_output(tmp_path / "s20", attrs=sampled_attrs(20), prefix="t")
    with pytest.raises(LabelSetError, match="samples_per_position is 20 but"):
        open_label_set([tmp_path / "sampled", tmp_path / "s20"])


def test_config_flags():
    with pytest.raises(ConfigError, match="--label-kind must be one of topk, sampled"):
        TeacherConfig(label_kind="full").validate()
    with pytest.raises(ConfigError, match="--samples-per-position must be in 1..255"):
        TeacherConfig(label_kind="sampled", samples_per_position=300).validate()
    with pytest.raises(ConfigError, match="--label-format q8 applies to --label-kind topk"):
        TeacherConfig(label_kind="sampled", label_format="q8").validate()
    cfg = TeacherConfig(label_kind="sampled")
    assert cfg.engine_k == 256 and cfg.identity()["samples_per_position"] == 50
    assert "samples_per_position" not in TeacherConfig().identity()


def test_sampled_labels_are_not_exported(tmp_path):
    from click.testing import CliRunner

    from stages.cli.main import main

    write_fake_output(tmp_path / "s", attrs=sampled_attrs())
    result = CliRunner().invoke(main, ["export", "--format", "parquet", "--labels",
                                       str(tmp_path / "s"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert "--label-kind sampled labels cannot be exported" in result.output
