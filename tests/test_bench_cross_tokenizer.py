"""The cross-tokenizer benches' own logic: the step-time ratios and the GPU carry folder.

Oracles: ratios by hand from given medians; the carry's tokenizer.json round trip, byte
for byte.
"""

from __future__ import annotations

import pytest

from bench.cross_tokenizer import step_ratios
from bench.cross_tokenizer_evidence import pack, unpack_tokenizer


def test_step_ratios_compare_with_ordinary_kd_and_with_ce_only():
    times = {"ordinary KD, teacher tokenizer": {"median_step_seconds": 2.0},
             "cross path, teacher tokenizer": {"median_step_seconds": 2.2},
             "cross path, qwen3": {"median_step_seconds": 5.0},
             "cross path, qwen3, CE only": {"median_step_seconds": 4.0}}
    ratios = step_ratios(times, ["qwen3"])
    assert ratios["teacher tokenizer"]["vs ordinary KD, teacher vocabulary (a)"] == pytest.approx(1.1)
    assert ratios["qwen3"] == {"vs ordinary KD, teacher vocabulary (a)": 2.5,
                               "vs CE only, same student (b)": 1.25}


def test_the_carry_folder_round_trips_the_tokenizers(tmp_path):
    for name in ("train", "heldout"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(name)
    for pair in ("qwen3", "gemma3"):
        folder = tmp_path / "tok" / pair
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_bytes(pair.encode() * 1000 + bytes(range(256)))
        (folder / "tokenizer_config.json").write_text("{}")
    carry = tmp_path / "carry"
    pack(carry, str(tmp_path / "train"), str(tmp_path / "heldout"), str(tmp_path / "tok"))
    assert (carry / "labels-heldout" / "manifest.json").read_text() == "heldout"
    assert not (carry / "tokenizers" / "qwen3" / "tokenizer.json").exists()
    for pair in ("qwen3", "gemma3"):
        out = unpack_tokenizer(carry, pair, tmp_path / "work")
        assert (tmp_path / "work" / "tokenizers" / pair / "tokenizer.json").read_bytes() == \
            (tmp_path / "tok" / pair / "tokenizer.json").read_bytes()
        assert out == str(tmp_path / "work" / "tokenizers" / pair)


def test_a_partial_rerun_keeps_what_each_earlier_run_still_owns():
    from bench.cross_tokenizer import keep_earlier

    first = {"machine": "m1", "command": "c1", "args": {}, "evidence": {"x": 1}}
    second = keep_earlier(dict(first), ["alignment", "step-time", "paired-step"])
    assert second["earlier runs"] == [{"machine": "m1", "command": "c1", "args": {},
                                       "parts": ["evidence"]}]
    second |= {"machine": "m2", "command": "c2", "args": {},
               "parts": ["alignment", "step-time", "paired-step"]}
    third = keep_earlier(second, ["step-time", "paired-step"])
    assert [(e["command"], e["parts"]) for e in third["earlier runs"]] == [
        ("c1", ["evidence"]), ("c2", ["alignment"])]
    assert keep_earlier(dict(third) | {"machine": "m3", "command": "c3", "args": {},
                                       "parts": ["step-time"]},
                        ["evidence", "alignment"])["earlier runs"] == [
        {"machine": "m3", "command": "c3", "args": {}, "parts": ["step-time"]}]
