"""The shape of the code, checked so that a regression fails CI: no import cycle inside the package, every
deferred import included (a cycle hidden in a function is still a cycle), and no source file over 450 lines.
The layers themselves (entry points -> pipelines -> core) are import-linter's contract in pyproject.toml."""

from __future__ import annotations

from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 450


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. every import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


def test_the_package_has_no_import_cycle():
    graph = grimp.build_graph("celeba", exclude_type_checking_imports=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _python_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "build", "dist"}
    return sorted(p for p in REPO.rglob("*.py") if not skip & set(p.relative_to(REPO).parts))


def test_no_source_file_is_over_450_lines():
    """celeba/, scripts/, benchmarks/ and the Tensorleap files: a module that grows past 450 lines is split."""
    sources = [p for p in _python_files() if p.relative_to(REPO).parts[0] != "tests"]
    assert len(sources) > 40  # the walk found the tree
    long = {str(p.relative_to(REPO)): n for p in sources if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"over {MAX_LINES} lines, split them: {long}"
