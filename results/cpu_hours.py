"""The compute each committed run folder cost, from its manifest (issue 21's accounting).

    python results/cpu_hours.py results/cifar10 results/cifar10-gpu

Prints a Markdown table: per run folder, its parts, the seconds its parts took summed over every
call that computed them (``seconds_per_part_all_runs``: resumed runs add up, cached parts count
once, when they were computed), the torch threads and device the manifest records for its last
call, and core-hours = seconds × threads / 3600 (an upper bound of the CPU time: a thread may
wait). Sample drawing (the pool pass over the test set) is not in the part seconds. A folder whose
chunks were computed elsewhere (``results/cifar10-gpu``: on a lent H200, aggregated on the CPU)
records that machine's seconds only if its manifest came from there; its README says which.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def folder_cost(manifest_path: Path) -> dict[str, object]:
    """One run folder's parts, part seconds, threads, device and core-hours."""
    manifest = json.loads(manifest_path.read_text())
    parts = manifest.get("seconds_per_part_all_runs") or []
    seconds = sum(float(p["seconds"]) for p in parts)
    hardware = str(manifest.get("hardware", ""))
    threads = re.search(r"(\d+) torch threads", hardware)
    n_threads = int(threads.group(1)) if threads else 1
    device = re.search(r"device (\S+)", hardware)
    return {"run": str(manifest_path.parent), "parts": len(parts), "seconds": seconds,
            "threads": n_threads, "device": device.group(1) if device else "?",
            "core_hours": seconds * n_threads / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="folders of run folders")
    args = parser.parse_args()
    rows = [folder_cost(path) for folder in args.results
            for path in sorted(folder.glob("*/manifest.json"))]
    print("| run folder | parts | part seconds (all calls) | torch threads | device | "
          "core-hours |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| `{row['run']}` | {row['parts']} | {row['seconds']:.0f} | {row['threads']} | "
              f"{row['device']} | {row['core_hours']:.2f} |")
    total = sum(float(r["core_hours"]) for r in rows)
    print(f"| **total** | {sum(int(r['parts']) for r in rows)} | "
          f"{sum(float(r['seconds']) for r in rows):.0f} | | | **{total:.2f}** |")


if __name__ == "__main__":
    main()
