"""The metrics' figures and the figure style they share; what each metric declares it draws.

A metric names its figures and its report section (:attr:`Metric.figures`,
:attr:`Metric.report_section`, :class:`~attrib_bench.metrics.base.MetricFigure`);
:func:`presentation` reads a registered metric's declarations, with the defaults filled in, for
``attrib-bench plot`` and the HTML report (:mod:`attrib_bench.plots`,
:mod:`attrib_bench.report`), which draw nothing by a metric's name. The built-in metrics declare
the paper's figures drawn here (:func:`localisation_figure`, :func:`pixel_removal_figure`: Fig. 6;
:func:`randomisation_figure`); a metric that declares none gets :func:`score_figure`.

Every figure takes plain DataFrames and returns a matplotlib Figure. Methods keep one order and
one colour in every figure (:func:`method_colours`, :func:`method_styles`); a method's label and
colour are its registry metadata (``@register_method("mine", label="Mine", colour="#123456")``).
Models with a T (the CoDA-Nets) come first, by T (:func:`ordered_models`). This module imports
matplotlib; the metric modules import it only inside the drawers they declare, so that running a
benchmark never loads it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath

from attrib_bench.core.errors import PlotError
from attrib_bench.core.registry import (
    METHOD_ORDER,
    METRICS,
    _method_metadata,
    method_label,
    ordered_methods,
)
from attrib_bench.metrics.base import (
    FigureTables,
    MetricFigure,
    ReportSection,
    SeriesPanel,
    mean_band,
)
from attrib_bench.models.protocols import probability_label

#: Colours for methods whose registry entry has no ``colour`` (or that are not registered now,
#: e.g. results from a plugin not loaded), in :func:`ordered_methods` order.
_EXTRA_COLOURS: tuple[str, ...] = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                                   "#e6550d", "#31a354", "#756bb1", "#636363")
PIXEL_ORDERS: dict[str, str] = {"least-first": "least important first (higher is better)",
                                "most-first": "most important first (lower is better)"}
_ORDER_SHORT: dict[str, str] = {"least-first": "least first ↑", "most-first": "most first ↓"}
#: Line styles and markers, fixed per method (:func:`method_styles`). Every marker is a convex
#: outline, so that a hollow one (fewer samples, :func:`attrib_bench.plots.temperature_figure`)
#: shows its white face; a filled plus, cross or star at 4 pt has no inside to show.
_LINE_STYLES: tuple[str, ...] = ("-", "--", "-.", ":")
_MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "p", "h", "<")
_MEAN_MARKER: dict[str, Any] = {"marker": "D", "markerfacecolor": "white",
                                "markeredgecolor": "black", "markersize": 4}
#: Panels per figure row before a grid wraps.
MAX_COLUMNS = 3
#: Figure widths in inches: no figure is narrower (its titles and legends fit), none wider (a
#: report shows figures about 1200 px wide; 15 in is 2250 px at the default 150 dpi).
MIN_WIDTH, MAX_WIDTH = 5.0, 15.0
#: Most layers labelled on a randomisation figure's x axis (the others get unlabelled ticks).
MAX_LAYER_LABELS = 15
_TEXT_PATHS = TextToPath()
#: The caption of :func:`score_figure`, the figure of a metric that declares none.
SCORE_CAPTION = "Each method's mean with its 95 % CI, per model and (variant, stat)."


# ----------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Presentation:
    """What figures and the report show of one registered metric (:func:`presentation`):
    its figures by name, its report section, whether the summary ranks its methods (the
    registration's ``ranks``) and the summary rows of the temperature series."""

    metric: str
    figures: Mapping[str, MetricFigure]
    section: ReportSection
    ranks: bool
    series_panels: tuple[SeriesPanel, ...]

    def draw(self, tables: FigureTables) -> dict[str, tuple[Figure, str]]:
        """File stem → (figure, caption) of every declared figure, drawn from ``tables``.

        A drawer that returns neither a Figure nor a mapping of them raises
        :class:`PlotError` in one line naming the metric and figure."""
        drawn = {}
        for name, declared in self.figures.items():
            stem = f"{self.metric}-{name}" if name else self.metric
            made = declared.draw(tables)
            parts = made if isinstance(made, Mapping) else {"": made}
            for part, fig in parts.items():
                if not isinstance(fig, Figure):
                    raise PlotError(f"metric {self.metric!r}: figure {name!r} drew "
                                    f"{type(fig).__name__}, not a matplotlib Figure: return "
                                    "a Figure (or a dict of them) from its draw function")
                drawn[f"{stem}-{part}" if part else stem] = (fig, declared.caption)
        return drawn


def _draw_scores(tables: FigureTables) -> Figure:
    return score_figure(tables.summary, tables.metric, tables.manifest, tables.results)


#: What a metric that declares no figure gets (:attr:`Metric.figures` None).
DEFAULT_FIGURES: Mapping[str, MetricFigure] = {"": MetricFigure(_draw_scores, SCORE_CAPTION)}


def presentation(metric: str) -> Presentation | None:
    """The declared figures, report section and series panels of registered metric ``metric``
    (:class:`~attrib_bench.metrics.base.Metric`'s ``figures``, ``report_section`` and
    ``series_panels``), defaults filled in; None when it is not registered here (e.g. a plugin
    not loaded: its rows still reach the summary). A declaration of the wrong type raises
    :class:`PlotError` in one line naming the fix."""
    if metric not in METRICS:
        return None
    entry = METRICS.get(metric)
    factory = entry.factory
    while isinstance(factory, functools.partial):
        factory = factory.func
    figures = getattr(factory, "figures", None)
    figures = DEFAULT_FIGURES if figures is None else figures
    section = getattr(factory, "report_section", None) or ReportSection(metric,
                                                                         entry.description)
    panels = tuple(getattr(factory, "series_panels", ()))
    _check_declarations(metric, figures, section, panels)
    return Presentation(metric, figures, section, bool(entry.metadata.get("ranks", True)),
                        panels)


def _check_declarations(metric: str, figures: Any, section: Any, panels: tuple[Any, ...]
                        ) -> None:
    """One :class:`PlotError` line for a declaration of the wrong type."""
    if not isinstance(figures, Mapping):
        raise PlotError(f"metric {metric!r}: figures must be a dict of figure name → "
                        f"MetricFigure, got {type(figures).__name__}")
    for name, declared in figures.items():
        if not isinstance(name, str) or not isinstance(declared, MetricFigure):
            raise PlotError(f"metric {metric!r}: figures[{name!r}] is "
                            f"{type(declared).__name__}: write MetricFigure(draw, caption=...)")
    if not isinstance(section, ReportSection):
        raise PlotError(f"metric {metric!r}: report_section is {type(section).__name__}: "
                        "write ReportSection(title, text)")
    if not all(isinstance(panel, SeriesPanel) for panel in panels):
        raise PlotError(f"metric {metric!r}: series_panels must hold SeriesPanel(label, "
                        "variant, stat) entries")


# ----------------------------------------------------------------------------- reading


def metric_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The finite rows of one metric; :class:`PlotError` if the metric has none."""
    rows = results[(results["metric"] == metric) & (results["flag"].fillna("") == "")]
    if rows.empty:
        present = ", ".join(sorted(results["metric"].unique())) or "none"
        raise PlotError(f"metric {metric!r} has no finite rows in these results (metrics "
                        f"present: {present}): run attrib-bench run --metric {metric} first")
    return rows


def config_value(rows: pd.DataFrame, key: str) -> Any:
    """One hyper-parameter of the metric that wrote ``rows`` (from the metric_config column)."""
    values = {json.loads(text).get(key) for text in rows["metric_config"].unique()}
    return values.pop() if len(values) == 1 else None


def removal_probability(manifest: Mapping[str, Any], model: str,
                        metric: str = "pixel-removal") -> str:
    """The probability ("sigmoid" or "softmax") ``model``'s ``metric`` rows hold in their
    "prob" stats, from the run's sample info ("" if it records none)."""
    info = manifest.get("samples", {}).get(f"{model}/{metric}", {})
    return str(info.get("probability", ""))


# ----------------------------------------------------------------------------- styling


def method_colours(names: Iterable[str]) -> dict[str, str]:
    """A fixed colour per method: its registered ``colour``, else the next spare colour."""
    colours = {}
    extra = 0
    for name in ordered_methods(names):
        colour = _method_metadata(name).get("colour")
        if colour is None:
            colour = _EXTRA_COLOURS[extra % len(_EXTRA_COLOURS)]
            extra += 1
        colours[name] = colour
    return colours


def ordered_models(names: Iterable[str], manifest: Mapping[str, Any] | None = None
                   ) -> list[str]:
    """Models with a T in the manifest (the CoDA-Nets) first, by T, then by parameter count
    (the manifest's) and name: an order that does not depend on the rows' order, so a store and
    the run folders it came from draw the same panels. Every figure uses this order."""
    names = list(dict.fromkeys(names))
    info = (manifest or {}).get("models", {})
    temperatures = {name: float(info[name]["temperature"]) for name in names
                    if info.get(name, {}).get("temperature") is not None}
    return sorted(names, key=lambda n: (n not in temperatures, temperatures.get(n, 0),
                                        info.get(n, {}).get("parameters") or 0, n))


def method_styles(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """A fixed line style and marker per method (by its place in :data:`METHOD_ORDER`, then the
    others after it), so that curves that coincide stay distinguishable."""
    ordered = ordered_methods(names)
    extra = [m for m in ordered if m not in METHOD_ORDER]
    styles = {}
    for name in ordered:
        k = (METHOD_ORDER.index(name) if name in METHOD_ORDER
             else len(METHOD_ORDER) + extra.index(name))
        styles[name] = {"linestyle": _LINE_STYLES[k % len(_LINE_STYLES)],
                        "marker": _MARKERS[k % len(_MARKERS)]}
    return styles


def text_width(text: str, size: str | float = "medium") -> float:
    """The width in inches of ``text``'s widest line drawn at font ``size``."""
    font = FontProperties(size=size)
    return max(_TEXT_PATHS.get_text_width_height_descent(line, font, ismath=False)[0]
               for line in text.split("\n")) / 72


def wrap_text(text: str, width: float, size: str | float = "medium") -> str:
    """``text`` with each line broken at spaces so that none is wider than ``width`` inches at
    font ``size`` (a single word wider than that stays whole)."""
    lines = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            trial = f"{current} {word}" if current else word
            if current and text_width(trial, size) > width:
                lines.append(current)
                current = word
            else:
                current = trial
        lines.append(current)
    return "\n".join(lines)


def suptitle(fig: Figure, text: str) -> None:
    """The figure's title, wrapped to the figure's width."""
    size = plt.rcParams["figure.titlesize"]
    fig.suptitle(wrap_text(text, 0.95 * fig.get_figwidth() - 0.2, size), fontsize=size)


def panel_title(model: str, *details: str, width: float | None = None) -> str:
    """Every panel's title: the model on the first line, then what the panel shows; wrapped to
    ``width`` inches (a panel's cell) when given."""
    title = "\n".join([model, *details])
    return title if width is None else wrap_text(title, width)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels in rows of at most :data:`MAX_COLUMNS`."""
    columns = math.ceil(count / math.ceil(count / MAX_COLUMNS))
    return math.ceil(count / columns), columns


def panel_grid(count: int, size: tuple[float, float], sharey: bool = False
               ) -> tuple[Figure, list[plt.Axes]]:
    """A figure with ``count`` panels of ``size`` inches in rows of at most
    :data:`MAX_COLUMNS` (4 panels: 2 × 2), unused cells removed; at least :data:`MIN_WIDTH`
    wide."""
    rows, columns = grid_shape(count)
    fig, axes = plt.subplots(rows, columns, figsize=(max(MIN_WIDTH, size[0] * columns),
                                                     size[1] * rows),
                             squeeze=False, sharey=sharey, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[count:]:
        fig.delaxes(ax)
    return fig, flat[:count]


def band_alpha(count: int) -> float:
    """Band opacity: fainter when many methods' bands overlap in one panel."""
    return min(0.15, 0.8 / max(count, 1))


def identical_curves(curves: Mapping[str, np.ndarray]) -> dict[str, str]:
    """Method → the earlier method (plot order) whose curve(s) equal its own, for the methods
    that would hide another (e.g. DeepLIFT = IxG on a CoDA-Net)."""
    twins: dict[str, str] = {}
    methods = ordered_methods(curves)
    for i, method in enumerate(methods):
        for earlier in methods[:i]:
            a, b = curves[method], curves[earlier]
            if earlier not in twins and a.shape == b.shape and np.allclose(a, b, rtol=1e-6,
                                                                         atol=1e-9):
                twins[method] = earlier
                break
    return twins


def twin_label(method: str, twins: Mapping[str, str]) -> str:
    """A method's legend label, noting the method whose curve it repeats."""
    label = method_label(method)
    return f"{label} (= {method_label(twins[method])})" if method in twins else label


def error_bars(rows: pd.DataFrame) -> np.ndarray:
    """Summary rows' 95 % CI as (2, k) distances below and above the mean, for errorbar."""
    return np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]
                     ).astype(float)


@dataclass(frozen=True)
class SampleGroup:
    """Methods drawn together on the same samples: ``samples`` (ids) and each method's own n in
    the run (``full``), so a panel can say how many it kept."""

    methods: tuple[str, ...]
    samples: frozenset[Any]
    full: Mapping[str, int]

    def select(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The rows of this group's methods on its samples."""
        return rows[rows["method"].isin(self.methods) & rows["sample"].isin(self.samples)]

    def note(self, unit: str, alone: bool = True) -> str:
        """What the panel's n is, e.g. "8 images, shared by all 10 methods (runs: up to 32)"."""
        n, most = len(self.samples), max(self.full[m] for m in self.methods)
        if not alone:
            return f"{n} {unit}, the ones {', '.join(map(method_label, self.methods))} share"
        if most == n:
            return f"{n} {unit} per method"
        # no-break spaces: a wrapped title keeps "(runs: up to 32)" on one line
        runs = "\u00a0".join(("(runs:", "up", "to", f"{most})"))
        return f"{n} {unit}, shared by all {len(self.methods)} methods {runs}"


def sample_groups(rows: pd.DataFrame) -> list[SampleGroup]:
    """Group the methods of ``rows`` (one model, one metric) so each group is compared on the
    same samples: one group of all methods on the samples common to all of them, or, when they
    share none, one group per distinct sample set (largest first)."""
    sets = {m: frozenset(s) for m, s in rows.groupby("method")["sample"].unique().items()}
    full = {m: len(s) for m, s in sets.items()}
    common = frozenset.intersection(*sets.values())
    if common:
        return [SampleGroup(tuple(ordered_methods(sets)), common, full)]
    by_set: dict[frozenset[Any], list[str]] = {}
    for method in ordered_methods(sets):
        by_set.setdefault(sets[method], []).append(method)
    return [SampleGroup(tuple(methods), samples, full)
            for samples, methods in sorted(by_set.items(), key=lambda kv: -len(kv[0]))]


def _model_groups(rows: pd.DataFrame, manifest: Mapping[str, Any] | None
                  ) -> list[tuple[str, SampleGroup, bool]]:
    """(model, group, whether it is the model's only group), models in figure order."""
    found = []
    for model in ordered_models(rows["model"], manifest):
        groups = sample_groups(rows[rows["model"] == model])
        found += [(model, group, len(groups) == 1) for group in groups]
    return found


# ----------------------------------------------------------------------------- any metric


def score_figure(summary: pd.DataFrame, metric: str, manifest: Mapping[str, Any] | None = None,
                 results: pd.DataFrame | None = None) -> Figure:
    """Each method's mean with its 95 % CI (the summary rows of ``metric``), one panel per
    model and (variant, stat), methods in plot order: the figure of a metric that declares
    none. ``results`` (every metric's rows) fixes the spare colours as in the run's other
    figures; :class:`PlotError` when the summary has no row of ``metric``."""
    rows = summary[summary["metric"] == metric]
    if rows.empty:
        raise PlotError(f"metric {metric!r} has no summary rows: finish the run with the same "
                        "attrib-bench run command")
    rows = rows.assign(variant=rows["variant"].fillna("").astype(str))
    colours = method_colours((summary if results is None else results)["method"].unique())
    panels = [(model, variant, stat, sub)
              for model in ordered_models(rows["model"], manifest)
              for (variant, stat), sub in rows[rows["model"] == model].groupby(
                  ["variant", "stat"], sort=True)]
    most = max(sub["method"].nunique() for *_, sub in panels)
    fig, axes = panel_grid(len(panels), (max(3.6, 0.45 * most + 1.6), 3.6))
    cell = fig.get_figwidth() / grid_shape(len(panels))[1] - 0.8  # a panel's width, inches
    for ax, (model, variant, stat, sub) in zip(axes, panels, strict=True):
        methods = ordered_methods(sub["method"].unique())
        for k, method in enumerate(methods):
            point = sub[sub["method"] == method]
            ax.errorbar([k], point["mean"].to_numpy(float),
                        yerr=np.nan_to_num(error_bars(point)), color=colours[method],
                        marker="o", markersize=5, capsize=3, linestyle="none")
        ax.set_xticks(range(len(methods)), [method_label(m) for m in methods], rotation=40,
                      ha="right")
        ax.set_xlim(-0.6, len(methods) - 0.4)
        direction = next((str(d) for d in sub.get("direction", []) if str(d) in
                          ("higher", "lower")), "")
        what = " ".join(p for p in (variant, stat) if p)
        ax.set_title(panel_title(model, what + (f" ({direction} is better)" if direction
                                                else ""), width=cell), fontsize="medium")
        ax.set_ylabel(f"{metric} {stat} (mean, 95 % CI)")
        ax.grid(alpha=0.3, axis="y")
    suptitle(fig, f"{metric}: each method's mean with its 95 % CI")
    return fig


# ----------------------------------------------------------------------------- Fig. 6


def localisation_figure(results: pd.DataFrame, metric: str = "localisation",
                        manifest: Mapping[str, Any] | None = None) -> Figure:
    """Box plots (quartiles, whiskers, mean ◇) of the per-cell localisation scores, one panel per
    model, in rows of at most :data:`MAX_COLUMNS` (paper Fig. 6, left).

    Within a panel every method is drawn on the same grids (:func:`sample_groups`): methods run
    on fewer grids are compared on the grids all share, and the title says how many. Oracle (1)
    and Uniform (1/n²) are reference lines. Models with a T in ``manifest`` come first, by T.
    A method whose scores equal an earlier one's is labelled so (:func:`identical_curves`).
    """
    rows = metric_rows(results, metric)
    n = int(config_value(rows, "n") or round(np.sqrt(rows["key"].astype(int).max() + 1)))
    colours = method_colours(results["method"].unique())
    panels = _model_groups(rows, manifest)
    most = max(len(group.methods) for _, group, _ in panels)
    fig, axes = panel_grid(len(panels), (max(3.6, 0.45 * most + 1.6), 3.8), sharey=True)
    cell = fig.get_figwidth() / grid_shape(len(panels))[1] - 0.8  # a panel's width, inches
    for ax, (model, group, alone) in zip(axes, panels, strict=True):
        sub = group.select(rows[rows["model"] == model])
        order = list(group.methods)
        twins = identical_curves({m: sub[sub["method"] == m].sort_values(["sample", "key"])[
            "value"].to_numpy(float) for m in order})
        sns.boxplot(data=sub, x="method", y="value", order=order, hue="method", hue_order=order,
                    palette=colours, legend=False, ax=ax, width=0.65, fliersize=1.5, saturation=1,
                    linewidth=0.9, showmeans=True, meanprops=_MEAN_MARKER)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.axhline(1.0 / n**2, color="0.35", linestyle=":", linewidth=1.4)
        ax.set_xticks(range(len(order)), [twin_label(m, twins) for m in order], rotation=40,
                      ha="right")
        ax.set_xlabel("")
        ax.set_ylabel("localisation score (per cell)")
        ax.set_ylim(-0.03, 1.06)
        ax.set_title(panel_title(model, group.note("grids", alone), width=cell),
                     fontsize="medium")
    handles = [Line2D([], [], color="black", linestyle="--", label="Oracle (1)"),
               Line2D([], [], color="0.35", linestyle=":", label=f"Uniform (1/{n * n})"),
               Line2D([], [], linestyle="none", label="mean", **_MEAN_MARKER)]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    suptitle(fig, "Grid localisation" + (" (DiFull)" if metric.endswith("difull") else "")
             + f": share of positive attribution in the right cell of {n}×{n} grids")
    return fig


def _image_pixels(manifest: Mapping[str, Any], model: str, rows: pd.DataFrame | None,
                  metric: str) -> float:
    """The pixels of one of ``model``'s pixel-removal images: the run's sample info, or, for
    rows drawn without a manifest, the pixels the metric's ``fraction`` stands for (the last
    point removes that fraction of the image)."""
    info = manifest.get("samples", {}).get(f"{model}/{metric}", {})
    if "image_pixels" in info:
        return float(info["image_pixels"])
    rows = pd.DataFrame(columns=["removed"]) if rows is None else rows
    fraction = config_value(rows, "fraction") if "metric_config" in rows else None
    if not fraction:
        raise PlotError(f"no image size for {model}'s pixel-removal curves: pass the run's "
                        "manifest (its samples record image_pixels)")
    return float(rows["removed"].max()) / float(fraction)


def _markevery(k: int, count: int, points: int) -> tuple[int, int]:
    """Sparse markers, staggered per method so coinciding curves show different markers."""
    every = max(1, points // 8)
    return (k * every // max(count, 1)) % every, every


@dataclass(frozen=True)
class _Looks:
    """Each method's colour and line style in a figure."""

    colours: Mapping[str, str]
    styles: Mapping[str, Mapping[str, str]]


def pixel_removal_figure(results: pd.DataFrame, curves: pd.DataFrame,
                         manifest: Mapping[str, Any] | None = None, stat: str = "prob", *,
                         auc: Callable[[np.ndarray], Any], raw: pd.DataFrame | None = None,
                         metric: str = "pixel-removal") -> Figure:
    """Mean target probability (or logit) with a bootstrap 95 % band against removed pixels; one
    row per model, a column per order (paper Fig. 6, right).

    Drawn from ``curves`` (:class:`~attrib_bench.metrics.base.FigureTables`' mean curves): each
    method's mean over its own images, its n in the legend when the methods' n differ, with
    ``auc`` (the metric's area under a curve) of each order's mean curve. Methods whose curves
    coincide are noted. Each y axis names the probability its model was scored with
    (:func:`removal_probability`); ``manifest`` gives the images' pixel counts, else ``raw``
    (the metric's result rows, with ``removed`` and ``metric_config``) does.
    """
    manifest = manifest or {}
    rows = curves[(curves["metric"] == metric) & (curves["stat"] == stat)]
    if rows.empty:
        raise PlotError(f"pixel-removal curves have no stat {stat!r}: use prob or logit")
    orders = [o for o in PIXEL_ORDERS if o in set(rows["variant"])]
    looks = _Looks(method_colours(results["method"].unique()), method_styles(rows["method"]))
    models = ordered_models(rows["model"], manifest)
    fig, axes = plt.subplots(len(models), len(orders), figsize=(4.4 * len(orders) + 3.0,
                             3.3 * len(models)), squeeze=False, layout="constrained")
    for r, model in enumerate(models):
        pixels = _image_pixels(manifest, model, None if raw is None
                               else raw[raw["model"] == model], metric)
        kind = removal_probability(manifest, model, metric)
        ylabel = probability_label(kind) if stat == "prob" and kind else f"target {stat}"
        _removal_row(axes[r], rows[rows["model"] == model], orders, pixels, looks, auc,
                     (ylabel + " (mean)", stat == "prob"))
    suptitle(fig, "Pixel removal: mean with bootstrap 95 % band; AUC of the mean curve")
    return fig


def _removal_row(axes: Sequence[plt.Axes], sub: pd.DataFrame, orders: list[str], pixels: float,
                 looks: _Looks, auc: Callable[[np.ndarray], Any], axis: tuple[str, bool]
                 ) -> None:
    """One model's panels (one per order) and their legend of each method's AUCs; ``axis``:
    the y label and whether the y axis is a probability (0 to 1)."""
    model = str(sub["model"].iloc[0])
    methods = ordered_methods(sub["method"].unique())
    per_order = {order: {m: sub[(sub["variant"] == order) & (sub["method"] == m)]
                         .sort_values("x") for m in methods} for order in orders}
    twins = identical_curves({m: np.concatenate([per_order[o][m]["mean"].to_numpy(float)
                                                 for o in orders]) for m in methods})
    counts = {m: int(per_order[orders[0]][m]["n"].max()) for m in methods}
    same_n = len(set(counts.values())) == 1
    aucs: dict[str, list[str]] = {m: [] for m in methods}
    for ax, order in zip(axes, orders, strict=True):
        for k, method in enumerate(methods):
            curve = per_order[order][method]
            x = 100.0 * curve["x"].to_numpy(float) / pixels
            mean = curve["mean"].to_numpy(float)
            ax.fill_between(x, curve["low"].to_numpy(float), curve["high"].to_numpy(float),
                            color=looks.colours[method], linewidth=0,
                            alpha=band_alpha(len(methods)))
            ax.plot(x, mean, color=looks.colours[method], linewidth=1.5, markersize=3.5,
                    markevery=_markevery(k, len(methods), len(x)),
                    label=twin_label(method, twins), **looks.styles[method])
            aucs[method].append(f"{float(auc(mean)):.3f}")
        note = (f"{counts[methods[0]]} images per method" if same_n
                else "images per method: n in the legend")
        ax.set_title(panel_title(model, PIXEL_ORDERS[order], note, width=3.5),
                     fontsize="medium")
        ax.set_ylabel(axis[0])
        ax.set_xlabel("pixels removed (%)")
        if axis[1]:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    labels = [f"{label}{'' if same_n else f' (n {counts[m]})'}  {' · '.join(aucs[m])}"
              for label, m in zip(labels, methods, strict=True)]
    title = "AUC (" + " · ".join(_ORDER_SHORT[o] for o in orders) + ")"
    axes[-1].legend(handles, labels, title=title, fontsize="small", title_fontsize="small",
                    frameon=False, loc="center left", bbox_to_anchor=(1.02, 0.5))


# ----------------------------------------------------------------------------- randomisation


def layer_label(name: str, position: int) -> str:
    """A randomised layer as a tick label: its place from the top (1 = output) and its name with
    indices marked, e.g. "layers.8" → "1 · layers #8", "layer3.8.conv2" → "layer3 #8 conv2"."""
    pretty = " ".join(f"#{part}" if part.isdigit() else part for part in name.split("."))
    return f"{position} · {pretty}"


def labelled_layers(count: int, most: int = MAX_LAYER_LABELS) -> list[int]:
    """Which of the layer positions 1..``count`` to label: all of them, or ``most`` spread
    evenly, the first (top) and the last always among them."""
    if count <= most:
        return list(range(1, count + 1))
    return sorted({round(float(x)) for x in np.linspace(1, count, most)})


#: Axis names of the randomisation similarities.
_SIMILARITY_NAMES = {"spearman": "Spearman", "spearman_abs": "Spearman of |map|", "ssim": "SSIM"}


def randomisation_figure(results: pd.DataFrame, model: str,
                         stats: Sequence[str] = ("spearman_abs", "ssim"),
                         metric: str = "randomisation") -> Figure:
    """Mean similarity to the original maps (bootstrap 95 % band) against the randomised layer,
    top first, per method; one column per mode (cascading, independent), one row per similarity.
    The unrandomised model is the reference point at the left (similarity 1 by definition);
    methods are drawn on the images they all share (:func:`sample_groups`).

    Deep models keep the figure at most :data:`MAX_WIDTH` wide: at most
    :data:`MAX_LAYER_LABELS` layers are labelled (the others are unlabelled ticks). Points whose
    mean is undefined (a constant map has no Spearman correlation) are gaps, and the panel's
    title counts them per method.
    """
    rows = metric_rows(results, metric)
    rows = rows[(rows["model"] == model) & rows["stat"].isin(stats)]
    if rows.empty:
        raise PlotError(f"no randomisation rows for model {model!r} with stats {list(stats)}")
    groups = sample_groups(rows)
    if len(groups) == 1:  # every method on the images all share
        rows = groups[0].select(rows)
    shared = "" if len(groups) == 1 else ", not the same for every method"
    modes = [m for m in ("cascading", "independent") if m in set(rows["variant"])]
    stats = [s for s in stats if s in set(rows["stat"])]
    looks = _Looks(method_colours(results["method"].unique()), method_styles(rows["method"]))
    layers = (rows[["key", "layer_index"]].drop_duplicates().sort_values("layer_index")
              if "layer_index" in rows else rows[["key"]].drop_duplicates())
    position = {key: i + 1 for i, key in enumerate(layers["key"])}
    panel = min(7.0, max(3.6, 0.1 * len(position) + 2.6))  # one panel's width, inches
    fig, axes = plt.subplots(len(stats), len(modes),
                             figsize=(min(MAX_WIDTH, panel * len(modes) + 2.8),
                                      3.4 * len(stats) + 1.2),
                             squeeze=False, sharex=True, sharey="row", layout="constrained")
    for i, stat in enumerate(stats):
        for j, mode in enumerate(modes):
            sub = rows[(rows["stat"] == stat) & (rows["variant"] == mode)]
            title = f"{mode} randomisation ({sub['sample'].nunique()} images{shared})"
            _randomisation_panel(axes[i, j], sub, position, looks, title, panel)
            if i == len(stats) - 1:
                _layer_axis(axes[i, j], position, panel)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    suptitle(fig, f"Parameter randomisation: {model} (mean, bootstrap 95 % band; lower means "
             "the maps follow the weights)")
    return fig


def _origin(position: Mapping[str, int]) -> int:
    """The unrandomised model's x: left of layer 1, labels kept apart on a deep model."""
    return -(len(position) // 30)


def _randomisation_panel(ax: plt.Axes, sub: pd.DataFrame, position: Mapping[str, int],
                         looks: _Looks, title: str, panel: float) -> None:
    """One (similarity, mode) panel: each method's mean with its band over the layers at
    ``position``, the unrandomised reference point, and a title counting undefined points."""
    stat = str(sub["stat"].iloc[0])
    notes = []
    for method in ordered_methods(sub["method"].unique()):
        table = sub[sub["method"] == method].pivot_table(
            index="sample", columns="key", values="value").reindex(columns=list(position))
        mean, low, high = mean_band(table.to_numpy(float))
        x = np.arange(1, len(position) + 1)
        ax.fill_between(x, low, high, color=looks.colours[method], linewidth=0,
                        alpha=band_alpha(sub["method"].nunique()))
        ax.plot(x, mean, markersize=3, color=looks.colours[method], label=method_label(method),
                **looks.styles[method])
        undefined = int(np.isnan(mean).sum())
        if undefined:
            reason = "constant map" if stat.startswith("spearman") else "non-finite map"
            notes.append(f"{method_label(method)}: {undefined} of {len(mean)} points "
                         f"undefined ({reason}): not drawn")
    ax.plot([_origin(position)], [1.0], marker="*", markersize=9, color="black",
            linestyle="none", label="unrandomised (1 by definition)")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set_title(wrap_text("\n".join([title, *notes]), panel - 0.3), fontsize="medium")
    ax.set_ylabel(f"{_SIMILARITY_NAMES.get(stat, stat)} to the original map")
    ax.grid(alpha=0.3)


def _layer_axis(ax: plt.Axes, position: Mapping[str, int], panel: float) -> None:
    """The bottom row's x axis: the unrandomised point and the labelled layers, top first."""
    labelled = [_origin(position), *labelled_layers(len(position))]
    ax.set_xticks(labelled, ["unrandomised"] + [
        layer_label(str(key), k) for key, k in position.items() if k in labelled],
        rotation=90, fontsize="x-small")
    ax.set_xticks(sorted(set(range(1, len(position) + 1)) - set(labelled)), minor=True)
    ax.set_xlabel(wrap_text("randomised layer (1 = top, next to the output)", panel - 0.8))
