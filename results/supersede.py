"""Take parts out of a committed run folder because a newer run recomputed them.

    python results/supersede.py results/cifar10/gradient --model resnet56 \
        --by results/cifar10/gradient-resnet56 --reason "issue 16: softmax scoring"

Removes the rows of the matching (model, method, metric) parts from RUN's ``results.parquet``
and ``results.csv``, recomputes ``summary.csv`` from the rows that stay (the runner's own
:func:`~attrib_bench.runners.benchmark.summarise`, with the run's metric settings), writes the
three tables as the runner does and records their new sha256 in the manifest's ``tables_sha256``
(which ``plot`` checks), drops the sample-set entries no part uses any more, and records what
was taken out, by which run and why in ``manifest.json`` (``superseded``). The rows that stay are
not touched, and their recomputed summary must equal the one the run wrote (else the run's
settings were not reproduced, and nothing is written). Refuses to remove parts that ``--by``
does not hold, so no (model, method, metric) is lost. A run left with no part is deleted (a
folder of empty tables is not a run; git history keeps it, and the README names it).

Why a script and not a re-run: the committed runs cost CPU hours; when a change (here: ResNet-56
scored by its softmax, RISE and LIME by the model's own probability) alters some parts only, the
others stay as they were computed, and the README says which parts come from which run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from attrib_bench.registry import METRICS, create_metric
from attrib_bench.runners.benchmark import ID_COLUMNS, summarise, write_tables
from attrib_bench.runners.storage import Store, atomic_write


def _parts(rows: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(map(tuple, rows[list(ID_COLUMNS)].drop_duplicates().to_numpy().tolist()))


#: Metric settings of older runs that only set how the work was batched (the metric contract
#: of 2026-11 moved them to the runner), so they cannot change a row or a summary.
COMPUTE_ONLY = frozenset({"batch_size"})


def _metric(name: str, settings: dict) -> object:
    """The run's metric as configured, without the settings the metric no longer takes that
    only batched the work (``COMPUTE_ONLY``); any other unknown setting stops the script."""
    taken = inspect.signature(METRICS.get(name).factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in taken.values()):
        unknown = set(settings) - set(taken)
        if unknown - COMPUTE_ONLY:
            raise SystemExit(f"metric {name!r} no longer takes {sorted(unknown - COMPUTE_ONLY)}: "
                             "this script cannot recompute that run's summary")
        settings = {k: v for k, v in settings.items() if k not in unknown}
    return create_metric(name, **settings)


def _check_unchanged(before: pd.DataFrame, after: pd.DataFrame, run: Path) -> None:
    """Every kept part's summary rows recompute to what the run's ``summary.csv`` held (the
    rows are the same; a difference means the settings were not reproduced): else stop."""
    keys = ["model", "method", "metric", "variant", "stat"]
    before, after = (t.assign(variant=t["variant"].fillna("").astype(str)) for t in (before, after))
    both = before.merge(after, on=keys, how="right", suffixes=("_before", ""))
    for column in ("mean", "ci_low", "ci_high", "n"):
        old, new = both[f"{column}_before"].to_numpy(float), both[column].to_numpy(float)
        if not np.allclose(old, new, rtol=1e-9, atol=1e-12, equal_nan=True):
            raise SystemExit(f"{run}: the kept parts' {column} does not recompute to its "
                             "summary.csv: nothing written")


def supersede(run: Path, by: Path, reason: str, models: list[str], methods: list[str] | None,
              metrics: list[str] | None) -> list[tuple[str, str, str]]:
    """Remove the matching parts of ``run`` that ``by`` holds; returns the parts removed. A
    run with no part left is deleted."""
    results = pd.read_parquet(run / "results.parquet")
    newer = _parts(pd.read_parquet(by / "results.parquet", columns=list(ID_COLUMNS)))
    match = results["model"].isin(models)
    if methods:
        match &= results["method"].isin(methods)
    if metrics:
        match &= results["metric"].isin(metrics)
    removed = sorted(_parts(results[match]))
    missing = [p for p in removed if p not in newer]
    if missing:
        raise SystemExit(f"{by} does not hold {missing[:3]}: refusing to remove them from {run}")
    if not removed:
        raise SystemExit(f"nothing in {run} matches")
    kept = results[~match].reset_index(drop=True)
    if kept.empty:
        shutil.rmtree(run)
        return removed
    manifest = json.loads((run / "manifest.json").read_text())
    settings = manifest["config"].get("metric_hparams", {})
    metric_objects = {name: _metric(name, settings.get(name, {}))
                      for name in kept["metric"].unique()}
    summary = summarise(kept, metric_objects, manifest["config"].get("seed", 0))
    _check_unchanged(pd.read_csv(run / "summary.csv"), summary, run)
    manifest["tables_sha256"] = write_tables(Store(run), kept, summary)
    used = {f"{m}/{metric}" for m, _, metric in _parts(kept)}
    manifest["samples"] = {k: v for k, v in manifest.get("samples", {}).items() if k in used}
    still = set(kept["model"])
    manifest["models"] = {k: v for k, v in manifest.get("models", {}).items() if k in still}
    manifest["rows"] = len(kept)
    manifest.setdefault("superseded", []).append({
        "parts": [dict(zip(ID_COLUMNS, p, strict=True)) for p in removed],
        "by": by.name, "reason": reason, "date": date.today().isoformat()})
    atomic_write(run / "manifest.json",
                 lambda tmp: tmp.write_text(json.dumps(manifest, indent=1, default=str)))
    return removed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--by", type=Path, required=True)
    parser.add_argument("--reason", required=True)
    parser.add_argument("--model", required=True, help="comma-separated")
    parser.add_argument("--method", default=None, help="comma-separated (default: all)")
    parser.add_argument("--metric", default=None, help="comma-separated (default: all)")
    args = parser.parse_args()
    split = (lambda s: s.split(",") if s else None)  # noqa: E731
    removed = supersede(args.run, args.by, args.reason, args.model.split(","),
                        split(args.method), split(args.metric))
    gone = "" if args.run.exists() else f"; no part was left, so {args.run} was deleted"
    print(f"{args.run}: removed {len(removed)} parts, now in {args.by}{gone}")


if __name__ == "__main__":
    main()
