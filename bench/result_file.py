"""Write a benchmark's results file: what it measured, the machine and the command that ran it.

Every `bench/*.py` ends with `write_result(path, result)`, so a rerun writes every
field the results page (`bench/results_page.py`, `make results`) renders: nothing in
`bench/results/*.json` is added by hand.

    python -c "from bench.result_file import command_line; print(command_line())"
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from pipeline.machine import describe_machine


def command_line() -> str:
    """The command as typed: `python -m bench.X ARGS` when run as a module."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    program = f"python -m {spec.name}" if spec and spec.name else shlex.quote(sys.argv[0])
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Write `result` with `machine` and `command` first; returns the path written."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": describe_machine(), "command": command_line(), **result}
    out.write_text(json.dumps(record, indent=1) + "\n")
    return out
