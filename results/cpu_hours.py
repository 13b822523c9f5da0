"""The compute each committed run folder cost, from its manifest (issue 21's accounting).

    python results/cpu_hours.py results/cifar10 results/cifar10-gpu

Prints a Markdown table: per run folder, its parts, the seconds its parts took summed over every
call that computed them (``seconds_per_part_all_runs``: resumed runs add up, cached parts count
once, when they were computed), where they ran, CPU core-hours = seconds × torch threads / 3600
(an upper bound of the CPU time: a thread may wait) and GPU hours. Since 2026-11-30 each chunk
records where it ran (``seconds_by_compute``: "cpu x1", "cuda NVIDIA H200"); chunks from before
count as run where the manifest's last call ran (its ``hardware``), which is wrong for a folder
whose chunks were computed on another machine and gathered here: ``results/cifar10-gpu``'s
manifest had its 70 H200 seconds (its README) added by hand as ``seconds_by_compute`` (its
``annotations`` say so). Sample drawing (the pool pass over the test set) is not in the part
seconds.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def last_call(manifest: dict) -> str:
    """Where the manifest's last call ran, as a chunk records it ("cpu x2"; the device's type
    for another device): what chunks written before 2026-11-30 ("unknown") count as."""
    hardware = str(manifest.get("hardware", ""))
    threads = re.search(r"(\d+) torch threads", hardware)
    device = re.search(r"device (\S+)", hardware)
    return (f"cpu x{int(threads.group(1)) if threads else 1}"
            if not device or device.group(1) == "cpu" else device.group(1))


def part_compute(manifest: dict, part: dict) -> dict[str, float]:
    """One part's seconds by where they ran ("unknown" read as :func:`last_call`)."""
    fallback = last_call(manifest)
    by_compute: dict[str, float] = {}
    for label, seconds in (part.get("seconds_by_compute")
                           or {"unknown": part["seconds"]}).items():
        label = fallback if label == "unknown" else label
        by_compute[label] = by_compute.get(label, 0.0) + float(seconds)
    return by_compute


def folder_cost(manifest_path: Path) -> dict[str, object]:
    """One run folder's parts, part seconds, where they ran, CPU core-hours and GPU hours."""
    manifest = json.loads(manifest_path.read_text())
    parts = manifest.get("seconds_per_part_all_runs") or []
    by_compute: dict[str, float] = {}
    for part in parts:
        for label, seconds in part_compute(manifest, part).items():
            by_compute[label] = by_compute.get(label, 0.0) + seconds
    core_seconds = sum(s * int(label.split("x")[1]) for label, s in by_compute.items()
                       if label.startswith("cpu x"))
    gpu_seconds = sum(s for label, s in by_compute.items() if not label.startswith("cpu"))
    return {"run": str(manifest_path.parent), "parts": len(parts),
            "seconds": sum(by_compute.values()), "where": by_compute,
            "core_hours": core_seconds / 3600, "gpu_hours": gpu_seconds / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="folders of run folders")
    args = parser.parse_args()
    rows = [folder_cost(path) for folder in args.results
            for path in sorted(folder.glob("*/manifest.json"))]
    print("| run folder | parts | part seconds (all calls) | where (seconds) | CPU core-hours | "
          "GPU hours |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        where = ", ".join(f"{k}: {v:.0f}" for k, v in sorted(row["where"].items()))
        print(f"| `{row['run']}` | {row['parts']} | {row['seconds']:.0f} | {where} | "
              f"{row['core_hours']:.2f} | {row['gpu_hours']:.3f} |")
    print(f"| **total** | {sum(int(r['parts']) for r in rows)} | "
          f"{sum(float(r['seconds']) for r in rows):.0f} | | "
          f"**{sum(float(r['core_hours']) for r in rows):.2f}** | "
          f"**{sum(float(r['gpu_hours']) for r in rows):.3f}** |")

if __name__ == "__main__":
    main()
