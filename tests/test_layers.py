"""The layers hold: import-linter's contract in ``pyproject.toml`` passes, and fails on a crossing.

The package is installed from four folders (``attrib_bench/``, and ``models/``, ``metrics/``,
``runners/`` mapped into it by ``package-dir``), but import-linter (grimp) reads one package
directory. So the check runs on the layout a wheel has: a temporary ``attrib_bench/`` whose entries
link to the repository's, with ``models``, ``metrics`` and ``runners`` linked inside it.

Run ``python tests/test_layers.py`` for lint-imports' own report (exit status 1 on a broken
contract).
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: The folders installed inside the package (pyproject.toml's package-dir).
MAPPED = ("models", "metrics", "runners")
#: What to do about a broken contract (docs/contributing.md, "The layers").
FIX = ("a module imports from a layer above its own: move the code to the layer that owns it or "
       "pass what it needs as an argument; a chain ending in '-> attrib_bench' imports the "
       "top-level package: import from the defining module (attrib_bench.core.registry, "
       "attrib_bench.metrics.base, ...). See docs/contributing.md, 'The layers'.")


def wheel_layout(dest: Path) -> Path:
    """``dest/attrib_bench``: links to the repository's package entries and mapped folders."""
    package = dest / "attrib_bench"
    package.mkdir()
    for entry in (REPO / "attrib_bench").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    for folder in MAPPED:
        (package / folder).symlink_to(REPO / folder, target_is_directory=True)
    return package


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts on the package laid out under ``root``."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [str(script)] if script.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([*command, "--no-cache", str(REPO / "pyproject.toml")], cwd=root,
                          env=env, capture_output=True, text=True, timeout=120)


def test_the_layers_contract_holds(tmp_path: Path) -> None:
    wheel_layout(tmp_path)
    result = lint_imports(tmp_path)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{FIX}"
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_a_crossing_breaks_the_contract(tmp_path: Path) -> None:
    """The foundation importing the application (errors -> cli) is reported, chain and all."""
    package = wheel_layout(tmp_path)
    core = package / "core"
    core.unlink()
    shutil.copytree(REPO / "attrib_bench" / "core", core,
                    ignore=shutil.ignore_patterns("__pycache__"))
    errors = core / "errors.py"
    errors.write_text(errors.read_text() + "\nimport attrib_bench.cli  # a crossing\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "BROKEN" in result.stdout
    assert "attrib_bench.core.errors -> attrib_bench.cli" in result.stdout


def test_the_contract_names_every_top_level_module() -> None:
    """A new module or folder in attrib_bench/ must be given a layer (or it is unchecked)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = config["contracts"][0]["layers"]
    named = {m.strip() for layer in layers for m in layer.split("|")}
    present = {f"attrib_bench.{p.stem}" for p in (REPO / "attrib_bench").iterdir()
               if p.name not in {"__init__.py", "__main__.py", "__pycache__"}
               and (p.suffix == ".py" or (p / "__init__.py").exists())}
    present |= {f"attrib_bench.{folder}" for folder in MAPPED}
    assert present == named


#: The longest function body allowed outside tests and benchmarks (lines, docstring excluded).
MAX_BODY_LINES = 80


def body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the last one."""
    body = function.body
    if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def long_functions(limit: int = MAX_BODY_LINES) -> list[str]:
    """``path:line name (n lines)`` of every function of the package longer than ``limit``."""
    found = []
    for folder in ("attrib_bench", *MAPPED):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = body_lines(node)
                    if n > limit:
                        found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n})")
    return found


def test_body_lines_counts_statements_not_the_docstring() -> None:
    source = 'def f():\n    """Doc.\n\n    More."""\n    a = 1\n\n    return a\n'
    assert body_lines(ast.parse(source).body[0]) == 3


def test_no_function_body_is_over_80_lines() -> None:
    assert long_functions() == []


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        wheel_layout(Path(folder))
        outcome = lint_imports(Path(folder))
    print(outcome.stdout + outcome.stderr, end="")
    if outcome.returncode:
        print(f"\n{FIX}")
    sys.exit(outcome.returncode)
