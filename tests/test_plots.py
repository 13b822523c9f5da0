"""Figures and the HTML report, on small synthetic run folders written here.

Each test checks what the figure shows (axes, series, labels, reference lines, colours, the
numbers it plots), not only that drawing worked.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgba
from matplotlib.text import Text
from PIL import Image

from attrib_bench.cli import cli
from attrib_bench.core.checkpoints import sha256_file
from attrib_bench.core.errors import PlotError
from attrib_bench.core.registry import METHODS as METHOD_REGISTRY
from attrib_bench.core.registry import create_metric, register_method
from attrib_bench.metrics.base import make_rows
from attrib_bench.plots import (
    MAX_LAYER_LABELS,
    METHOD_ORDER,
    contribution_sheet,
    load_run,
    load_runs,
    localisation_figure,
    mean_band,
    method_colours,
    method_label,
    method_sheet,
    method_styles,
    pixel_removal_figure,
    plot_results,
    randomisation_figure,
    temperature_figure,
    temperature_series,
)
from attrib_bench.runners.benchmark import summarise
from attrib_bench.runners.examples import Examples, load_examples, save_examples

MODELS = {"toy-t10": 10.0, "toy-t1000": 1000.0}
METHODS = ("mine", "ixg", "inherent")  # deliberately not in plot order
LAYERS = ("head", "block2", "block1")  # top first
PIXELS = 64  # 8x8 images


def _rows(model: str, method: str, metric: str, rows: pd.DataFrame, config: dict) -> pd.DataFrame:
    rows.insert(0, "model", model)
    rows.insert(1, "method", method)
    rows.insert(2, "metric", metric)
    rows["flag"] = np.where(np.isfinite(rows["value"]), "", "nonfinite")
    rows["metric_config"] = json.dumps({"name": metric, **config})
    return rows


def synthetic_results(rng: np.random.Generator) -> pd.DataFrame:
    """2 models x 3 methods x {localisation n=2, pixel-removal, randomisation}."""
    tables = []
    for m, model in enumerate(MODELS):
        for k, method in enumerate(METHODS):
            quality = 0.3 + 0.2 * k + 0.1 * m  # inherent best, the T=1000 model better
            scores = np.clip(quality + 0.1 * rng.standard_normal((5, 4)), 0, 1)
            tables.append(_rows(model, method, "localisation",
                                make_rows(np.arange(5)[:, None], np.arange(4)[None], scores),
                                {"n": 2}))
            for order, sign in (("least-first", 1.0), ("most-first", -1.0)):
                steps = np.arange(5)
                curve = 0.8 + sign * 0.05 * (k + 1) * steps / 4  # (5,)
                values = curve[None] + 0.01 * rng.standard_normal((3, 5))
                pr = pd.concat([make_rows(np.arange(3)[:, None], steps[None], values,
                                          variant=order, stat="prob"),
                                make_rows(np.arange(3)[:, None], steps[None], 3 * values,
                                          variant=order, stat="logit")])
                pr["removed"] = pr["key"].astype(int) * 2
                tables.append(_rows(model, method, "pixel-removal", pr,
                                    {"fraction": 8 / PIXELS, "steps": 4}))
            for mode in ("cascading", "independent"):
                for stat in ("spearman", "spearman_abs", "ssim"):
                    sims = np.linspace(0.9, 0.1, 3)[None] * (1 + 0.01 * rng.random((2, 3)))
                    rr = make_rows(np.arange(2)[:, None], np.array(LAYERS)[None], sims,
                                   variant=mode, stat=stat)
                    rr["layer_index"] = rr["key"].map({n: i for i, n in enumerate(LAYERS)})
                    tables.append(_rows(model, method, "randomisation", rr, {}))
    return pd.concat(tables, ignore_index=True)


def write_run(folder: Path, results: pd.DataFrame) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"pixel-removal": {"steps": 4, "fraction": 8 / PIXELS}}
    metrics = {name: create_metric(name, **settings.get(name, {}))
               for name in results["metric"].unique()}
    summary = summarise(results, metrics)
    results.to_parquet(folder / "results.parquet", index=False)
    summary.to_csv(folder / "summary.csv", index=False)
    manifest = {
        "config": {"metrics": sorted(results["metric"].unique()), "seed": 0,
                   "dataset": "toy", "metric_hparams": settings},
        "tables_sha256": {name: sha256_file(folder / name)
                          for name in ("results.parquet", "summary.csv")},
        "models": {name: {"class": "Toy", "parameters": 1000, "temperature": t}
                   for name, t in MODELS.items()},
        "samples": {f"{name}/pixel-removal": {"n": 3, "image_pixels": PIXELS,
                                              "probability": "sigmoid"} for name in MODELS},
        "hardware": "test", "git_commit": "abc"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", synthetic_results(np.random.default_rng(0)))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(items) -> list[str]:
    return [t.get_text() for t in items]


def test_colours_are_fixed_per_method_whatever_else_is_present():
    alone = method_colours(["inherent"])
    mixed = method_colours(["zeta", "inherent", "alpha", "rise"])
    assert alone["inherent"] == mixed["inherent"]
    assert len(set(mixed.values())) == 4  # user methods get distinct spare colours
    assert list(mixed) == ["inherent", "rise", "alpha", "zeta"]  # paper order, then a-z


def test_built_in_labels_and_colours_come_from_the_registry():
    for name in ("inherent", "ixg", "occ5"):
        entry = METHOD_REGISTRY.get(name)
        assert method_label(name) == entry.metadata["label"]
        assert method_colours([name])[name] == entry.metadata["colour"]
    assert method_label("inherent") == "Inherent (W·x)" and method_label("unknown") == "unknown"


def test_a_bad_colour_or_a_taken_label_is_refused_at_registration():
    def mine(model, inputs, target):
        return inputs.sum(1)

    with pytest.raises(ValueError, match="hex colour such as '#1f77b4', got 'notacolour'"):
        register_method("bad-colour", colour="notacolour")(mine)
    with pytest.raises(ValueError, match="label 'Grad' is already method 'grad''s"):
        register_method("grad-again", label="Grad")(mine)
    assert "bad-colour" not in METHOD_REGISTRY and "grad-again" not in METHOD_REGISTRY


@pytest.fixture()
def registered_mine():
    """"mine" registered by a user, with its own label and colour, for one test."""

    @register_method("mine", label="Mine", colour="#123456")
    def mine(model, inputs, target):
        """A user's method."""
        return inputs.sum(1)

    yield
    METHOD_REGISTRY.remove("mine")


def test_a_registered_methods_label_and_colour_reach_the_figures(run_dir, registered_mine):
    assert method_label("mine") == "Mine"
    assert method_colours(["zeta", "mine", "ixg"]) == {
        "ixg": METHOD_REGISTRY.get("ixg").metadata["colour"], "mine": "#123456",
        "zeta": "#637939"}  # an unregistered name still gets the first spare colour
    fig = localisation_figure(load_run(run_dir).results)
    ax = fig.axes[0]
    assert _texts(ax.get_xticklabels()) == ["Inherent (W·x)", "IxG", "Mine"]
    assert np.allclose(ax.patches[2].get_facecolor(), to_rgba("#123456"))
    rng = np.random.default_rng(3)
    sheet = method_sheet(rng.random((1, 3, 8, 8)), {"mine": rng.standard_normal((1, 8, 8))},
                         ["cat"])
    assert [ax.get_title() for ax in sheet.axes if ax.get_images()] == ["input", "Mine"]


def test_localisation_boxes_per_model_in_fixed_order_with_reference_lines(run_dir):
    tables = load_run(run_dir)
    fig = localisation_figure(tables.results)
    axes = fig.axes
    assert [ax.get_title().splitlines()[0] for ax in axes] == ["toy-t10", "toy-t1000"]
    for ax in axes:
        assert _texts(ax.get_xticklabels()) == ["Inherent (W·x)", "IxG", "mine"]
        assert "5 grids" in ax.get_title()
        levels = sorted({round(float(line.get_ydata()[0]), 6) for line in ax.lines
                         if len(set(np.asarray(line.get_ydata(), float))) == 1
                         and line.get_linestyle() in ("--", ":")})
        assert levels == [0.25, 1.0]  # Uniform 1/n² for n=2, Oracle
        assert "localisation score" in ax.get_ylabel()
        faces = [p.get_facecolor() for p in ax.patches]
        colours = method_colours(METHODS)
        assert np.allclose(faces[0], to_rgba(colours["inherent"]))
        assert np.allclose(faces[1], to_rgba(colours["ixg"]))
    legend = _texts(fig.legends[0].get_texts())
    assert legend == ["Oracle (1)", "Uniform (1/4)", "mean"]
    # the medians drawn are the data's medians
    sub = tables.results.query("metric == 'localisation' and model == 'toy-t10' "
                               "and method == 'inherent'")
    medians = [line for line in axes[0].lines if len(line.get_xdata()) == 2
               and np.isclose(line.get_ydata()[0], line.get_ydata()[1])]
    assert any(np.isclose(line.get_ydata()[0], sub["value"].median()) for line in medians)


def test_pixel_removal_curves_are_the_mean_per_step_with_auc_in_the_legend(run_dir):
    tables = load_run(run_dir)
    fig = pixel_removal_figure(tables.results, tables.summary, tables.manifest)
    assert len(fig.axes) == 4  # 2 models (rows) x 2 orders (columns)
    ax = fig.axes[0]
    assert ax.get_title() == ("toy-t10\nleast important first (higher is better)\n"
                              "3 images per method")
    assert ax.get_xlabel() == "pixels removed (%)"
    assert ax.get_ylabel() == "sigmoid probability of the target (mean)"
    labels = _texts(fig.axes[1].get_legend().get_texts())  # the row's legend, right of it
    auc = tables.summary.query("model == 'toy-t10' and metric == 'pixel-removal' and "
                               "stat == 'prob-auc'")
    auc = auc.set_index(["method", "variant"])["mean"]
    assert auc.notna().all()  # every method on all 3 images: the run's own AUCs
    assert labels == [f"{label}  {auc[(m, 'least-first')]:.3f} · {auc[(m, 'most-first')]:.3f}"
                      for m, label in (("inherent", "Inherent (W·x)"), ("ixg", "IxG"),
                                       ("mine", "mine"))]
    rows = tables.results.query("model == 'toy-t10' and metric == 'pixel-removal' and "
                                "variant == 'least-first' and stat == 'prob' and "
                                "method == 'inherent'")
    expected = rows.groupby("removed")["value"].mean()
    line = ax.get_lines()[0]
    np.testing.assert_allclose(line.get_xdata(), 100 * expected.index / PIXELS)
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())
    assert "most important first (lower is better)" in fig.axes[1].get_title()
    assert fig.axes[2].get_title().startswith("toy-t1000\n")


def test_pixel_removal_panels_name_the_probability_each_model_was_scored_with(run_dir):
    tables = load_run(run_dir)
    manifest = json.loads(json.dumps(tables.manifest))
    manifest["samples"]["toy-t10/pixel-removal"]["probability"] = "softmax"
    manifest["samples"]["toy-t1000/pixel-removal"]["probability"] = "sigmoid"
    fig = pixel_removal_figure(tables.results, tables.summary, manifest)
    titles = [ax.get_title().splitlines()[0] for ax in fig.axes]
    assert titles == ["toy-t10", "toy-t10", "toy-t1000", "toy-t1000"]
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "softmax probability of the target (mean)"] * 2 + [
        "sigmoid probability of the target (mean)"] * 2
    fig = pixel_removal_figure(tables.results, tables.summary, manifest, stat="logit")
    assert {ax.get_ylabel() for ax in fig.axes} == {"target logit (mean)"}


def test_temperature_series_plots_the_summary_means_against_t(run_dir):
    tables = load_run(run_dir)
    fig = temperature_figure(tables.summary, tables.temperatures())
    assert len(fig.axes) == 3
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "temperature T"
    assert _texts(ax.get_xticklabels()) == ["10", "1000"]
    means = tables.summary.query("metric == 'localisation' and method == 'inherent'")
    means = means.set_index("model")["mean"]
    line = ax.get_lines()[0]
    # shifted sideways by at most a tenth of a decade, so bars of methods do not overlap
    np.testing.assert_allclose(line.get_xdata(), [10, 1000], rtol=0.26)
    np.testing.assert_allclose(line.get_ydata(), [means["toy-t10"], means["toy-t1000"]])
    xs = [tuple(np.round(bars.lines[0].get_xdata(), 6)) for bars in ax.containers]
    assert len(xs) == 3 and len(set(xs)) == len(xs)
    assert _texts(fig.legends[0].get_texts()) == ["Inherent (W·x)", "IxG", "mine"]
    with pytest.raises(PlotError, match="two or more T"):
        temperature_figure(tables.summary, {"toy-t10": 10.0})


def _boxes_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _assert_legends_outside_the_axes(fig) -> None:
    """No legend box overlaps any panel's box (colour bars are not panels)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in panels:
            assert not _boxes_overlap(box, ax.get_window_extent(renderer)), (
                f"legend over {ax.get_title()!r}")


def _panels_per_row(fig) -> int:
    rows: dict[float, int] = {}
    for ax in fig.axes:
        top = round(ax.get_position().y1, 3)
        rows[top] = rows.get(top, 0) + 1
    return max(rows.values())


def _drawn_texts(fig) -> list[Text]:
    """The figure's non-empty visible texts, less the labels of ticks outside their axis' view
    (matplotlib keeps but does not draw them)."""
    skipped = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    skipped |= {id(tick.label1), id(tick.label2)}
    return [t for t in fig.findobj(Text)
            if t.get_visible() and t.get_text().strip() and id(t) not in skipped]


def _assert_texts_inside(fig) -> None:
    """Every text drawn lies within the figure's canvas (none is clipped)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    canvas = fig.bbox
    texts = _drawn_texts(fig)
    assert texts
    for text in texts:
        box = text.get_window_extent(renderer)
        assert (box.x0 >= canvas.x0 - 0.5 and box.x1 <= canvas.x1 + 0.5
                and box.y0 >= canvas.y0 - 0.5 and box.y1 <= canvas.y1 + 0.5), (
            f"{text.get_text()!r} at {box.extents} outside the canvas {canvas.extents}")


def test_every_legend_sits_outside_the_panels(run_dir):
    tables = load_run(run_dir)
    for fig in (localisation_figure(tables.results, manifest=tables.manifest),
                pixel_removal_figure(tables.results, tables.summary, tables.manifest),
                temperature_figure(tables.summary, tables.temperatures()),
                randomisation_figure(tables.results, "toy-t10")):
        _assert_legends_outside_the_axes(fig)


def _many_models(count: int) -> pd.DataFrame:
    """The synthetic results copied under ``count`` model names."""
    base = synthetic_results(np.random.default_rng(0)).query("model == 'toy-t10'")
    return pd.concat([base.assign(model=f"toy-{i}") for i in range(count)], ignore_index=True)


@pytest.mark.parametrize("count", [2, 4, 5, 7])
def test_panel_grids_wrap_at_three_a_row(count):
    results = _many_models(count)
    fig = localisation_figure(results)
    assert len(fig.axes) == count and _panels_per_row(fig) <= 3
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == [
        f"toy-{i}" for i in range(count)]  # the same order as the other figures
    # every panel shows its own x tick labels (no label without ticks)
    assert all(_texts(ax.get_xticklabels()) for ax in fig.axes)
    fig = pixel_removal_figure(results)
    assert len(fig.axes) == 2 * count and _panels_per_row(fig) == 2
    assert all(_texts(ax.get_xticklabels()) for ax in fig.axes)


@pytest.mark.parametrize("count", [1, 2, 4])
def test_no_text_is_clipped_whatever_the_number_of_panels(count):
    results = _many_models(count)
    # "mine" on fewer grids: the panels' titles grow "(runs: up to 5)"
    results = results[(results["method"] != "mine") | (results["sample"] < 2)]
    fig = localisation_figure(results)
    assert "shared by all 3 methods (runs:\u00a0up\u00a0to\u00a05)" in fig.axes[0].get_title(
    ).replace("\n", " ")
    _assert_texts_inside(fig)
    difull = results.replace({"metric": {"localisation": "localisation-difull"}})
    _assert_texts_inside(localisation_figure(difull, "localisation-difull"))  # a longer title
    _assert_texts_inside(pixel_removal_figure(results))
    one_order = results[results["variant"] != "most-first"]
    _assert_texts_inside(pixel_removal_figure(one_order))


@pytest.mark.parametrize(("scores", "lone"), [
    (["localisation"], ()), (["pixel-removal"], ("mine",)),
    (["localisation", "pixel-removal"], ("mine", "ixg"))])
def test_no_text_is_clipped_in_the_temperature_figure(run_dir, scores, lone):
    tables = load_run(run_dir)
    summary = _one_temperature_only(tables.summary, lone)
    _assert_texts_inside(temperature_figure(summary[summary["metric"].isin(scores)],
                                            tables.temperatures()))


@pytest.mark.parametrize(("stats", "modes"), [
    (("ssim",), ("cascading",)), (("spearman_abs", "ssim"), ("cascading", "independent"))])
def test_no_text_is_clipped_in_a_randomisation_figure(run_dir, stats, modes):
    results = load_run(run_dir).results
    results = results[(results["metric"] != "randomisation") | results["variant"].isin(modes)]
    fig = randomisation_figure(results, "toy-t10", stats)
    assert len(fig.axes) == len(stats) * len(modes)
    _assert_texts_inside(fig)


@pytest.mark.parametrize("count", [1, 9])
def test_no_text_is_clipped_in_the_map_sheets(count):
    rng = np.random.default_rng(1)
    labels = [f"class {i}" for i in range(count)]
    _assert_texts_inside(contribution_sheet(
        rng.random((3, 16, 16)), rng.standard_normal((count, 16, 16)), labels,
        "xs-coda-sq-t1000: contribution maps on a 3×3 multi-image"))
    methods = ["inherent", "grad", "ixg", "intgrad", "deeplift", "gradcam", "occ5", "occ9",
               "rise"][:count]
    for images in (1, 3):
        _assert_texts_inside(method_sheet(
            rng.random((images, 3, 8, 8)), {m: rng.standard_normal((images, 8, 8))
                                             for m in methods}, ["automobile"] * images,
            "xs-coda-sq-t1000: maps of each method", label_kind="true = predicted class"))


def test_localisation_labels_deeplift_equal_to_ixg_like_the_other_figures(run_dir):
    results = load_run(run_dir).results
    twin = results[results["method"] == "ixg"].assign(method="deeplift")
    # on toy-t1000 DeepLIFT differs from IxG (a ReLU network): no note there
    differs = (twin["model"] == "toy-t1000") & (twin["metric"] == "localisation")
    twin.loc[differs, "value"] = twin.loc[differs, "value"] * 0.5
    results = pd.concat([results, twin], ignore_index=True)
    fig = localisation_figure(results)
    assert _texts(fig.axes[0].get_xticklabels()) == [
        "Inherent (W·x)", "IxG", "DeepLIFT (= IxG)", "mine"]
    assert _texts(fig.axes[1].get_xticklabels()) == ["Inherent (W·x)", "IxG", "DeepLIFT", "mine"]
    labels = _texts(pixel_removal_figure(results).axes[1].get_legend().get_texts())
    assert labels[2].startswith("DeepLIFT (= IxG)")  # the same label as pixel removal's


def _deep_randomisation(layers: int = 60) -> pd.DataFrame:
    """IxG and GradCAM randomised layer by layer on a ``layers``-deep model "deep", 2 images;
    GradCAM's cascading Spearman is NaN (a constant map) on both images at layers 31-42 and on
    one image at layer 51."""
    names = [f"layer{1 + i // 20}.{i % 20}.conv{1 + i % 2}" for i in range(layers)]
    tables = []
    for method in ("ixg", "gradcam"):
        for mode in ("cascading", "independent"):
            for stat in ("spearman_abs", "ssim"):
                sims = np.linspace(0.9, 0.1, layers)[None] * np.array([[1.0], [1.02]])
                if (method, mode, stat) == ("gradcam", "cascading", "spearman_abs"):
                    sims[:, 30:42] = np.nan
                    sims[0, 50] = np.nan
                rows = make_rows(np.arange(2)[:, None], np.array(names)[None], sims,
                                 variant=mode, stat=stat)
                rows["layer_index"] = rows["key"].map({n: i for i, n in enumerate(names)})
                tables.append(_rows("deep", method, "randomisation", rows, {}))
    return pd.concat(tables, ignore_index=True)


def test_a_deep_models_randomisation_figure_is_capped_and_labels_a_subset(tmp_path):
    run = write_run(tmp_path / "deep", _deep_randomisation(60))
    (path,) = plot_results(run)
    assert path.name == "randomisation-deep.png"
    width, _ = Image.open(path).size
    assert width <= 2400  # was 0.32 in per layer per mode: far wider
    fig = randomisation_figure(load_run(run).results, "deep")
    ax = fig.axes[-1]
    labels = _texts(ax.get_xticklabels())
    assert len(labels) <= MAX_LAYER_LABELS + 1  # with the unrandomised reference
    assert labels[0] == "unrandomised"
    assert labels[1].startswith("1 · ") and labels[-1].startswith("60 · ")
    labelled = {round(float(x)) for x in ax.get_xticks()}
    minor = {round(float(x)) for x in ax.get_xticks(minor=True)}
    assert labelled | minor >= set(range(1, 61)) and not labelled & minor  # every layer a tick
    reference = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(reference) == 1 and reference[0].get_xdata()[0] == ax.get_xticks()[0] < 1
    _assert_texts_inside(fig)


def test_undefined_randomisation_points_are_counted_on_the_panel(tmp_path):
    run = write_run(tmp_path / "deep", _deep_randomisation(60))
    fig = randomisation_figure(load_run(run).results, "deep")
    titles = [ax.get_title().replace("\n", " ") for ax in fig.axes]
    note = "GradCAM: 13 of 60 points undefined (constant map): not drawn"
    assert note in titles[0]  # cascading, Spearman of |map|
    assert not any("undefined" in title for title in titles[1:])
    gradcam = {line.get_label(): line for line in fig.axes[0].get_lines()}["GradCAM"]
    y = np.asarray(gradcam.get_ydata(), float)
    assert len(y) == 60 and np.isnan(y).sum() == 13 and np.isnan(y[30:42]).all()


def test_identical_curves_are_told_apart_by_style_and_a_note(run_dir):
    results = load_run(run_dir).results
    twin = results[results["method"] == "ixg"].assign(method="deeplift")
    results = pd.concat([results, twin], ignore_index=True)
    fig = pixel_removal_figure(results)
    labels = _texts(fig.axes[1].get_legend().get_texts())
    assert [label.split("  ")[0] for label in labels] == [
        "Inherent (W·x)", "IxG", "DeepLIFT (= IxG)", "mine"]
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    ixg, deeplift = lines["IxG"], lines["DeepLIFT (= IxG)"]
    np.testing.assert_allclose(ixg.get_ydata(), deeplift.get_ydata())
    assert (ixg.get_linestyle(), ixg.get_marker()) != (deeplift.get_linestyle(),
                                                       deeplift.get_marker())


def test_mean_curves_carry_a_seeded_bootstrap_band(run_dir):
    tables = load_run(run_dir)
    fig = pixel_removal_figure(tables.results, tables.summary, tables.manifest)
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # one band per method
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    mean = ax.get_lines()[0].get_ydata()
    assert band.min() <= mean.min() + 1e-12 and band.max() >= mean.max() - 1e-12
    values = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    first, second = mean_band(values), mean_band(values)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)  # deterministic: figures regenerate identically
    mean, low, high = first
    np.testing.assert_allclose(mean, [1.0, 1.0])
    assert low[0] < 1.0 < high[0] and low[1] == high[1] == 1.0


def _one_temperature_only(summary: pd.DataFrame, methods: tuple[str, ...] = ("mine",)
                          ) -> pd.DataFrame:
    """``summary`` with ``methods`` kept at T = 1000 (toy-t1000) only."""
    lone = summary["method"].isin(methods) & (summary["model"] != "toy-t1000")
    return summary[~lone].reset_index(drop=True)


def test_methods_at_one_temperature_are_drawn_in_a_strip_not_on_the_t_axis(run_dir):
    tables = load_run(run_dir)
    summary = _one_temperature_only(tables.summary)
    fig = temperature_figure(summary, tables.temperatures())
    assert len(fig.axes) == 6  # 3 scores, each a T panel and its strip
    for ax, strip in zip(fig.axes[::2], fig.axes[1::2], strict=True):
        assert ax.get_xscale() == "log"
        assert [bars.get_label() for bars in ax.containers] == ["Inherent (W·x)", "IxG"]
        assert strip.get_xscale() == "linear"
        assert strip.get_title().replace("\n", " ") == "T = 1000 only"
        assert _texts(strip.get_xticklabels()) == ["mine"]
        assert strip.get_shared_y_axes().joined(strip, ax)
        assert not any(t.get_visible() and t.get_text() for t in strip.get_yticklabels())
        (bars,) = strip.containers
        assert list(bars.lines[0].get_xdata()) == [0]
    means = summary.query("metric == 'localisation' and method == 'mine'")["mean"]
    np.testing.assert_allclose(fig.axes[1].containers[0].lines[0].get_ydata(), means)
    assert _texts(fig.legends[0].get_texts()) == ["Inherent (W·x)", "IxG"]  # the T series
    _assert_texts_inside(fig)


def test_temperatures_come_from_the_manifest_only(run_dir):
    """Not from a model's name: "toy-t10" without a recorded T has none, and the recorded T
    orders the panels."""
    tables = load_run(run_dir)
    assert tables.temperatures() == {"toy-t10": 10.0, "toy-t1000": 1000.0}
    del tables.manifest["models"]["toy-t10"]["temperature"]
    assert tables.temperatures() == {"toy-t1000": 1000.0}
    swapped = {"models": {"toy-t10": {"temperature": 100.0}, "toy-t1000": {"temperature": 1.0}}}
    fig = localisation_figure(tables.results, manifest=swapped)
    assert [ax.get_title().splitlines()[0] for ax in fig.axes] == ["toy-t1000", "toy-t10"]


def test_temperature_series_hold_the_architecture_fixed():
    """A bigger CoDA-Net at T = 1000 is not a point of the small models' T series (it sat there
    beside xs-coda-sq-t1000 once s-coda-sq-t1000 was drawn with them), and a lone T is none."""
    manifest = {"models": {
        "xs-t10": {"class": "CoDANet", "parameters": 100, "temperature": 10.0},
        "xs-t100": {"class": "CoDANet", "parameters": 100, "temperature": 100.0},
        "xs-t1000": {"class": "CoDANet", "parameters": 100, "temperature": 1000.0},
        "s-t10": {"class": "CoDANet", "parameters": 800, "temperature": 10.0},
        "s-t1000": {"class": "CoDANet", "parameters": 800, "temperature": 1000.0},
        "m-t1000": {"class": "CoDANet", "parameters": 2800, "temperature": 1000.0}}}
    temperatures = {name: info["temperature"] for name, info in manifest["models"].items()}
    assert temperature_series(manifest, temperatures) == [
        {"xs-t10": 10.0, "xs-t100": 100.0, "xs-t1000": 1000.0},
        {"s-t10": 10.0, "s-t1000": 1000.0}]
    del manifest["models"]["s-t10"]
    assert temperature_series(manifest, temperatures | {"s-t10": 10.0})[1:] == []  # no class


def test_randomisation_curves_follow_the_layers_top_first(run_dir):
    tables = load_run(run_dir)
    fig = randomisation_figure(tables.results, "toy-t10")
    assert len(fig.axes) == 4  # (spearman_abs, ssim) x (cascading, independent)
    assert [ax.get_title().split(" ")[0] for ax in fig.axes[:2]] == ["cascading", "independent"]
    assert fig.axes[0].get_ylabel() == "Spearman of |map| to the original map"
    assert fig.axes[2].get_ylabel() == "SSIM to the original map"
    # readable layer names, top first, after the unrandomised reference point
    assert _texts(fig.axes[2].get_xticklabels()) == [
        "unrandomised", "1 · head", "2 · block2", "3 · block1"]
    reference = [line for line in fig.axes[2].get_lines() if line.get_marker() == "*"]
    assert len(reference) == 1 and list(reference[0].get_xdata()) == [0]
    assert list(reference[0].get_ydata()) == [1.0]
    assert len(fig.axes[2].collections) == 3  # one bootstrap band per method
    rows = tables.results.query("model == 'toy-t10' and metric == 'randomisation' and "
                                "method == 'ixg' and variant == 'cascading' and "
                                "stat == 'ssim'")
    expected = rows.groupby("key")["value"].mean()[list(LAYERS)]
    line = fig.axes[2].get_lines()[1]  # second method in plot order: ixg
    assert line.get_label() == "IxG"
    np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())
    np.testing.assert_allclose(line.get_xdata(), [1, 2, 3])


def _signed_limits(ax) -> tuple[float, float]:
    image = ax.get_images()[0]
    return image.get_clim()


def test_sheets_centre_each_map_at_zero_with_its_own_scale():
    rng = np.random.default_rng(1)
    grid = rng.random((3, 16, 16))
    maps = rng.standard_normal((4, 16, 16)) * np.arange(1, 5)[:, None, None]
    fig = contribution_sheet(grid, maps, ["a", "b", "c", "d"])
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == 5
    assert shown[0].get_title() == "input (4 cells, 4 classes)"
    assert len(fig.axes) == 6 and fig.axes[-1].get_ylabel().startswith("each map on its own")
    for ax, heat in zip(shown[1:], maps, strict=True):
        low, high = _signed_limits(ax)
        assert high == pytest.approx(np.abs(heat).max()) and low == -high
        assert ax.get_images()[0].get_cmap().name == "bwr"
    images = rng.random((2, 3, 8, 8))
    sheet = method_sheet(images, {"mine": rng.standard_normal((2, 8, 8)),
                                  "inherent": rng.standard_normal((2, 8, 8))}, ["cat", "dog"])
    assert [ax.get_title() for ax in sheet.axes[:3]] == ["input", "Inherent (W·x)", "mine"]
    assert sheet.axes[0].get_ylabel() == "cat\n(true class)"
    assert sheet.axes[3].get_ylabel() == "dog\n(true class)"
    assert len(sheet.axes) == 7  # 2 x 3 panels and one colour bar


def _toy_examples() -> Examples:
    rng = np.random.default_rng(2)
    return Examples(model="toy-t10", images=rng.random((2, 3, 8, 8), dtype=np.float32),
                    labels=["cat", "dog"],
                    maps={"ixg": rng.standard_normal((2, 8, 8)).astype(np.float32)},
                    grid=rng.random((3, 16, 16), dtype=np.float32),
                    grid_maps=rng.standard_normal((4, 16, 16)).astype(np.float32),
                    grid_labels=list("abcd"), grid_n=2, grid_method="inherent")


def test_examples_file_round_trips_and_a_bad_one_fails_in_one_line(tmp_path):
    path = save_examples(_toy_examples(), tmp_path / "toy.safetensors")
    back = load_examples(path)
    original = _toy_examples()
    np.testing.assert_array_equal(back.grid_maps, original.grid_maps)
    np.testing.assert_array_equal(back.maps["ixg"], original.maps["ixg"])
    assert back.grid_labels == list("abcd") and back.labels == ["cat", "dog"]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(PlotError, match="attrib-bench examples") as info:
        load_examples(bad)
    assert "\n" not in str(info.value)


def test_plot_results_writes_every_figure_and_regenerates_identical_files(run_dir):
    save_examples(_toy_examples(), run_dir / "examples" / "toy-t10.safetensors")
    written = plot_results(run_dir)
    names = sorted(p.name for p in written)
    assert names == ["agreement-across-metrics.png", "agreement-across-models.png",
                     "contributions-toy-t10.png", "localisation.png", "methods-toy-t10.png",
                     "pixel-removal.png", "randomisation-toy-t10.png",
                     "randomisation-toy-t1000.png", "temperature.png"]
    first = {p.name: p.read_bytes() for p in written}
    again = plot_results(run_dir)
    assert {p.name: p.read_bytes() for p in again} == first
    svg = plot_results(run_dir, run_dir / "svg", fmt="svg")
    assert all(p.suffix == ".svg" and p.stat().st_size > 0 for p in svg)


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_missing_old_or_empty_results_fail_in_one_line(run_dir, tmp_path):
    assert "write one with attrib-bench run" in _one_line_error(
        ["plot", "--results", str(tmp_path / "nothing")])
    unfinished = tmp_path / "unfinished"
    (unfinished / "parts").mkdir(parents=True)
    assert "re-run the same attrib-bench run command" in _one_line_error(
        ["plot", "--results", str(unfinished)])
    old = write_run(tmp_path / "old", synthetic_results(np.random.default_rng(0)))
    pd.read_parquet(old / "results.parquet").drop(columns=["flag"]).to_parquet(
        old / "results.parquet")
    assert "older attrib-bench" in _one_line_error(["plot", "--results", str(old)])
    empty = write_run(tmp_path / "empty", synthetic_results(np.random.default_rng(0))
                      .query("metric != 'randomisation'"))
    manifest = json.loads((empty / "manifest.json").read_text())
    manifest["config"]["metrics"].append("randomisation")
    (empty / "manifest.json").write_text(json.dumps(manifest))
    assert "metric 'randomisation' has no rows" in _one_line_error(
        ["report", "--results", str(empty)])
    broken = write_run(tmp_path / "broken", synthetic_results(np.random.default_rng(0)))
    (broken / "results.parquet").write_bytes(b"PAR1 garbage")
    assert "cannot be read" in _one_line_error(["plot", "--results", str(broken)])
    blank = write_run(tmp_path / "blank", synthetic_results(np.random.default_rng(0)))
    (blank / "summary.csv").write_text("")  # what a run with no rows writes
    assert "is empty" in _one_line_error(["plot", "--results", str(blank)])
    with pytest.raises(PlotError, match="no finite rows"):
        localisation_figure(load_run(run_dir).results, "localisation-difull")


def test_report_is_one_offline_page_with_figures_tables_and_the_best_marked(run_dir):
    result = CliRunner().invoke(cli, ["report", "--results", str(run_dir)])
    assert result.exit_code == 0, result.output
    page = (run_dir / "report.html").read_text()
    # localisation, pixel removal, T series, agreement by model and by metric, 2 randomisation
    assert page.count("<img") == 7
    assert "src='http" not in page and "<script" not in page and "<link" not in page
    best = [line for line in page.splitlines() if line.startswith('<tr class="best">')]
    localisation_best = [line for line in best if ">localisation<" in line]
    assert len(localisation_best) == 2 and all("Inherent" in line for line in localisation_best)
    assert all(">a · rank 1.0 [1, 1] · P(first) 1.00" in line for line in localisation_best)
    # most-first pixel removal: lower is better; inherent's curve drops fastest (3 images
    # separate nothing, so every method shares group a, inherent ranked first)
    most = [line for line in best if ">most-first<" in line and ">prob-auc (" in line
            and "Inherent" in line]
    assert len(most) == 2 and all("rank 1.0 [1, 1]" in line for line in most)
    assert "tied" not in page and "Agreement between rankings" in page
    assert "toy-t1000" in page and "1000" in page and "manifest.json" in page


@pytest.mark.real
@pytest.mark.slow
def test_examples_of_a_trained_coda_net_are_its_maps_and_complete_on_the_grid(data_root,
                                                                             monkeypatch):
    import torch

    from attrib_bench.core.registry import create_method, create_model
    from attrib_bench.data import load_cifar10
    from attrib_bench.runners import examples
    from attrib_bench.runners.examples import compute_examples

    # The grid is drawn from the first 500 test images, not GRID_POOL's 2000: any pool with
    # every class confidently classified gives a grid, and the pool pass is most of the cost.
    monkeypatch.setattr(examples, "GRID_POOL", 500)
    model = create_model("xs-coda-sq-t1000", pretrained=True)
    test_set = load_cifar10("test", root=data_root)
    ex = compute_examples(model, "xs-coda-sq-t1000", test_set, ["inherent", "ixg"], count=3)
    assert ex.labels == list(test_set.class_names[:3])  # one per class, in class order
    images = torch.from_numpy(ex.images)
    targets = torch.arange(3)
    with torch.no_grad():
        assert torch.equal(model(images).argmax(1), targets)  # correctly classified
    for name in ("inherent", "ixg"):
        expected = create_method(name, model).attribute(images, targets)
        np.testing.assert_allclose(ex.maps[name], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert ex.grid.shape == (3, 96, 96) and ex.grid_maps.shape == (9, 96, 96)
    assert len(set(ex.grid_labels)) == 9
    classes = torch.tensor([test_set.class_names.index(c) for c in ex.grid_labels])
    with torch.no_grad():
        logits = model(torch.from_numpy(ex.grid)[None]).expand(9, -1)[torch.arange(9), classes]
    totals = torch.from_numpy(ex.grid_maps).double().sum(dim=(1, 2))
    torch.testing.assert_close(totals, (logits - model.logit_bias).double(), rtol=1e-4,
                               atol=1e-4)


def test_runs_split_by_cost_are_drawn_together_with_n_per_method(tmp_path):
    results = synthetic_results(np.random.default_rng(0))
    cheap = results[results["method"] != "mine"]
    costly = results[(results["method"] == "mine") & (results["sample"] < 2)]
    parent = tmp_path / "cifar10"
    write_run(parent / "gradient", cheap.copy())
    write_run(parent / "perturbation", costly.copy())
    save_examples(_toy_examples(), parent / "perturbation" / "examples" / "toy-t10.safetensors")
    written = plot_results(parent)
    assert written[0].parent == parent / "figures"
    assert "methods-toy-t10.png" in {p.name for p in written}
    tables = load_runs(parent)
    assert set(tables.results["method"]) == set(METHODS)
    fig = localisation_figure(tables.results)  # every method on the 2 grids all share
    assert _texts(fig.axes[0].get_xticklabels()) == ["Inherent (W·x)", "IxG", "mine"]
    assert fig.axes[0].get_title().replace("\n", " ").replace("\u00a0", " ") == (
        "toy-t10 2 grids, shared by all 3 methods (runs: up to 5)")
    medians = {round(float(line.get_ydata()[0]), 9) for line in fig.axes[0].lines
               if len(line.get_xdata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]}
    inherent = tables.results.query("metric == 'localisation' and model == 'toy-t10' and "
                                    "method == 'inherent' and sample < 2")["value"]
    assert round(float(inherent.median()), 9) in medians
    fig = pixel_removal_figure(tables.results, tables.summary, tables.manifest)
    # each method's curve is over its own images; the legend gives each n
    assert "images per method: n in the legend" in fig.axes[0].get_title().replace("\n", " ")
    labels = _texts(fig.axes[1].get_legend().get_texts())
    assert [label.split("  ")[0] for label in labels] == [
        "Inherent (W·x) (n 3)", "IxG (n 3)", "mine (n 2)"]
    rows = tables.results.query("model == 'toy-t10' and metric == 'pixel-removal' and "
                                "variant == 'least-first' and stat == 'prob' and "
                                "method == 'inherent'")
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(),
                               rows.groupby("removed")["value"].mean().to_numpy())
    write_run(tmp_path / "again", cheap.copy())
    with pytest.raises(PlotError, match="more than one run"):
        load_runs([parent / "gradient", tmp_path / "again"])


def test_load_run_gives_text_columns_as_python_strings_with_the_same_values(tmp_path):
    """plot and report select rows many times: Arrow-backed text would be copied through pyarrow
    on every selection (benchmarks/results_loading.py), so load_run reads text as object
    columns, equal to what pandas reads, missing entries included."""
    results = synthetic_results(np.random.default_rng(0))
    results["probability"] = "sigmoid"
    results.loc[results.index[:3], "probability"] = None  # runs before issue 16 had none
    run = write_run(tmp_path / "run", results)
    tables = load_run(run)
    plain = pd.read_parquet(run / "results.parquet")
    text = [c for c in plain.columns if pd.api.types.is_string_dtype(plain[c])]
    assert {"model", "method", "metric", "flag", "probability"} <= set(text)
    assert all(tables.results[c].dtype == object for c in text)
    assert tables.results["probability"].isna().sum() == 3
    pd.testing.assert_frame_equal(tables.results, plain.astype({c: object for c in text}))


def test_grid_contribution_sheet_places_each_map_where_its_cell_is():
    """Map k explains cell k = col·n + row; on the sheet it stands at (row, col) of an n×n block
    right of the input, so the evidence panels read like the multi-image itself."""
    n = 3
    rng = np.random.default_rng(3)
    labels = [f"class {k}" for k in range(n * n)]
    fig = contribution_sheet(rng.random((3, 24, 24)), rng.standard_normal((n * n, 24, 24)),
                             labels, n=n)
    where = {ax.get_title(): (ax.get_subplotspec().rowspan.start,
                              ax.get_subplotspec().colspan.start)
             for ax in fig.axes if ax.get_images()}
    assert where.pop("input (9 cells, 9 classes)") == (0, 0)
    assert where == {f"evidence for class {k}": (k % n, k // n + 1) for k in range(n * n)}
    _assert_texts_inside(fig)


def test_temperature_points_at_a_smaller_n_are_hollow(run_dir):
    """A mean over fewer grids is biased on the paper's sampling, so it must look different."""
    tables = load_run(run_dir)
    summary = tables.summary.copy()
    high = int(summary["n"].max())
    fewer = (summary["model"] == "toy-t10") & (summary["method"] == "inherent")
    summary.loc[fewer, "n"] = high // 2
    fig = temperature_figure(summary, tables.temperatures())
    ax = fig.axes[0]
    assert ax.get_title().endswith(f"(hollow: n < {high})")
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert len(hollow) == 1
    inherent = summary[fewer & (summary["metric"] == "localisation")
                       & (summary["stat"] == "score")]["mean"]
    np.testing.assert_allclose(hollow[0].get_ydata(), inherent)
    assert hollow[0].get_xdata()[0] == pytest.approx(10, rel=0.26)
    untouched = temperature_figure(tables.summary, tables.temperatures()).axes[0]
    assert "hollow" not in untouched.get_title()
    assert not [line for line in untouched.get_lines() if line.get_markerfacecolor() == "white"]


def test_every_method_marker_can_be_drawn_hollow():
    """A hollow marker (fewer samples) must show a white inside: no plus, cross or star, whose
    arms at 4 pt are narrower than their edges."""
    names = [*METHOD_ORDER, "my-method", "other-method", "third-method"]
    markers = {style["marker"] for style in method_styles(names).values()}
    assert markers <= {"o", "s", "^", "v", "<", ">", "D", "d", "p", "h", "H", "8"}
