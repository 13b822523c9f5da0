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
    assert (cost["parts"], cost["seconds"], cost["where"]) == (2, 2700.0, {"cpu x2": 2700.0})
    assert (cost["core_hours"], cost["gpu_hours"]) == (1.5, 0.0)


def test_cpu_hours_splits_seconds_by_where_each_chunk_ran(tmp_path):
    """Chunks record their device; chunks from before that count as the manifest's last call."""
    cpu_hours = _load("cpu_hours")
    manifest = {"hardware": "AMD EPYC | 2 CPUs, 2 torch threads | torch 2.14 | device cpu",
                "seconds_per_part_all_runs": [{
                    "model": "m", "method": "grad", "metric": "localisation", "seconds": 5760.0,
                    "seconds_by_compute": {"cpu x1": 3600.0, "cuda NVIDIA H200": 360.0,
                                           "unknown": 1800.0}}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    cost = cpu_hours.folder_cost(tmp_path / "manifest.json")
    assert cost["where"] == {"cpu x1": 3600.0, "cuda NVIDIA H200": 360.0, "cpu x2": 1800.0}
    assert cost["core_hours"] == pytest.approx((3600 + 2 * 1800) / 3600)
    assert cost["gpu_hours"] == pytest.approx(0.1)


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


def test_folder_table_rows_hold_each_parts_n_and_merge_only_whole_products(tmp_path):
    """A folder's rows: parts alike but for the model (or the metric) share a row; a model
    with other methods or another n gets its own, so every row's product exists at its n."""
    import pandas as pd

    readme_tables = _load("readme_tables")
    rows = [("xs-coda-sq-t10", m, "pixel-removal", 32) for m in ("grad", "inherent")]
    rows += [("xs-coda-sq-t100", m, "pixel-removal", 32) for m in ("inherent", "grad")]
    rows += [("resnet56", "grad", "pixel-removal", 32)]  # another method set: its own row
    rows += [("xs-coda-sq-t10", "grad", metric, 500)
             for metric in ("localisation", "localisation-difull")]
    rows += [("xs-coda-sq-t100", "grad", "localisation", 483)]  # another n: its own row
    folder = tmp_path / "run"
    folder.mkdir()
    pd.DataFrame(rows, columns=["model", "method", "metric", "n"]).to_csv(
        folder / "summary.csv", index=False)
    assert readme_tables.folder_rows(folder) == [
        ("xs-coda-sq-t100", "Grad", "localisation", "483 grids"),
        ("xs-coda-sq-t10", "Grad", "localisation, localisation-difull", "500 grids"),
        ("resnet56", "Grad", "pixel-removal", "32 images"),
        ("xs-coda-sq-t10, xs-coda-sq-t100", "inherent, Grad", "pixel-removal", "32 images")]


def test_folder_table_counts_each_folders_compute_once_and_totals_it(tmp_path):
    import pandas as pd

    readme_tables = _load("readme_tables")
    for name, seconds, methods in (("a", 3600.0, ["grad", "ixg"]), ("b", 1800.0, ["grad"])):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame({"model": "m", "method": methods, "metric": "localisation", "n": 500}
                     ).to_csv(folder / "summary.csv", index=False)
        (folder / "results.parquet").write_bytes(b"x" * 250_000)
        (folder / "manifest.json").write_text(json.dumps({
            "hardware": "x | 1 torch threads | device cpu",
            "seconds_per_part_all_runs": [{"seconds": seconds}]}))
    table = readme_tables.folders_table([tmp_path]).splitlines()
    assert table[2].endswith("| Grad, IxG | localisation | 500 grids | 1.00 | 0.000 | 0.25 MB |")
    assert table[3].endswith("| Grad | localisation | 500 grids | 0.50 | 0.000 | 0.25 MB |")
    assert table[-1] == "| **total** | | | | | **1.50** | **0.000** | 0.5 MB |"


def test_rates_table_takes_each_parts_largest_n_and_leaves_out_what_it_cannot_price(tmp_path):
    """Seconds per sample from the part with the largest n; a part superseded out of the
    summary and one computed in two places are not rates; a part that took another method's
    rows or was served by the cache is marked; the cost setting names its own row."""
    import pandas as pd

    readme_tables = _load("readme_tables")
    part = {"model": "resnet56", "metric": "localisation"}
    for name, n, parts, extra in (
            ("small", 4, [{**part, "method": "grad", "seconds": 400.0,
                           "seconds_by_compute": {"cpu x2": 400.0}}], {}),
            ("big", 500, [{**part, "method": "grad", "seconds": 1000.0},  # "unknown" → x1
                          {**part, "method": "ixg", "seconds": 2.0,
                           "seconds_by_compute": {"cpu x1": 2.0}},
                          {**part, "method": "deeplift", "seconds": 0.5,
                           "seconds_by_compute": {"cpu x1": 0.5}},
                          {**part, "method": "gradcam", "seconds": 9.0,
                           "seconds_by_compute": {"cpu x1": 4.0, "cuda NVIDIA H200": 5.0}},
                          {**part, "method": "occ5", "seconds": 9.0}],  # superseded: no row
             {"parts": [{**part, "method": "deeplift", "rows_taken_from": {"ixg": 16}}]}),
            ("rise", 16, [{**part, "method": "rise", "seconds": 800.0},
                          {**part, "metric": "pixel-removal", "method": "rise",
                           "seconds": 64.0}],
             {"config": {"method_hparams": {"rise": {"n_masks": 6000}}}})):
        folder = tmp_path / name
        folder.mkdir()
        rows = [(p["model"], p["method"], p["metric"], n) for p in parts if p["method"] != "occ5"]
        pd.DataFrame(rows, columns=["model", "method", "metric", "n"]).to_csv(
            folder / "summary.csv", index=False)
        (folder / "manifest.json").write_text(json.dumps(
            {"hardware": "x | 1 torch threads | device cpu", "seconds_per_part_all_runs": parts,
             **extra}))
    table = readme_tables.rates_table([tmp_path]).splitlines()
    assert table[2:] == [
        "| resnet56 | Grad | 2.00 (500, x1); 100.00 (4, x2) | – | – |",
        "| resnet56 | IxG | ≈ 0 (cached maps) (500, x1) | – | – |",
        "| resnet56 | DeepLIFT | ≈ 0 (IxG's rows) (500, x1) | – | – |",
        "| resnet56 | RISE (n_masks 6000) | 50.00 (16, x1) | – | 4.00 (16, x1) |"]


def _toy_run(out: Path, methods: str) -> None:
    """A small pixel-removal run of METHODS on a linear model, the same data and model each call."""
    import torch
    from torch import nn

    from attrib_bench.data import ImageSet
    from attrib_bench.runners.benchmark import run

    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (12,), generator=g), ("a", "b", "c"), "toy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    run({"lin": model}, methods, "pixel-removal", out=out, dataset=data, progress=False,
        n_samples=4, metric_hparams={"pixel-removal": {"steps": 4}})


def test_supersede_removes_the_newer_runs_parts_and_keeps_the_tables_verifiable(tmp_path):
    """After supersede.py the old run holds only the parts the newer one lacks, its summary is
    recomputed from them, and plot's sha256 check of the rewritten tables passes."""
    import pandas as pd

    from attrib_bench.plots import load_run

    supersede = _load("supersede")
    old, new = tmp_path / "old", tmp_path / "new"
    _toy_run(old, "grad,ixg")
    _toy_run(new, "grad")
    with pytest.raises(SystemExit, match="does not hold"):
        supersede.supersede(old, new, "test", ["lin"], None, None)  # ixg is not in new
    ixg_before = pd.read_parquet(old / "results.parquet").query("method == 'ixg'")
    removed = supersede.supersede(old, new, "test", ["lin"], ["grad"], None)
    assert removed == [("lin", "grad", "pixel-removal")]
    tables = load_run(old)  # raises if a table's sha256 is not the manifest's
    assert set(tables.results["method"]) == set(tables.summary["method"]) == {"ixg"}
    pd.testing.assert_frame_equal(pd.read_parquet(old / "results.parquet"),
                                  ixg_before.reset_index(drop=True))
    assert tables.manifest["superseded"][0]["parts"] == [
        {"model": "lin", "method": "grad", "metric": "pixel-removal"}]


def test_supersede_deletes_a_run_left_with_no_part(tmp_path):
    """A folder of empty tables is not a run: plot and the README tables would stop on it."""
    from attrib_bench.plots import load_runs

    supersede = _load("supersede")
    old, new = tmp_path / "runs" / "old", tmp_path / "runs" / "new"
    _toy_run(old, "grad")
    _toy_run(new, "grad")
    assert supersede.supersede(old, new, "test", ["lin"], None, None) == [
        ("lin", "grad", "pixel-removal")]
    assert not old.exists()
    assert set(load_runs(tmp_path / "runs").results["method"]) == {"grad"}  # new alone


def test_supersede_takes_an_older_runs_batch_size_and_refuses_other_unknown_settings(tmp_path):
    """Runs from before the metric contract of 2026-11 recorded ``batch_size`` among the metric
    settings; it only batched the work, so it is dropped; any other unknown setting stops."""
    supersede = _load("supersede")
    old, new = tmp_path / "old", tmp_path / "new"
    _toy_run(old, "grad,ixg")
    _toy_run(new, "grad")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["config"]["metric_hparams"]["pixel-removal"]["batch_size"] = 64
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert supersede.supersede(old, new, "test", ["lin"], ["grad"], None) == [
        ("lin", "grad", "pixel-removal")]
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["config"]["metric_hparams"]["pixel-removal"]["window"] = 3
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match=r"no longer takes \['window'\]"):
        supersede._metric("pixel-removal", manifest["config"]["metric_hparams"]["pixel-removal"])


def test_supersede_writes_nothing_when_the_kept_summary_does_not_recompute(tmp_path):
    """The recomputed summary of the kept parts must equal the run's summary.csv (else the
    run's settings were not reproduced): a changed mean stops it before any file is written."""
    import pandas as pd

    supersede = _load("supersede")
    old, new = tmp_path / "old", tmp_path / "new"
    _toy_run(old, "grad,ixg")
    _toy_run(new, "grad")
    summary = pd.read_csv(old / "summary.csv")
    summary.loc[summary["method"] == "ixg", "mean"] += 0.01
    summary.to_csv(old / "summary.csv", index=False)
    before = {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()}
    with pytest.raises(SystemExit, match="does not recompute"):
        supersede.supersede(old, new, "test", ["lin"], ["grad"], None)
    assert {p.name: p.read_bytes() for p in old.iterdir() if p.is_file()} == before
