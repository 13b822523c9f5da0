"""The scripts in results/ that account for the committed reproduction."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "results" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_hours_sums_every_calls_part_seconds_times_threads(tmp_path):
    cpu_hours = _load("cpu_hours")
    manifest = {"hardware": "AMD EPYC | 2 CPUs, 2 torch threads | torch 2.14 | device cpu",
                "seconds_per_part_all_runs": [{"model": "m", "method": "grad",
                                               "metric": "localisation", "seconds": 1800.0},
                                              {"model": "m", "method": "ixg",
                                               "metric": "localisation", "seconds": 900.0}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cost = cpu_hours.folder_cost(tmp_path / "manifest.json")
    assert (cost["parts"], cost["seconds"], cost["threads"], cost["device"]) == (2, 2700.0, 2,
                                                                                 "cpu")
    assert cost["core_hours"] == 1.5


def test_readme_tables_match_the_committed_runs():
    """The README's reproduction tables are what results/readme_tables.py makes of results/."""
    readme_tables = _load("readme_tables")
    assert readme_tables.main(["--check"]) == 0


def test_readme_tables_replace_only_the_table_after_each_heading():
    readme_tables = _load("readme_tables")
    difull = "**DiFull localisation**"
    temps = "**The inherent maps' localisation by temperature T**"
    text = (f"intro\n\n{difull} (words)\n\n| method | a |\n|---|---|\n| Grad | 1 |\n\n"
            f"after\n\n{temps} x\n\n| T | 10 |\n|---|---|\n| old | 0 |\n")
    new = {difull: "| method | b |\n|---|---|\n| Grad | 2 |",
           temps: "| T | 10 |\n|---|---|\n| new | 1 |"}
    out = readme_tables.replace_tables(text, new)
    assert out == text.replace("| method | a |\n|---|---|\n| Grad | 1 |",
                               new[difull]).replace("| old | 0 |", "| new | 1 |")
    with pytest.raises(SystemExit, match="DiFull"):
        readme_tables.replace_tables("no tables here", new)
