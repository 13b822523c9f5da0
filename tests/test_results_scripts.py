"""results/tables.py: the README's and the docs' results tables, generated from the store."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def _tables():
    spec = importlib.util.spec_from_file_location("tables", REPO / "results" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_tables_match_the_store():
    """Every marked table in README.md and docs/ is what results/tables.py makes of the store."""
    assert _tables().main(["--check"]) == 0


def test_only_the_text_between_markers_is_replaced():
    tables = _tables()
    text = ("intro\n\n<!-- table: temperature -->\nold\n<!-- /table -->\n\nafter\n"
            "<!-- table: parts -->\n<!-- /table -->\n")
    out = tables.fill(text, {"temperature": "| T |", "parts": "| p |"})
    assert out == ("intro\n\n<!-- table: temperature -->\n\n| T |\n\n<!-- /table -->\n\nafter\n"
                   "<!-- table: parts -->\n\n| p |\n\n<!-- /table -->\n")
    assert tables.fill(out, {"temperature": "| T |", "parts": "| p |"}) == out
    with pytest.raises(SystemExit, match="unknown table 'nope'"):
        tables.fill("<!-- table: nope -->\n<!-- /table -->", {"parts": ""})


def _summary(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "method", "metric", "variant", "stat", "mean",
                                       "ci_low", "ci_high", "n"])


def test_a_cell_states_n_and_marks_a_ci_below_the_papers_figure():
    tables = _tables()
    summary = _summary([("s-coda-sq-t1000", "inherent", "localisation", "", "score", 0.72,
                         0.71, 0.73, 500),
                        ("s-coda-sq-t1000", "grad", "localisation", "", "score", 0.15, 0.14,
                         0.16, 500)])
    table = tables.method_table(summary, "localisation", "", "score")
    lines = table.splitlines()
    assert lines[0] == "| method | paper: S-CoDA-SQ T = 1000 | s-coda-sq-t1000 |"
    assert lines[2] == "| inherent W(x)⊙x | 0.912 | 0.720 [0.710, 0.730] (500) ▼ |"
    assert lines[3] == "| Grad | 0.144 | 0.150 [0.140, 0.160] (500) |"  # CI reaches 0.144
    assert len(lines) == 4  # methods without a figure are left out


def test_rates_name_where_a_part_ran_and_rows_taken_from_another_method():
    tables = _tables()
    run = {"config": {"method_hparams": {"rise": {"n_masks": 2000}}}}
    parts = [
        {"model": "resnet56", "method": "rise", "metric": "localisation", "run": "r", "n": 16,
         "seconds_by_compute": {"cpu x1": 160.0}},
        {"model": "resnet56", "method": "deeplift", "metric": "pixel-removal", "run": "r",
         "n": 256, "seconds_by_compute": {"cpu x1": 1.0}, "rows_taken_from": {"ixg": 1}},
        {"model": "resnet56", "method": "grad", "metric": "localisation", "run": "r", "n": 500,
         "seconds_by_compute": {"cuda NVIDIA H200": 20.0}},
        {"model": "resnet56", "method": "grad", "metric": "pixel-removal", "run": "r", "n": 8,
         "seconds_by_compute": {"cpu x1": 1.0, "cuda NVIDIA H200": 1.0}},  # two places: out
    ]
    lines = tables.rates_table({"parts": parts, "runs": {"r": run}}).splitlines()
    assert lines[2:] == [
        "| resnet56 | Grad | 0.04 (500, H200) | – | – |",
        "| resnet56 | DeepLIFT | – | – | ≈ 0 (IxG's rows) (256, x1) |",
        "| resnet56 | RISE (n_masks 2000) | 10.00 (16, x1) | – | – |"]


def test_parts_count_clean_trees_and_compute():
    tables = _tables()
    parts = [{"model": "resnet56", "method": m, "metric": "localisation", "n": 500,
              "clean_tree": clean, "seconds_by_compute": {"cpu x2": 1800.0}}
             for m, clean in (("grad", True), ("ixg", False))]
    lines = tables.parts_table({"parts": parts, "superseded": [{}]}).splitlines()
    assert lines[2] == "| localisation | 500 grids | resnet56 | Grad, IxG | 2 (1) | 2.00 | 0.000 |"
    assert lines[3] == "| **all** | | | | **2** (1 superseded) | | |"
