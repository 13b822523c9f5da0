"""Write (or check) the README's reproduction tables from the committed run folders.

    python results/readme_tables.py            # rewrite the tables in README.md, results/README.md
    python results/readme_tables.py --check    # exit 1 when a file differs from the tables

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
keep its inventory true. The rates table (``RATES_HEADING``, in results/README.md) gives each
method's measured seconds per grid or image from the same manifests, for planning a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from attrib_bench.plots import load_runs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_hours import folder_cost, part_compute  # noqa: E402  (results/: scripts, not a package)

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
RATES_HEADING = "**Measured seconds per sample**"
#: The files the tables go to: README.md all but the rates, results/README.md the rates.
TARGETS = {"README.md": None, "results/README.md": (RATES_HEADING,)}
DEFAULT_RESULTS = [REPO / "results" / "cifar10", REPO / "results" / "cifar10-gpu"]
#: The setting of a method that its cost grows with, named in the rates table's method column.
COST_SETTINGS = {"intgrad": "n_steps", "rise": "n_masks", "lime": "num_samples"}
RATE_METRICS = ("localisation", "localisation-difull", "pixel-removal")
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


def part_rates(folder: Path) -> list[dict[str, object]]:
    """A run folder's parts that ran in one place: seconds per sample (grid or image) over
    every call that computed them, n, where ("cpu x1": torch threads), the cost setting
    (:data:`COST_SETTINGS`) and whether the part took another method's rows (manifest
    ``rows_taken_from``: the method it took them from; its seconds are not the method's
    cost). Parts superseded out of the folder's ``summary.csv`` are left out; so are parts
    computed in two places."""
    manifest = json.loads((folder / "manifest.json").read_text())
    n = pd.read_csv(folder / "summary.csv").groupby(["model", "method", "metric"])["n"].max()
    hparams = manifest.get("config", {}).get("method_hparams", {})
    taken = {(p["model"], p["method"], p["metric"]): next(iter(p["rows_taken_from"]))
             for p in manifest.get("parts", []) if p.get("rows_taken_from")}  # one twin each
    rates = []
    for part in manifest.get("seconds_per_part_all_runs") or []:
        key = (part["model"], part["method"], part["metric"])
        where = part_compute(manifest, part)
        if key not in n or len(where) != 1:
            continue
        setting = COST_SETTINGS.get(part["method"])
        rates.append({"model": key[0], "method": key[1], "metric": key[2], "n": int(n[key]),
                      "seconds": float(part["seconds"]) / int(n[key]), "where": next(iter(where)),
                      "setting": (f"{setting} {hparams.get(key[1], {}).get(setting, 'default')}"
                                  if setting else ""),
                      "taken": taken.get(key, ""), "folder": folder.name})
    return rates


def _seconds(value: float, taken: str = "") -> str:
    """A rate as the table prints it: "≈ 0 (<method>'s rows)" for a part that took another
    method's rows; below 5 ms the part's maps came from the cache."""
    if taken:
        return f"≈ 0 ({METHODS[taken].split()[0]}'s rows)"
    return f"{value:.2f}" if value >= 0.005 else "≈ 0 (cached maps)"


def _where(label: str) -> str:
    """ "cpu x1" → "x1" (torch threads), "cuda NVIDIA H200" → "H200"."""
    return label.removeprefix("cpu ").removeprefix("cuda ").removeprefix("NVIDIA ")


def rates_table(results: list[Path]) -> str:
    """Per model and method (and cost setting), the seconds per grid or image of each metric,
    from the committed part with the largest n for each place it ran: "2.10 (500, x1)"."""
    rates = pd.DataFrame([r for root in results for m in sorted(root.glob("*/manifest.json"))
                          for r in part_rates(m.parent)])
    rates = rates[rates.metric.isin(RATE_METRICS)]
    best = (rates.sort_values(["n", "folder"], ascending=[False, True])
            .drop_duplicates(["model", "method", "setting", "metric", "where"]))
    lines = ["| model | method | localisation s/grid | DiFull s/grid | pixel removal s/image |",
             "|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODELS)}
    keys = best[["model", "method", "setting"]].drop_duplicates().assign(
        _m=lambda f: f.model.map(order).fillna(len(MODELS)),
        _k=lambda f: f.method.map(list(METHODS).index))
    for row in keys.sort_values(["_m", "_k", "setting"]).itertuples():
        cells = []
        for metric in RATE_METRICS:
            found = best[(best.model == row.model) & (best.method == row.method)
                         & (best.setting == row.setting) & (best.metric == metric)]
            cells.append("; ".join(
                f"{_seconds(r.seconds, r.taken)} ({r.n}, {_where(r.where)})"
                for r in found.sort_values("where").itertuples()) or "–")
        label = METHODS[row.method].split()[0] + (f" ({row.setting})" if row.setting else "")
        lines.append(f"| {row.model} | {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


def tables(results: list[Path]) -> dict[str, str]:
    """Heading → table text, for every table this script owns."""
    summary = load_runs([str(p) for p in results]).summary
    out = {heading: method_table(summary, *spec) for heading, spec in TABLES.items()}
    out[TEMPERATURE_HEADING] = temperature_table(summary)
    out[FOLDERS_HEADING] = folders_table(results)
    out[RATES_HEADING] = rates_table(results)
    return out


def replace_tables(readme: str, new: dict[str, str]) -> str:
    """``readme`` with the table after each heading replaced; SystemExit when one is missing."""
    for heading, table in new.items():
        if heading not in readme:
            raise SystemExit(f"README.md has no paragraph opening with {heading!r}")
        start = readme.index(heading)
        first = min(i for i in (readme.find(f"\n| {head} |", start)
                                for head in ("method", "T", "run folder", "model"))
                    if i >= 0) + 1
        end = readme.find("\n\n", first)
        end = end if end >= 0 else len(readme.rstrip("\n"))
        readme = readme[:first] + table + readme[end:]
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, action="append",
                        help="run folders' root (default: results/cifar10 and results/cifar10-gpu)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a file's tables are stale")
    args = parser.parse_args(argv)
    new = tables(args.results or DEFAULT_RESULTS)
    owned = {h for headings in TARGETS.values() if headings for h in headings}
    stale = 0
    for name, headings in TARGETS.items():
        path = REPO / name
        text = path.read_text(encoding="utf-8")
        mine = {h: t for h, t in new.items() if (h in headings if headings else h not in owned)}
        updated = replace_tables(text, mine)
        if args.check:
            if updated != text:
                stale += 1
                print(f"{name}: the reproduction tables differ from the committed runs; "
                      "run python results/readme_tables.py", file=sys.stderr)
            else:
                print(f"{name}: the reproduction tables match the committed runs")
            continue
        if updated != text:
            path.write_text(updated, encoding="utf-8")
        print(f"{name}: {'updated' if updated != text else 'already current'}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
