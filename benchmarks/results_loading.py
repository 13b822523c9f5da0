"""``plot``/``report`` on the committed reproduction: Arrow-backed vs object text columns.

Reads the results store or run folders with :func:`attrib_bench.plots.load_runs` and builds
every figure with :func:`attrib_bench.plots.figures_for` (no file written), once with the
tables read as pandas' default (Arrow-backed ``str`` columns, ``pd.read_parquet``) and once as
``attrib_bench.store._read_parquet`` reads them (dictionary-encoded, expanded to object
dtype), interleaved. Prints the median seconds of each step and the ratio, and checks that
both readings give equal tables.

    .venv/bin/python benchmarks/results_loading.py results/cifar10
"""
from __future__ import annotations

import argparse
import time
from unittest import mock

import matplotlib.pyplot as plt
import pandas as pd

from attrib_bench import plots, store

READERS = {"arrow str": pd.read_parquet, "object": store._read_parquet}


def _timed(folders: list[str], reader) -> tuple[pd.DataFrame, float, float]:
    with mock.patch.object(store, "_read_parquet", reader):
        start = time.perf_counter()
        tables = plots.load_runs(folders)
        loaded = time.perf_counter()
        figures = plots.figures_for(tables)
        drawn = time.perf_counter()
    for fig in figures.values():
        plt.close(fig)
    return tables.results, loaded - start, drawn - loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in READERS}
    tables = {}
    for _ in range(args.repeats):
        for name, reader in READERS.items():
            tables[name], load, draw = _timed(args.folders, reader)
            times[name].append((load, draw))
    arrow, plain = tables["arrow str"], tables["object"]
    pd.testing.assert_frame_equal(arrow.astype(plain.dtypes.to_dict()), plain)
    print(f"{', '.join(args.folders)}: {len(plain):,} result rows; median of {args.repeats}, "
          "interleaved")
    print(f"{'':28}{'arrow str':>10}{'object':>10}{'ratio':>8}")
    for k, step in enumerate(("load_runs [s]", "figures_for (no save) [s]")):
        a, o = (sorted(t[k] for t in times[name])[args.repeats // 2] for name in READERS)
        print(f"{step:28}{a:10.2f}{o:10.2f}{a / o:7.1f}x")


if __name__ == "__main__":
    main()
