"""Dependencies point one way, counting imports deferred into functions too.

- no import cycle among edgecloud's modules, nor among its packages (a sub-package such as
  `edgecloud.testing.chaos` counts as a package of its own);
- `benchmarks/` and `tests/` never import each other: they share rigs through
  `edgecloud.testing`; and `edgecloud` imports neither.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgecloud

ROOT = Path(edgecloud.__file__).parent
REPO = ROOT.parent


def _modules(top: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in top.rglob("*.py"):
        parts = path.relative_to(top.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported_names(name: str, path: Path, source: str | None = None) -> set[str]:
    """Every dotted name `name` imports anywhere in its source, at module level or inside a
    function, class or `if` (static: nothing runs)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*head, base] if base else head)
            found.update([f"{base}.{a.name}" for a in node.names] + [base])
    return found


def _imports(name: str, path: Path, known: dict[str, Path], source: str | None = None
             ) -> set[str]:
    """Known modules that `name` imports (see _imported_names)."""
    found = set()
    for target in _imported_names(name, path, source):
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name and not name.startswith(target + "."):
            found.add(target)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _package_of(module: str, packages: set[str]) -> str:
    """The innermost package holding `module` (a top-level module is its own unit)."""
    while module not in packages and "." in module:
        module = module.rpartition(".")[0]
    return module


def _module_graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_no_import_cycle() -> None:
    graph = _module_graph()
    assert len(graph) > 50
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_no_cycle_between_packages() -> None:
    known = _modules()
    packages = {n for n, p in known.items() if p.name == "__init__.py" and n != "edgecloud"}
    graph: dict[str, set[str]] = {}
    for name, targets in _module_graph().items():
        if name == "edgecloud":
            continue
        unit = _package_of(name, packages)
        graph.setdefault(unit, set()).update(
            t for t in (_package_of(x, packages) for x in targets) if t not in (unit, "edgecloud"))
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, set())
    assert "edgecloud.deploy" not in graph["edgecloud.bench"]  # the catalogue is below both
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _tops(top: str) -> dict[str, set[str]]:
    """Each module under REPO/top -> the top-level names it imports."""
    out = {}
    for name, path in _modules(REPO / top).items():
        out[name] = {n.split(".")[0] for n in _imported_names(name, path) if n}
    return out


def test_benchmarks_and_tests_do_not_import_each_other() -> None:
    bad = [f"{m} imports tests" for m, tops in _tops("benchmarks").items() if "tests" in tops]
    bad += [f"{m} imports benchmarks" for m, tops in _tops("tests").items()
            if "benchmarks" in tops]
    bad += [f"{m} imports {t}" for m, tops in _tops("edgecloud").items()
            for t in ("tests", "benchmarks") if t in tops]
    assert bad == [], bad


def test_a_deferred_import_counts() -> None:
    source = "import json\n\ndef later():\n    from edgecloud.bench import results\n"
    known = {"edgecloud.deploy.x": ROOT / "deploy" / "x.py", "edgecloud.bench.results": ROOT}
    assert _imports("edgecloud.deploy.x", ROOT / "deploy" / "x.py", known, source) == {
        "edgecloud.bench.results"}
