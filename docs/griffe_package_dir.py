"""A griffe extension: load ``attrib_bench``'s sub-packages from where pyproject maps them.

pyproject's ``[tool.setuptools.package-dir]`` puts ``attrib_bench.models``,
``attrib_bench.metrics`` and ``attrib_bench.runners`` in the top-level folders ``models/``,
``metrics/`` and ``runners/``. griffe reads ``attrib_bench/`` from the source tree (statically,
with every comment-documented attribute) but cannot know about that mapping, so this extension
loads each mapped folder as a sub-package when ``attrib_bench`` is loaded. ``mkdocs.yml`` names
it under mkdocstrings' ``extensions``.

The docstrings cross-reference in Sphinx's roles (``:func:`~attrib_bench.data.load_cifar10```),
which Markdown would show as written; the extension turns each into inline code of the name
(``load_cifar10``, or the full path without ``~``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROOT = Path(__file__).resolve().parents[1]
#: A Sphinx cross-reference role: ``:func:`name```, ``:class:`~path.Name```, ...
ROLE = re.compile(r":(?:py:)?(?:func|meth|class|attr|data|mod|obj|exc|const)"
                  r":`(?P<tilde>~?)(?P<target>[^`]+)`")


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """``{"attrib_bench.models": ROOT / "models", ...}``: the sub-packages mapped elsewhere."""
    section = pyproject.read_text().split("[tool.setuptools.package-dir]", 1)[1]
    section = section.split("\n[", 1)[0]
    pairs = re.findall(r'^"([\w.]+)"\s*=\s*"([^"]+)"', section, flags=re.M)
    return {name: ROOT / folder for name, folder in pairs
            if "." in name and Path(folder) != Path(*name.split("."))}


def plain_roles(text: str) -> str:
    """``:func:`~a.b.c``` → ```c```, ``:class:`a.B``` → ```a.B```."""
    def code(match: re.Match[str]) -> str:
        target = match["target"]
        return f"`{target.rsplit('.', 1)[-1] if match['tilde'] else target}`"
    return ROLE.sub(code, text)


def _clean_docstrings(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = plain_roles(obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _clean_docstrings(member)


class PackageDir(griffe.Extension):
    """Adds the mapped sub-packages to the loaded top-level package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader,
                   **kwargs: Any) -> None:
        for name, folder in package_dirs().items():
            parent, _, child = name.rpartition(".")
            if parent != pkg.path or child in pkg.members:
                continue
            module = loader._load_module(child, folder / "__init__.py", parent=pkg)  # noqa: SLF001
            pkg.set_member(child, module)
        _clean_docstrings(pkg)
