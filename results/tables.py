"""Write (or check) every results table of the README and the docs from the results store.

    python results/tables.py            # rewrite the tables in README.md and docs/*.md
    python results/tables.py --check    # exit 1 when a file's tables differ from the store's

A table's place is marked in the Markdown by ``<!-- table: NAME -->`` and ``<!-- /table -->``
on lines of their own; everything between them is replaced, nothing else is touched. Names:
``headline`` (the README), ``localisation``, ``difull``, ``pixel-removal-least``,
``pixel-removal-most``, ``temperature``, ``parts``, ``rates`` and ``claims`` (the paper's
claims decided by paired comparisons, :mod:`attrib_bench.compare`). Each cell is
"mean [ci_low, ci_high] (n)" from the store's ``summary.csv``, so a table always states its n.
The paper's figures (first localisation column, temperature row) are the authors' means for
S-CoDA-SQ (Böhle et al., CVPR 2021, Fig. 6 and the temperature study), quoted, not computed; a
cell of ours below the paper's is marked ▼ beside it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from attrib_bench.compare import pairwise
from attrib_bench.store import read_store

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "results" / "cifar10"
MODELS = ["s-coda-sq-t1000", "xs-coda-sq-t10", "xs-coda-sq-t50", "xs-coda-sq-t100",
          "xs-coda-sq-t500", "xs-coda-sq-t1000", "xs-coda-sq-t5000", "resnet56",
          "bcos-resnet20-cifar10"]
HEADLINE_MODELS = ["s-coda-sq-t1000", "xs-coda-sq-t1000", "resnet56", "bcos-resnet20-cifar10"]
METHODS = {"inherent": "inherent W(x)⊙x", "grad": "Grad", "ixg": "IxG", "intgrad": "IntGrad",
           "deeplift": "DeepLIFT", "gradcam": "GradCAM", "occ5": "Occ5", "occ9": "Occ9",
           "rise": "RISE", "lime": "LIME", "random": "random (control)",
           "centre": "centre (control)", "edges": "edges (control)"}
PAPER_LOCALISATION = {"inherent": 0.912, "grad": 0.144, "ixg": 0.144, "intgrad": 0.154,
                      "deeplift": 0.144, "gradcam": 0.726, "occ5": 0.563, "occ9": 0.842}
PAPER_TEMPERATURES = {10: 0.314, 50: 0.445, 100: 0.637, 500: 0.840, 1000: 0.912, 5000: 0.908}
#: table name → (metric, variant, stat) of the method tables
METHOD_TABLES = {"localisation": ("localisation", "", "score"),
                 "difull": ("localisation-difull", "", "score"),
                 "pixel-removal-least": ("pixel-removal", "least-first", "prob-auc"),
                 "pixel-removal-most": ("pixel-removal", "most-first", "prob-auc")}
#: The setting of a method that its cost grows with, named in the rates table.
COST_SETTINGS = {"intgrad": "n_steps", "rise": "n_masks", "lime": "num_samples"}
RATE_METRICS = ("localisation", "localisation-difull", "pixel-removal")
UNITS = {"localisation": "grids", "localisation-difull": "grids"}  # other metrics: images
MARKER = re.compile(r"(<!-- table: ([a-z-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


def _row(summary: pd.DataFrame, model: str, method: str, metric: str, variant: str,
         stat: str) -> pd.Series | None:
    rows = summary[(summary.model == model) & (summary.method == method)
                   & (summary.metric == metric) & (summary.variant.fillna("") == variant)
                   & (summary.stat == stat)]
    return None if rows.empty else rows.iloc[0]  # the store holds each part once


def cell(summary: pd.DataFrame, model: str, method: str, metric: str, variant: str,
         stat: str, paper: float | None = None) -> str:
    """"mean [ci_low, ci_high] (n)" of one summary row ("–" when the store lacks it), "▼" when
    the whole CI lies below the paper's figure ``paper``."""
    r = _row(summary, model, method, metric, variant, stat)
    if r is None:
        return "–"
    below = " ▼" if paper is not None and r["ci_high"] < paper else ""
    return f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] ({int(r['n'])}){below}"


def method_table(summary: pd.DataFrame, metric: str, variant: str, stat: str,
                 models: list[str] | None = None) -> str:
    """A row per method with any figure, a column per model present (the paper's first for
    localisation, beside S-CoDA, the model it is for)."""
    models = [m for m in (models or MODELS) if m in set(summary.model)]
    paper = metric == "localisation"
    head = (["paper: S-CoDA-SQ T = 1000"] if paper else []) + models
    lines = ["| method | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
    for method, label in METHODS.items():
        ref = PAPER_LOCALISATION.get(method) if paper else None
        cells = [cell(summary, m, method, metric, variant, stat,
                      ref if m == "s-coda-sq-t1000" else None) for m in models]
        if set(cells) == {"–"}:
            continue
        if paper:
            cells = [f"{ref:.3f}" if ref is not None else "–", *cells]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def temperature_table(summary: pd.DataFrame) -> str:
    """The inherent maps' localisation per temperature: the paper's row, then ours with n."""
    temps = list(PAPER_TEMPERATURES)
    ours = [cell(summary, f"xs-coda-sq-t{t}", "inherent", "localisation", "", "score",
                 PAPER_TEMPERATURES[t]) for t in temps]
    return "\n".join(["| T | " + " | ".join(map(str, temps)) + " |",
                      "|---|" + "---|" * len(temps),
                      "| paper (S-CoDA-SQ, 500 grids) | "
                      + " | ".join(f"{v:.3f}" for v in PAPER_TEMPERATURES.values()) + " |",
                      "| here (xs-coda-sq), (n) = grids | " + " | ".join(ours) + " |"])


def _label(method: str) -> str:
    return METHODS.get(method, method).split()[0]


def parts_table(manifest: dict) -> str:
    """What the store holds: per metric and n, the models and methods, how many parts were
    computed from a clean tree, and the compute they took (core-hours: seconds × threads)."""
    parts = pd.DataFrame(manifest["parts"])
    parts["unit"] = parts.metric.map(lambda m: UNITS.get(m, "images"))
    lines = ["| metric | n | models | methods | parts (clean tree) | CPU core-hours | "
             "GPU hours |", "|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODELS)}
    for (metric, n), group in parts.groupby(["metric", "n"], sort=True):
        core = gpu = 0.0
        for where in group.seconds_by_compute:
            for label, seconds in (where or {}).items():
                if label.startswith("cpu x"):
                    core += seconds * int(label.split("x")[1]) / 3600
                else:
                    gpu += seconds / 3600
        models = sorted(set(group.model), key=lambda m: order.get(m, len(order)))
        methods = sorted(set(group.method), key=lambda m: list(METHODS).index(m)
                         if m in METHODS else len(METHODS))
        clean = int(group.clean_tree.fillna(False).astype(bool).sum())
        lines.append(f"| {metric} | {n} {group.unit.iloc[0]} | {', '.join(models)} | "
                     f"{', '.join(map(_label, methods))} | {len(group)} ({clean}) | "
                     f"{core:.2f} | {gpu:.3f} |")
    gone = len(manifest.get("superseded", []))
    lines.append(f"| **all** | | | | **{len(parts)}** ({gone} superseded) | | |")
    return "\n".join(lines)


def rates_table(manifest: dict) -> str:
    """Per model and method (and cost setting), seconds per grid or image of each metric and
    where it ran: "2.10 (500, x1)" (n, torch threads or GPU). "≈ 0 (IxG's rows)": the part took
    another method's rows; "≈ 0 (cached maps)": its maps came from the attribution cache."""
    rows = []
    for p in manifest["parts"]:
        where = p.get("seconds_by_compute") or {}
        if p["metric"] not in RATE_METRICS or len(where) != 1 or not p["n"]:
            continue
        label, seconds = next(iter(where.items()))
        hparams = manifest["runs"][p["run"]].get("config", {}).get("method_hparams", {})
        setting = COST_SETTINGS.get(p["method"])
        value = (f"≈ 0 ({_label(next(iter(p['rows_taken_from'])))}'s rows)"
                 if p.get("rows_taken_from") else
                 f"{seconds / p['n']:.2f}" if seconds / p["n"] >= 0.005 else "≈ 0 (cached maps)")
        place = label.removeprefix("cpu ").removeprefix("cuda ").removeprefix("NVIDIA ")
        rows.append({"model": p["model"], "method": p["method"], "metric": p["metric"],
                     "setting": f"{setting} {hparams.get(p['method'], {}).get(setting, '')}"
                     if setting else "", "text": f"{value} ({p['n']}, {place})"})
    rates = pd.DataFrame(rows)
    lines = ["| model | method | localisation s/grid | DiFull s/grid | pixel removal s/image |",
             "|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(MODELS)}
    keys = rates[["model", "method", "setting"]].drop_duplicates()
    rank = {m: i for i, m in enumerate(METHODS)}
    keys = keys.assign(_m=keys.model.map(order).fillna(len(order)),
                       _k=keys.method.map(lambda m: rank.get(m, len(rank))))
    for row in keys.sort_values(["_m", "_k"]).itertuples():
        cells = [next(iter(rates[(rates.model == row.model) & (rates.method == row.method)
                                 & (rates.metric == metric)].text), "–")
                 for metric in RATE_METRICS]
        label = _label(row.method) + (f" ({row.setting})" if row.setting else "")
        lines.append(f"| {row.model} | {label} | {' | '.join(cells)} |")
    return "\n".join(lines)


#: The paper's claims that paired comparisons decide: (claim, metric, variant, stat).
PAIRED_CLAIMS = (
    ("The inherent maps localise better than every post-hoc method.",
     "localisation", "", "score"),
    ("Removing the least important pixels first keeps the model's confidence longest with its "
     "own (inherent) maps.", "pixel-removal", "least-first", "prob-auc"),
)
CODA = [m for m in MODELS if "coda" in m]


def _p(p: float) -> str:
    """A p-value as the tables print it; "< 1e-300" where it underflows to 0."""
    return "< 1e-300" if p == 0 else f"{p:.3f}" if p >= 0.001 else f"{p:.0e}"


def _pair_text(row: pd.Series, method: str) -> str:
    """"GradCAM +0.27 [0.26, 0.28], p 1e-30 (n 4500)": the inherent maps' mean difference
    to ``method`` with its paired CI and Holm-adjusted Wilcoxon p."""
    sign = 1 if row["method_a"] == "inherent" else -1
    low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
    return (f"{_label(method)} {sign * row['mean_diff']:+.3f} [{low:+.3f}, {high:+.3f}], "
            f"p {_p(row['p_holm'])} (n {int(row['n'])})")


def claim_pairs(values: pd.DataFrame, summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The paired comparisons of the families the claims read (the CoDA-Nets'), only."""
    wanted = np.zeros(len(values), dtype=bool)
    for _, metric, variant, stat in PAIRED_CLAIMS:
        wanted |= ((values["metric"] == metric) & (values["variant"].fillna("") == variant)
                   & (values["stat"] == stat)).to_numpy()
    return pairwise(values[wanted & values["model"].isin(CODA).to_numpy()], summary, dataset)


def claims_table(pairs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Each claim of the paper, per CoDA-Net, decided by the paired comparisons of the inherent
    maps with every other method (Holm within the family): holds when the inherent maps are
    better than each; otherwise the methods ahead or not separated are named. The temperature
    claim compares different models (different grids), so it reads the inherent maps' means
    with their bootstrap CIs: holds when each step up in T has a CI above the one before."""
    lines = ["| claim (paper: S-CoDA-SQ) | model | verdict | closest rival: inherent − rival "
             "[paired 95 % CI], Holm p (n) |", "|---|---|---|---|"]
    for claim, metric, variant, stat in PAIRED_CLAIMS:
        for model in CODA:
            rows = pairs[(pairs.model == model) & (pairs.metric == metric)
                         & (pairs.variant == variant) & (pairs.stat == stat)
                         & ((pairs.method_a == "inherent") | (pairs.method_b == "inherent"))]
            if rows.empty:
                continue
            other = [r.method_b if r.method_a == "inherent" else r.method_a
                     for r in rows.itertuples()]
            ahead = [m for m, r in zip(other, rows.itertuples(), strict=True) if r.better == m]
            tied = [m for m, r in zip(other, rows.itertuples(), strict=True) if r.better == "none"]
            verdict = ("**fails**: " + ", ".join(map(_label, ahead)) + " ahead" if ahead else
                       "not shown: " + ", ".join(map(_label, tied)) + " not separated" if tied
                       else f"**holds** against all {len(other)} methods run on it")
            sign = np.where(rows.method_a == "inherent", 1.0, -1.0)
            closest = int(np.argmin(sign * rows["mean_diff"].to_numpy()))
            lines.append(f"| {claim} | {model} | {verdict} | "
                         f"{_pair_text(rows.iloc[closest], other[closest])} |")
    temps = sorted(PAPER_TEMPERATURES)
    cells = [_row(summary, f"xs-coda-sq-t{t}", "inherent", "localisation", "", "score")
             for t in temps]
    if all(c is not None for c in cells):
        ups = [cells[i + 1]["ci_low"] > cells[i]["ci_high"] for i in range(len(cells) - 1)]
        verdict = (f"**holds**: each of the {len(ups)} steps up in T has a CI above the last"
                   if all(ups) else "**fails** at T = " + ", ".join(
                       str(temps[i + 1]) for i, up in enumerate(ups) if not up))
        means = " → ".join(f"{c['mean']:.3f}" for c in cells)
        lines.append(f"| Higher T gives better localisation of the inherent maps. | "
                     f"xs-coda-sq-t10 … t5000 | {verdict} | means {means} (unpaired: each "
                     "model draws its own grids) |")
    return "\n".join(lines)


def tables(store: Path = STORE) -> dict[str, str]:
    """Table name → Markdown table, for every table this script owns."""
    held = read_store(store)
    summary = held.summary
    out = {name: method_table(summary, *spec) for name, spec in METHOD_TABLES.items()}
    out["headline"] = method_table(summary, "localisation", "", "score", HEADLINE_MODELS)
    out["temperature"] = temperature_table(summary)
    out["parts"] = parts_table(held.manifest)
    out["rates"] = rates_table(held.manifest)
    out["claims"] = claims_table(claim_pairs(held.values, summary,
                                             held.manifest.get("dataset", "")), summary)
    return out


def fill(text: str, new: dict[str, str], where: str = "text") -> str:
    """``text`` with each marked table replaced; SystemExit naming an unknown table name."""
    def swap(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in new:
            raise SystemExit(f"{where}: unknown table {name!r} (known: {', '.join(sorted(new))})")
        return f"{match.group(1)}\n{new[name]}\n\n{match.group(4)}"

    return MARKER.sub(swap, text)


def targets() -> list[Path]:
    """The Markdown files that may hold tables: README.md and docs/**/*.md."""
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=STORE, help="the results store")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 when a file's tables are stale")
    args = parser.parse_args(argv)
    new = tables(args.store)
    stale = 0
    for path in targets():
        text = path.read_text(encoding="utf-8")
        if not MARKER.search(text):
            continue
        updated = fill(text, new, str(path.relative_to(REPO)))
        name = path.relative_to(REPO)
        if args.check:
            if updated != text:
                stale += 1
                print(f"{name}: tables differ from the store; run python results/tables.py",
                      file=sys.stderr)
            continue
        if updated != text:
            path.write_text(updated, encoding="utf-8")
        print(f"{name}: {'updated' if updated != text else 'already current'}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
