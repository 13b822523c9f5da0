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

from attrib_bench.checkpoints import sha256_file
from attrib_bench.cli import cli
from attrib_bench.metrics.base import make_rows
from attrib_bench.plots import RunTables, load_runs
from attrib_bench.provenance import git_commit
from attrib_bench.report import best_marks, code_version, render_report, sample_tables, summary_rows


def _group(means, lows, highs, direction="higher", metric="localisation") -> pd.DataFrame:
    count = len(means)
    return pd.DataFrame({"model": "m", "method": [f"x{i}" for i in range(count)],
                         "metric": metric, "variant": "", "stat": "score", "mean": means,
                         "ci_low": lows, "ci_high": highs, "n": 8, "n_nonfinite": 0,
                         "direction": direction})


def test_the_leader_is_best_only_when_its_ci_is_clear_of_every_other():
    group = _group([0.9, 0.5, 0.4], [0.85, 0.45, 0.3], [0.95, 0.55, 0.5])
    assert best_marks(group, "higher") == {0: "best"}
    assert best_marks(group, "lower") == {2: "tie", 1: "tie"}  # 0.4 [0.3, 0.5] vs [0.45, 0.55]


def test_overlapping_cis_are_a_tie_in_the_metrics_direction():
    # the case, lower is better: Grad 4.93 [0.51, 9.62] vs IxG 5.71 [0.80, 10.42]
    group = _group([4.93, 5.71, 20.0], [0.51, 0.80, 18.0], [9.62, 10.42, 22.0], "lower")
    assert best_marks(group, "lower") == {0: "tie", 1: "tie"}
    # equal means at the ceiling (Occ9, RISE, LIME at 1.0000) are a tie, not a win
    group = _group([1.0, 1.0, 1.0, 0.5], [1.0, 1.0, 1.0, 0.4], [1.0, 1.0, 1.0, 0.6])
    assert best_marks(group, "higher") == {0: "tie", 1: "tie", 2: "tie"}


def test_no_marks_without_a_ranking_direction_or_a_second_method():
    group = _group([0.9, 0.5], [0.85, 0.45], [0.95, 0.55])
    assert best_marks(group, "") == {}
    assert best_marks(group.iloc[:1], "higher") == {}
    # a missing CI separates nothing
    group = _group([0.9, 0.5], [np.nan, 0.45], [np.nan, 0.55])
    assert best_marks(group, "higher") == {0: "tie", 1: "tie"}


def test_summary_rows_mark_best_and_ties_but_never_randomisation():
    table = pd.concat([_group([0.9, 0.5], [0.85, 0.45], [0.95, 0.55]),
                       _group([-0.5, 0.2], [-0.6, 0.1], [-0.4, 0.3], "lower",
                              "randomisation")], ignore_index=True)
    rows, classes = summary_rows(table)
    marked = {(row[2], row[1]): (cls, row[-1]) for row, cls in zip(rows, classes, strict=True)}
    assert marked[("localisation", "x0")] == ("best", "best")
    assert marked[("localisation", "x1")] == ("", "")
    assert marked[("randomisation", "x0")] == ("", "")  # most negative Spearman: no "best"
    assert "not a ranking" in rows[-1][-2]


def test_marks_compare_only_methods_on_the_same_samples():
    """x0 (0.9) on samples 0–3 is not ranked against x1 and x2 on samples 0–31: x1 is best
    among those two, x0 has no mark (alone on its set); without results, n decides alike."""
    table = _group([0.9, 0.6, 0.2], [0.85, 0.55, 0.15], [0.95, 0.65, 0.25])
    table["n"] = [4, 32, 32]
    results = pd.DataFrame({"model": "m", "method": ["x0"] * 4 + ["x1"] * 32 + ["x2"] * 32,
                            "metric": "localisation", "variant": "", "stat": "score",
                            "sample": [*range(4), *range(32), *range(32)], "value": 0.5})
    for rows, classes in (summary_rows(table, results), summary_rows(table)):
        assert [(row[1], cls) for row, cls in zip(rows, classes, strict=True)] == [
            ("x0", ""), ("x1", "best"), ("x2", "")]
    # same n, other samples (e.g. another run's draw): not compared either
    shifted = results.assign(sample=[*range(4), *range(32), *range(100, 132)])
    rows, classes = summary_rows(table, shifted)
    assert classes == ["", "", ""]


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
                                           "randomisation", "contributions", "methods"))
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
    assert len(best) == 1 and ">Grad<" in best[0] and ">map-mass<" in best[0]
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


def test_one_sample_has_no_interval_and_marks_name_their_n():
    """n = 1: the CI reads "-" and separates nothing; where one block holds methods on two
    sample sets, each mark names its n."""
    table = _group([0.9, 0.2, 0.6, 0.3], [0.85, 0.15, 0.6, 0.25], [0.95, 0.25, 0.6, 0.35])
    table["n"] = [32, 32, 1, 4]
    rows, classes = summary_rows(table)
    by_method = {row[1]: (row[6], row[-1]) for row in rows}
    assert by_method["x2"] == ("-", "")  # alone on its one sample: no interval, no mark
    assert by_method["x0"] == ("[0.8500, 0.9500]", "best of the n = 32")
    assert by_method["x3"][1] == ""  # alone on its 4
