"""One self-contained HTML page per run: figures (inline PNG), summary, models, provenance.

The page has no scripts and no external links, so it opens offline and can be mailed or archived
as one file. It is built only from the run folders' tables (:func:`attrib_bench.plots.load_runs`):
each run's provenance (commit, clean tree, seed) comes from that run's own manifest, never from
the checkout that draws the page. Figures come first, the long tables after them.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attrib_bench.compare import (
    agreement,
    precision,
    prefix_check,
    rankings,
    ranks_methods,
    tables_values,
)
from attrib_bench.plots import (  # plots sets the Agg backend before pyplot loads
    FigureSection,
    RunTables,
    figure_metadata,
    figure_sections,
    load_runs,
    method_label,
    ordered_methods,
    plt,
    removal_probability,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tr.best td.em { font-weight: bold; } tr.tie td.em { font-style: italic; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
"""

def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, metadata=figure_metadata("png"))
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None,
           text_columns: int = 0, emphasis: Iterable[int] = ()) -> str:
    """An HTML table; the first ``text_columns`` columns are left-aligned text; a row's class
    ("best", "tie") sets the columns in ``emphasis`` in bold or italic."""
    emphasised = set(emphasis)

    def cell(tag: str, i: int, value: str) -> str:
        kind = "text" if i < text_columns else "value"
        css = f' class="{kind} em"' if tag == "td" and i in emphasised else f' class="{kind}"'
        return f"<{tag}{css}>{html.escape(value)}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for r, row in enumerate(rows):
        css = f' class="{classes[r]}"' if classes and classes[r] else ""
        out.append(f"<tr{css}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return "\n".join(out + ["</table>"])


# ----------------------------------------------------------------------------- summary


_GROUP = ["model", "metric", "variant", "stat"]


def _probabilities(results: pd.DataFrame | None) -> dict[tuple[str, str, str], str]:
    """(model, method, metric) → the probability its "prob" rows hold ("sigmoid", "softmax"),
    from the results' ``probability`` column (runs before it have none: {})."""
    if results is None or "probability" not in results or results.empty:
        return {}
    named = results[results["probability"].fillna("").astype(str) != ""]
    return {key: str(value) for key, value in
            named.groupby(["model", "method", "metric"], sort=False)["probability"].first()
            .items()}


def summary_rows(summary: pd.DataFrame, results: pd.DataFrame | None = None,
                 manifest: Mapping[str, Any] | None = None, ranks: pd.DataFrame | None = None,
                 prefix: pd.DataFrame | None = None) -> tuple[list[list[str]], list[str]]:
    """Summary rows as text, methods in plot order, each ranked method with its letter group,
    mean rank [95 % CI] and P(first) from ``ranks`` (:func:`attrib_bench.compare.rankings`:
    paired tests on shared samples), class "best" for the first group; a note where the part's
    first samples differ from the rest (``prefix``, :func:`attrib_bench.compare.prefix_check`).
    Nothing is marked from overlapping CIs."""
    rows, classes = [], []
    order = {m: i for i, m in enumerate(ordered_methods(summary["method"].unique()))}
    table = summary.assign(_order=summary["method"].map(order)).sort_values(
        [*_GROUP, "_order"], kind="stable")
    probability = _probabilities(results)
    # a CI from one sample is no interval: shown as "-"
    table.loc[table["n"] < 2, ["ci_low", "ci_high"]] = np.nan
    ranked = {} if ranks is None or ranks.empty else {
        (r["model"], r["method"], r["metric"], r["variant"], r["stat"]): r
        for r in ranks.to_dict("records")}
    notes = {} if prefix is None or prefix.empty else {
        (r["model"], r["method"], r["metric"], r["variant"], r["stat"]): r
        for r in prefix.to_dict("records") if r["differs"]}
    for _, row in table.iterrows():
        metric = str(row["metric"])
        direction = str(row["direction"]) if "direction" in row else ""
        direction = "" if direction == "nan" else direction
        kind = probability.get((row["model"], row["method"], row["metric"]), "")
        if not kind and manifest is not None:
            kind = removal_probability(manifest, row["model"], metric)  # the run's sample info
        stat = f"{row['stat']} ({kind})" if kind and str(row["stat"]).startswith("prob") \
            else str(row["stat"])
        ci = ("-" if pd.isna(row["ci_low"]) else
              f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]")
        key = (row["model"], row["method"], row["metric"], str(row["variant"]), row["stat"])
        mark, css = "", ""
        if key in ranked and ranks_methods(metric):
            r = ranked[key]
            mark = (f"{r['group']} · rank {r['rank_mean']:.1f} [{r['rank_low']:g}, "
                    f"{r['rank_high']:g}] · P(first) {r['p_first']:.2f} (n {int(r['n_common'])})")
            css = "best" if "a" in str(r["group"]) else ""
        if key in notes:
            p = notes[key]
            mark += (("; " if mark else "") + f"first {int(p['first'])}: {p['mean_first']:.3f}"
                     f" vs the other {int(p['n']) - int(p['first'])}: {p['mean_rest']:.3f}")
        rows.append([row["model"], method_label(row["method"]), row["metric"],
                     str(row["variant"]), stat, f"{row['mean']:.4f}", ci, str(int(row["n"])),
                     str(int(row.get("n_nonfinite", 0))),
                     (direction or "-") if ranks_methods(metric)
                     else f"{direction or '-'} (a check, not a ranking)", mark])
        classes.append(css)
    return rows, classes


def precision_rows(widths: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """:func:`attrib_bench.compare.precision`'s table as (header, text rows): "±0.012"."""
    sizes = [c for c in widths.columns if c.startswith("hw_") and c != "hw_n"]
    sizes = sorted(sizes, key=lambda c: int(c[3:]))
    header = ["model", "method", "metric", "variant", "stat", *(f"n′ = {c[3:]}" for c in sizes),
              "at n", "n"]
    rows = [[r["model"], method_label(r["method"]), r["metric"], str(r["variant"]), r["stat"],
             *("" if pd.isna(r[c]) else f"±{r[c]:.3f}" for c in sizes),
             "" if pd.isna(r["hw_n"]) else f"±{r['hw_n']:.3f}", str(int(r["n"]))]
            for r in widths.to_dict("records")]
    return header, rows


def agreement_rows(taus: pd.DataFrame) -> list[list[str]]:
    """:func:`attrib_bench.compare.agreement`'s table as text rows."""
    def name(row: Mapping[str, Any], side: str) -> str:
        parts = (row[f"{side}_model"], row[f"{side}_metric"], row[f"{side}_variant"],
                 row[f"{side}_stat"])
        return " ".join(str(p) for p in parts if p)

    return [[name(r, "a"), name(r, "b"), str(r["methods"]).replace(",", ", "),
             f"{r['tau']:.2f}", f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"]
            for r in taus.to_dict("records")]


# ----------------------------------------------------------------------------- models, runs


def model_rows(tables: RunTables) -> list[list[str]]:
    """Per model in the run: class, parameters, T, and the zoo's accuracy beside the paper's."""
    from attrib_bench.core.registry import MODELS

    rows = []
    info = tables.manifest.get("models", {})
    for name in tables.results["model"].unique():
        entry = info.get(name, {})
        cfg = MODELS.get(name).metadata.get("pretrained_cfg") if name in MODELS else None
        accuracy = f"{cfg.accuracy:.2f} %" if cfg is not None and cfg.accuracy else "-"
        paper = (f"{cfg.published_accuracy:.2f} %" if cfg is not None
                 and cfg.published_accuracy else "-")
        params = entry.get("parameters")
        temperature = entry.get("temperature")
        rows.append([name, entry.get("class", "-"),
                     f"{params / 1e6:.2f} M" if params else "-",
                     f"{temperature:g}" if temperature else "-", accuracy, paper])
    return rows


def code_version(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """(commit, tree) of the code that computed a run, from its manifest's ``git_commit``
    ("<sha> (uncommitted changes)" or "<sha>"): the short commit and "clean" or "uncommitted
    changes"; ("unknown", "unknown") when the run recorded none (e.g. an installed wheel)."""
    text = str(manifest.get("git_commit") or "").strip()
    if not text:
        return "unknown", "unknown"
    commit, _, rest = text.partition(" ")
    return commit[:12], ("uncommitted changes" if "uncommitted" in rest else "clean")


def provenance_rows(tables: RunTables) -> list[list[str]]:
    """One row per run folder: its models, methods, metrics, seed, code commit and whether the
    tree was clean, attrib-bench version, hardware, and what later runs superseded."""
    rows = []
    for folder, manifest in (tables.manifests or {str(tables.path): tables.manifest}).items():
        config = manifest.get("config", {})
        commit, tree = code_version(manifest)
        superseded = manifest.get("superseded") or []
        gone = ", ".join(f"{len(s.get('parts', []))} parts by {s.get('by', '?')}"
                         for s in superseded)
        # a store lists the parts a later run replaced, each with the run that computed it
        replaced = [p for p in tables.manifest.get("superseded", []) if isinstance(p, dict)
                    and p.get("run") == Path(folder).name and "superseded_by" in p]
        if replaced:
            by = sorted({p["superseded_by"] for p in replaced})
            gone = ", ".join(x for x in (gone, f"{len(replaced)} parts by {', '.join(by)}") if x)
        seed = config.get("seed")
        rows.append([Path(folder).name, ", ".join(config.get("models", [])) or "-",
                     ", ".join(map(method_label, config.get("methods", []))) or "-",
                     ", ".join(config.get("metrics", [])) or "-",
                     "not recorded" if seed is None else str(seed), commit, tree,
                     str(manifest.get("versions", {}).get("attrib-bench", "-")),
                     str(manifest.get("hardware", "-")), gone or "-"])
    return rows


def _cell(value: Any) -> str:
    """A sample-info value as table text."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "×".join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value)


# what a recorded sample key means, as a column header
_SAMPLE_LABELS = {"n": "images", "grid": "grid (n×n)", "seconds": "drawing (s)",
                  "cell_size": "cell (px)", "pool": "pool (correct, confident)",
                  "correct": "correct images", "images": "split images", "requested": "requested",
                  "selected": "selected"}


def _grid_info(info: dict[str, Any]) -> dict[str, Any]:
    """A grid metric's sample info with its side as ``grid`` ("3×3") and without ``n``, which
    repeats ``grids`` (the count)."""
    side = info["grid_size"]
    rest = {k: v for k, v in info.items() if k not in ("n", "grid_size")}
    return {"grid": f"{side}×{side}", **rest}


def _sample_cell(key: str, info: dict[str, Any]) -> str:
    if key not in info:
        return "-"
    if key == "seconds" and isinstance(info[key], (int, float)):
        return f"{info[key]:.1f}"
    return _cell(info[key])


def sample_tables(tables: RunTables) -> dict[str, tuple[list[str], list[list[str]]]]:
    """Metric → (header, rows) of the sample sets each run recorded (one row per run and model;
    a column per recorded key, named for what it holds, "-" where a run has no such key)."""
    found: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for folder, manifest in (tables.manifests or {str(tables.path): tables.manifest}).items():
        for key, info in manifest.get("samples", {}).items():
            model, _, metric = key.rpartition("/")
            if "grids" in info:  # the grid metrics: localisation, DiFull, plugins alike
                info = _grid_info(info)
            found.setdefault(metric, []).append((Path(folder).name, model, info))
    out = {}
    for metric, entries in found.items():
        keys = list(dict.fromkeys(k for _, _, info in entries for k in info))
        out[metric] = (["run", "model", *(_SAMPLE_LABELS.get(k, k.replace("_", " "))
                                          for k in keys)],
                       [[run, model, *(_sample_cell(k, info) for k in keys)]
                        for run, model, info in entries])
    return out


# ----------------------------------------------------------------------------- the page


def render_report(tables: RunTables) -> str:
    """The report page for ``tables`` as one HTML string: provenance, models, figures (a section
    per metric, as the metric declares it: :func:`attrib_bench.plots.figure_sections`), summary,
    agreement, samples, then each run's manifest. Methods are named as the runs recorded them
    (:meth:`RunTables.drawn_as_recorded`), then as the registry has them."""
    with tables.drawn_as_recorded():
        return _render_report(tables)


def _render_report(tables: RunTables) -> str:
    runs = tables.manifests or {str(tables.path): tables.manifest}
    sections = figure_sections(tables)
    values, summary, dataset = tables_values(tables)
    parts = [*_page_head(tables, runs), *_runs_and_models(tables), *_figures_html(sections),
             *_summary_html(tables, values, summary, dataset),
             *_agreement_html(values, summary, dataset), *_samples_html(tables),
             *_manifests_html(runs), "</body></html>"]
    return "\n".join(parts)


def _page_head(tables: RunTables, runs: Mapping[str, Any]) -> list[str]:
    """The page's head, title and the note on how to read its marks."""
    name = html.escape(tables.path.name)
    checks = [m for m in sorted(tables.results["metric"].unique()) if not ranks_methods(m)]
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>attrib-bench report: {name}</title>"
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>attrib-bench report: {name}</h1>",
            f"<p class='note'>{len(tables.results)} rows from {len(runs)} run"
            f"{'s' if len(runs) != 1 else ''}. Means with percentile-bootstrap 95 % confidence "
            "intervals over samples. Methods are compared on the samples they share "
            "(attrib-bench compare): the <i>group</i> letters come from paired tests "
            "(Wilcoxon signed-rank, Holm-adjusted within each model, metric and stat, with a "
            "paired bootstrap CI of the mean difference that excludes 0); methods sharing a "
            "letter are not separated. <i>Rank</i>: the mean rank over bootstrap resamples "
            "of the samples every method has, with its 95 % CI and the probability of "
            "ranking first. <b>Bold</b>: the first group. A note names parts whose first "
            "samples (the most confident grids, drawn first) differ from the rest. A CI needs "
            "two samples (\"-\" from one)."
            + (f" Checks such as {html.escape(', '.join(checks))} rank nothing." if checks
               else "") + "</p>"]


def _runs_and_models(tables: RunTables) -> list[str]:
    """Each run's provenance, then the models."""
    return ["<h2>Runs and code</h2>",
            _table(["run", "models", "methods", "metrics", "seed", "commit", "tree",
                    "attrib-bench", "hardware", "superseded"], provenance_rows(tables),
                   text_columns=10),
            "<h2>Models</h2>",
            _table(["model", "class", "parameters", "T", "test accuracy (here)",
                    "paper / published"], model_rows(tables), text_columns=2)]


def _figures_html(sections: list[FigureSection]) -> list[str]:
    """Each section's title and text (a metric's as it declares them), then its figures."""
    parts = ["<h2>Figures</h2>"]
    if not any(section.figures for section in sections):
        parts.append("<p class='note'>No figures: this run's metrics have none here (a "
                     "plugin's metric draws its figures when its plugin is loaded: --plugin "
                     "MODULE); the summary below has every metric.</p>")
    for section in sections:
        parts.append(f"<h3>{html.escape(section.title, quote=False)}</h3>")
        if section.text:
            parts.append(f"<p class='note'>{html.escape(section.text, quote=False)}</p>")
        for stem, (fig, caption) in section.figures.items():
            parts.append(f"<figure><img alt='{html.escape(stem)}' "
                         f"src='data:image/png;base64,{_png(fig)}'>"
                         f"<figcaption>{html.escape(stem)}: {html.escape(caption or stem)}"
                         "</figcaption></figure>")
    return parts


def _summary_html(tables: RunTables, values: pd.DataFrame, summary: pd.DataFrame,
                  dataset: str) -> list[str]:
    """The summary table with the paired groups and ranks, the flags of controls ranked above
    a real method, and (collapsed) the CI half-width against n."""
    _, ranks = rankings(values, summary, dataset)
    rows, classes = summary_rows(tables.summary, tables.results, tables.manifest, ranks,
                                 prefix_check(values))
    parts = ["<h2>Summary</h2>",
             _table(["model", "method", "metric", "variant", "stat", "mean", "95 % CI", "n",
                     "non-finite", "better", "group · rank [95 % CI] · P(first); notes"],
                    rows, classes, text_columns=5, emphasis=(5, 6))]
    flagged = ranks[ranks["control_above"].fillna("") != ""] if "control_above" in ranks else []
    for key, fam in (flagged.groupby(["model", "metric", "variant", "stat"]) if len(flagged)
                     else []):
        parts.append(f"<p class='note'>Flag: on {html.escape(' '.join(map(str, key)))} a "
                     f"control map ranks above a real method "
                     f"({html.escape(str(fam['control_above'].iloc[0]))}).</p>")
    widths = precision(values)
    if len(widths):
        parts += ["<details><summary>Is n enough? The 95 % CI half-width of each part's mean "
                  "over its first n′ samples (1.96 · s / √n′, the drawing order), and at its "
                  "n</summary>", _table(*precision_rows(widths), text_columns=5), "</details>"]
    return parts


def _agreement_html(values: pd.DataFrame, summary: pd.DataFrame, dataset: str) -> list[str]:
    """Kendall's τ between the rankings of families sharing three or more methods."""
    taus = agreement(values, summary, dataset, resamples=200)
    if not len(taus):
        return []
    return ["<h2>Agreement between rankings</h2>",
            "<p class='note'>Kendall's τ between the method rankings (means, oriented so that "
            "higher is better) of two families that share three or more methods, with a 95 % "
            "bootstrap CI (each family's samples resampled, 200 times).</p>",
            _table(["ranking A", "ranking B", "methods", "τ", "95 % CI"], agreement_rows(taus),
                   text_columns=3)]


def _samples_html(tables: RunTables) -> list[str]:
    """Each metric's sample sets as a table."""
    samples = sample_tables(tables)
    parts = ["<h2>Samples</h2>"] if samples else []
    for metric, (header, rows) in samples.items():
        parts += [f"<h3>{html.escape(metric)}</h3>", _table(header, rows, text_columns=2)]
    return parts


def _manifests_html(runs: Mapping[str, Any]) -> list[str]:
    """Each run's manifest, collapsed."""
    return ["<h2>Manifests</h2>"] + [
        f"<details><summary>{html.escape(Path(folder).name)}/manifest.json</summary><pre>"
        + html.escape(json.dumps(manifest, indent=1, default=str)) + "</pre></details>"
        for folder, manifest in runs.items()]


def write_report(results_dir: str | Path | Iterable[str | Path],
                 out: str | Path | None = None) -> Path:
    """Write ``report.html`` for the run(s) in ``results_dir`` (see
    :func:`attrib_bench.plots.load_runs`; default: inside the first folder); returns its path.
    Any run with a summary gets a page, also one whose metrics have no figures."""
    from attrib_bench.runners.storage import atomic_write

    tables = load_runs(results_dir)
    path = Path(out) if out is not None else tables.path / "report.html"
    page = render_report(tables)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
