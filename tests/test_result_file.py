"""Benchmarks write their results through `bench.result_file.write_result`: the machine and
the command come first, then exactly what the benchmark measured."""

import json
import sys

from bench.result_file import command_line, write_result


def test_the_file_holds_machine_command_and_the_result(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench/x.py", "--steps", "3", "--out", "a b.json"])
    path = write_result(tmp_path / "sub" / "x.json", {"runs": [1.5, 2.5], "median": 2.0})
    data = json.loads(path.read_text())
    assert list(data) == ["machine", "command", "runs", "median"]
    assert data["runs"] == [1.5, 2.5] and data["median"] == 2.0
    assert "cpu_count" in data["machine"]
    assert data["command"].endswith("--steps 3 --out 'a b.json'")


def test_a_module_run_is_named_as_typed(monkeypatch):
    main = type(sys)("__main__")
    main.__spec__ = type("Spec", (), {"name": "bench.merge"})()
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/abs/bench/merge.py", "--shards", "2"])
    assert command_line() == "python -m bench.merge --shards 2"
