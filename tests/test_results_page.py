"""The results page is generated: `docs/results.md` equals what `bench/results/*.json` render.

`make results` rewrites the page; this test fails when someone edits a results file
without rerendering, edits the page by hand, or adds a results file nobody renders.
"""

import json
import shutil
from pathlib import Path

from bench.results_page import PAGE, RENDERERS, RESULTS, render_page


def test_the_committed_page_is_what_the_results_render():
    assert PAGE.read_text() == render_page(RESULTS), "docs/results.md is stale: run `make results`"


def test_every_registered_renderer_has_its_file_and_every_file_a_renderer():
    files = {p.name for p in RESULTS.glob("*.json")}
    assert set(RENDERERS) == files


def test_a_file_without_renderer_is_listed_not_dropped(tmp_path):
    for name in RENDERERS:
        shutil.copy(RESULTS / name, tmp_path / name)
    (tmp_path / "new_bench.json").write_text(json.dumps({"machine": {}, "x": 1}))
    page = render_page(tmp_path)
    assert "- `bench/results/new_bench.json`" in page.split("## Files with no renderer")[1]
    assert page.replace("- `bench/results/new_bench.json`", "") != render_page(RESULTS)


def test_a_changed_number_changes_the_page(tmp_path):
    for name in RENDERERS:
        shutil.copy(RESULTS / name, tmp_path / name)
    teacher = json.loads((tmp_path / "teacher.json").read_text())
    teacher["plain_generation"]["tokens_per_second"] = 12345.6
    (tmp_path / "teacher.json").write_text(json.dumps(teacher))
    assert "| plain `LLM.generate` | 12345.6 |" in render_page(tmp_path)


def test_rendering_twice_gives_the_same_page():
    assert render_page(RESULTS) == render_page(RESULTS)


def test_the_command_is_shown_when_recorded(tmp_path):
    for name in RENDERERS:
        shutil.copy(RESULTS / name, tmp_path / name)
    merge = json.loads((tmp_path / "merge.json").read_text())
    merge["command"] = "python -m bench.merge --shards 2"
    (tmp_path / "merge.json").write_text(json.dumps(merge))
    assert "Command: `python -m bench.merge --shards 2`." in render_page(tmp_path)


def test_raw_runs_are_rendered_when_the_file_has_them(tmp_path):
    for name in RENDERERS:
        shutil.copy(RESULTS / name, tmp_path / name)
    student = json.loads((tmp_path / "student.json").read_text())
    student["step_seconds_runs"] = {"kd": [7.25, 7.5], "online": [14.0, 15.5]}
    (tmp_path / "student.json").write_text(json.dumps(student))
    storage = json.loads((tmp_path / "storage.json").read_text())
    for row in storage["labels"].values():
        row["read_seconds_runs"] = [0.125, 0.25, 0.5]
    (tmp_path / "storage.json").write_text(json.dumps(storage))
    page = render_page(tmp_path)
    assert "| kd | 7.25 | 7.50 |" in page and "| online | 14.00 | 15.50 |" in page
    assert "| q8 top-20 | 0.1250 | 0.2500 | 0.5000 |" in page


def context_result(rates: dict[str, float]) -> dict:
    """A context.json with 20 held-out prompts and one seed whose student rates are `rates`."""
    def cell(rate):
        return {"followed": round(rate * 20), "total": 20, "rate": rate,
                "stderr": (rate * (1 - rate) / 20) ** 0.5}
    return {"machine": {}, "command": "python -m bench.context --seeds 3", "seconds": 100,
            "settings": {"limit": 0, "prompts": "p.jsonl", "heldout": "h.jsonl", "max_tokens": 32,
                         "context": "Answer in French.", "steps": 20, "lr": 1e-4,
                         "rule": "french"},
            "teacher_greedy": {"with-context": cell(0.5), "without": cell(0.0)},
            "runs": [{"seed": 3, "seconds": 90,
                      "labels": {"with-context": cell(0.45), "without": cell(0.05)},
                      "student": {"with-context": cell(rates["with-context"]),
                                  "without": cell(rates["without"])},
                      "example_answers": {"with-context": ["Le ciel | est\nbleu."],
                                          "without": ["The sky is blue."]}}],
            "summary": {"with-context": {"mean": 0.6, "min": 0.55, "max": 0.65, "std": 0.05},
                        "without": {"mean": 0.0, "min": 0.0, "max": 0.0, "std": 0.0},
                        "difference": {"mean": 0.6, "min": 0.55, "max": 0.65, "std": 0.05}}}


def test_the_context_section_shows_every_rate_and_the_difference(tmp_path):
    for name in set(RENDERERS) - {"context.json"}:
        shutil.copy(RESULTS / name, tmp_path / name)
    (tmp_path / "context.json").write_text(json.dumps(
        context_result({"with-context": 0.6, "without": 0.1})))
    page = render_page(tmp_path).split("## Context distillation")[1].split("\n## ")[0]
    assert "| teacher behind the context | 10/20 (50% ± 11%) |" in page
    assert "| teacher without it (= the student before training) | 0/20 (0% ± 0%) |" in page
    assert ("| 3 | 9/20 (45% ± 11%) | 1/20 (5% ± 5%) | 12/20 (60% ± 11%) | 2/20 (10% ± 7%) "
            "| +50% | 90 |") in page
    assert "| difference (behind - without) | 60% | 55% | 65% | 5% |" in page
    assert "| behind the context | Le ciel / est bleu. |" in page  # one table row per answer
    assert "Command: `python -m bench.context --seeds 3`." in page
