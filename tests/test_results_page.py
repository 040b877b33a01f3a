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
