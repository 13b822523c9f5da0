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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from attrib_bench.errors import PlotError  # noqa: E402
from attrib_bench.models.protocols import probability_label  # noqa: E402
from attrib_bench.registry import METHODS  # noqa: E402

#: Methods in the order the paper lists them, then the ones it dropped on CIFAR-10.
METHOD_ORDER: tuple[str, ...] = ("inherent", "grad", "ixg", "intgrad", "deeplift", "gradcam",
                                 "occlusion", "occ5", "occ9", "rise", "lime")
#: Colours for methods whose registry entry has no ``colour`` (or that are not registered now,
#: e.g. results from a plugin not loaded), in :func:`ordered_methods` order.
_EXTRA_COLOURS: tuple[str, ...] = ("#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
                                   "#e6550d", "#31a354", "#756bb1", "#636363")
RESULT_COLUMNS: tuple[str, ...] = ("model", "method", "metric", "sample", "key", "variant",
                                   "stat", "value", "flag", "metric_config")
SUMMARY_COLUMNS: tuple[str, ...] = ("model", "method", "metric", "variant", "stat", "mean",
                                    "ci_low", "ci_high", "n", "direction")
PIXEL_ORDERS: dict[str, str] = {"least-first": "least important first (higher is better)",
                                "most-first": "most important first (lower is better)"}


# ----------------------------------------------------------------------------- reading


@dataclass
class RunTables:
    """A finished run's tables: ``results`` (tidy rows), ``summary`` and the ``manifest``."""

    path: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)

    def temperatures(self) -> dict[str, float]:
        """Model name → T for the models that have one (CoDA-Nets), from the manifest."""
        return model_temperatures(self.manifest, self.results["model"].unique())


def model_temperatures(manifest: Mapping[str, Any] | None, names: Iterable[str]
                       ) -> dict[str, float]:
    """Model name → T for those of ``names`` whose manifest entry records a ``temperature``.

    The manifest is the one source: the runner records T for every model that has one, so
    figures need neither the model zoo nor a T parsed from a model's name.
    """
    info = (manifest or {}).get("models", {})
    found = {name: info.get(name, {}).get("temperature") for name in names}
    return {name: float(value) for name, value in found.items() if value is not None}


def load_run(path: str | Path) -> RunTables:
    """Read ``results.parquet``, ``summary.csv`` and ``manifest.json`` from a run folder.

    Raises :class:`PlotError` (one line, naming the fix) for a missing folder, an unfinished run,
    or tables written by an older attrib-bench (missing columns).
    """
    path = Path(path)
    if not path.is_dir():
        raise PlotError(f"no results folder {path}: write one with attrib-bench run --out {path}")
    table = path / "results.parquet"
    if not table.is_file():
        hint = ("the run did not finish: re-run the same attrib-bench run command to resume"
                if (path / "parts").is_dir() else
                f"write one with attrib-bench run --out {path}")
        raise PlotError(f"no results.parquet in {path}: {hint}")
    try:
        results = pd.read_parquet(table)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise PlotError(f"{table} cannot be read ({type(exc).__name__}): re-run attrib-bench "
                        "run with --overwrite") from None
    _require_columns(results, RESULT_COLUMNS, table)
    summary_file = path / "summary.csv"
    if not summary_file.is_file():
        raise PlotError(f"no summary.csv in {path}: re-run the same attrib-bench run command "
                        "(it rewrites the tables from the finished chunks)")
    summary = pd.read_csv(summary_file, keep_default_na=False, na_values=[""])
    summary["variant"] = summary["variant"].fillna("").astype(str)
    _require_columns(summary, SUMMARY_COLUMNS, summary_file)
    manifest_file = path / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    return RunTables(path, results, summary, manifest)


def run_folders(path: str | Path) -> list[Path]:
    """``path`` itself if it holds a run, else its sub-folders that do (sorted), else [path]
    (so that :func:`load_run` names what is missing)."""
    path = Path(path)
    if (path / "results.parquet").is_file() or not path.is_dir():
        return [path]
    found = sorted(p.parent for p in path.glob("*/results.parquet"))
    return found or [path]


def load_runs(paths: str | Path | Iterable[str | Path]) -> RunTables:
    """One or more run folders (or parents of run folders) as one :class:`RunTables`.

    Runs may split a sweep by cost (e.g. gradient methods at the paper's n, perturbation methods
    at a smaller n); a (model, method, metric) found in two runs is an error. The merged tables
    keep the first path as their ``path`` (the default figure folder).
    """
    given = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not given:
        raise PlotError("no results folder given: pass --results DIR")
    tables = [load_run(folder) for path in given for folder in run_folders(path)]
    if len(tables) == 1:
        only = tables[0]
        return RunTables(Path(given[0]), only.results, only.summary,
                         {**only.manifest, "runs": [str(only.path)]})
    keys = pd.concat([t.results[["model", "method", "metric"]].drop_duplicates().assign(
        run=str(t.path)) for t in tables])
    clash = keys[keys.duplicated(["model", "method", "metric"], keep=False)]
    if not clash.empty:
        row = clash.iloc[0]
        raise PlotError(f"({row['model']}, {row['method']}, {row['metric']}) is in more than "
                        f"one run ({', '.join(sorted(set(clash['run'])))}): plot them separately")
    manifest: dict[str, Any] = {"runs": [str(t.path) for t in tables], "models": {},
                                "samples": {}, "config": {"metrics": []}}
    for t in tables:
        manifest["models"].update(t.manifest.get("models", {}))
        manifest["samples"].update(t.manifest.get("samples", {}))
        for metric in t.manifest.get("config", {}).get("metrics", []):
            if metric not in manifest["config"]["metrics"]:
                manifest["config"]["metrics"].append(metric)
        for key in ("hardware", "git_commit", "versions"):
            manifest.setdefault(key, t.manifest.get(key))
    return RunTables(Path(given[0]), pd.concat([t.results for t in tables], ignore_index=True),
                     pd.concat([t.summary for t in tables], ignore_index=True), manifest)


def _require_columns(table: pd.DataFrame, columns: Iterable[str], where: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PlotError(f"{where} lacks columns {', '.join(missing)}: it was written by an older "
                        "attrib-bench; re-run attrib-bench run with --overwrite")


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


def ordered_methods(names: Iterable[str]) -> list[str]:
    """The paper's order for known methods, then any others alphabetically."""
    names = set(names)
    return [m for m in METHOD_ORDER if m in names] + sorted(names - set(METHOD_ORDER))


def _method_metadata(name: str) -> dict[str, Any]:
    """The registry metadata of method ``name``; empty when it is not registered in this process
    (results written with a plugin that is not loaded now still plot, under their names)."""
    return METHODS.get(name).metadata if name in METHODS else {}


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


def method_label(name: str) -> str:
    """The name figures show for method ``name``: its registered ``label``, else the name."""
    return _method_metadata(name).get("label", name)


def _ordered_models(names: Iterable[str], manifest: Mapping[str, Any] | None = None
                    ) -> list[str]:
    """Models in first-seen order (the run's order), the ones with a T in the manifest (the
    CoDA-Nets) first, by T."""
    names = list(dict.fromkeys(names))
    temperatures = model_temperatures(manifest, names)
    return sorted(names, key=lambda n: (n not in temperatures, temperatures.get(n, 0),
                                        names.index(n)))


# ----------------------------------------------------------------------------- Fig. 6


def localisation_figure(results: pd.DataFrame, metric: str = "localisation",
                        manifest: Mapping[str, Any] | None = None) -> Figure:
    """Box plots of the per-cell localisation scores, one panel per model (paper Fig. 6, left).

    Oracle (1) and Uniform (1/n²) are drawn as reference lines; each title gives the grid size
    and the number of grids (the n behind the boxes). Models with a T in the run's ``manifest``
    come first, by T; the others in the results' order.
    """
    rows = metric_rows(results, metric)
    n = int(_config_value(rows, "n") or round(np.sqrt(rows["key"].astype(int).max() + 1)))
    models = _ordered_models(rows["model"], manifest)
    colours = method_colours(results["method"].unique())
    width = max(4.0, 0.55 * rows["method"].nunique() + 1.5)
    fig, axes = plt.subplots(1, len(models), figsize=(width * len(models), 4.2), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, model in zip(axes[0], models, strict=True):
        sub = rows[rows["model"] == model]
        order = ordered_methods(sub["method"].unique())
        sns.boxplot(data=sub, x="method", y="value", order=order, hue="method", hue_order=order,
                    palette=colours, legend=False, ax=ax, width=0.65, fliersize=1.5, saturation=1,
                    linewidth=0.9)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.axhline(1.0 / n**2, color="0.35", linestyle=":", linewidth=1.4)
        grids = sub.groupby("method")["sample"].nunique()
        same = grids.nunique() == 1
        ax.set_xticks(range(len(order)), [method_label(m) if same else
                                          f"{method_label(m)} ({grids[m]})" for m in order],
                      rotation=40, ha="right")
        ax.set_xlabel("" if same else "method (grids)")
        ax.set_ylabel(f"localisation score (per cell, {n}×{n} grids)")
        ax.set_ylim(-0.03, 1.06)
        ax.set_title(f"{model}\n" + (f"{grids.iloc[0]} grids, {grids.iloc[0] * n * n} cells "
                                      "per method" if same else "grids per method in brackets"),
                     fontsize="medium")
    handles = [Line2D([], [], color="black", linestyle="--", label="Oracle (1)"),
               Line2D([], [], color="0.35", linestyle=":", label=f"Uniform (1/{n * n})")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle("Grid localisation" + (" (DiFull)" if metric.endswith("difull") else ""))
    return fig


def _pixel_fraction(rows: pd.DataFrame, manifest: Mapping[str, Any], model: str) -> pd.Series:
    """Removed pixels as a percentage of the image, from the sample info or the metric config."""
    info = manifest.get("samples", {}).get(f"{model}/pixel-removal", {})
    pixels = info.get("image_pixels")
    if pixels is None:  # older manifests: the last step removes `fraction` of the image
        fraction = _config_value(rows, "fraction") or 0.25
        pixels = rows["removed"].max() / fraction
    return 100.0 * rows["removed"] / pixels


def removal_probability(manifest: Mapping[str, Any], model: str) -> str:
    """The probability ("sigmoid" or "softmax") ``model``'s pixel-removal ``prob`` rows hold.

    Read from the run's sample info; runs from before it was recorded scored every model by its
    sigmoid, so "sigmoid".
    """
    info = manifest.get("samples", {}).get(f"{model}/pixel-removal", {})
    return str(info.get("probability", "sigmoid"))


def pixel_removal_figure(results: pd.DataFrame, summary: pd.DataFrame,
                         manifest: Mapping[str, Any] | None = None,
                         stat: str = "prob") -> Figure:
    """Mean target probability (or logit) against removed pixels, least- and most-important
    first, one panel per (order, model); the legend gives each method's mean AUC (Fig. 6, right).
    Each panel's y axis names the probability its model was scored with
    (:func:`removal_probability`)."""
    rows = metric_rows(results, "pixel-removal")
    rows = rows[rows["stat"] == stat]
    if rows.empty:
        raise PlotError(f"pixel-removal rows have no stat {stat!r}: use prob or logit")
    manifest = manifest or {}
    orders = [o for o in PIXEL_ORDERS if o in set(rows["variant"])]
    models = _ordered_models(rows["model"], manifest)
    colours = method_colours(results["method"].unique())
    auc = summary[(summary["metric"] == "pixel-removal") & (summary["stat"] == f"{stat}-auc")]
    auc = auc.set_index(["model", "method", "variant"])["mean"]
    fig, axes = plt.subplots(len(orders), len(models), figsize=(5.2 * len(models),
                             3.9 * len(orders)), squeeze=False, sharex=True, sharey="row",
                             layout="constrained")
    for i, order in enumerate(orders):
        for j, model in enumerate(models):
            ax = axes[i, j]
            sub = rows[(rows["model"] == model) & (rows["variant"] == order)]
            sub = sub.assign(percent=_pixel_fraction(sub, manifest, model))
            curves = sub.groupby(["method", "percent"], sort=True)["value"].mean()
            images = sub.groupby("method")["sample"].nunique()
            same = images.nunique() == 1
            for method in ordered_methods(sub["method"].unique()):
                curve = curves.loc[method]
                area = auc.get((model, method, order), np.nan)
                ax.plot(curve.index, curve.to_numpy(), color=colours[method], linewidth=1.6,
                        label=f"{method_label(method)}  {area:.3f}"
                        + ("" if same else f"  (n={images[method]})"))
            ax.set_title(f"{model}: {PIXEL_ORDERS[order]}\n" + (
                f"{images.iloc[0]} images" if same else "images per method in the legend"),
                fontsize="medium")
            ax.set_ylabel(f"{probability_label(removal_probability(manifest, model))} (mean)"
                          if stat == "prob" else f"target {stat} (mean)")
            ax.set_xlabel("pixels removed (%)")
            ax.legend(title="AUC", fontsize="small", title_fontsize="small", frameon=False,
                      loc="best")
            ax.grid(alpha=0.3)
    fig.suptitle("Pixel removal")
    return fig


def temperature_figure(summary: pd.DataFrame, temperatures: Mapping[str, float]) -> Figure:
    """Localisation and pixel-removal AUC against T (paper Fig. 6, bottom), mean ± 95 % CI.

    One panel per available score; models without a T (e.g. ResNet-56) are left out.
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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False,
                             layout="constrained")
    for ax, (label, sub) in zip(axes[0], panels, strict=True):
        for method in ordered_methods(sub["method"].unique()):
            line = sub[sub["method"] == method].sort_values("T")
            err = np.vstack([line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]]
                            ).astype(float)
            ax.errorbar(line["T"].to_numpy(float), line["mean"].to_numpy(float), yerr=err,
                        color=colours[method], marker="o", markersize=4, capsize=3,
                        linewidth=1.5, label=method_label(method))
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(rows["T"])), [f"{t:g}" for t in sorted(set(rows["T"]))])
        ax.minorticks_off()
        ax.set_xlabel("temperature T")
        ax.set_ylabel(f"{label} (mean, 95 % CI)")
        n = int(sub["n"].min())
        ax.set_title(f"{label}\nn ≥ {n} per point", fontsize="medium")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle("Temperature series")
    return fig


def randomisation_figure(results: pd.DataFrame, model: str,
                         stats: Sequence[str] = ("spearman_abs", "ssim")) -> Figure:
    """Mean similarity to the original maps against the randomised layer (top first), per method;
    one column per mode (cascading, independent), one row per similarity."""
    rows = metric_rows(results, "randomisation")
    rows = rows[(rows["model"] == model) & rows["stat"].isin(stats)]
    if rows.empty:
        raise PlotError(f"no randomisation rows for model {model!r} with stats {list(stats)}")
    modes = [m for m in ("cascading", "independent") if m in set(rows["variant"])]
    stats = [s for s in stats if s in set(rows["stat"])]
    colours = method_colours(results["method"].unique())
    layers = (rows[["key", "layer_index"]].drop_duplicates().sort_values("layer_index")
              if "layer_index" in rows else rows[["key"]].drop_duplicates())
    position = {key: i for i, key in enumerate(layers["key"])}
    names = {"spearman": "Spearman", "spearman_abs": "Spearman of |map|", "ssim": "SSIM"}
    fig, axes = plt.subplots(len(stats), len(modes),
                             figsize=(max(5.0, 0.32 * len(position) + 2.5) * len(modes),
                                      3.4 * len(stats) + 0.8),
                             squeeze=False, sharex=True, sharey="row", layout="constrained")
    for i, stat in enumerate(stats):
        for j, mode in enumerate(modes):
            ax = axes[i, j]
            sub = rows[(rows["stat"] == stat) & (rows["variant"] == mode)]
            means = sub.groupby(["method", "key"])["value"].mean()
            for method in ordered_methods(sub["method"].unique()):
                curve = means.loc[method]
                x = [position[k] for k in curve.index]
                order = np.argsort(x)
                ax.plot(np.asarray(x)[order], curve.to_numpy()[order], marker="o",
                        markersize=3, color=colours[method], label=method_label(method))
            ax.set_title(f"{mode} ({sub['sample'].nunique()} images)", fontsize="medium")
            ax.set_ylabel(names.get(stat, stat))
            ax.grid(alpha=0.3)
            if i == len(stats) - 1:
                ax.set_xticks(range(len(position)), list(position), rotation=90,
                              fontsize="x-small")
                ax.set_xlabel("randomised layer (top first)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", frameon=False)
    fig.suptitle(f"Parameter randomisation: {model}")
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


def contribution_sheet(grid: np.ndarray, maps: np.ndarray, labels: Sequence[str],
                       title: str = "") -> Figure:
    """Fig. 7: a multi-image (3, nH, nW) and one map per cell's class (K, nH, nW) on the whole
    grid, each map centred at zero with its own symmetric scale."""
    k = len(maps)
    cols = min(k + 1, 5)
    rows = int(np.ceil((k + 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.3 * cols, 2.5 * rows), squeeze=False,
                             layout="constrained")
    flat = axes.ravel()
    _show_image(flat[0], grid)
    flat[0].set_title("input", fontsize="small")
    for ax, heat, label in zip(flat[1:], maps, labels, strict=False):
        _show_map(ax, heat)
        ax.set_title(f"evidence for {label}", fontsize="small")
    for ax in flat[k + 1:]:
        ax.axis("off")
    fig.suptitle(title or "Per-class contribution maps on a multi-image")
    return fig


def method_sheet(images: np.ndarray, maps: Mapping[str, np.ndarray], labels: Sequence[str],
                 title: str = "") -> Figure:
    """Fig. 8: rows = images (N, 3, H, W), columns = input then each method's map (N, H, W)."""
    methods = ordered_methods(maps)
    n = len(images)
    fig, axes = plt.subplots(n, len(methods) + 1, figsize=(1.45 * (len(methods) + 1),
                             1.5 * n + 0.6), squeeze=False, layout="constrained")
    for i in range(n):
        _show_image(axes[i, 0], images[i])
        axes[i, 0].set_ylabel(labels[i], fontsize="small")
        for j, method in enumerate(methods, start=1):
            _show_map(axes[i, j], maps[method][i])
    for j, method in enumerate(["input", *methods]):
        axes[0, j].set_title(method_label(method), fontsize="small")
    fig.suptitle(title or "Attribution maps side by side")
    return fig


# ----------------------------------------------------------------------------- a run folder


def figures_for(tables: RunTables) -> dict[str, Figure]:
    """Every figure the run's tables support, by file stem. A metric the run was configured
    with but that has no rows raises :class:`PlotError` (an unfinished or broken run)."""
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
        figures["pixel-removal"] = pixel_removal_figure(results, tables.summary, tables.manifest)
    temperatures = tables.temperatures()
    if len(set(temperatures.values())) >= 2 and present & {"localisation", "pixel-removal"}:
        figures["temperature"] = temperature_figure(tables.summary, temperatures)
    if "randomisation" in present:
        randomised = results.loc[results["metric"] == "randomisation", "model"]
        for model in _ordered_models(randomised, tables.manifest):
            figures[f"randomisation-{model}"] = randomisation_figure(results, model)
    folders = dict.fromkeys(p.resolve() for p in [tables.path, *map(Path, tables.manifest.get(
        "runs", []))])
    for folder in folders:
        for stem, fig in example_figures(folder / "examples").items():
            figures.setdefault(stem, fig)
    if not figures:
        raise PlotError(f"nothing to plot in {tables.path}: figures exist for localisation, "
                        "pixel-removal and randomisation results (or attrib-bench examples)")
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
                f"{ex.model}: contribution maps on a {ex.grid_n}×{ex.grid_n} multi-image")
        if ex.maps:
            figures[f"methods-{ex.model}"] = method_sheet(
                ex.images, ex.maps, ex.labels, f"{ex.model}: maps of each method")
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
    written = []
    for stem, fig in figures_for(tables).items():
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
