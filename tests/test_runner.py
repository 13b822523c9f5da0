"""The benchmark runner: tables, summary, cache, config clash, NaN flags, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from attrib_bench.cli import cli
from attrib_bench.core.errors import RunError, UnknownNameError
from attrib_bench.core.registry import METHODS, METRICS
from attrib_bench.runners.benchmark import bootstrap_ci, run
from attrib_bench.runners.cache import AttributionCache, atomic_write

# A toy metric and data shared with the subprocess of the kill test (written to a module file).
TOY = textwrap.dedent('''
    import time

    import numpy as np
    import torch
    from torch import nn

    from attrib_bench.data import ImageSet
    from attrib_bench.metrics.base import Metric, SampleSet, make_rows
    from attrib_bench.core.registry import METRICS, register_metric


    class ToyMass(Metric):
        """Per image: the map's total and its maximum (toy metric for runner tests)."""

        name = "toy-mass"
        directions = {"total": "higher", "max": "lower"}

        def __init__(self, num_images=10, delay=0.0):
            super().__init__(num_images=num_images, delay=delay)

        def select(self, model, dataset, n_samples, ctx):
            ids = np.arange(n_samples or self.hparams["num_images"])
            def fetch(i):
                return dataset.float_images(torch.as_tensor(i)), dataset.labels[torch.as_tensor(i)]

            return SampleSet(ids, fetch, {"images": len(ids)})

        def evaluate(self, ctx, inputs, target, samples):
            time.sleep(self.hparams["delay"])
            maps = ctx.explain(inputs, target).flatten(1)
            rows = [make_rows(samples, "all", maps.sum(1).numpy(), stat="total"),
                    make_rows(samples, "all", maps.max(1).values.numpy(), stat="max")]
            import pandas as pd
            return pd.concat(rows, ignore_index=True)


    if "toy-mass" not in METRICS:
        register_metric("toy-mass")(ToyMass)


    def toy_data():
        g = torch.Generator().manual_seed(0)
        return ImageSet(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8, generator=g),
                        torch.randint(0, 3, (40,), generator=g), ("a", "b", "c"), "toy")


    def toy_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
''')


@pytest.fixture()
def toy(tmp_path, monkeypatch):
    (tmp_path / "toy_bench.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("toy_bench")
    yield module
    METRICS.remove("toy-mass")
    sys.modules.pop("toy_bench", None)


def _run(toy, out, **kw):
    kw.setdefault("n_samples", 10)
    kw.setdefault("chunk_size", 4)
    return run({"lin": toy.toy_model()}, kw.pop("methods", "grad,ixg"), "toy-mass",
               dataset=toy.toy_data(), out=out, progress=False, **kw)


def test_tables_rows_and_summary(toy, tmp_path):
    out = tmp_path / "run"
    results = _run(toy, out)
    # 2 methods × 10 images × 2 stats, sorted, with id, flag and config columns
    assert len(results) == 40
    assert list(results.columns[:8]) == ["model", "method", "metric", "sample", "key",
                                        "variant", "stat", "value"]
    for column in ("flag", "dataset", "seed", "method_config", "metric_config"):
        assert column in results.columns
    assert (results["flag"] == "").all()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"), results)
    assert len(pd.read_csv(out / "results.csv")) == 40
    # the metric's values are what a direct computation gives
    model, data = toy.toy_model(), toy.toy_data()
    x = data.float_images(slice(0, 10)).requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, data.labels[:10, None]).sum(), x)
    ixg = results.query("method == 'ixg' and stat == 'total'").sort_values("sample")
    np.testing.assert_allclose(ixg["value"], (grad * x).sum((1, 2, 3)).detach(), rtol=1e-5)
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert set(summary["direction"]) == {"higher", "lower"}
    row = summary.query("method == 'ixg' and stat == 'total'").iloc[0]
    assert row["n"] == 10
    assert row["mean"] == pytest.approx(ixg["value"].mean())
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert row["median"] == pytest.approx(ixg["value"].median())
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("config", "versions", "git_commit", "hardware", "seconds_per_part_all_runs",
                "wall_seconds_this_run"):
        assert key in manifest
    assert manifest["rows"] == 40
    timing = manifest["seconds_per_part_all_runs"][0]
    assert timing["seconds_by_compute"] == {f"cpu x{torch.get_num_threads()}": timing["seconds"]}
    assert "compute" not in results.columns and "seconds" not in results.columns


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small, large = rng.normal(size=20), rng.normal(size=2000)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5  # width ~ 1/sqrt(n): 10× more samples, ~10× narrower
    assert np.isnan(bootstrap_ci(np.array([]))[0])


def test_cache_reused_by_a_second_run_and_corrupt_entry_recomputed(toy, tmp_path):
    out = tmp_path / "run"
    first = _run(toy, out)
    assert json.loads((out / "manifest.json").read_text())["cache"]["hits"] == 0
    # a second run with other metric settings explains the same inputs: every map from cache
    second = _run(toy, out, overwrite=True, metric_hparams={"toy-mass": {"delay": 0.001}})
    assert json.loads((out / "manifest.json").read_text())["cache"] == {
        "hits": 6, "misses": 0, "corrupt": 0}
    pd.testing.assert_frame_equal(first.drop(columns="metric_config"),
                                  second.drop(columns="metric_config"))
    entry = sorted((out / "cache").rglob("*.safetensors"))[0]
    data = bytearray(entry.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last map value: still a loadable file, wrong checksum
    entry.write_bytes(bytes(data))
    third = _run(toy, out, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["cache"]["corrupt"] == 1
    pd.testing.assert_frame_equal(first, third)
    cache = AttributionCache(out / "cache")
    assert all(cache.get(p.stem) is not None for p in (out / "cache").rglob("*.safetensors"))


def test_other_config_in_the_same_folder_is_refused(toy, tmp_path):
    out = tmp_path / "run"
    _run(toy, out)
    with pytest.raises(RunError, match="different config.*n_samples.*--overwrite"):
        _run(toy, out, n_samples=6)
    assert len(_run(toy, out, n_samples=6, overwrite=True)) == 2 * 6 * 2


def test_nan_maps_are_flagged_and_the_run_continues(toy, tmp_path):
    def nan_first(model, inputs, target):
        maps = inputs.sum(1).clone()
        maps[0] = float("nan")
        return maps

    METHODS.register("nan-first")(nan_first)
    try:
        results = _run(toy, tmp_path / "run", methods="nan-first", chunk_size=4)
    finally:
        METHODS.remove("nan-first")
    flagged = results[results["flag"] == "nonfinite"]
    assert sorted(set(flagged["sample"])) == [0, 4, 8]  # the first image of every chunk
    summary = pd.read_csv(tmp_path / "run" / "summary.csv")
    assert (summary["n"] == 7).all() and (summary["n_nonfinite"] == 3).all()


def test_unknown_names_and_bad_values_fail_in_one_line(toy, tmp_path):
    with pytest.raises(UnknownNameError, match="toy-mass"):
        run({"lin": toy.toy_model()}, "grad", "toy-mas", dataset=toy.toy_data(),
            out=tmp_path / "a")
    with pytest.raises(UnknownNameError, match="ixg"):
        run({"lin": toy.toy_model()}, "ixgg", "toy-mass", dataset=toy.toy_data(),
            out=tmp_path / "b")
    with pytest.raises(RunError, match="n-samples"):
        _run(toy, tmp_path / "c", n_samples=0)
    assert not (tmp_path / "a").exists()


def test_cli_run_without_weights_names_the_fix(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--model", "xl-coda", "--method", "grad",
                                      "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    assert ("xl-coda is built for 200 classes at 64 px, cifar10 has 10 classes at 32x32 px: "
            "pass --dataset tinyimagenet --data-root DIR --checkpoint FILE (its own data; it has "
            "no weights: `attrib-bench train --model xl-coda --dataset tinyimagenet --data-root "
            "DIR` trains one)") in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_cli_set_parses_hyper_parameters(toy, tmp_path):
    result = CliRunner().invoke(cli, ["--plugin", "toy_bench", "run", "--model", "resnet56",
                                      "--set", "broken", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "NAME.KEY=VALUE" in result.output


SCRIPT = textwrap.dedent('''
    import sys
    sys.path.insert(0, {toy_dir!r})
    import toy_bench
    from attrib_bench.runners.benchmark import run
    run({{"lin": toy_bench.toy_model()}}, "grad,ixg", "toy-mass", dataset=toy_bench.toy_data(),
        out=sys.argv[1], n_samples=16, chunk_size=2, progress=False,
        metric_hparams={{"toy-mass": {{"delay": float(sys.argv[2])}}}})
''')


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_exactly_the_uninterrupted_rows(toy, tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT.format(toy_dir=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    # 2 methods × 8 chunks of 2 images, 0.2 s each: the kill lands after 4 of the 16 chunks
    proc = subprocess.Popen([sys.executable, str(script), str(killed), "0.2"], env=env)
    chunks = killed / "parts"
    deadline = time.time() + 120
    while len(list(chunks.rglob("chunk-*.parquet"))) < 4 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list(chunks.rglob("chunk-*.parquet")))
    assert 4 <= written < 16, "the kill must land mid-run"
    assert not (killed / "results.parquet").exists()
    subprocess.run([sys.executable, str(script), str(killed), "0.2"], env=env, check=True)
    # the uninterrupted run: the same call, in this process (the toy module is the script's)
    expected = run({"lin": toy.toy_model()}, "grad,ixg", "toy-mass", dataset=toy.toy_data(),
                   out=tmp_path / "clean", n_samples=16, chunk_size=2, progress=False,
                   metric_hparams={"toy-mass": {"delay": 0.0}})
    resumed = pd.read_parquet(killed / "results.parquet")
    assert len(resumed) == 2 * 16 * 2
    assert not resumed.duplicated(["method", "sample", "stat"]).any()
    pd.testing.assert_frame_equal(resumed.drop(columns="metric_config"),
                                  expected.drop(columns="metric_config"))


def test_model_digest_covers_buffers_and_scalars():
    from attrib_bench.models.resnet_cifar import resnet56
    from attrib_bench.runners.cache import model_digest

    torch.manual_seed(0)
    model = resnet56()  # BatchNorm: running stats and 0-dim num_batches_tracked buffers
    before = model_digest(model)
    assert model_digest(model) == before
    model.bn1.num_batches_tracked += 1
    assert model_digest(model) != before


def test_readme_metric_example_registers_and_runs(toy, tmp_path):
    """The README's "Add a metric" example, executed as written, through the runner."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    start = readme.index("# my_metrics.py")
    code = readme[start:readme.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    try:
        results = run({"lin": toy.toy_model()}, "ixg", "map-mass", dataset=toy.toy_data(),
                      out=tmp_path / "r", n_samples=5, chunk_size=2, progress=False)
    finally:
        METRICS.remove("map-mass")
    assert len(results) == 5 and results["value"].between(0, 1).all()


def test_atomic_write_leaves_one_whole_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "table.txt"
    atomic_write(target, lambda tmp: tmp.write_text("rows"))
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_text() == "rows"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ZeroDivisionError):
        atomic_write(target, lambda tmp: (tmp.write_text("partial"), 1 / 0))
    assert target.read_text() == "rows" and list(target.parent.iterdir()) == [target]


def test_tables_edited_after_the_run_are_refused_by_plot_and_report(toy, tmp_path):
    """The manifest records each table's sha256; a summary or results table changed afterwards
    (a hand edit, a partial copy) is one line naming the fix, not a figure of other numbers."""
    from attrib_bench.core.checkpoints import sha256_file
    from attrib_bench.core.errors import PlotError
    from attrib_bench.plots import load_run

    out = tmp_path / "run"
    _run(toy, out)
    digests = json.loads((out / "manifest.json").read_text())["tables_sha256"]
    assert digests == {name: sha256_file(out / name)
                       for name in ("results.parquet", "results.csv", "summary.csv")}
    assert len(load_run(out).summary) > 0
    summary = pd.read_csv(out / "summary.csv")
    summary.loc[0, "mean"] += 0.1
    summary.to_csv(out / "summary.csv", index=False)
    with pytest.raises(PlotError, match="summary.csv changed after the run wrote it.*re-run"):
        load_run(out)
    _run(toy, out)  # the same command again rewrites the tables from the verified chunks
    assert len(load_run(out).summary) > 0
    with open(out / "results.csv", "a") as handle:  # the CSV copy is checked as well
        handle.write("lin,grad,toy-mass,0,0,,score,9.9,0,\n")
    with pytest.raises(PlotError, match="results.csv changed after the run wrote it"):
        load_run(out)
    (out / "results.csv").unlink()  # committed runs leave the CSV copy out (.gitignore)
    assert len(load_run(out).summary) > 0


def test_n_samples_sets_a_metrics_declared_count_setting(toy, tmp_path, monkeypatch):
    """A metric that names its count setting (``sample_count``): ``n_samples`` N is that setting
    at N, so run.json/metric_config show the count that ran and both spellings share cache
    entries; given both ways at once is one line. Without it (the toy metric as written),
    ``n_samples`` reaches ``select`` and is recorded beside the metric's own settings."""
    from attrib_bench.core.errors import SettingError

    plain = _run(toy, tmp_path / "plain", n_samples=6)
    assert json.loads(plain["metric_config"].iloc[0]) == {
        "name": "toy-mass", "num_images": 10, "delay": 0.0, "n_samples": 6}
    monkeypatch.setattr(toy.ToyMass, "sample_count", "num_images", raising=False)
    cache = tmp_path / "cache"
    by_count = _run(toy, tmp_path / "a", n_samples=6, cache=cache)
    assert json.loads(by_count["metric_config"].iloc[0]) == {
        "name": "toy-mass", "num_images": 6, "delay": 0.0, "n_samples": None}
    assert json.loads((tmp_path / "a" / "run.json").read_text())["metric_hparams"] == {
        "toy-mass": {"num_images": 6, "delay": 0.0}}
    by_setting = _run(toy, tmp_path / "b", n_samples=None, cache=cache,
                      metric_hparams={"toy-mass": {"num_images": 6}})
    pd.testing.assert_frame_equal(by_count, by_setting)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["cache"]["misses"] == 0
    both = r"^--n-samples 6 and toy-mass.num_images both set the number of samples of metric "
    with pytest.raises(SettingError, match=both + r"'toy-mass': pass one$"):
        _run(toy, tmp_path / "c", n_samples=6, metric_hparams={"toy-mass": {"num_images": 8}})


def test_n_samples_replaces_the_protocol_count_of_the_registered_metrics():
    """Localisation's num_grids, pixel removal's and randomisation's num_images: the values a
    run with --n-samples records (TinyImageNet's 250-grid protocol default is replaced)."""
    from attrib_bench.runners.settings import run_config

    config = run_config(["resnet56"], "grad", "localisation,pixel-removal,randomisation",
                        n_samples=7, chunk_size=8, seed=0, dataset="tinyimagenet",
                        checkpoint=None, method_hparams=None, metric_hparams=None, settings=[])
    assert config.metric_hparams["localisation"]["num_grids"] == 7
    assert config.metric_hparams["pixel-removal"]["num_images"] == 7
    assert config.metric_hparams["randomisation"]["num_images"] == 7
    assert "localisation" not in config.defaults_from_data["metrics"]


def test_manifest_records_each_parts_method_as_built_on_its_model(toy, tmp_path):
    """GradCAM's default layer is resolved per model; the manifest says which one was hooked."""
    torch.manual_seed(0)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3))
    out = tmp_path / "run"
    run({"conv": conv}, "gradcam,grad", "toy-mass", dataset=toy.toy_data(), out=out,
        progress=False, n_samples=4)
    parts = {p["method"]: p["built"]
             for p in json.loads((out / "manifest.json").read_text())["parts"]}
    assert parts["gradcam"].startswith("GradCAM(layer='3', ")  # the last conv block's output
    assert parts["grad"] == "Grad(max_batch=64, seed=0)"


def test_parquet_bytes_round_trips_exactly_and_is_smaller_than_the_default():
    """The tables' Parquet (zstd, float columns byte-stream-split) loses nothing."""
    import io

    from attrib_bench.runners.storage import parquet_bytes

    rng = np.random.default_rng(0)
    n = 20_000
    table = pd.DataFrame({"model": ["m"] * n, "value": rng.random(n).cumsum(),
                          "probability": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                          "small": rng.random(n).astype("float32"), "sample": np.arange(n),
                          "flag": [""] * n})
    data = parquet_bytes(table)
    pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(data)), table)
    default = io.BytesIO()
    table.to_parquet(default, index=False)
    assert len(data) < len(default.getvalue())


def test_deeplift_shares_ixgs_cached_maps_where_it_computes_them(toy, tmp_path):
    """DeepLIFT on a model with nothing for its rule is x ⊙ ∇f(x): a run of IxG then DeepLIFT
    computes the maps once (cache hits), with the same rows; with a ReLU it computes its own."""
    out = tmp_path / "run"
    results = _run(toy, out, methods="ixg,deeplift")
    cache = json.loads((out / "manifest.json").read_text())["cache"]
    assert cache == {"hits": 3, "misses": 3, "corrupt": 0}  # 3 chunks of 4 images each
    ixg, deeplift = (results.query(f"method == '{m}'").drop(columns=["method", "method_config"])
                     .reset_index(drop=True) for m in ("ixg", "deeplift"))
    pd.testing.assert_frame_equal(ixg, deeplift)
    assert '"name": "deeplift"' in results.query("method == 'deeplift'")["method_config"].iloc[0]
    torch.manual_seed(0)
    relu = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3))
    run({"relu": relu}, "ixg,deeplift", "toy-mass", dataset=toy.toy_data(),
        out=tmp_path / "relu", progress=False, n_samples=10, chunk_size=4)
    assert json.loads((tmp_path / "relu" / "manifest.json").read_text())["cache"]["hits"] == 0
    parts = json.loads((out / "manifest.json").read_text())["parts"]
    assert not any("rows_taken_from" in p for p in parts)  # toy-mass: rows_from_maps is False


def test_deeplift_takes_ixgs_pixel_removal_rows_equal_to_its_own(toy, tmp_path, monkeypatch):
    """Pixel removal's rows depend on the maps alone: where DeepLIFT's maps are IxG's, its
    chunks take IxG's rows (listed first or not) instead of running the removal curves again,
    and those rows equal the ones DeepLIFT computes on its own."""
    from attrib_bench.metrics.pixel_removal import PixelRemoval

    calls = []
    evaluate = PixelRemoval.evaluate
    monkeypatch.setattr(PixelRemoval, "evaluate",
                        lambda self, ctx, *a: calls.append(1) or evaluate(self, ctx, *a))
    kw = {"dataset": toy.toy_data(), "progress": False, "n_samples": 10, "chunk_size": 4,
          "metric_hparams": {"pixel-removal": {"steps": 4}}}
    both = run({"lin": toy.toy_model()}, "deeplift,ixg", "pixel-removal", out=tmp_path / "both",
               **kw)
    assert len(calls) == 3  # IxG's 3 chunks; DeepLIFT's took them
    parts = {p["method"]: p for p in
             json.loads((tmp_path / "both" / "manifest.json").read_text())["parts"]}
    assert parts["deeplift"]["rows_taken_from"] == {"ixg": 3}
    assert "rows_taken_from" not in parts["ixg"]
    alone = run({"lin": toy.toy_model()}, "deeplift", "pixel-removal", out=tmp_path / "alone",
                **kw)
    assert len(calls) == 6
    assert not {"seconds", "compute"} & set(both.columns)  # costs go to the manifest
    taken = both.query("method == 'deeplift'").reset_index(drop=True)
    pd.testing.assert_frame_equal(taken, alone.reset_index(drop=True))
    ixg = both.query("method == 'ixg'").drop(columns=["method", "method_config"])
    pd.testing.assert_frame_equal(taken.drop(columns=["method", "method_config"]),
                                  ixg.reset_index(drop=True))


def test_progress_bars_number_the_parts_left(toy, tmp_path, capsys):
    """A long sweep says how many parts are left: each bar is "[i/n] model · method · metric"."""
    run({"lin": toy.toy_model()}, "grad,ixg", "toy-mass", dataset=toy.toy_data(),
        out=tmp_path / "run", progress=True, n_samples=4)
    err = capsys.readouterr().err
    assert "[1/2] lin · grad · toy-mass" in err and "[2/2] lin · ixg · toy-mass" in err
