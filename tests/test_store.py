"""The results store: per-sample values, mean curves, summary and provenance of every part."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_plots import MODELS, synthetic_results, write_run

from attrib_bench.cli import cli
from attrib_bench.core.errors import PlotError
from attrib_bench.plots import load_run, plot_results
from attrib_bench.store import (
    CURVES,
    MANIFEST,
    VALUES,
    add_runs,
    clean_tree,
    is_store,
    last_call,
    read_store,
)

PART = ["model", "method", "metric"]


@pytest.fixture()
def results() -> pd.DataFrame:
    return synthetic_results(np.random.default_rng(0))


def _with_provenance(folder: Path, **extra) -> Path:
    """A run folder's manifest with the provenance a real run records (timing, commit)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    summary = pd.read_csv(folder / "summary.csv")
    parts = summary[PART].drop_duplicates().to_dict("records")
    manifest["seconds_per_part_all_runs"] = [
        {**p, "seconds": 6.0, "seconds_by_compute": {"cpu x2": 4.0, "unknown": 2.0}}
        for p in parts]
    manifest["parts"] = [{**p, "built": "Built()"} for p in parts]
    manifest.update({"hardware": "cpu | 2 CPUs, 1 torch threads | device cpu",
                     "git_commit": "a" * 40, **extra})
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_the_store_holds_every_per_sample_value_of_the_run(tmp_path, results):
    run = _with_provenance(write_run(tmp_path / "run", results.copy()))
    add_runs(tmp_path / "store", [run])
    assert is_store(tmp_path / "store") and not is_store(run)
    held = read_store(tmp_path / "store")
    key = [*PART, "variant", "stat", "sample", "key"]
    values = held.values.set_index(key)["value"]
    assert values.index.is_unique
    # rows that are per-sample values already (localisation, randomisation): as the run wrote
    plain = results[results["metric"] != "pixel-removal"]
    got = values.loc[pd.MultiIndex.from_frame(plain[key])].to_numpy()
    np.testing.assert_array_equal(got, plain["value"].to_numpy())
    # curves: each image's AUC, checked against numpy's trapezoid on x = step / steps
    curves = results[results["metric"] == "pixel-removal"]
    table = curves.assign(step=curves["key"].astype(int)).pivot_table(
        index=[*PART, "variant", "stat", "sample"], columns="step", values="value")
    auc = np.trapezoid(table.to_numpy(), dx=1 / (table.shape[1] - 1), axis=1)
    index = table.index.to_frame(index=False).assign(
        stat=lambda f: f["stat"] + "-auc", key="")
    np.testing.assert_allclose(values.loc[pd.MultiIndex.from_frame(index[key])].to_numpy(),
                               auc, rtol=0, atol=1e-12)
    assert len(values) == len(plain) + len(auc)  # nothing else
    # the mean curves: the plain per-step mean, n = the images
    means = curves.groupby([*PART, "variant", "stat", "removed"])["value"].mean()
    stored = held.curves.set_index([*PART, "variant", "stat", "x"])
    np.testing.assert_allclose(stored["mean"].loc[means.index].to_numpy(), means.to_numpy())
    assert (stored["low"] <= stored["mean"]).all() and (stored["mean"] <= stored["high"]).all()
    assert set(stored["n"]) == {3}
    # the summary is the run's, row for row
    summary = pd.read_csv(run / "summary.csv").sort_values(PART + ["variant", "stat"])
    pd.testing.assert_frame_equal(
        held.summary.sort_values(PART + ["variant", "stat"]).reset_index(drop=True)[
            ["mean", "ci_low", "ci_high", "n"]],
        summary.reset_index(drop=True)[["mean", "ci_low", "ci_high", "n"]])


def test_each_part_records_its_provenance(tmp_path, results):
    run = _with_provenance(write_run(tmp_path / "run", results.copy()))
    add_runs(tmp_path / "store", [run])
    manifest = read_store(tmp_path / "store").manifest
    part = next(p for p in manifest["parts"] if p["model"] == "toy-t10"
                and p["method"] == "ixg" and p["metric"] == "pixel-removal")
    # chunks that recorded no place count as the run's last call (1 torch thread here)
    assert part["seconds_by_compute"] == {"cpu x2": 4.0, "cpu x1": 2.0}
    assert (part["run"], part["n"], part["built"], part["clean_tree"]) == (
        "run", 3, "Built()", True)
    assert part["git_commit"] == "a" * 40
    assert manifest["runs"]["run"]["git_commit"] == "a" * 40
    assert set(manifest["tables_sha256"]) == {VALUES, CURVES, "summary.csv"}
    assert "clean_tree" in manifest["written_with"]
    assert clean_tree("abc (uncommitted changes)") is False and clean_tree(None) is None
    assert last_call({"hardware": "x | device cuda:0"}) == "cuda:0"


def test_a_rerun_at_a_larger_n_replaces_the_part_and_is_recorded(tmp_path, results):
    small = results[(results["method"] != "ixg") | (results["sample"] < 2)]
    first = _with_provenance(write_run(tmp_path / "small", small.copy()))
    again = _with_provenance(write_run(tmp_path / "ixg", results[results["method"] == "ixg"]
                                       .copy()), git_commit="b" * 40 + " (uncommitted changes)")
    store = tmp_path / "store"
    add_runs(store, [first])
    before = read_store(store)
    add_runs(store, [again])
    held = read_store(store)
    ixg = held.values[held.values["method"] == "ixg"]
    assert ixg.groupby("metric")["sample"].nunique().to_dict() == {
        "localisation": 5, "pixel-removal": 3, "randomisation": 2}
    assert not held.values.duplicated([*PART, "variant", "stat", "sample", "key"]).any()
    assert len(held.summary) == len(before.summary)  # replaced, not added
    gone = held.manifest["superseded"]
    assert {(p["model"], p["metric"]) for p in gone} == {
        (m, k) for m in MODELS for k in ("localisation", "pixel-removal", "randomisation")}
    assert {p["superseded_by"] for p in gone} == {"ixg"} and {p["run"] for p in gone} == {
        "small"}
    new = [p for p in held.manifest["parts"] if p["method"] == "ixg"]
    assert {p["run"] for p in new} == {"ixg"} and not any(p["clean_tree"] for p in new)
    # the other methods' rows are untouched
    keep = [*PART, "variant", "stat", "sample", "key"]
    pd.testing.assert_frame_equal(
        before.values[before.values["method"] != "ixg"].sort_values(keep)[keep + ["value"]]
        .reset_index(drop=True),
        held.values[held.values["method"] != "ixg"].sort_values(keep)[keep + ["value"]]
        .reset_index(drop=True))


def test_figures_from_the_store_equal_the_run_folders_byte_for_byte(tmp_path, results):
    cheap = _with_provenance(write_run(tmp_path / "runs" / "a", results[
        results["method"] != "mine"].copy()))
    costly = _with_provenance(write_run(tmp_path / "runs" / "b", results[
        results["method"] == "mine"].copy()))
    add_runs(tmp_path / "store", [cheap, costly])
    from_runs = plot_results([cheap, costly], tmp_path / "figures-runs")
    from_store = plot_results(tmp_path / "store", tmp_path / "figures-store")
    assert [p.name for p in from_runs] == [p.name for p in from_store]
    # localisation, pixel removal, T series, 2 agreement, 2 randomisation
    assert len(from_store) == 7
    for a, b in zip(from_runs, from_store, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


def test_the_store_is_read_like_a_run_and_reports(tmp_path, results):
    add_runs(tmp_path / "store", [_with_provenance(write_run(tmp_path / "run", results.copy()))])
    tables = load_run(tmp_path / "store")
    assert set(tables.manifests) == {"run"} and tables.curves is not None
    out = CliRunner().invoke(cli, ["report", "--results", str(tmp_path / "store")])
    assert out.exit_code == 0, out.output
    page = (tmp_path / "store" / "report.html").read_text()
    assert page.count("<img") == 7 and ">run<" in page


def test_wrong_inputs_are_refused_in_one_line(tmp_path, results):
    run = _with_provenance(write_run(tmp_path / "run", results.copy()))
    store = tmp_path / "store"
    add_runs(store, [run])
    other = write_run(tmp_path / "other", results.copy())
    manifest = json.loads((other / MANIFEST).read_text())
    manifest["config"]["dataset"] = "imagenet"
    (other / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PlotError, match="one store per dataset"):
        add_runs(store, [other])
    with pytest.raises(PlotError, match="is a store, not a run folder"):
        add_runs(tmp_path / "store2", [store])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(PlotError, match="is not a results store"):
        add_runs(tmp_path / "busy", [run])
    result = CliRunner().invoke(cli, ["store", "--into", str(tmp_path / "x"),
                                      str(tmp_path / "missing")])
    assert result.exit_code == 1 and "no results folder" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # a table changed after the store was written is refused, not read
    (store / VALUES).write_bytes((store / VALUES).read_bytes() + b"\0")
    with pytest.raises(PlotError, match="changed after the store was written"):
        read_store(store)
