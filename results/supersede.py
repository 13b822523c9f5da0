"""Take parts out of a committed run folder because a newer run recomputed them.

    python results/supersede.py results/cifar10/gradient --model resnet56 \
        --by results/cifar10/gradient-resnet56 --reason "issue 16: softmax scoring"

Removes the rows of the matching (model, method, metric) parts from RUN's ``results.parquet``
and ``results.csv``, recomputes ``summary.csv`` from the rows that stay (the runner's own
:func:`~attrib_bench.runners.benchmark.summarise`, with the run's metric settings), writes the
three tables as the runner does and records their new sha256 in the manifest's ``tables_sha256``
(which ``plot`` checks), drops the
sample-set entries no part uses any more, and records what was taken out, by which run and why
in ``manifest.json`` (``superseded``). The rows that stay are not touched. Refuses to remove
parts that ``--by`` does not hold, so no (model, method, metric) is lost. A run left with no
part is deleted (a folder of empty tables is not a run; git history keeps it, and the README's
"What was run" names the run that replaced it).

Why a script and not a re-run: the committed runs cost CPU hours; when a change (here: ResNet-56
scored by its softmax, RISE and LIME by the model's own probability) alters some parts only, the
others stay as they were computed, and the README says which parts come from which run.
"""

from __future__ import annotations

import argparse
import json
import shutil
from datetime import date
from pathlib import Path

import pandas as pd

from attrib_bench.registry import create_metric
from attrib_bench.runners.benchmark import ID_COLUMNS, summarise, write_tables
from attrib_bench.runners.storage import Store, atomic_write


def _parts(rows: pd.DataFrame) -> set[tuple[str, str, str]]:
    return set(map(tuple, rows[list(ID_COLUMNS)].drop_duplicates().to_numpy().tolist()))


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
    metric_objects = {name: create_metric(name, **settings.get(name, {}))
                      for name in kept["metric"].unique()}
    summary = summarise(kept, metric_objects, manifest["config"].get("seed", 0))
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
