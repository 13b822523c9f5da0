"""One self-contained HTML page per run: figures (inline PNG), summary, models, manifest.

The page has no scripts and no external links, so it opens offline and can be mailed or archived
as one file. It is built only from the run folder's tables (:func:`attrib_bench.plots.load_run`).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from attrib_bench.plots import (  # plots sets the Agg backend before pyplot loads
    RunTables,
    figure_metadata,
    figures_for,
    load_runs,
    method_label,
    ordered_methods,
    plt,
)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
tr.best td.value { font-weight: bold; }
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
           text_columns: int = 0) -> str:
    """An HTML table; the first ``text_columns`` columns are left-aligned text."""
    def cell(tag: str, i: int, value: str) -> str:
        css = ' class="text"' if i < text_columns else ' class="value"'
        return f"<{tag}{css}>{html.escape(value)}</{tag}>"

    out = ["<table><tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for r, row in enumerate(rows):
        css = f' class="{classes[r]}"' if classes and classes[r] else ""
        out.append(f"<tr{css}>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>")
    return "\n".join(out + ["</table>"])


def summary_rows(summary: pd.DataFrame) -> tuple[list[list[str]], list[str]]:
    """Summary rows as text, methods in plot order; the best method per (model, metric, variant,
    stat) in the direction the metric prefers gets the class "best"."""
    rows, classes = [], []
    order = {m: i for i, m in enumerate(ordered_methods(summary["method"].unique()))}
    table = summary.assign(_order=summary["method"].map(order)).sort_values(
        ["model", "metric", "variant", "stat", "_order"], kind="stable")
    for _, group in table.groupby(["model", "metric", "variant", "stat"], sort=False):
        direction = str(group["direction"].iloc[0])
        best = None
        if direction in ("higher", "lower") and group["mean"].notna().any():
            best = (group["mean"].idxmax() if direction == "higher" else group["mean"].idxmin())
        for index, row in group.iterrows():
            rows.append([row["model"], method_label(row["method"]), row["metric"],
                         str(row["variant"]), row["stat"], f"{row['mean']:.4f}",
                         f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]", str(int(row["n"])),
                         str(int(row.get("n_nonfinite", 0))), direction or "-"])
            classes.append("best" if index == best else "")
    return rows, classes


def model_rows(tables: RunTables) -> list[list[str]]:
    """Per model in the run: class, parameters, T, and the zoo's accuracy beside the paper's."""
    from attrib_bench.registry import MODELS

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


def render_report(tables: RunTables) -> str:
    """The report page for ``tables`` as one HTML string."""
    manifest = tables.manifest
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<title>attrib-bench report: {html.escape(tables.path.name)}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>attrib-bench report: {html.escape(tables.path.name)}</h1>"]
    hardware = manifest.get("hardware", "unknown hardware")
    commit = manifest.get("git_commit") or "unknown commit"
    config = manifest.get("config", {})
    parts.append(f"<p class='note'>{len(tables.results)} rows; seed {config.get('seed', '-')}; "
                 f"{html.escape(str(hardware))}; git {html.escape(str(commit))}. Means with "
                 "percentile-bootstrap 95 % confidence intervals over samples; bold: the best "
                 "method of a group in the metric's direction.</p>")
    parts.append("<h2>Models</h2>")
    parts.append(_table(["model", "class", "parameters", "T", "test accuracy (here)",
                         "paper / published"], model_rows(tables), text_columns=2))
    parts.append("<h2>Summary</h2>")
    rows, classes = summary_rows(tables.summary)
    parts.append(_table(["model", "method", "metric", "variant", "stat", "mean", "95 % CI", "n",
                         "non-finite", "better"], rows, classes, text_columns=5))
    parts.append("<h2>Figures</h2>")
    for stem, fig in figures_for(tables).items():
        parts.append(f"<figure><img alt='{html.escape(stem)}' "
                     f"src='data:image/png;base64,{_png(fig)}'>"
                     f"<figcaption>{html.escape(stem)}</figcaption></figure>")
    samples = manifest.get("samples", {})
    if samples:
        parts.append("<h2>Samples</h2>")
        parts.append(_table(["model/metric", "n", "details"],
                            [[key, str(value.get("n", "-")),
                              json.dumps({k: v for k, v in value.items() if k != "n"},
                                         default=str)]
                             for key, value in samples.items()], text_columns=1))
    parts.append("<h2>Manifest</h2><details><summary>manifest.json</summary><pre>"
                 + html.escape(json.dumps(manifest, indent=1, default=str)) + "</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results_dir: str | Path | Iterable[str | Path],
                 out: str | Path | None = None) -> Path:
    """Write ``report.html`` for the run(s) in ``results_dir`` (see
    :func:`attrib_bench.plots.load_runs`; default: inside the first folder); returns its path."""
    from attrib_bench.runners.storage import atomic_write

    tables = load_runs(results_dir)
    path = Path(out) if out is not None else tables.path / "report.html"
    page = render_report(tables)
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
