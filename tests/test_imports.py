"""The package's import graph has no cycle, and the modules that sat on one import on their own.

A cycle works or breaks depending on which of its modules is imported first (a Dask worker, a
plugin or a test may start anywhere), so it is checked statically: every ``import`` of an
attrib_bench module, at the top of a file or inside a function, is an edge; the graph must be
acyclic. Imports of a package that Python makes implicitly (``attrib_bench.methods`` before
``attrib_bench.methods.base``) are not edges: a package's ``__init__`` importing its own modules
is not a cycle by itself.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: Folder → dotted package, as pyproject.toml's package-dir maps them.
PACKAGES: dict[str, str] = {
    "attrib_bench": "attrib_bench",
    "attrib_bench/core": "attrib_bench.core",
    "attrib_bench/data": "attrib_bench.data",
    "attrib_bench/methods": "attrib_bench.methods",
    "models": "attrib_bench.models",
    "metrics": "attrib_bench.metrics",
    "runners": "attrib_bench.runners",
}
#: The modules that were on an import cycle: each must import first, in a fresh interpreter.
FIRST_IMPORTS = ("attrib_bench.runners.distributed", "attrib_bench.runners.benchmark",
                 "attrib_bench.core.registry", "attrib_bench.methods.base",
                 "attrib_bench.data.packed", "attrib_bench.plots")


def module_files() -> dict[str, Path]:
    """Dotted module name → source file, for every module of the packages."""
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _resolve_relative(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from . import x`` / ``from .y import x`` names."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, module: str, known: set[str]) -> set[str]:
    """The attrib_bench modules ``path`` imports anywhere in the file (top level or not).

    ``from attrib_bench.x import name`` is an edge to ``attrib_bench.x.name`` when that is a
    module, else to ``attrib_bench.x``.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = (node.module or "") if node.level == 0 else _resolve_relative(
                node, module, path.stem == "__init__")
            for alias in node.names:
                child = f"{source}.{alias.name}"
                found.add(child if child in known else source)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    """Module → the attrib_bench modules it imports."""
    files = module_files()
    known = set(files)
    return {name: imported_modules(path, name, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, white/grey/black)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_every_package_folder_has_modules():
    """The mapping above still matches the source tree (a renamed folder would hide modules)."""
    files = module_files()
    for package in PACKAGES.values():
        assert package in files, f"no __init__.py for {package}"
    assert "attrib_bench.methods.base" in files and "attrib_bench.runners.storage" in files


def test_the_graph_sees_top_level_and_function_level_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import attrib_bench.b\nfrom attrib_bench import c\n"
                      "from attrib_bench.d import thing\n"
                      "def f():\n    from attrib_bench.e import other\n")
    known = {"attrib_bench", "attrib_bench.a", "attrib_bench.b", "attrib_bench.c",
             "attrib_bench.d", "attrib_bench.e"}
    assert imported_modules(source, "attrib_bench.a", known) == {
        "attrib_bench.b", "attrib_bench.c", "attrib_bench.d", "attrib_bench.e"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, ("import cycle: " + " -> ".join(cycle) + ": move what both need into "
                           "a module that imports neither, or invert one import")


#: Run by one fresh interpreter: import the heavy third-party libraries once, then fork one child
#: per module, which imports that module before any other attrib_bench module. A child is a fresh
#: interpreter as far as attrib_bench goes (the parent has imported none of it), and the six
#: checks cost one torch import (~4 s here) instead of six (~35 s on a 2-core machine).
FORK_IMPORTS = """
import os, sys
import matplotlib
matplotlib.use("Agg")  # as attrib_bench.plots does before pyplot loads
import matplotlib.pyplot, numpy, pandas, seaborn, torch
early = sorted(m for m in sys.modules if m.split(".")[0] == "attrib_bench")
assert not early, f"imported before the checks: {early}"
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(module)
        except BaseException as exc:
            print(f"{module}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            os._exit(1)
        os._exit(0)
    if os.waitpid(pid, 0)[1]:
        failed.append(module)
sys.exit(1 if failed else 0)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the check forks one child per module")
def test_modules_once_on_a_cycle_import_first_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", FORK_IMPORTS, *FIRST_IMPORTS], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, "cannot be imported first: " + " | ".join(
        done.stderr.strip().splitlines()[-len(FIRST_IMPORTS):])

