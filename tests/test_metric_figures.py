"""A metric declares its figures and its report section; plot and report draw nothing by name.

Plugin metrics registered here run through one tiny run (a linear model on random 8×8 images,
no ../shared): one that declares a figure and a section gets them in ``attrib-bench plot`` and in
the HTML report, one that declares nothing gets the score figure and a section named after it,
and one registered with ``ranks=False`` is shown as a check. The built-in metrics' figures are
their classes' declarations: change a declaration and the figure changes.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from test_plots import synthetic_results, write_run
from torch import nn

from attrib_bench.core.errors import PlotError
from attrib_bench.core.registry import METRICS, register_metric
from attrib_bench.data import ImageSet
from attrib_bench.metrics import Localisation, LocalisationDiFull, PixelRemoval, Randomisation
from attrib_bench.metrics.base import (
    FigureTables,
    Metric,
    MetricFigure,
    ReportSection,
    SampleSet,
    make_rows,
)
from attrib_bench.metrics.figures import SCORE_CAPTION, presentation
from attrib_bench.plots import figure_sections, figures_for, load_runs, plot_results
from attrib_bench.report import render_report
from attrib_bench.runners.benchmark import run

CENTRE_TEXT = "Share of |attribution| in the central 4×4 pixels: higher is better."


class CentreMass(Metric):
    """Share of |attribution| in the image centre (a plugin metric that declares nothing)."""

    directions = {"score": "higher"}

    def select(self, model, dataset, n_samples, ctx):
        ids = np.arange(n_samples or 6)

        def fetch(i):
            index = torch.as_tensor(i)
            return dataset.float_images(index), dataset.labels[index]

        return SampleSet(ids, fetch, {"images": len(ids)})

    def evaluate(self, ctx, inputs, target, samples):
        maps = ctx.explain(inputs, target).abs()
        centre = maps[:, 2:6, 2:6].sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)
        return make_rows(samples, "centre", centre.cpu().numpy())


def centre_bars(tables: FigureTables) -> Figure:
    """Each method's mean centre mass as a bar (the plugin's own figure)."""
    means = tables.rows().groupby("method")["value"].mean()
    fig, ax = plt.subplots()
    ax.bar(list(means.index), means.to_numpy())
    ax.set_title("centre mass by method")
    return fig


class DeclaredCentreMass(CentreMass):
    """Share of |attribution| in the image centre, with its own figure and section."""

    figures = {"bars": MetricFigure(centre_bars, "Centre mass: each method's mean, as bars.")}
    report_section = ReportSection("Centre mass", CENTRE_TEXT)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny run of grad and ixg under three plugin metrics, registered for this module."""
    register_metric("centre-mass")(DeclaredCentreMass)
    register_metric("plain-mass")(CentreMass)
    register_metric("check-mass", ranks=False)(CentreMass)
    generator = torch.Generator().manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8,
                                    generator=generator),
                      torch.randint(0, 3, (12,), generator=generator), ("a", "b", "c"), "toy")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    out = tmp_path_factory.mktemp("plugin") / "run"
    try:
        run({"lin": model}, "grad,ixg", "centre-mass,plain-mass,check-mass", dataset=images,
            out=out, n_samples=6, chunk_size=6, progress=False)
        yield out
    finally:
        for name in ("centre-mass", "plain-mass", "check-mass"):
            METRICS.remove(name)


@pytest.fixture(scope="module")
def page(run_dir) -> str:
    """The tiny run's HTML report."""
    return render_report(load_runs(run_dir))


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_a_plugins_declared_figure_reaches_plot(run_dir):
    written = {p.name for p in plot_results(run_dir, run_dir / "figures", dpi=20)}
    assert written == {"centre-mass-bars.png", "plain-mass.png", "check-mass.png"}
    fig = figures_for(load_runs(run_dir))["centre-mass-bars"]
    assert fig.axes[0].get_title() == "centre mass by method"  # its own drawer, not the default
    results = pd.read_parquet(run_dir / "results.parquet")
    expected = results[results["metric"] == "centre-mass"].groupby("method")["value"].mean()
    heights = [bar.get_height() for bar in fig.axes[0].patches]
    np.testing.assert_allclose(heights, expected.to_numpy())


def test_a_plugins_declared_section_and_figure_reach_the_report(page):
    assert f"<h3>Centre mass</h3>\n<p class='note'>{CENTRE_TEXT}</p>" in page
    assert ("<figcaption>centre-mass-bars: Centre mass: each method's mean, as bars."
            "</figcaption>") in page.replace("&#x27;", "'")
    assert re.findall(r"<img alt='([^']+)'", page) == ["centre-mass-bars", "plain-mass",
                                                       "check-mass"]


def test_a_plugin_that_declares_nothing_gets_the_score_figure_and_its_name(run_dir):
    sections = figure_sections(load_runs(run_dir))
    # ranking metrics by name, then the checks (ranks=False at registration)
    assert [(s.metric, s.title) for s in sections] == [
        ("centre-mass", "Centre mass"), ("plain-mass", "plain-mass"),
        ("check-mass", "check-mass")]
    plain = sections[1]
    assert plain.text == METRICS.get("plain-mass").description  # the registry's description
    fig, caption = plain.figures["plain-mass"]
    assert caption == SCORE_CAPTION
    summary = pd.read_csv(run_dir / "summary.csv").query("metric == 'plain-mass'")
    points = [bars.lines[0] for bars in fig.axes[0].containers]  # plot order: Grad, IxG
    assert [float(line.get_ydata()[0]) for line in points] == pytest.approx(
        summary.set_index("method").loc[["grad", "ixg"], "mean"].to_numpy())
    assert "higher is better" in fig.axes[0].get_title()


def test_a_check_is_shown_as_a_check_and_never_ranked(page):
    start = page.index("<h2>Summary</h2>")
    summary = page[start:page.index("</table>", start)]  # the summary table
    rows = [line for line in summary.splitlines() if ">check-mass<" in line]
    assert rows and all("(a check, not a ranking)" in line and " · rank " not in line
                        for line in rows)
    assert any(" · rank " in line for line in summary.splitlines() if ">plain-mass<" in line)
    assert "Checks such as check-mass rank nothing." in page


def _localisation_run(tmp_path: Path) -> Path:
    """A run of one model's localisation rows only: no T series, no agreement."""
    results = synthetic_results(np.random.default_rng(0))
    return write_run(tmp_path / "run", results.query(
        "metric == 'localisation' and model == 'toy-t10'").copy())


def test_built_in_figures_are_their_classes_declarations(tmp_path, monkeypatch):
    for name, cls in (("localisation", Localisation), ("localisation-difull", LocalisationDiFull),
                      ("pixel-removal", PixelRemoval), ("randomisation", Randomisation)):
        shown = presentation(name)
        assert shown.figures is cls.figures and shown.section is cls.report_section
    assert presentation("randomisation").ranks is False
    assert presentation("localisation-difull").section.short == "DiFull"
    run_dir = _localisation_run(tmp_path)
    assert list(figures_for(load_runs(run_dir))) == ["localisation"]

    def stand_in(tables: FigureTables) -> Figure:
        fig = plt.figure()
        fig.suptitle(f"stand-in for {tables.metric}")
        return fig

    monkeypatch.setattr(Localisation, "figures", {"": MetricFigure(stand_in, "a stand-in")})
    fig = figures_for(load_runs(run_dir))["localisation"]
    assert fig.get_suptitle() == "stand-in for localisation"
    monkeypatch.setattr(Localisation, "figures", {})
    assert figures_for(load_runs(run_dir)) == {}


def test_a_wrong_declaration_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(Localisation, "figures", {"": lambda tables: None})
    with pytest.raises(PlotError, match=r"write MetricFigure\(draw, caption=\.\.\.\)"):
        presentation("localisation")
    monkeypatch.setattr(Localisation, "figures", {"": MetricFigure(lambda tables: 3)})
    tables = FigureTables("localisation", pd.DataFrame(), pd.DataFrame(), {}, pd.DataFrame())
    with pytest.raises(PlotError, match="drew int, not a matplotlib Figure") as info:
        presentation("localisation").draw(tables)
    assert "\n" not in str(info.value)
