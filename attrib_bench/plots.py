"""The paper's figures from a run's tidy tables: Fig. 6 plots, the T series, the sanity check.

Every figure function takes DataFrames (``results.parquet``'s rows, ``summary.csv``) and returns a
matplotlib Figure, so a user can restyle or compose it; :func:`plot_results` reads a run folder
and writes every figure that its tables support. Methods keep one order and one colour in every
figure (:func:`method_colours`); a method's label and colour are its registry metadata
(``@register_method("mine", label="Mine", colour="#123456")``), so a plugin's method is drawn
as its author chose. The qualitative sheets (Fig. 7, Fig. 8) need maps, not scores: they read
the ``examples/*.safetensors`` files that ``attrib-bench examples`` writes
(:mod:`attrib_bench.runners.examples`), so they too are redrawn without a model.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.cm import ScalarMappable  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.font_manager import FontProperties  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.textpath import TextToPath  # noqa: E402

from attrib_bench.errors import PlotError  # noqa: E402
from attrib_bench.models.protocols import probability_label  # noqa: E402
from attrib_bench.registry import (  # noqa: E402
    METHOD_ORDER,
    _method_metadata,
    method_label,
    ordered_methods,
)
from attrib_bench.store import (  # noqa: E402
    RESULT_COLUMNS,
    SUMMARY_COLUMNS,
    RunTables,
    load_run,
    load_runs,
    mean_band,
    model_temperatures,
    run_folders,
)

__all__ = ["METHOD_ORDER", "RESULT_COLUMNS", "SUMMARY_COLUMNS", "RunTables", "load_run",
           "load_runs", "method_label", "model_temperatures", "ordered_methods", "run_folders"]

#: Colours for methods whose registry entry has no ``colour`` (or that are not registered now,
#: e.g. results from a plugin not loaded), in :func:`ordered_methods` order.
_EXTRA_COLOURS: tuple[str, ...] = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                                   "#e6550d", "#31a354", "#756bb1", "#636363")
PIXEL_ORDERS: dict[str, str] = {"least-first": "least important first (higher is better)",
                                "most-first": "most important first (lower is better)"}
_ORDER_SHORT: dict[str, str] = {"least-first": "least first ↑", "most-first": "most first ↓"}
#: Line styles and markers, fixed per method (:func:`method_styles`). Every marker is a convex
#: outline, so that a hollow one (:func:`_hollow_below`: fewer samples) shows its white face; a
#: filled plus, cross or star at 4 pt has no inside to show.
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
#: Sideways shift between methods in the temperature figure, in decades of T.
_DODGE_DECADES = 0.02
_TEXT_PATHS = TextToPath()


# ----------------------------------------------------------------------------- reading


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


def metric_rows(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The finite rows of one metric; :class:`PlotError` if the metric has none."""
    rows = results[(results["metric"] == metric) & (results["flag"].fillna("") == "")]
    if rows.empty:
        present = ", ".join(sorted(results["metric"].unique())) or "none"
        raise PlotError(f"metric {metric!r} has no finite rows in these results (metrics "
                        f"present: {present}): run attrib-bench run --metric {metric} first")
    return rows


def _config_value(rows: pd.DataFrame, key: str) -> Any:
    """One hyper-parameter of the metric that wrote ``rows`` (from the metric_config column)."""
    values = {json.loads(text).get(key) for text in rows["metric_config"].unique()}
    return values.pop() if len(values) == 1 else None


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


def _ordered_models(names: Iterable[str], manifest: Mapping[str, Any] | None = None
                    ) -> list[str]:
    """Models with a T in the manifest (the CoDA-Nets) first, by T, then by parameter count
    (the manifest's) and name: an order that does not depend on the rows' order, so a store and
    the run folders it came from draw the same panels. Every figure uses this order."""
    names = list(dict.fromkeys(names))
    temperatures = model_temperatures(manifest, names)
    info = (manifest or {}).get("models", {})
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


def _suptitle(fig: Figure, text: str) -> None:
    """The figure's title, wrapped to the figure's width."""
    size = plt.rcParams["figure.titlesize"]
    fig.suptitle(wrap_text(text, 0.95 * fig.get_figwidth() - 0.2, size), fontsize=size)


def _panel_title(model: str, *details: str, width: float | None = None) -> str:
    """Every panel's title: the model on the first line, then what the panel shows; wrapped to
    ``width`` inches (a panel's cell) when given."""
    title = "\n".join([model, *details])
    return title if width is None else wrap_text(title, width)


def _grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` panels in rows of at most :data:`MAX_COLUMNS`."""
    columns = math.ceil(count / math.ceil(count / MAX_COLUMNS))
    return math.ceil(count / columns), columns


def panel_grid(count: int, size: tuple[float, float], sharey: bool = False
               ) -> tuple[Figure, list[plt.Axes]]:
    """A figure with ``count`` panels of ``size`` inches in rows of at most
    :data:`MAX_COLUMNS` (4 panels: 2 × 2), unused cells removed; at least :data:`MIN_WIDTH`
    wide."""
    rows, columns = _grid_shape(count)
    fig, axes = plt.subplots(rows, columns, figsize=(max(MIN_WIDTH, size[0] * columns),
                                                     size[1] * rows),
                             squeeze=False, sharey=sharey, layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[count:]:
        fig.delaxes(ax)
    return fig, flat[:count]


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
    for model in _ordered_models(rows["model"], manifest):
        groups = sample_groups(rows[rows["model"] == model])
        found += [(model, group, len(groups) == 1) for group in groups]
    return found


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
    n = int(_config_value(rows, "n") or round(np.sqrt(rows["key"].astype(int).max() + 1)))
    colours = method_colours(results["method"].unique())
    panels = _model_groups(rows, manifest)
    most = max(len(group.methods) for _, group, _ in panels)
    fig, axes = panel_grid(len(panels), (max(3.6, 0.45 * most + 1.6), 3.8), sharey=True)
    cell = fig.get_figwidth() / _grid_shape(len(panels))[1] - 0.8  # a panel's width, inches
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
        ax.set_xticks(range(len(order)), [_twin_label(m, twins) for m in order], rotation=40,
                      ha="right")
        ax.set_xlabel("")
        ax.set_ylabel("localisation score (per cell)")
        ax.set_ylim(-0.03, 1.06)
        ax.set_title(_panel_title(model, group.note("grids", alone), width=cell),
                     fontsize="medium")
    handles = [Line2D([], [], color="black", linestyle="--", label="Oracle (1)"),
               Line2D([], [], color="0.35", linestyle=":", label=f"Uniform (1/{n * n})"),
               Line2D([], [], linestyle="none", label="mean", **_MEAN_MARKER)]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    _suptitle(fig, "Grid localisation" + (" (DiFull)" if metric.endswith("difull") else "")
              + f": share of positive attribution in the right cell of {n}×{n} grids")
    return fig


def _image_pixels(manifest: Mapping[str, Any], model: str, rows: pd.DataFrame) -> float:
    """The pixels of one of ``model``'s pixel-removal images: the run's sample info, or, for
    rows drawn without a manifest, the pixels the metric's ``fraction`` stands for (the last
    point removes that fraction of the image)."""
    info = manifest.get("samples", {}).get(f"{model}/pixel-removal", {})
    if "image_pixels" in info:
        return float(info["image_pixels"])
    fraction = _config_value(rows, "fraction") if "metric_config" in rows else None
    if not fraction:
        raise PlotError(f"no image size for {model}'s pixel-removal curves: pass the run's "
                        "manifest (its samples record image_pixels)")
    return float(rows["removed"].max()) / float(fraction)


def removal_probability(manifest: Mapping[str, Any], model: str) -> str:
    """The probability ("sigmoid" or "softmax") ``model``'s pixel-removal ``prob`` rows hold,
    from the run's sample info ("" if it records none)."""
    info = manifest.get("samples", {}).get(f"{model}/pixel-removal", {})
    return str(info.get("probability", ""))


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


def _markevery(k: int, count: int, points: int) -> tuple[int, int]:
    """Sparse markers, staggered per method so coinciding curves show different markers."""
    every = max(1, points // 8)
    return (k * every // max(count, 1)) % every, every


def pixel_removal_figure(results: pd.DataFrame, summary: pd.DataFrame | None = None,
                         manifest: Mapping[str, Any] | None = None,
                         stat: str = "prob", curves: pd.DataFrame | None = None) -> Figure:
    """Mean target probability (or logit) with a bootstrap 95 % band against removed pixels; one
    row per model, a column per order (paper Fig. 6, right).

    Drawn from ``curves`` (:func:`attrib_bench.store.curve_table`; default: made from
    ``results``' per-step rows): each method's mean over its own images, its n in the legend
    when the methods' n differ, with the AUC of each order (the mean of the images' AUCs; the
    statistics that pair methods on shared images are in the summary and ``compare``). Methods
    whose curves coincide are noted. Each y axis names the probability its model was scored with
    (:func:`removal_probability`); ``manifest`` gives the images' pixel counts.
    ``summary`` is not needed (kept for callers).
    """
    from attrib_bench.metrics.pixel_removal import curve_auc
    from attrib_bench.store import curve_table

    manifest = manifest or {}
    raw = None
    if curves is None:
        raw = metric_rows(results, "pixel-removal")
        curves = curve_table(raw)
    rows = curves[(curves["metric"] == "pixel-removal") & (curves["stat"] == stat)]
    if rows.empty:
        raise PlotError(f"pixel-removal curves have no stat {stat!r}: use prob or logit")
    orders = [o for o in PIXEL_ORDERS if o in set(rows["variant"])]
    colours, styles = method_colours(results["method"].unique()), method_styles(rows["method"])
    models = _ordered_models(rows["model"], manifest)
    fig, axes = plt.subplots(len(models), len(orders), figsize=(4.4 * len(orders) + 3.0,
                             3.3 * len(models)), squeeze=False, layout="constrained")
    for r, model in enumerate(models):
        sub = rows[rows["model"] == model]
        pixels = _image_pixels(manifest, model, raw[raw["model"] == model] if raw is not None
                               else pd.DataFrame(columns=["removed"]))
        methods = ordered_methods(sub["method"].unique())
        per_order = {order: {m: sub[(sub["variant"] == order) & (sub["method"] == m)]
                             .sort_values("x") for m in methods} for order in orders}
        twins = identical_curves({m: np.concatenate([per_order[o][m]["mean"].to_numpy(float)
                                                     for o in orders]) for m in methods})
        counts = {m: int(per_order[orders[0]][m]["n"].max()) for m in methods}
        same_n = len(set(counts.values())) == 1
        aucs: dict[str, list[str]] = {m: [] for m in methods}
        for c, order in enumerate(orders):
            ax = axes[r, c]
            for k, method in enumerate(methods):
                curve = per_order[order][method]
                x = 100.0 * curve["x"].to_numpy(float) / pixels
                mean = curve["mean"].to_numpy(float)
                ax.fill_between(x, curve["low"].to_numpy(float), curve["high"].to_numpy(float),
                                color=colours[method], linewidth=0,
                                alpha=_band_alpha(len(methods)))
                ax.plot(x, mean, color=colours[method], linewidth=1.5, markersize=3.5,
                        markevery=_markevery(k, len(methods), len(x)),
                        label=_twin_label(method, twins), **styles[method])
                aucs[method].append(f"{float(curve_auc(mean)):.3f}")
            note = (f"{counts[methods[0]]} images per method" if same_n
                    else "images per method: n in the legend")
            ax.set_title(_panel_title(model, PIXEL_ORDERS[order], note, width=3.5),
                         fontsize="medium")
            kind = removal_probability(manifest, model)
            ax.set_ylabel((probability_label(kind) if stat == "prob" and kind
                           else f"target {stat}") + " (mean)")
            ax.set_xlabel("pixels removed (%)")
            if stat == "prob":
                ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        handles, labels = axes[r, 0].get_legend_handles_labels()
        labels = [f"{label}{'' if same_n else f' (n {counts[m]})'}  {' · '.join(aucs[m])}"
                  for label, m in zip(labels, methods, strict=True)]
        title = "AUC (" + " · ".join(_ORDER_SHORT[o] for o in orders) + ")"
        axes[r, -1].legend(handles, labels, title=title, fontsize="small",
                           title_fontsize="small", frameon=False, loc="center left",
                           bbox_to_anchor=(1.02, 0.5))
    _suptitle(fig, "Pixel removal: mean with bootstrap 95 % band; AUC of the mean curve")
    return fig


def _band_alpha(count: int) -> float:
    """Band opacity: fainter when many methods' bands overlap in one panel."""
    return min(0.15, 0.8 / max(count, 1))


def _twin_label(method: str, twins: Mapping[str, str]) -> str:
    """A method's legend label, noting the method whose curve it repeats."""
    label = method_label(method)
    return f"{label} (= {method_label(twins[method])})" if method in twins else label


def temperature_figure(summary: pd.DataFrame, temperatures: Mapping[str, float]) -> Figure:
    """Localisation and pixel-removal AUC against T (paper Fig. 6, bottom), mean ± 95 % CI.

    One panel per available score; models without a T (e.g. ResNet-56) are left out. Methods
    measured at two or more T are lines on the log-T axis, dodged sideways a little so their
    error bars do not overlap. Methods measured at one T only are drawn in a narrow strip right
    of each panel, one place per method on the panel's y axis (:func:`_single_t_strip`).
    """
    if len(set(temperatures.values())) < 2:
        raise PlotError("the temperature series needs CoDA-Nets at two or more T in one run: "
                        "run e.g. --model xs-coda-sq-t10,xs-coda-sq-t100,xs-coda-sq-t1000")
    rows = summary[summary["model"].isin(list(temperatures))].copy()
    rows["T"] = rows["model"].map(temperatures)
    panels = [(label, rows[(rows["metric"] == metric) & (rows["variant"] == variant)
                           & (rows["stat"] == stat)])
              for label, metric, variant, stat in (
                  ("localisation score", "localisation", "", "score"),
                  ("pixel removal AUC, least first", "pixel-removal", "least-first", "prob-auc"),
                  ("pixel removal AUC, most first", "pixel-removal", "most-first", "prob-auc"))]
    panels = [(label, sub) for label, sub in panels if not sub.empty]
    if not panels:
        raise PlotError("no localisation or pixel-removal summary rows for the CoDA-Nets: "
                        "run --metric localisation,pixel-removal on them")
    colours = method_colours(summary["method"].unique())
    methods = ordered_methods(pd.concat([sub for _, sub in panels])["method"].unique())
    styles = method_styles(methods)
    measured = {m: sorted({t for _, sub in panels for t in sub.loc[sub["method"] == m, "T"]})
                for m in methods}
    series = [m for m in methods if len(measured[m]) > 1]
    lone = {m: measured[m][0] for m in methods if len(measured[m]) == 1}
    offsets = {m: _DODGE_DECADES * (k - (len(series) - 1) / 2) for k, m in enumerate(series)}
    twins = identical_curves({m: np.concatenate([sub[sub["method"] == m].sort_values("T")[
        "mean"].to_numpy(float) for _, sub in panels]) for m in methods})
    names = [_twin_label(m, twins) for m in lone]  # the strip's tick labels, for its height
    height = 3.6 + (text_width("\n".join(names), "small") - 0.5 if lone else 0.0)
    fig, pairs = _strip_grid(len(panels), (4.4, height), 0.3 * len(lone) + 0.5 if lone else 0.0)
    ticks = sorted(set(rows["T"]))
    for (ax, strip), (label, sub) in zip(pairs, panels, strict=True):
        low, high = int(sub["n"].min()), int(sub["n"].max())
        for method in series:
            line = sub[sub["method"] == method].sort_values("T")
            if not line.empty:
                x = line["T"].to_numpy(float) * 10 ** offsets[method]
                ax.errorbar(x, line["mean"].to_numpy(float), yerr=_error_bars(line),
                            color=colours[method], markersize=4, capsize=2, linewidth=1.4,
                            label=_twin_label(method, twins), **styles[method])
                _hollow_below(ax, x, line, high, colours[method], styles[method]["marker"])
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=40)  # 500 and 1000 sit close
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel(f"{label}\n(mean, 95 % CI)")
        ax.set_title(f"{label}\nn = {high} per point" if low == high else
                     f"{label}\nn = {low}–{high} per point (hollow: n < {high})",
                     fontsize="medium")
        ax.grid(alpha=0.3)
        if strip is not None:
            _single_t_strip(strip, sub, lone, colours, styles, twins, high)
    handles: dict[str, Any] = {}
    for ax, _ in pairs:  # every method, even one missing from the first panel
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(text, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside right center",
                   frameon=False)
    names = ", ".join(sorted(temperatures, key=lambda name: (temperatures[name], name)))
    _suptitle(fig, f"Temperature series: {names} (methods shifted sideways to keep bars apart)")
    return fig


def _strip_grid(count: int, size: tuple[float, float], strip: float
                ) -> tuple[Figure, list[tuple[plt.Axes, plt.Axes | None]]]:
    """Like :func:`panel_grid`, with a narrow panel ``strip`` inches wide right of each panel
    that shares its y axis (None when ``strip`` is 0)."""
    rows, columns = _grid_shape(count)
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


def _error_bars(rows: pd.DataFrame) -> np.ndarray:
    """Summary rows' 95 % CI as (2, k) distances below and above the mean, for errorbar."""
    return np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]
                     ).astype(float)


def _single_t_strip(ax: plt.Axes, sub: pd.DataFrame, lone: Mapping[str, float],
                    colours: Mapping[str, str], styles: Mapping[str, Mapping[str, str]],
                    twins: Mapping[str, str], high: int) -> None:
    """The methods measured at one T only (method → T), side by side at categorical x positions
    labelled with their names, each a mean with its 95 % CI; hollow where n < ``high``."""
    for k, (method, t) in enumerate(lone.items()):
        point = sub[(sub["method"] == method) & (sub["T"] == t)]
        if not point.empty:
            ax.errorbar([k], point["mean"].to_numpy(float), yerr=_error_bars(point),
                        color=colours[method], marker=styles[method]["marker"], markersize=4,
                        capsize=2, linestyle="none", label=_twin_label(method, twins))
            _hollow_below(ax, np.array([float(k)]), point, high, colours[method],
                          styles[method]["marker"])
    one = len(set(lone.values())) == 1
    ax.set_xticks(range(len(lone)), [_twin_label(m, twins) + ("" if one else f" (T = {t:g})")
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


def _family_label(row: Mapping[str, Any], side: str, drop: str) -> str:
    """A family's short name in an agreement panel: what varies in that panel."""
    if drop == "model":
        parts = [row[f"{side}_metric"].replace("localisation-difull", "DiFull"),
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
                  for m in _ordered_models(same["a_model"], manifest)}
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
        ax.set_title(_panel_title(title, f"τ between its {other}s' rankings",
                                  width=side - 0.8), fontsize="medium")
    fig.colorbar(ScalarMappable(norm=norm, cmap="RdBu"), ax=list(axes), shrink=0.6,
                 label="Kendall's τ")
    _suptitle(fig, "Agreement between method rankings (Kendall's τ of the methods' means)")
    return fig


def randomisation_figure(results: pd.DataFrame, model: str,
                         stats: Sequence[str] = ("spearman_abs", "ssim")) -> Figure:
    """Mean similarity to the original maps (bootstrap 95 % band) against the randomised layer,
    top first, per method; one column per mode (cascading, independent), one row per similarity.
    The unrandomised model is the reference point at the left (similarity 1 by definition);
    methods are drawn on the images they all share (:func:`sample_groups`).

    Deep models keep the figure at most :data:`MAX_WIDTH` wide: at most
    :data:`MAX_LAYER_LABELS` layers are labelled (the others are unlabelled ticks). Points whose
    mean is undefined (a constant map has no Spearman correlation) are gaps, and the panel's
    title counts them per method.
    """
    rows = metric_rows(results, "randomisation")
    rows = rows[(rows["model"] == model) & rows["stat"].isin(stats)]
    if rows.empty:
        raise PlotError(f"no randomisation rows for model {model!r} with stats {list(stats)}")
    groups = sample_groups(rows)
    if len(groups) == 1:  # every method on the images all share
        rows = groups[0].select(rows)
    shared = "" if len(groups) == 1 else ", not the same for every method"
    modes = [m for m in ("cascading", "independent") if m in set(rows["variant"])]
    stats = [s for s in stats if s in set(rows["stat"])]
    colours, styles = method_colours(results["method"].unique()), method_styles(rows["method"])
    layers = (rows[["key", "layer_index"]].drop_duplicates().sort_values("layer_index")
              if "layer_index" in rows else rows[["key"]].drop_duplicates())
    position = {key: i + 1 for i, key in enumerate(layers["key"])}
    origin = -(len(position) // 30)  # the original model: left of layer 1, labels kept apart
    labelled = [origin, *labelled_layers(len(position))]
    names = {"spearman": "Spearman", "spearman_abs": "Spearman of |map|", "ssim": "SSIM"}
    panel = min(7.0, max(3.6, 0.1 * len(position) + 2.6))  # one panel's width, inches
    fig, axes = plt.subplots(len(stats), len(modes),
                             figsize=(min(MAX_WIDTH, panel * len(modes) + 2.8),
                                      3.4 * len(stats) + 1.2),
                             squeeze=False, sharex=True, sharey="row", layout="constrained")
    for i, stat in enumerate(stats):
        for j, mode in enumerate(modes):
            ax = axes[i, j]
            sub = rows[(rows["stat"] == stat) & (rows["variant"] == mode)]
            notes = []
            for method in ordered_methods(sub["method"].unique()):
                table = sub[sub["method"] == method].pivot_table(
                    index="sample", columns="key", values="value").reindex(columns=list(position))
                mean, low, high = mean_band(table.to_numpy(float))
                x = np.arange(1, len(position) + 1)
                ax.fill_between(x, low, high, color=colours[method], linewidth=0,
                                alpha=_band_alpha(sub["method"].nunique()))
                ax.plot(x, mean, markersize=3, color=colours[method], label=method_label(method),
                        **styles[method])
                undefined = int(np.isnan(mean).sum())
                if undefined:
                    reason = "constant map" if stat.startswith("spearman") else "non-finite map"
                    notes.append(f"{method_label(method)}: {undefined} of {len(mean)} points "
                                 f"undefined ({reason}): not drawn")
            ax.plot([origin], [1.0], marker="*", markersize=9, color="black", linestyle="none",
                    label="unrandomised (1 by definition)")
            ax.axhline(0.0, color="0.5", linewidth=0.8)
            title = f"{mode} randomisation ({sub['sample'].nunique()} images{shared})"
            ax.set_title(wrap_text("\n".join([title, *notes]), panel - 0.3), fontsize="medium")
            ax.set_ylabel(f"{names.get(stat, stat)} to the original map")
            ax.grid(alpha=0.3)
            if i == len(stats) - 1:
                ax.set_xticks(labelled, ["unrandomised"] + [
                    layer_label(str(key), k) for key, k in position.items() if k in labelled],
                    rotation=90, fontsize="x-small")
                ax.set_xticks(sorted(set(range(1, len(position) + 1)) - set(labelled)),
                              minor=True)
                ax.set_xlabel(wrap_text("randomised layer (1 = top, next to the output)",
                                        panel - 0.8))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    _suptitle(fig, f"Parameter randomisation: {model} (mean, bootstrap 95 % band; lower means "
              "the maps follow the weights)")
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
    _suptitle(fig, title or "Per-class contribution maps on a multi-image")
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
    _suptitle(fig, title or "Attribution maps side by side")
    return fig


# ----------------------------------------------------------------------------- a run folder


def figures_for(tables: RunTables) -> dict[str, Figure]:
    """Every figure the run's tables support, by file stem (none for a run of plugin metrics
    only). A metric the run was configured with but that has no rows raises
    :class:`PlotError` (an unfinished or broken run). Methods are labelled and coloured as the
    runs recorded them (:meth:`RunTables.drawn_as_recorded`), then as the registry has them."""
    with tables.drawn_as_recorded():
        return _figures_for(tables)


def _figures_for(tables: RunTables) -> dict[str, Figure]:
    results, present = tables.results, set(tables.results["metric"].unique())
    configured = tables.manifest.get("config", {}).get("metrics", [])
    for metric in configured:
        if metric not in present:
            raise PlotError(f"metric {metric!r} has no rows in {tables.path / 'results.parquet'}"
                            ": finish the run with the same attrib-bench run command")
    figures: dict[str, Figure] = {}
    for metric in ("localisation", "localisation-difull"):
        if metric in present:
            figures[metric] = localisation_figure(results, metric, tables.manifest)
    if "pixel-removal" in present:
        figures["pixel-removal"] = pixel_removal_figure(results, tables.summary, tables.manifest,
                                                        curves=tables.curves)
    if present & {"localisation", "pixel-removal"}:
        series = temperature_series(tables.manifest, tables.temperatures())
        for i, temperatures in enumerate(series):
            name = "temperature" if i == 0 else f"temperature-{min(temperatures)}"
            figures[name] = temperature_figure(tables.summary, temperatures)
    if present & {"localisation", "localisation-difull", "pixel-removal"}:
        from attrib_bench.compare import agreement, tables_values

        taus = agreement(*tables_values(tables), resamples=0)
        for by in ("model", "metric"):
            try:
                across = "metrics" if by == "model" else "models"
                figures[f"agreement-across-{across}"] = agreement_figure(taus, by,
                                                                         tables.manifest)
            except PlotError:  # fewer than three shared methods: nothing to draw
                pass
    if "randomisation" in present:
        randomised = results.loc[results["metric"] == "randomisation", "model"]
        for model in _ordered_models(randomised, tables.manifest):
            figures[f"randomisation-{model}"] = randomisation_figure(results, model)
    folders = dict.fromkeys(p.resolve() for p in [tables.path, *map(Path, tables.manifest.get(
        "runs", []))])
    for folder in folders:
        for stem, fig in example_figures(folder / "examples").items():
            figures.setdefault(stem, fig)
    return figures


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
        raise PlotError(f"nothing to plot in {tables.path}: figures exist for localisation, "
                        "pixel-removal and randomisation results (or attrib-bench examples); "
                        "attrib-bench report shows any run's summary")
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
