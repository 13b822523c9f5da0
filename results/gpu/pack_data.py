"""Pack CIFAR-10 into .carry/cifar10/ at the best JPEG quality the device machine's carry allows.

The device tool copies the working tree (tracked files and untracked, not ignored ones) plus the
carried paths, at most 64 MiB in all. This script packs the original CIFAR-10 (train: JPEG
mosaics, lossy; test: lossless WebP, bit-exact; see attrib_bench/data/packed.py) into
``.carry/cifar10`` and keeps the first of (q90 4:4:4, q85 4:4:4, q80 4:2:0, q75 4:2:0) for which

    size(git ls-files --cached --others --exclude-standard) + size(.carry/wheels) + packed

stays at or under 64 MiB - 3 MiB (the first device call carries ".carry/cifar10" and
".carry/wheels"). Sizes are printed in MB (10^6 bytes) and recorded under "carry" in
.carry/cifar10/cifar10-packed.json. Pass ``--data-root .carry/cifar10`` to attrib-bench.
``--test-only`` packs only the (lossless) test split into ``.carry/cifar10-test``: what a later
call that only evaluates needs (results/gpu/README.md).

Usage: .venv/bin/python results/gpu/pack_data.py [--data-root ../shared/data] [--test-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from attrib_bench.data.packed import pack_cifar10, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
LIMIT = 64 * MIB
MARGIN = 3 * MIB
CANDIDATES = ((90, "4:4:4"), (85, "4:4:4"), (80, "4:2:0"), (75, "4:2:0"))


def tree_files_bytes(repo: Path) -> int:
    """Bytes of the files the device tool copies from the working tree (not counting .carry/)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    paths = (repo / name for name in listing if name and not name.startswith(".carry/"))
    return sum(p.lstat().st_size for p in paths if p.is_file() or p.is_symlink())


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (0 if it does not exist)."""
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                        help="folder holding the original cifar-10-batches-py")
    parser.add_argument("--test-only", action="store_true",
                        help="pack only the test split, into .carry/cifar10-test")
    args = parser.parse_args()
    carry = REPO / ".carry"
    if args.test_only:
        out = carry / "cifar10-test"
        pack_cifar10(args.data_root, out, splits=("test",))
        print(f"wrote {out.relative_to(REPO)}: {folder_bytes(out) / 1e6:.1f} MB")
        return 0
    out = carry / "cifar10"
    budget = LIMIT - MARGIN
    tree = tree_files_bytes(REPO)
    print(f"working tree (tracked + untracked, not ignored): {tree / 1e6:.1f} MB")
    print(f"budget: 64 MiB - 3 MiB margin = {budget / 1e6:.1f} MB")
    tried = []
    for quality, subsampling in CANDIDATES:
        manifest = pack_cifar10(args.data_root, out, quality=quality, subsampling=subsampling)
        packed = folder_bytes(out)
        other = folder_bytes(carry / "wheels")
        total = tree + other + packed
        fits = total <= budget
        tried.append({"quality": quality, "subsampling": subsampling, "packed_bytes": packed,
                      "total_bytes": total, "fits": fits})
        files = manifest["files"]
        train = sum(f["bytes"] for name, f in files.items() if name.startswith("train-"))
        print(f"q{quality} {subsampling}: train {train / 1e6:.1f} MB (mean abs error "
              f"{manifest['train']['mean_abs_error']:.2f} / 255), test "
              f"{files['test.webp']['bytes'] / 1e6:.1f} MB, packed folder {packed / 1e6:.1f} MB;"
              f" wheels {other / 1e6:.1f} MB; total {total / 1e6:.1f} MB -> "
              f"{'fits' if fits else 'too big'}")
        if fits:
            break
    else:
        print(f"error: even q75 4:2:0 does not fit in {budget / 1e6:.1f} MB: shrink .carry/ or "
              "the tracked files", file=sys.stderr)
        return 1
    manifest = read_manifest(out)
    manifest["carry"] = {
        "units": "bytes", "limit_bytes": LIMIT, "margin_bytes": MARGIN, "budget_bytes": budget,
        "working_tree_bytes": tree, "other_carry_bytes": other, "packed_bytes": packed,
        "total_bytes": total, "tried": tried,
        "chosen": {"quality": quality, "subsampling": subsampling},
    }
    write_manifest(out, manifest)
    print(f"chosen: JPEG q{quality} {subsampling} for train; wrote {out.relative_to(REPO)} "
          f"({total / 1e6:.1f} of {budget / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
