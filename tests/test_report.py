"""The HTML report: best marks only where CIs separate, ties as ties, no ranking for checks,
each run's own provenance, sample sets as tables, figures before the long tables, and a page for
any run with a summary (a plugin metric alone included)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_plots import _rows, synthetic_results, write_run

from attrib_bench.cli import cli
from attrib_bench.compare import rankings
from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.provenance import git_commit
from attrib_bench.metrics.base import make_rows
from attrib_bench.plots import RunTables, load_runs
from attrib_bench.report import code_version, render_report, sample_tables, summary_rows


def _group(means, lows, highs, direction="higher", metric="localisation") -> pd.DataFrame:
    count = len(means)
    return pd.DataFrame({"model": "m", "method": [f"x{i}" for i in range(count)],
                         "metric": metric, "variant": "", "stat": "score", "mean": means,
                         "ci_low": lows, "ci_high": highs, "n": 8, "n_nonfinite": 0,
                         "direction": direction})


def test_summary_rows_show_groups_and_rank_cis_but_never_rank_randomisation():
    """Marks come from the paired groups and rank CIs of compare.rankings, never from CIs."""
    rng = np.random.default_rng(0)
    level = rng.normal(0.5, 0.1, 30)
    values = pd.concat([pd.DataFrame({
        "model": "m", "method": method, "metric": "localisation", "sample": np.arange(30),
        "key": "0", "variant": "", "stat": "score", "flag": "",
        "value": level + shift + 0.01 * rng.normal(size=30)})
        for method, shift in (("x0", 0.3), ("x1", 0.0))], ignore_index=True)
    # overlapping CIs, which the old marks called a tie: the paired test separates them
    table = pd.concat([_group([0.8, 0.5], [0.4, 0.45], [0.95, 0.9]),
                       _group([-0.5, 0.2], [-0.6, 0.1], [-0.4, 0.3], "lower",
                              "randomisation")], ignore_index=True)
    _, ranks = rankings(values, table)
    rows, classes = summary_rows(table, ranks=ranks)
    marked = {(row[2], row[1]): (cls, row[-1]) for row, cls in zip(rows, classes, strict=True)}
    assert marked[("localisation", "x0")] == ("best", "a · rank 1.0 [1, 1] · P(first) 1.00 (n 30)")
    assert marked[("localisation", "x1")] == ("", "b · rank 2.0 [2, 2] · P(first) 0.00 (n 30)")
    assert marked[("randomisation", "x0")] == ("", "")  # a check: never ranked
    assert "not a ranking" in rows[-1][-2]


def test_a_part_whose_first_samples_differ_is_noted():
    table = _group([0.6], [0.55], [0.65])
    prefix = pd.DataFrame([{"model": "m", "method": "x0", "metric": "localisation",
                            "variant": "", "stat": "score", "n": 500, "first": 32,
                            "mean_first": 0.72, "mean_rest": 0.57, "differs": True}])
    rows, _ = summary_rows(table, prefix=prefix)
    assert rows[0][-1] == "first 32: 0.720 vs the other 468: 0.570"


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", synthetic_results(np.random.default_rng(0)))


def _section(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}</h2>")
    end = page.find("<h2>", start + 1)
    return page[start:end if end > 0 else len(page)]


def test_report_puts_figures_first_and_samples_in_tables(run_dir):
    result = CliRunner().invoke(cli, ["report", "--results", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    assert page.index("<h2>Figures</h2>") < page.index("<h2>Summary</h2>")
    assert page.index("<h2>Figures</h2>") < page.index("<h2>Samples</h2>")
    samples = _section(page, "Samples")
    assert "{" not in samples and "&quot;" not in samples  # no raw JSON
    assert '<th class="value">image pixels</th>' in samples
    assert '<td class="value">64</td>' in samples
    summary = _section(page, "Summary")
    randomisation = [line for line in summary.splitlines() if ">randomisation<" in line]
    assert randomisation and not any("class=\"best\"" in line or "class=\"tie\"" in line
                                     for line in randomisation)
    marked = [line for line in summary.splitlines() if line.startswith(('<tr class="best"',
                                                                         '<tr class="tie"'))]
    assert marked and all(line.count(" em\"") == 2 for line in marked)  # mean and CI only
    stems = re.findall(r"<img alt='([^']+)'", page)
    ranks = [next(i for i, p in enumerate(("localisation", "pixel-removal", "temperature",
                                           "agreement", "randomisation", "contributions",
                                           "methods"))
                  if stem.startswith(p)) for stem in stems]
    assert stems and ranks == sorted(ranks)
    assert "seed -" not in page


def test_each_runs_provenance_comes_from_its_own_manifest(tmp_path):
    results = synthetic_results(np.random.default_rng(0))
    parent = tmp_path / "runs"
    first = write_run(parent / "cheap", results[results["method"] != "mine"].copy())
    second = write_run(parent / "costly", results[results["method"] == "mine"].copy())
    for folder, commit, seed in ((first, "a" * 40 + " (uncommitted changes)", 3),
                                 (second, "b" * 40, 7)):
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["git_commit"] = commit
        manifest["config"]["seed"] = seed
        (folder / "manifest.json").write_text(json.dumps(manifest))
    page = render_report(load_runs(parent))
    runs = _section(page, "Runs and code")
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", runs)
    assert cells[0] == "cheap" and cells[4:7] == ["3", "a" * 12, "uncommitted changes"]
    row = cells.index("costly")
    assert cells[row + 4:row + 7] == ["7", "b" * 12, "clean"]
    here = git_commit()
    assert here is None or here.split()[0][:12] not in runs  # not the drawing checkout's
    assert code_version({}) == ("unknown", "unknown")


def test_a_run_of_a_plugin_metric_alone_gets_a_report(tmp_path):
    """No figure exists for the metric, but its summary does: the page says so and shows it."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    scores = np.random.default_rng(0).random((4, 1))
    results = pd.concat([_rows("toy", method, "map-mass", make_rows(
        np.arange(4)[:, None], np.zeros((1, 1), dtype=int), scores + k), {})
        for k, method in enumerate(("ixg", "grad"))], ignore_index=True)
    results.to_parquet(folder / "results.parquet", index=False)
    pd.DataFrame({"model": "toy", "method": ["ixg", "grad"], "metric": "map-mass",
                  "variant": "", "stat": "score", "mean": [0.5, 1.5], "ci_low": [0.3, 1.3],
                  "ci_high": [0.7, 1.7], "n": 4, "n_nonfinite": 0,
                  "direction": "higher"}).to_csv(folder / "summary.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps(
        {"config": {"metrics": ["map-mass"], "seed": 0, "models": ["toy"],
                    "methods": ["ixg", "grad"]}, "git_commit": "c" * 40,
         "tables_sha256": {name: sha256_file(folder / name)
                           for name in ("results.parquet", "summary.csv")}}))
    result = CliRunner().invoke(cli, ["report", "--results", str(folder)])
    assert result.exit_code == 0, result.output
    page = (folder / "report.html").read_text()
    assert "<img" not in page and "No figures" in page
    best = [line for line in page.splitlines() if line.startswith('<tr class="best">')]
    # 4 samples cannot separate the two (Wilcoxon's smallest p is 0.125): both in group a,
    # Grad ranked first
    assert len(best) == 2 and all(">map-mass<" in line and ">a · rank " in line
                                  for line in best)
    assert any(">Grad<" in line and "rank 1.0 [1, 1]" in line for line in best)
    plot = CliRunner().invoke(cli, ["plot", "--results", str(folder)])
    assert plot.exit_code == 1 and "nothing to plot" in plot.output


def test_sample_columns_say_what_they_hold():
    """A grid metric's side is shown n×n from ``grid_size`` ("n" is the grid count, left out);
    "n" is the image count for pixel removal; a key one run did not record reads "-"."""
    manifests = {
        "runs/a": {"samples": {"m/localisation": {"n": 32, "grids": 32, "grid_size": 3,
                                                  "seconds": 104.196},
                               "m/pixel-removal": {"n": 32, "seconds": 0.0}}},
        "runs/b": {"samples": {"m/localisation": {"grids": 8, "grid_size": 2, "seconds": 1.0,
                                                  "probability": "sigmoid", "n": 8}}}}
    tables = RunTables(Path("runs"), pd.DataFrame(), pd.DataFrame(), {}, manifests)
    header, rows = sample_tables(tables)["localisation"]
    assert header == ["run", "model", "grid (n×n)", "grids", "drawing (s)", "probability"]
    assert rows == [["a", "m", "3×3", "32", "104.2", "-"],
                    ["b", "m", "2×2", "8", "1.0", "sigmoid"]]
    header, rows = sample_tables(tables)["pixel-removal"]
    assert header == ["run", "model", "images", "drawing (s)"]
    assert rows == [["a", "m", "32", "0.0"]]


def test_probability_stats_name_their_probability():
    """A pixel-removal "prob-auc" row says which probability it integrates, from the results."""
    table = _group([0.9, 0.5], [0.85, 0.45], [0.95, 0.55], metric="pixel-removal").assign(
        stat=["prob-auc", "logit-auc"], method=["x0", "x0"])
    results = pd.DataFrame({"model": "m", "method": "x0", "metric": "pixel-removal",
                            "variant": "", "stat": ["prob", "logit"], "sample": 0,
                            "value": 0.5, "probability": ["sigmoid", ""]})
    rows, _ = summary_rows(table, results)
    assert [row[4] for row in rows] == ["logit-auc", "prob-auc (sigmoid)"]


def test_one_sample_has_no_interval():
    table = _group([0.9, 0.6], [0.85, 0.6], [0.95, 0.6])
    table["n"] = [32, 1]
    rows, classes = summary_rows(table)
    by_method = {row[1]: (row[6], row[-1]) for row in rows}
    assert by_method["x1"] == ("-", "") and by_method["x0"] == ("[0.8500, 0.9500]", "")
    assert classes == ["", ""]  # without ranks nothing is marked


