"""kd export --format axolotl: alignment proved by the KL of the teacher against itself."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from click.testing import CliRunner

from axolotl_reference import loss as axolotl_topk_kl
from conftest import fake_attrs
from interop_data import originals, write_distribution_output
from pipeline.interop.axolotl_rows import spans
from stages.cli.main import main

VOCAB, K = 300, 8


@pytest.fixture
def labels(tmp_path):
    """A generated and a scored output of one teacher (labels on suffixes and scattered positions)."""
    attrs = fake_attrs(vocab=VOCAB, k=K)
    gen = tmp_path / "gen"
    scored = tmp_path / "scored"
    write_distribution_output(gen, attrs, 2, 4, seed=3, prefix="g", prompt_len=5, comp_len=9)
    write_distribution_output(scored, attrs, 1, 5, seed=4, prefix="s", prompt_len=4, comp_len=12,
                              scored=True)
    return [gen, scored]




def export(dirs, out, *extra) -> tuple[list[dict], list[str]]:
    args = ["export", "--format", "axolotl", "--out", str(out), *extra]
    for d in dirs:
        args += ["--labels", str(d)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out / "data-00000.parquet").to_pylist()
    ids = yaml.safe_load((out / "offline_kd_export.yaml").read_text())["row_sample_ids"]
    return rows, ids


def teacher_logits(sample: dict, start: int, length: int) -> torch.Tensor:
    """Logits whose softmax gives every labelled row the teacher's raw top-k logprobs, the rest of
    its mass spread evenly over the other ids (the teacher standing in for the student)."""
    logits = torch.randn(length, VOCAB, dtype=torch.float64)
    for p, ids, lps in zip(sample["positions"], sample["topk_ids"], sample["topk_logprobs"]):
        t = p - 1 - start
        if 0 <= t < length - 1:
            lps = lps.astype(np.float64)
            tail = np.log1p(-np.exp(lps).sum()) - np.log(VOCAB - K)
            logits[t] = tail
            logits[t, torch.as_tensor(ids.astype(np.int64))] = torch.as_tensor(lps)
    return logits


def kd_loss(rows: list[dict], logits: list[torch.Tensor]) -> float:
    """axolotl's top-k forward KL over the file, normalised as its trainer does (labels != -100)."""
    total, items = 0.0, 0
    for row, student in zip(rows, logits):
        total += float(axolotl_topk_kl(
            student[None], torch.tensor(row["target_token_ids"])[None],
            torch.tensor(row["target_logprobs"])[None], torch.tensor(row["target_mask"])[None],
            num_items_in_batch=1))
        items += sum(label != -100 for label in row["labels"])
    return total / items


def closed_form(samples: dict[str, dict]) -> float:
    """-log of the kept top-k mass, averaged over labelled rows."""
    mass = [np.log(np.exp(s["topk_logprobs"].astype(np.float64)).sum(1)) for s in samples.values()]
    return float(-np.concatenate(mass).mean())


def test_topk_kl_of_teacher_against_itself_is_minus_log_topk_mass(labels, tmp_path):
    samples = originals(labels)
    rows, ids = export(labels, tmp_path / "ax")
    assert sorted(ids) == sorted(samples)
    logits = [teacher_logits(samples[i], 0, len(r["input_ids"])) for r, i in zip(rows, ids)]
    assert kd_loss(rows, logits) == pytest.approx(closed_form(samples), abs=1e-4)
    for row, sid in zip(rows, ids):
        mask = np.array(row["target_mask"])[:, 0]
        labelled = np.array(row["labels"]) != -100
        assert np.array_equal(mask[:-1], labelled[1:]) and mask[-1] == 0  # row t <-> token t + 1
        assert np.array_equal(np.flatnonzero(labelled), samples[sid]["positions"])


def test_a_file_shifted_by_one_position_fails_the_closed_form(labels, tmp_path):
    samples = originals(labels)
    rows, ids = export(labels, tmp_path / "ax")
    logits = [teacher_logits(samples[i], 0, len(r["input_ids"])) for r, i in zip(rows, ids)]
    shifted = []
    for row in rows:  # row t now holds the distribution of token t (the off-by-one mistake)
        moved = dict(row)
        for key in ("target_token_ids", "target_logprobs", "target_mask"):
            moved[key] = row[key][-1:] + row[key][:-1]
        shifted.append(moved)
    assert abs(kd_loss(shifted, logits) - closed_form(samples)) > 0.5


def test_split_windows_keep_every_label_once_and_the_closed_form(labels, tmp_path):
    samples = originals(labels)
    rows, ids = export(labels, tmp_path / "ax", "--max-length", "6", "--long-samples", "split")
    assert all(len(r["input_ids"]) <= 6 for r in rows)
    starts = {}
    for sid, s in samples.items():
        for w, (a, _) in enumerate(spans(len(s["token_ids"]), 6)):
            starts[f"{sid}#{w}"] = (sid, a)
    logits = [teacher_logits(samples[starts[i][0]], starts[i][1], len(r["input_ids"]))
              for r, i in zip(rows, ids)]
    assert sum(np.array(r["target_mask"])[:, 0].sum() for r in rows) == \
        sum(len(s["positions"]) for s in samples.values())
    assert kd_loss(rows, logits) == pytest.approx(closed_form(samples), abs=1e-4)


def test_a_sample_longer_than_max_length_is_refused_without_split(labels, tmp_path):
    result = CliRunner().invoke(main, ["export", "--format", "axolotl", "--labels", str(labels[0]),
                                       "--out", str(tmp_path / "ax"), "--max-length", "6"])
    assert result.exit_code == 1
    assert "8 sample(s) longer than --max-length 6" in result.output and "g0-0/0" in result.output
    assert not (tmp_path / "ax").exists()


def test_kd_temperature_targets_match_axolotls_preprocessing(labels, tmp_path):
    samples = originals(labels)
    rows, ids = export(labels[:1], tmp_path / "ax", "--kd-temperature", "2")
    row, sample = rows[0], samples[ids[0]]
    p = sample["positions"][0]
    # chat_template.py: probs renormalised over k, raised to T_gen / T_kd, renormalised again
    probs = np.exp(sample["topk_logprobs"][0].astype(np.float64))
    probs /= probs.sum()
    probs = probs ** 0.5 / (probs ** 0.5).sum()
    assert np.allclose(np.exp(row["target_logprobs"][p - 1]), probs, atol=1e-6)
