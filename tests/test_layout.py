"""The house rules of the layout, checked on every import statement (top-level and local).

`schemas/` imports nothing of ours; the store imports only `schemas`; the
teacher and student sides use the store but not each other; the interop formats
use the store alone (the CLI side opens label sets for them); nothing in
`pipeline/` imports `stages/`; only `stages/` (and the benchmark that measures
plain vLLM against it) imports vLLM.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ("schemas", "pipeline", "stages", "bench")

# package -> the packages of ours it may import (besides itself)
ALLOWED = {
    "schemas": set(),
    "pipeline.store": {"schemas"},
    "pipeline.teacher": {"schemas", "pipeline.store"},
    "pipeline.student": {"schemas", "pipeline.store", "pipeline.machine"},
    "pipeline.machine": set(),
    "pipeline.interop": {"schemas", "pipeline.store"},
}


def imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "pipeline" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("schemas") + modules_under("pipeline"),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_one_way(path):
    own = package_of(".".join(path.relative_to(ROOT).with_suffix("").parts))
    if own == "pipeline":
        return  # pipeline/__init__.py: a docstring only
    for module in imported_modules(path):
        if module.split(".")[0] not in OURS:
            assert module.split(".")[0] != "vllm", f"{path}: imports vllm outside stages/"
            continue
        target = package_of(module)
        assert target == own or target in ALLOWED[own], \
            f"{path.relative_to(ROOT)} imports {module}: {own} may import only {sorted(ALLOWED[own])}"


def test_only_stages_import_vllm():
    offenders = [str(p.relative_to(ROOT)) for folder in ("pipeline", "schemas")
                 for p in modules_under(folder)
                 if any(m.split(".")[0] == "vllm" for m in imported_modules(p))]
    assert offenders == []
