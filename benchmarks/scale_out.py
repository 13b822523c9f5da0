"""Scale-out: the same sweep in-process and on Dask LocalClusters of 1 and 2 worker processes.

Run on demand (never in CI):

    python benchmarks/scale_out.py [--model xs-coda-sq-t1000] [--methods grad,ixg,gradcam]
                                   [--metric pixel-removal] [--n 32] [--chunk-size 4]
                                   [--workers 1,2] [--noop-tasks 200] [--json PATH]

Each configuration runs the sweep from scratch into its own temporary folder (no cache reuse)
and is timed end to end, from ``run()`` to the written tables, so that model loading, sample
selection, the cluster's start-up and the workers' first imports, scattering and gathering are
included; the tables are checked to be identical to
the in-process one. Torch threads: in-process uses torch's default (all cores); each worker of
a LocalCluster of N gets cores // N threads, as ``--workers N`` gives them. Reported per
configuration: wall seconds, speed-up over in-process, work seconds (the chunks' own time,
summed over workers), tasks, and the peak resident memory of each worker process (the
client's for in-process). The scheduling overhead per task is
measured on its own: the wall time of ``--noop-tasks`` empty tasks on the 2-worker cluster,
divided by their number.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

import pandas as pd

# isort: split
from attrib_bench.core.perf import peak_rss_mb, retain_freed_memory
from attrib_bench.core.provenance import describe_hardware, git_commit
from attrib_bench.runners.benchmark import run
from attrib_bench.runners.distributed import local_cluster

KEYS = ["model", "method", "metric", "sample", "key", "variant", "stat"]


def noop(*_: Any) -> None:
    return None


def sweep(args: argparse.Namespace, out: str, **executor: Any) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    table = run(args.model, args.methods, args.metric, n_samples=args.n,
                chunk_size=args.chunk_size, out=out, progress=False, **executor)
    return time.perf_counter() - start, table.sort_values(KEYS, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xs-coda-sq-t1000")
    parser.add_argument("--methods", default="grad,ixg,gradcam")
    parser.add_argument("--metric", default="pixel-removal")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--chunk-size", type=int, default=4)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--noop-tasks", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import distributed

    retain_freed_memory()
    cores = os.cpu_count() or 1
    print(f"hardware: {describe_hardware(__import__('torch').device('cpu'))}, {cores} cores; "
          f"commit {git_commit()}")
    print(f"sweep: {args.model} × {args.methods} × {args.metric}, n={args.n}, "
          f"chunks of {args.chunk_size}")
    rows: list[dict[str, Any]] = []
    per_task = float("nan")
    with tempfile.TemporaryDirectory(prefix="scale-out-") as folder:
        seconds, reference = sweep(args, f"{folder}/local")
        manifest = json.loads(open(f"{folder}/local/manifest.json").read())
        rows.append({"executor": "in-process", "workers": 0, "seconds": seconds,
                     "tasks": None, "peak_rss_mb": [round(peak_rss_mb())],
                     "work_seconds": sum(p["seconds_this_run"] for p in manifest["parts"])})
        for count in (int(w) for w in args.workers.split(",")):
            # The CLI's path (--executor dask --workers N): run() starts the LocalCluster, each
            # worker with cores // N torch threads; start-up and the workers' first imports are
            # part of the wall time.
            seconds, table = sweep(args, f"{folder}/dask{count}", executor="dask",
                                   workers=count)
            manifest = json.loads(open(f"{folder}/dask{count}/manifest.json").read())
            pd.testing.assert_frame_equal(table, reference)
            info = manifest["executor"]
            rows.append({"executor": "dask LocalCluster", "workers": count, "seconds": seconds,
                         "tasks": info["tasks"],
                         "peak_rss_mb": sorted(info["peak_rss_mb_per_worker"].values()),
                         "threads_per_worker": info["torch_threads_per_worker"],
                         "work_seconds": sum(p["seconds_this_run"] for p in manifest["parts"])})
        if args.noop_tasks:
            with local_cluster(2) as cluster, distributed.Client(cluster) as client:
                client.submit(noop, pure=False).result()  # warm
                start = time.perf_counter()
                client.gather(client.map(noop, range(args.noop_tasks), pure=False))
                per_task = (time.perf_counter() - start) / args.noop_tasks
    base = rows[0]["seconds"]
    print(f"{'executor':<18} {'workers':>7} {'wall s':>8} {'speed-up':>8} {'work s':>7} "
          f"{'tasks':>6}  peak RSS per process (MB)")
    for row in rows:
        row["speedup"] = base / row["seconds"]
        extra = (f"  ({row['threads_per_worker']} torch threads per worker)" if row["workers"]
                 else "")
        print(f"{row['executor']:<18} {row['workers']:>7} {row['seconds']:>8.1f} "
              f"{row['speedup']:>7.2f}× {row['work_seconds']:>7.1f} {row['tasks'] or '-':>6}  "
              f"{row['peak_rss_mb']}{extra}")
    print("tables: identical to the in-process table for every configuration")
    if args.noop_tasks:
        print(f"scheduling overhead: {per_task * 1000:.1f} ms per task "
              f"({args.noop_tasks} empty tasks on 2 workers)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "overhead_ms_per_task": per_task * 1000}, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
