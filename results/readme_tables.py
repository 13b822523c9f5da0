"""Write (or check) the README's reproduction tables from the committed run folders.

    python results/readme_tables.py            # rewrite the tables in README.md
    python results/readme_tables.py --check    # exit 1 when README.md differs from the tables

Each cell is "mean [ci_low, ci_high] (n)" from the runs' ``summary.csv`` (read with
:func:`attrib_bench.plots.load_runs`, which refuses two runs holding the same part), so a table
always states the n it was computed on. A table is found by the bold heading that opens its
paragraph (``TABLES``' keys) and replaced from its ``| method |`` (or ``| T |``) line to the next
blank line; the prose around it is not touched. The paper's figures in the first localisation
column and in the temperature row are the authors' means for S-CoDA-SQ (Böhle et al., CVPR 2021,
Fig. 6 and the temperature study), quoted, not computed.

The run-folder table (``FOLDERS_HEADING``) lists what each committed folder holds, from its own
``summary.csv`` (superseded parts are no longer there), and its compute from its manifest
(``results/cpu_hours.py``), so that landing a folder never needs the README's prose edited to
keep its inventory true.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from attrib_bench.plots import load_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_hours import folder_cost  # noqa: E402  (results/ is a folder of scripts, not a package)

REPO = Path(__file__).resolve().parents[1]
MODELS = ["xs-coda-sq-t10", "xs-coda-sq-t50", "xs-coda-sq-t100", "xs-coda-sq-t500",
          "xs-coda-sq-t1000", "xs-coda-sq-t5000", "resnet56", "bcos-resnet20-cifar10"]
METHODS = {"inherent": "inherent W(x)⊙x", "grad": "Grad", "ixg": "IxG", "intgrad": "IntGrad",
           "deeplift": "DeepLIFT", "gradcam": "GradCAM", "occ5": "Occ5", "occ9": "Occ9",
           "rise": "RISE", "lime": "LIME"}
PAPER_LOCALISATION = {"inherent": "0.912", "grad": "0.144", "ixg": "0.144", "intgrad": "0.154",
                      "deeplift": "0.144", "gradcam": "0.726", "occ5": "0.563", "occ9": "0.842"}
PAPER_TEMPERATURES = {10: "0.314", 50: "0.445", 100: "0.637", 500: "0.840", 1000: "0.912",
                      5000: "0.908"}
# heading that opens the paragraph -> (metric, variant, stat)
TABLES = {
    "**Localisation** (3×3 grids": ("localisation", "", "score"),
    "**DiFull localisation**": ("localisation-difull", "", "score"),
    "**Pixel removal, least important first**": ("pixel-removal", "least-first", "prob-auc"),
    "**Pixel removal, most important first**": ("pixel-removal", "most-first", "prob-auc"),
}
TEMPERATURE_HEADING = "**The inherent maps' localisation by temperature T**"
FOLDERS_HEADING = "**The committed run folders**"
DEFAULT_RESULTS = [REPO / "results" / "cifar10", REPO / "results" / "cifar10-gpu"]
UNITS = {"localisation": "grids", "localisation-difull": "grids"}  # other metrics: images


def cell(summary: pd.DataFrame, model: str, method: str, metric: str, variant: str,
         stat: str) -> str:
    """"mean [ci_low, ci_high] (n)" of one summary row, or "–" when the runs lack it."""
    row = summary[(summary.model == model) & (summary.method == method)
                  & (summary.metric == metric) & (summary.variant.fillna("") == variant)
                  & (summary.stat == stat)]
    if row.empty:
        return "–"
    r = row.iloc[0]  # one row: load_runs refuses two runs holding the same part
    return f"{r['mean']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] ({int(r['n'])})"


def method_table(summary: pd.DataFrame, metric: str, variant: str, stat: str) -> str:
    """One markdown table: a row per method with any figure, a column per model present."""
    models = [m for m in MODELS if m in set(summary.model)]
    paper = metric == "localisation"
    head = (["paper: S-CoDA-SQ T = 1000 (500 grids)"] if paper else []) + models
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for method, label in METHODS.items():
        cells = [cell(summary, m, method, metric, variant, stat) for m in models]
        if set(cells) == {"–"}:
            continue
        if paper:
            cells = [PAPER_LOCALISATION.get(method, "–"), *cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def temperature_table(summary: pd.DataFrame) -> str:
    """The inherent maps' localisation per temperature: the paper's row, then ours with n."""
    temps = list(PAPER_TEMPERATURES)
    ours = [cell(summary, f"xs-coda-sq-t{t}", "inherent", "localisation", "", "score")
            for t in temps]
    return "\n".join(["| T | " + " | ".join(map(str, temps)) + " |",
                      "|---|" + "---|" * len(temps),
                      "| paper (S-CoDA-SQ, 500 grids) | "
                      + " | ".join(PAPER_TEMPERATURES.values()) + " |",
                      "| here (xs-coda-sq), (n) = grids | " + " | ".join(ours) + " |"])


def folder_rows(folder: Path) -> list[tuple[str, str, str, str]]:
    """One run folder's parts as (models, methods, metrics, n) rows, each row's models ×
    methods × metrics all present at that n (parts alike but for the model, or but for the
    metric, share a row)."""
    summary = pd.read_csv(folder / "summary.csv")
    by_part: dict[tuple[str, tuple[str, ...], int], list[str]] = {}
    for (model, metric), part in summary.groupby(["model", "metric"], sort=False):
        methods = tuple(sorted(set(part.method), key=list(METHODS).index))
        n = f"{int(part.n.max())} {UNITS.get(metric, 'images')}"
        by_part.setdefault((metric, methods, n), []).append(model)
    by_metric: dict[tuple[tuple[str, ...], tuple[str, ...], str], list[str]] = {}
    for (metric, methods, n), models in by_part.items():
        order = sorted(models, key=lambda m: MODELS.index(m) if m in MODELS else len(MODELS))
        by_metric.setdefault((tuple(order), methods, n), []).append(metric)
    rows = [(", ".join(models), ", ".join(METHODS[m].split()[0] for m in methods),
             ", ".join(sorted(metrics)), n)
            for (models, methods, n), metrics in by_metric.items()]
    return sorted(rows, key=lambda r: (r[2], r[0]))


def folders_table(results: list[Path]) -> str:
    """Every run folder under ``results``: what it holds (n per row), its compute and the size
    of its per-row table (zstd Parquet)."""
    lines = ["| run folder | models | methods | metrics | n | CPU core-hours | GPU hours | "
             "results.parquet |", "|---|---|---|---|---|---|---|---|"]
    core = gpu = total_mb = 0.0
    for root in results:
        for manifest in sorted(root.glob("*/manifest.json")):
            cost = folder_cost(manifest)
            folder = manifest.parent.resolve()
            size = (folder / "results.parquet").stat().st_size / 1e6
            core, gpu = core + float(cost["core_hours"]), gpu + float(cost["gpu_hours"])
            total_mb += size
            name = f"`{folder.relative_to(REPO) if folder.is_relative_to(REPO) else folder}/`"
            for i, (models, methods, metrics, n) in enumerate(folder_rows(folder)):
                cost_cells = (f"{cost['core_hours']:.2f} | {cost['gpu_hours']:.3f} | {size:.2f} MB"
                              if i == 0 else "″ | ″ | ″")
                lines.append(f"| {name} | {models} | {methods} | {metrics} | {n} | {cost_cells} |")
    lines.append(f"| **total** | | | | | **{core:.2f}** | **{gpu:.3f}** | {total_mb:.1f} MB |")
    return "\n".join(lines)


def tables(results: list[Path]) -> dict[str, str]:
    """Heading → table text, for every table this script owns."""
    summary = load_runs([str(p) for p in results]).summary
    out = {heading: method_table(summary, *spec) for heading, spec in TABLES.items()}
    out[TEMPERATURE_HEADING] = temperature_table(summary)
    out[FOLDERS_HEADING] = folders_table(results)
    return out


def replace_tables(readme: str, new: dict[str, str]) -> str:
    """``readme`` with the table after each heading replaced; SystemExit when one is missing."""
    for heading, table in new.items():
        if heading not in readme:
            raise SystemExit(f"README.md has no paragraph opening with {heading!r}")
        start = readme.index(heading)
        first = min(i for i in (readme.find(f"\n| {head} |", start)
                                for head in ("method", "T", "run folder")) if i >= 0) + 1
        end = readme.find("\n\n", first)
        end = end if end >= 0 else len(readme.rstrip("\n"))
        readme = readme[:first] + table + readme[end:]
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, action="append",
                        help="run folders' root (default: results/cifar10 and results/cifar10-gpu)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when the README's tables are stale")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    updated = replace_tables(text, tables(args.results or DEFAULT_RESULTS))
    if args.check:
        if updated != text:
            print(f"{args.readme}: the reproduction tables differ from the committed runs; "
                  "run python results/readme_tables.py", file=sys.stderr)
            return 1
        print(f"{args.readme}: the reproduction tables match the committed runs")
        return 0
    if updated != text:
        args.readme.write_text(updated, encoding="utf-8")
    print(f"{args.readme}: {'updated' if updated != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
