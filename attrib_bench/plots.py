"""The figures of a run: every metric's declared figures, the T series, the agreement, the sheets.

:func:`plot_results` reads a run folder (or a results store) and writes every figure its tables
support; :func:`figure_sections` gives them grouped as the HTML report shows them. This module
draws nothing by a metric's name: each registered metric declares its figures and its report
section (:attr:`~attrib_bench.metrics.base.Metric.figures`,
:attr:`~attrib_bench.metrics.base.Metric.report_section`, read through
:func:`attrib_bench.metrics.figures.presentation`), the built-in metrics as a plugin's, and a
metric that declares none gets a score figure. Drawn here are the figures across metrics (the
temperature series from the metrics' declared ``series_panels``; the agreement between the
rankings of the metrics that rank) and the qualitative sheets (Fig. 7, Fig. 8), which need maps,
not scores: they read the ``examples/*.safetensors`` files that ``attrib-bench examples`` writes
(:mod:`attrib_bench.runners.examples`), so they too are redrawn without a model.

Every figure function takes DataFrames and returns a matplotlib Figure, so a user can restyle or
compose it. Methods keep one order and one colour in every figure
(:func:`~attrib_bench.metrics.figures.method_colours`); a method's label and colour are its
registry metadata (``@register_method("mine", label="Mine", colour="#123456")``), so a plugin's
method is drawn as its author chose.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from attrib_bench.core.errors import PlotError  # noqa: E402
from attrib_bench.core.registry import METHOD_ORDER, METRICS, method_label, ordered_methods  # noqa: E402
from attrib_bench.metrics.base import FigureTables, SeriesPanel, mean_band  # noqa: E402
from attrib_bench.metrics.figures import (  # noqa: E402
    MAX_LAYER_LABELS,
    MAX_WIDTH,
    MIN_WIDTH,
    Presentation,
    error_bars,
    grid_shape,
    identical_curves,
    localisation_figure,
    method_colours,
    method_styles,
    metric_rows,
    ordered_models,
    panel_grid,
    panel_title,
    presentation,
    randomisation_figure,
    removal_probability,
    suptitle,
    text_width,
    twin_label,
    wrap_text,
)
from attrib_bench.metrics.figures import pixel_removal_figure as _removal_figure  # noqa: E402
from attrib_bench.metrics.pixel_removal import curve_auc  # noqa: E402
from attrib_bench.store import (  # noqa: E402
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    RunTables,
    curve_table,
    load_run,
    load_runs,
    model_temperatures,
    run_folders,
)

__all__ = ["MAX_LAYER_LABELS", "METHOD_ORDER", "RESULT_COLUMNS", "SUMMARY_COLUMNS", "RunTables",
           "load_run", "load_runs", "localisation_figure", "mean_band", "method_colours",
           "method_label", "method_styles", "model_temperatures", "ordered_methods",
           "randomisation_figure", "removal_probability", "run_folders"]

#: Sideways shift between methods in the temperature figure, in decades of T.
_DODGE_DECADES = 0.02
#: Captions of the figures drawn here, by file-stem prefix (a metric's come with its figures;
#: the temperature series' names the metrics' declared panels).
_CAPTIONS: dict[str, str] = {
    "agreement": "Kendall's τ between method rankings: across metrics (per model) and across "
                 "models (per metric).",
    "contributions": "Contribution maps for each cell's class on a multi-image (Fig. 7).",
    "methods": "Maps of each method on correctly classified images (Fig. 8)."}


# ----------------------------------------------------------------------------- pixel removal


def pixel_removal_figure(results: pd.DataFrame, summary: pd.DataFrame | None = None,
                         manifest: Mapping[str, Any] | None = None,
                         stat: str = "prob", curves: pd.DataFrame | None = None) -> Figure:
    """Mean target probability (or logit) with a bootstrap 95 % band against removed pixels; one
    row per model, a column per order (paper Fig. 6, right;
    :func:`attrib_bench.metrics.figures.pixel_removal_figure`, with pixel removal's AUC).

    Drawn from ``curves`` (:func:`attrib_bench.store.curve_table`; default: made from
    ``results``' per-step rows, whose ``fraction`` then gives the image size when ``manifest``
    records none). ``summary`` is not needed (kept for callers).
    """
    raw = None
    if curves is None:
        raw = metric_rows(results, "pixel-removal")
        curves = curve_table(raw)
    return _removal_figure(results, curves, manifest, stat, auc=curve_auc, raw=raw)


# ----------------------------------------------------------------------------- T series


def temperature_series(manifest: Mapping[str, Any] | None, temperatures: Mapping[str, float]
                       ) -> list[dict[str, float]]:
    """The models of ``temperatures`` split into series that differ in T alone.

    A temperature series (the paper's Fig. 6, bottom) holds the architecture fixed: models are
    grouped by the manifest's class and parameter count (xs-coda-sq-t10/t100/t1000 form one
    series; s-coda-sq-t1000 is another architecture and would otherwise sit at T = 1000 beside
    the XS model). Returns the groups with two or more distinct T, largest first.
    """
    info = (manifest or {}).get("models", {})
    groups: dict[tuple[Any, Any], dict[str, float]] = {}
    for name, value in temperatures.items():
        key = (info.get(name, {}).get("class"), info.get(name, {}).get("parameters"))
        groups.setdefault(key, {})[name] = value
    series = [group for group in groups.values() if len(set(group.values())) >= 2]
    return sorted(series, key=lambda group: (-len(set(group.values())), sorted(group)))


def _series_panels() -> list[tuple[str, SeriesPanel]]:
    """(metric, panel) of every registered metric's ``series_panels``, metrics by name."""
    return [(name, panel) for name in METRICS.names()
            for panel in getattr(presentation(name), "series_panels", ())]


def temperature_figure(summary: pd.DataFrame, temperatures: Mapping[str, float],
                       panels: Sequence[tuple[str, SeriesPanel]] | None = None) -> Figure:
    """The metrics' declared summary rows against T (paper Fig. 6, bottom: localisation and
    pixel-removal AUC), mean ± 95 % CI.

    One panel per (metric, :class:`~attrib_bench.metrics.base.SeriesPanel`) of ``panels``
    (default: every registered metric's ``series_panels``) that has rows; models without a T
    (e.g. ResNet-56) are left out. Methods measured at two or more T are lines on the log-T
    axis, dodged sideways a little so their error bars do not overlap. Methods measured at one T
    only are drawn in a narrow strip right of each panel, one place per method on the panel's y
    axis (:func:`_single_t_strip`).
    """
    if len(set(temperatures.values())) < 2:
        raise PlotError("the temperature series needs CoDA-Nets at two or more T in one run: "
                        "run e.g. --model xs-coda-sq-t10,xs-coda-sq-t100,xs-coda-sq-t1000")
    rows = summary[summary["model"].isin(list(temperatures))].copy()
    rows["T"] = rows["model"].map(temperatures)
    declared = _series_panels() if panels is None else list(panels)
    found = [(panel.label, rows[(rows["metric"] == metric) & (rows["variant"] == panel.variant)
                                & (rows["stat"] == panel.stat)]) for metric, panel in declared]
    found = [(label, sub) for label, sub in found if not sub.empty]
    if not found:
        names = list(dict.fromkeys(metric for metric, _ in declared)) or ["a series metric"]
        raise PlotError(f"no {' or '.join(names)} summary rows for the CoDA-Nets: "
                        f"run --metric {','.join(names)} on them")
    colours = method_colours(summary["method"].unique())
    methods = ordered_methods(pd.concat([sub for _, sub in found])["method"].unique())
    styles = method_styles(methods)
    measured = {m: sorted({t for _, sub in found for t in sub.loc[sub["method"] == m, "T"]})
                for m in methods}
    series = [m for m in methods if len(measured[m]) > 1]
    lone = {m: measured[m][0] for m in methods if len(measured[m]) == 1}
    twins = identical_curves({m: np.concatenate([sub[sub["method"] == m].sort_values("T")[
        "mean"].to_numpy(float) for _, sub in found]) for m in methods})
    names = [twin_label(m, twins) for m in lone]  # the strip's tick labels, for its height
    height = 3.6 + (text_width("\n".join(names), "small") - 0.5 if lone else 0.0)
    fig, pairs = _strip_grid(len(found), (4.4, height), 0.3 * len(lone) + 0.5 if lone else 0.0)
    look = _SeriesLook(colours, styles, twins, series, sorted(set(rows["T"])))
    for (ax, strip), (label, sub) in zip(pairs, found, strict=True):
        high = _temperature_panel(ax, label, sub, look)
        if strip is not None:
            _single_t_strip(strip, sub, lone, colours, styles, twins, high)
    _series_legend(fig, [ax for ax, _ in pairs])
    names = ", ".join(sorted(temperatures, key=lambda name: (temperatures[name], name)))
    suptitle(fig, f"Temperature series: {names} (methods shifted sideways to keep bars apart)")
    return fig


@dataclass(frozen=True)
class _SeriesLook:
    """How the temperature figure draws its methods: colours, styles, the methods whose curve
    repeats another's (``twins``), those measured at two or more T (``series``), the T ticks."""

    colours: Mapping[str, str]
    styles: Mapping[str, Mapping[str, str]]
    twins: Mapping[str, str]
    series: Sequence[str]
    ticks: Sequence[float]


def _temperature_panel(ax: plt.Axes, label: str, sub: pd.DataFrame, look: _SeriesLook) -> int:
    """One summary row's panel: each series method's mean ± CI against T, dodged sideways;
    returns the panel's largest n (points with fewer are hollow)."""
    low, high = int(sub["n"].min()), int(sub["n"].max())
    offsets = {m: _DODGE_DECADES * (k - (len(look.series) - 1) / 2)
               for k, m in enumerate(look.series)}
    for method in look.series:
        line = sub[sub["method"] == method].sort_values("T")
        if not line.empty:
            x = line["T"].to_numpy(float) * 10 ** offsets[method]
            ax.errorbar(x, line["mean"].to_numpy(float), yerr=error_bars(line),
                        color=look.colours[method], markersize=4, capsize=2, linewidth=1.4,
                        label=twin_label(method, look.twins), **look.styles[method])
            _hollow_below(ax, x, line, high, look.colours[method],
                          look.styles[method]["marker"])
    ax.set_xscale("log")
    ax.set_xticks(look.ticks, [f"{t:g}" for t in look.ticks], rotation=40)  # 500, 1000 close
    ax.minorticks_off()
    ax.set_xlabel("temperature T")
    ax.set_ylabel(f"{label}\n(mean, 95 % CI)")
    ax.set_title(f"{label}\nn = {high} per point" if low == high else
                 f"{label}\nn = {low}–{high} per point (hollow: n < {high})",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    return high


def _series_legend(fig: Figure, axes: Sequence[plt.Axes]) -> None:
    """One legend for every method, even one missing from the first panel."""
    handles: dict[str, Any] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center",
                   frameon=False)


def _strip_grid(count: int, size: tuple[float, float], strip: float
                ) -> tuple[Figure, list[tuple[plt.Axes, plt.Axes | None]]]:
    """Like :func:`panel_grid`, with a narrow panel ``strip`` inches wide right of each panel
    that shares its y axis (None when ``strip`` is 0)."""
    rows, columns = grid_shape(count)
    widths = [size[0], strip] if strip else [size[0]]
    fig = plt.figure(figsize=(min(MAX_WIDTH, max(MIN_WIDTH, sum(widths) * columns)),
                              size[1] * rows), layout="constrained")
    grid = fig.add_gridspec(rows, len(widths) * columns, width_ratios=widths * columns)
    pairs = []
    for k in range(count):
        r, c = divmod(k, columns)
        ax = fig.add_subplot(grid[r, len(widths) * c])
        pairs.append((ax, fig.add_subplot(grid[r, 2 * c + 1], sharey=ax) if strip else None))
    return fig, pairs


def _single_t_strip(ax: plt.Axes, sub: pd.DataFrame, lone: Mapping[str, float],
                    colours: Mapping[str, str], styles: Mapping[str, Mapping[str, str]],
                    twins: Mapping[str, str], high: int) -> None:
    """The methods measured at one T only (method → T), side by side at categorical x positions
    labelled with their names, each a mean with its 95 % CI; hollow where n < ``high``."""
    for k, (method, t) in enumerate(lone.items()):
        point = sub[(sub["method"] == method) & (sub["T"] == t)]
        if not point.empty:
            ax.errorbar([k], point["mean"].to_numpy(float), yerr=error_bars(point),
                        color=colours[method], marker=styles[method]["marker"], markersize=4,
                        capsize=2, linestyle="none", label=twin_label(method, twins))
            _hollow_below(ax, np.array([float(k)]), point, high, colours[method],
                          styles[method]["marker"])
    one = len(set(lone.values())) == 1
    ax.set_xticks(range(len(lone)), [twin_label(m, twins) + ("" if one else f" (T = {t:g})")
                                     for m, t in lone.items()], rotation=90, fontsize="small")
    ax.set_xlim(-0.6, len(lone) - 0.4)
    ax.tick_params(labelleft=False)
    title = f"T = {next(iter(lone.values())):g} only" if one else "one T only"
    ax.set_title(wrap_text(title, 0.3 * len(lone) + 0.4), fontsize="medium")
    ax.grid(alpha=0.3, axis="y")


def _hollow_below(ax: plt.Axes, x: np.ndarray, points: pd.DataFrame, high: int, colour: str,
                  marker: str) -> None:
    """Redraw as hollow the markers of ``points`` (rows with "mean" and "n", in the order of
    ``x``) whose n is below the panel's largest ``high``: a mean over fewer grids or images is not
    only noisier; on the paper's grid sampling it is biased (the first grids hold the most
    confident images), so a reader must see which points compare."""
    few = points["n"].to_numpy(int) < high
    if few.any():
        ax.plot(x[few], points["mean"].to_numpy(float)[few], linestyle="none", marker=marker,
                markersize=4, markerfacecolor="white", markeredgecolor=colour, zorder=3)


# ----------------------------------------------------------------------------- agreement


def _family_label(row: Mapping[str, Any], side: str, drop: str) -> str:
    """A family's short name in an agreement panel: what varies in that panel (a metric
    by its declared short name)."""
    if drop == "model":
        metric = str(row[f"{side}_metric"])
        shown = presentation(metric)  # its declared short name, e.g. DiFull
        parts = [shown.section.short if shown is not None and shown.section.short else metric,
                 row[f"{side}_variant"], row[f"{side}_stat"]]
    else:
        parts = [row[f"{side}_model"]]
    return " ".join(str(p) for p in parts if p)


def agreement_figure(taus: pd.DataFrame, by: str = "model",
                     manifest: Mapping[str, Any] | None = None) -> Figure:
    """Kendall's τ between method rankings (:func:`attrib_bench.compare.agreement`) as
    heatmaps: ``by="model"``, one panel per model with its metrics against each other (do the
    metrics agree?); ``by="metric"``, one panel per metric, variant and stat with the models
    against each other (do models and temperatures agree?). Cells: τ (−1 … 1), blank where two
    rankings share fewer than three methods. Models with a T in ``manifest`` come first, by T.
    """
    if taus.empty:  # no two rankings to compare (e.g. a run of one or two methods)
        raise PlotError("no two rankings share three methods: nothing to compare")
    if by == "model":
        same = taus[taus["a_model"] == taus["b_model"]]
        panels = {m: same[same["a_model"] == m]
                  for m in ordered_models(same["a_model"], manifest)}
    else:
        keys = ["metric", "variant", "stat"]
        same = taus[np.all([taus[f"a_{k}"] == taus[f"b_{k}"] for k in keys], axis=0)]
        groups = same.groupby([f"a_{k}" for k in keys], sort=True)
        panels = {" ".join(str(x) for x in key if x): rows for key, rows in groups}
    panels = {k: v for k, v in panels.items() if len(v)}
    if not panels:
        raise PlotError("no two rankings share three methods: nothing to compare")
    other = "model" if by == "metric" else "metric"
    sizes = [len({_family_label(r, s, by) for r in rows.to_dict("records") for s in "ab"})
             for rows in panels.values()]
    side = max(3.2, 0.42 * max(sizes) + 2.2)
    fig, axes = panel_grid(len(panels), (side, side))
    norm = Normalize(-1, 1)
    for ax, (title, rows) in zip(axes, panels.items(), strict=True):
        records = rows.to_dict("records")
        names = list(dict.fromkeys(_family_label(r, s, by) for r in records for s in "ab"))
        grid = np.full((len(names), len(names)), np.nan)
        np.fill_diagonal(grid, 1.0)
        for r in records:
            i, j = names.index(_family_label(r, "a", by)), names.index(_family_label(r, "b", by))
            grid[i, j] = grid[j, i] = r["tau"]
        ax.imshow(grid, cmap="RdBu", norm=norm)
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value) and i != j:
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small")
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(len(names)), names, fontsize="small")
        ax.set_title(panel_title(title, f"τ between its {other}s' rankings",
                                  width=side - 0.8), fontsize="medium")
    fig.colorbar(ScalarMappable(norm=norm, cmap="RdBu"), ax=list(axes), shrink=0.6,
                 label="Kendall's τ")
    suptitle(fig, "Agreement between method rankings (Kendall's τ of the methods' means)")
    return fig


# ----------------------------------------------------------------------------- Fig. 7, Fig. 8


def _show_map(ax: plt.Axes, heat: np.ndarray) -> None:
    """A signed map, positive red and negative blue, centred at zero, scaled to its own max |v|."""
    limit = float(np.nanmax(np.abs(heat))) or 1.0
    ax.imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _show_image(ax: plt.Axes, image: np.ndarray) -> None:
    """An image (3, H, W) in [0, 1]."""
    ax.imshow(np.clip(np.transpose(image, (1, 2, 0)), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _map_colourbar(fig: Figure, axes: Sequence[plt.Axes]) -> None:
    """One colour bar for maps that are each on their own symmetric scale: ± the map's max |v|;
    its label wrapped to the bar's length."""
    shrink = 0.85
    bar = fig.colorbar(ScalarMappable(Normalize(-1.0, 1.0), cmap="bwr"), ax=list(axes),
                       location="right", shrink=shrink, aspect=30, ticks=[-1, 0, 1])
    bar.ax.set_yticklabels(["−max |v|", "0", "+max |v|"], fontsize="small")
    length = shrink * (fig.get_figheight() - 0.6)  # less the title and margins, inches
    bar.set_label(wrap_text("each map on its own scale: red for, blue against", length, "small"),
                  fontsize="small")


def contribution_sheet(grid: np.ndarray, maps: np.ndarray, labels: Sequence[str],
                       title: str = "", n: int | None = None) -> Figure:
    """Fig. 7: a multi-image (3, nH, nW) and one map per cell's class (K, nH, nW) on the whole
    grid, each map centred at zero with its own symmetric scale (one shared colour bar).

    With ``n`` (the grid's side, K = n²) and map k explaining cell k = col·n + row (the order of
    :func:`attrib_bench.metrics.localisation.split_cells`), the maps stand as the cells do: the
    input in the first column, then an n×n block whose panel (row, col) is the evidence for the
    class in cell (row, col). Otherwise the panels follow the maps' order, five to a row.
    """
    k = len(maps)
    if n is not None and n * n == k:
        fig, axes = plt.subplots(n, n + 1, figsize=(2.3 * (n + 1) + 0.8, 2.5 * n),
                                 squeeze=False, layout="constrained")
        first = axes[0, 0]
        panels = [axes[cell % n, cell // n + 1] for cell in range(k)]  # cell = col·n + row
        spare = list(axes[1:, 0])
    else:
        cols = min(k + 1, 5)
        rows = int(np.ceil((k + 1) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols + 0.8, 2.5 * rows),
                                 squeeze=False, layout="constrained")
        first, *rest = axes.ravel()
        panels, spare = rest[:k], rest[k:]
    _show_image(first, grid)
    first.set_title(f"input ({k} cells, {k} classes)", fontsize="small")
    for ax, heat, label in zip(panels, maps, labels, strict=False):
        _show_map(ax, heat)
        ax.set_title(f"evidence for {label}", fontsize="small")
    for ax in spare:
        ax.axis("off")
    _map_colourbar(fig, axes.ravel())
    suptitle(fig, title or "Per-class contribution maps on a multi-image")
    return fig


def method_sheet(images: np.ndarray, maps: Mapping[str, np.ndarray], labels: Sequence[str],
                 title: str = "", label_kind: str = "true class") -> Figure:
    """Fig. 8: rows = images (N, 3, H, W), columns = input then each method's map (N, H, W).

    Each row says its class and what it is (``label_kind``, e.g. "true = predicted class" for
    images picked as correctly classified); one colour bar explains the per-map scales."""
    methods = ordered_methods(maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(1.45 * (len(methods) + 1) + 1.0,
                             max(2.6, 1.5 * n + 0.6)), squeeze=False, layout="constrained")
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_ylabel(f"{labels[i]}\n({label_kind})", fontsize="small")
        for j, method in enumerate(methods, start=1):
            _show_map(axes[i, j], maps[method][i])
    for j, method in enumerate(["input", *methods]):
        axes[0, j].set_title(method_label(method), fontsize="small")
    _map_colourbar(fig, axes[:, 1:].ravel())
    suptitle(fig, title or "Attribution maps side by side")
    return fig


# ----------------------------------------------------------------------------- a run folder


@dataclass
class FigureSection:
    """Figures the report shows under one heading: a metric's, titled and introduced as it
    declares (:class:`~attrib_bench.metrics.base.ReportSection`; ``metric`` its name), those
    across metrics, or the example sheets. ``figures``: file stem → (figure, caption)."""

    title: str
    text: str
    figures: dict[str, tuple[Figure, str]] = field(default_factory=dict)
    metric: str = ""


#: The sections of the figures drawn here.
ACROSS_METRICS = ("Across metrics and models", "The metrics' summaries together: against the "
                  "CoDA-Nets' temperature, and the agreement between the methods' rankings.")
EXAMPLE_MAPS = ("Example maps", "Maps stored by attrib-bench examples (Fig. 7, Fig. 8).")


def figure_sections(tables: RunTables) -> list[FigureSection]:
    """Every figure the run's tables support, grouped as the report shows them: a section per
    registered metric of the run that ranks methods (by name), the figures across metrics, a
    section per metric that ranks nothing (a check), then the example sheets. A metric that is
    not registered here (a plugin not loaded) has none; one the run was configured with but
    that has no rows raises :class:`PlotError` (an unfinished or broken run). Methods are
    labelled and coloured as the runs recorded them (:meth:`RunTables.drawn_as_recorded`), then
    as the registry has them."""
    with tables.drawn_as_recorded():
        return _figure_sections(tables)


def figures_for(tables: RunTables) -> dict[str, Figure]:
    """Every figure of :func:`figure_sections`, by file stem, in the report's order (none for
    a run whose metrics are not registered here and that has no examples)."""
    return {stem: fig for section in figure_sections(tables)
            for stem, (fig, _) in section.figures.items()}


def _figure_sections(tables: RunTables) -> list[FigureSection]:
    present = set(tables.results["metric"].unique())
    for metric in tables.manifest.get("config", {}).get("metrics", []):
        if metric not in present:
            raise PlotError(f"metric {metric!r} has no rows in {tables.path / 'results.parquet'}"
                            ": finish the run with the same attrib-bench run command")
    shown = [p for p in map(presentation, sorted(present)) if p is not None]
    data = FigureTables("", tables.results, tables.summary, tables.manifest,
                        tables.curves if tables.curves is not None
                        else curve_table(tables.results))
    ranked = [_metric_section(p, data) for p in shown if p.ranks]
    across = FigureSection(*ACROSS_METRICS, {**_temperature_figures(tables, shown),
                                             **_agreement_figures(tables, shown)})
    checks = [_metric_section(p, data) for p in shown if not p.ranks]
    examples = FigureSection(*EXAMPLE_MAPS, _example_sheets(tables))
    return [*ranked, *([across] if across.figures else []), *checks,
            *([examples] if examples.figures else [])]


def _metric_section(shown: Presentation, data: FigureTables) -> FigureSection:
    """One metric's section: its declared title and text, its declared figures drawn."""
    return FigureSection(shown.section.title, shown.section.text,
                         shown.draw(replace(data, metric=shown.metric)), shown.metric)


def _caption(stem: str) -> str:
    return next(text for prefix, text in _CAPTIONS.items() if stem.startswith(prefix))


def _temperature_figures(tables: RunTables, shown: Sequence[Presentation]
                         ) -> dict[str, tuple[Figure, str]]:
    """The temperature series of the metrics that declare series panels, one per series."""
    panels = [(p.metric, panel) for p in shown for panel in p.series_panels]
    if not panels:
        return {}
    caption = ("Against the CoDA-Nets' temperature: "
               + " · ".join(panel.label for _, panel in panels) + ".")
    figures = {}
    for i, temperatures in enumerate(temperature_series(tables.manifest, tables.temperatures())):
        stem = "temperature" if i == 0 else f"temperature-{min(temperatures)}"
        figures[stem] = (temperature_figure(tables.summary, temperatures, panels), caption)
    return figures


def _agreement_figures(tables: RunTables, shown: Sequence[Presentation]
                       ) -> dict[str, tuple[Figure, str]]:
    """Kendall's τ between rankings, per model and per metric, when a metric ranks methods."""
    if not any(p.ranks for p in shown):
        return {}
    from attrib_bench.compare import agreement, tables_values

    taus = agreement(*tables_values(tables), resamples=0)
    figures = {}
    for by, across in (("model", "metrics"), ("metric", "models")):
        try:
            figures[f"agreement-across-{across}"] = (agreement_figure(taus, by, tables.manifest),
                                                     _caption("agreement"))
        except PlotError:  # fewer than three shared methods: nothing to draw
            pass
    return figures


def _example_sheets(tables: RunTables) -> dict[str, tuple[Figure, str]]:
    """The sheets of every run folder's ``examples/`` (the first folder's win a clash)."""
    folders = dict.fromkeys(p.resolve() for p in [tables.path, *map(Path, tables.manifest.get(
        "runs", []))])
    sheets: dict[str, tuple[Figure, str]] = {}
    for folder in folders:
        for stem, fig in example_figures(folder / "examples").items():
            sheets.setdefault(stem, (fig, _caption(stem)))
    return sheets


def example_figures(folder: Path) -> dict[str, Figure]:
    """Fig. 7 and Fig. 8 sheets from every ``examples/<model>.safetensors`` in ``folder``."""
    from attrib_bench.runners.examples import load_examples

    figures = {}
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        ex = load_examples(path)
        if ex.grid is not None:
            figures[f"contributions-{ex.model}"] = contribution_sheet(
                ex.grid, ex.grid_maps, ex.grid_labels,
                f"{ex.model}: contribution maps on a {ex.grid_n}×{ex.grid_n} multi-image",
                n=ex.grid_n)
        if ex.maps:
            figures[f"methods-{ex.model}"] = method_sheet(
                ex.images, ex.maps, ex.labels, f"{ex.model}: maps of each method",
                label_kind="true = predicted class")
    return figures


def plot_results(results_dir: str | Path | Iterable[str | Path], out: str | Path | None = None,
                 fmt: str = "png", dpi: int = 150) -> list[Path]:
    """Write every figure for the run(s) in ``results_dir`` (see :func:`load_runs`) to ``out``
    (default ``<first folder>/figures``) as ``<stem>.<fmt>``; returns the files written."""
    from attrib_bench.runners.storage import atomic_write, slug

    if fmt not in ("png", "pdf", "svg"):
        raise PlotError(f"unknown figure format {fmt!r}: use png, pdf or svg")
    tables = load_runs(results_dir)
    out = Path(out) if out is not None else tables.path / "figures"
    figures = figures_for(tables)
    if not figures:
        metrics = ", ".join(sorted(tables.results["metric"].unique())) or "none"
        raise PlotError(f"nothing to plot in {tables.path}: its metrics ({metrics}) are not "
                        "registered here and it has no attrib-bench examples (pass --plugin "
                        "MODULE for a plugin's metric); attrib-bench report shows any run's "
                        "summary")
    written = []
    for stem, fig in figures.items():
        path = out / f"{slug(stem)}.{fmt}"
        atomic_write(path, lambda tmp, f=fig: f.savefig(tmp, format=fmt, dpi=dpi,
                                                        metadata=figure_metadata(fmt)))
        plt.close(fig)
        written.append(path)
    return written


def figure_metadata(fmt: str) -> dict[str, Any] | None:
    """No creation date or software version in the files, so regenerated figures are identical."""
    if fmt == "png":
        return {"Software": None}
    if fmt == "pdf":
        return {"CreationDate": None, "Producer": None, "Creator": None}
    return {"Date": None, "Creator": None}
