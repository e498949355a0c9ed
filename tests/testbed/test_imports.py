"""The testbed's modules import each other without a cycle (function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import taskexpert.testbed

PACKAGE = "taskexpert.testbed"


def _imports() -> dict[str, set[str]]:
    folder = Path(taskexpert.testbed.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        if path.stem == "__init__":
            continue  # the package's front door imports its modules; they never import it
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + "."))
            elif isinstance(node, ast.Import):
                found |= {
                    a.name.removeprefix(PACKAGE + ".")
                    for a in node.names
                    if a.name.startswith(PACKAGE + ".")
                }
        graph[path.stem] = found
    return graph


def test_no_testbed_module_imports_itself_back_through_another():
    graph = _imports()
    assert "build" not in graph["layout"]

    def cycle_from(start: str, node: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in graph.get(node, ()):
            if nxt == start:
                return (*seen, nxt)
            if nxt not in seen:
                found = cycle_from(start, nxt, (*seen, nxt))
                if found:
                    return found
        return None

    cycles = [c for m in graph if (c := cycle_from(m, m, (m,)))]
    assert not cycles, " -> ".join(cycles[0])
