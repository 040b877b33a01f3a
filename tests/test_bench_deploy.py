"""bench.deploy's plan of runs, its paired gains and its rendering, and the optional llama.cpp speed.

The training runs themselves are tested in tests/student/test_qat_train.py; here
the parts that decide what the benchmark compares and how it reports it.
"""

import argparse
import json
import math
import sys

import pytest

from bench.deploy import build_parser, check_args, paired_gain, run_plans, summarise
from bench.llama_cpp_speed import llama_cpp_status, tokens_per_second
from bench.results_page import render_deploy
from schemas.student_config import StudentConfig


def parse(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(["--train-labels", "t", "--heldout-labels", "h", *argv])
    check_args(args)
    return args


def test_every_run_of_a_seed_has_the_same_total_steps_and_qat_final_ends_in_a_qat_phase():
    args = parse("--steps", "10", "--qat-steps", "3", "--scheme", "int8w")
    plans = run_plans(args)
    assert list(plans) == ["float", "float-phased", "qat-start", "qat-final"]
    for fields in plans.values():
        cfg = StudentConfig(labels=("x",), student="narrow", steps=args.steps, **fields)
        cfg.validate()
        assert sum(n for _, n in cfg.parsed_phases()) in (0, args.steps)
    assert StudentConfig(labels=("x",), steps=10, **plans["qat-final"]).parsed_phases() == [
        ("kd", 7), ("qat", 3)]
    assert StudentConfig(labels=("x",), steps=10, **plans["float-phased"]).parsed_phases() == [
        ("kd", 7), ("full", 3)]


def test_without_qat_steps_there_is_no_final_phase_run_and_the_control_is_refused():
    assert list(run_plans(parse("--qat-steps", "0", "--no-phase-control"))) == ["float",
                                                                                  "qat-start"]
    assert list(run_plans(parse("--qat-steps", "0"))) == ["float", "qat-start"]
    assert "float-phased" in run_plans(parse("--steps", "10", "--qat-steps", "3"))
    with pytest.raises(SystemExit, match="--phase-control needs --qat-steps"):
        parse("--qat-steps", "0", "--phase-control")
    with pytest.raises(SystemExit, match="--qat-steps 12 must be in 0..11"):
        parse("--steps", "12", "--qat-steps", "12")


def rows_of(table: dict[int, dict[str, float]]) -> list[dict]:
    return [{"seed": seed, "variant": v, "kl": kl, "nll": 2 * kl, "bytes": 100}
            for seed, by_variant in table.items() for v, kl in by_variant.items()]


def test_paired_gain_is_baseline_minus_variant_per_seed_with_its_spread():
    rows = rows_of({0: {"ptq": 1.0, "qat-start": 0.75}, 1: {"ptq": 2.0, "qat-start": 2.25},
                    2: {"ptq": 3.0, "qat-start": 2.5}})
    gain = paired_gain(rows, "qat-start", "ptq", "kl")
    assert gain["per_seed"] == [0.25, -0.25, 0.5]
    assert gain["mean"] == pytest.approx(0.5 / 3)
    assert gain["stdev"] == pytest.approx(math.sqrt(((0.25 - 0.5 / 3) ** 2 + (0.25 + 0.5 / 3) ** 2
                                                     + (0.5 - 0.5 / 3) ** 2) / 2))
    assert gain["stderr"] == pytest.approx(gain["stdev"] / math.sqrt(3))
    assert gain["seeds_better"] == 2
    assert paired_gain(rows, "qat-final", "ptq", "kl") == {}


def test_summary_pairs_only_the_variants_that_ran():
    rows = rows_of({0: {"float": 1.0, "ptq": 1.5, "qat-start": 1.25},
                    1: {"float": 1.0, "ptq": 1.75, "qat-start": 1.5}})
    summary = summarise(rows)
    assert list(summary["gains"]) == ["qat-start vs ptq", "ptq vs float"]
    assert summary["gains"]["ptq vs float"]["kl"]["per_seed"] == [-0.5, -0.75]
    assert summary["gains"]["qat-start vs ptq"]["nll"]["per_seed"] == [0.5, 0.5]
    assert summary["variants"]["ptq"]["kl"]["mean"] == 1.625


def result_of(rows: list[dict], gguf: list[dict]) -> dict:
    for row in rows:
        row |= {"nll": row["nll"], "train_seconds": 3.0, "parameters": 2_500_000}
    settings = vars(parse("--seeds", "0,1", "--quants", ""))
    return {"machine": {"cpu_count": 2, "cpu": "x86_64"}, "command": "python -m bench.deploy",
            "device": "cuda", "settings": settings, "heldout": {"teacher": {"positions": 1234}},
            "runs": rows, "gguf": gguf, "summary": summarise(rows),
            "llama_cpp": {"installed": False, "note": "not installed here (a reason)"}}


def test_the_page_shows_every_run_the_paired_gains_and_why_llama_cpp_was_not_measured():
    rows = rows_of({0: {"float": 1.0, "ptq": 1.5, "qat-final": 1.125},
                    1: {"float": 1.25, "ptq": 1.75, "qat-final": 1.5}})
    gguf = [{"seed": 0, "quant": "q8_0", "bytes": 2**20, "kl_to_float_student": 1e-3, "kl": 1.0,
             "llama_cpp": {"tokens_per_second": 321.0}}]
    page = render_deploy(result_of(rows, gguf))
    assert "| 1 | qat-final | 1.50000 | 3.00000 | - | 3 |" in page
    assert "| qat-final vs ptq | +0.3125 ± 0.0884 | 2/2 |" in page
    assert "| 0 | q8_0 | 1.00 MiB | 1.00e-03 | 1.00000 | 321 |" in page
    assert "llama.cpp: not installed here (a reason)." in page
    assert "2.5 M parameters" in page and "on cuda" in page
    gguf[0]["llama_cpp"] = None
    unmeasured = render_deploy(result_of(rows_of({0: {"float": 1.0, "ptq": 1.5}}), gguf))
    assert "| 0 | q8_0 | 1.00 MiB | 1.00e-03 | 1.00000 | - |" in unmeasured
    assert "not measured in this run" in unmeasured and "(a reason)" not in unmeasured


def test_without_llama_cpp_python_the_speed_is_none_and_the_status_says_how_to_get_it(
        monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    assert tokens_per_second(tmp_path / "m.gguf", 8) is None
    status = llama_cpp_status()
    assert status["installed"] is False and "make llama-cpp" in status["note"]


def test_the_build_progress_is_the_last_step_the_log_printed():
    from bench.llama_cpp_build import build_progress

    log = "[1/178] Building C object a.o\n[93/178] Building CXX object b.o\n[94/178] c.o\nTerminated"
    assert build_progress(log) == {"done": 94, "total": 178}
    assert build_progress("Collecting llama-cpp-python\nDownloading") is None


def test_continue_from_keeps_the_finished_seeds_and_refuses_other_settings(tmp_path):
    from bench.deploy import finished_seeds

    rows = rows_of({0: {"float": 1.0, "ptq": 1.5}})
    earlier = tmp_path / "deploy.json"
    earlier.write_text(json.dumps({"settings": vars(parse("--steps", "12")), "runs": rows,
                                   "gguf": [{"seed": 0, "quant": "f16"}]}))
    kept, gguf = finished_seeds(parse("--steps", "12", "--continue-from", str(earlier)))
    assert kept == rows and gguf == [{"seed": 0, "quant": "f16"}]
    with pytest.raises(SystemExit, match="made with other --steps"):
        finished_seeds(parse("--steps", "10", "--continue-from", str(earlier)))
    assert finished_seeds(parse()) == ([], [])
