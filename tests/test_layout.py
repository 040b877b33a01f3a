"""The house rules of the layout, checked on every import statement (top-level and local).

`schemas/` imports nothing of ours; the store imports only `schemas`; the
teacher and student sides use the store but not each other; the interop formats
use the store alone (the CLI side opens label sets for them); nothing in
`pipeline/` imports `stages/`; only `stages/` (and the benchmark that measures
plain vLLM against it) imports vLLM; and no module of ours imports itself through others
(no import cycle, local imports included).
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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Our module -> the modules of ours it imports (top-level and local imports alike;
    `from package import module` counts as importing the module)."""
    paths = [p for folder in OURS for p in modules_under(folder)]
    known = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = {f"{node.module}.{a.name}" for a in node.names} & known
                targets |= subs or {node.module}
        graph[module_name(path)] = {t for t in targets if t in known} - {module_name(path)}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph as [a, b, ..., a], or [] when it has none (depth-first search)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node], _ = "open", stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node], _ = "done", stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle():
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_of_ours_imports_itself_through_others():
    assert import_cycle(import_graph()) == []
