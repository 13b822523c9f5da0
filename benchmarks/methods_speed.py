"""Attribution-method speed: images/s per method and model, and perturbation overhead.

Run on demand (never in CI):

    python benchmarks/methods_speed.py [--models s-coda,resnet56] [--methods all|grad,occ5,...]
                                       [--batch-size 32] [--max-batch 64] [--rise-masks 6000]
                                       [--lime-samples 256] [--repeats 1] [--threads N]
                                       [--device cpu] [--seed 0] [--json PATH]

Inputs are uniform random RGB images (B, 3, 32, 32) with random targets; S-CoDA has random
weights (the zoo has none yet), ResNet-56 loads its checked weights if the file is there, else
random ones: speed does not depend on the weights. Each method object is built once and called
``--repeats`` times after one model forward (warm-up); RISE's masks are drawn before timing (a
one-off cost per mask set, reported separately).

Reported per (model, method): wall time per batch (median of repeats) and images/s. RISE and
LIME cost is linear in their number of masks / samples, so with ``--rise-masks`` or
``--lime-samples`` below the defaults (6000, 256) the images/s at the full default is also
reported, scaled by N_used / N_default (an estimate, stated as such). For occlusion and RISE the
bare batched forwards they need (the same number of images, in forwards of ``--max-batch``, under
``torch.inference_mode``) are timed right after each repeat, and the ratio method / bare is
reported; the project's goal is <= 1.15.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import torch

# isort: split
from attrib_bench.core.checkpoints import resolve_weights_root
from attrib_bench.core.errors import NotApplicableError
from attrib_bench.core.provenance import describe_hardware, git_commit
from attrib_bench.core.registry import METHODS, applicable_methods, create_method, create_model

OVERHEAD_GOAL = 1.15
FULL = {"rise": ("n_masks", 6000), "lime": ("num_samples", 256)}


def build_model(name: str) -> tuple[torch.nn.Module, str]:
    if name == "resnet56":
        if (resolve_weights_root() / "resnet56-4bfd9763.th").is_file():
            return create_model(name, pretrained=True), "pretrained (93.39 %)"
        return create_model(name, pretrained=False), "random weights"
    return create_model(name, pretrained=False), "random weights"


def forward_images(method: Any, batch: int, size: int) -> int | None:
    """Images the method pushes through the model for one batch (perturbation methods only)."""
    if hasattr(method, "patch_size"):
        per_axis = math.ceil((size - method.patch_size) / method.stride) + 1
        return batch * (per_axis**2 + 1)
    if hasattr(method, "n_masks"):
        return batch * method.n_masks
    return None


@torch.inference_mode()
def bare_forwards(model: torch.nn.Module, images: int, max_batch: int, x: torch.Tensor) -> float:
    """Seconds for ``images`` forward images in batches of ``max_batch`` (inference mode)."""
    pool = x.repeat(math.ceil(max_batch / len(x)), 1, 1, 1)[:max_batch].contiguous()
    start = time.perf_counter()
    done = 0
    while done < images:
        n = min(max_batch, images - done)
        model(pool[:n])
        done += n
    return time.perf_counter() - start


def time_method(model: torch.nn.Module, name: str, hparams: dict[str, Any], x: torch.Tensor,
                target: torch.Tensor, repeats: int, max_batch: int) -> dict[str, Any]:
    method = create_method(name, model, max_batch=max_batch, **hparams)
    row: dict[str, Any] = {"method": name, "hparams": hparams}
    if hasattr(method, "masks"):  # RISE: draw the masks once, outside the timing
        start = time.perf_counter()
        method.masks(tuple(x.shape[-2:]), x.device, x.dtype)
        row["mask_seconds"] = time.perf_counter() - start
    images = forward_images(method, len(x), x.shape[-1])
    times, bare = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        method.attribute(x, target)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if images is not None:
            bare.append(bare_forwards(model, images, max_batch, x))
            if x.is_cuda:
                torch.cuda.synchronize()
    row["seconds"] = statistics.median(times)
    row["images_per_s"] = len(x) / row["seconds"]
    if name in FULL and FULL[name][0] in hparams:
        key, full = FULL[name]
        row["images_per_s_at_default"] = row["images_per_s"] * hparams[key] / full
    if images is not None:
        row["forward_images"] = images
        row["bare_seconds"] = statistics.median(bare)
        row["overhead"] = row["seconds"] / row["bare_seconds"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="s-coda,resnet56")
    parser.add_argument("--methods", default="all", help="comma-separated names, or all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=64, help="images per forward")
    parser.add_argument("--rise-masks", type=int, default=6000)
    parser.add_argument("--lime-samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.rand(args.batch_size, 3, 32, 32, generator=generator).to(device)
    load = os.getloadavg()[0]
    print(f"attribution methods: batch {args.batch_size} of random 32x32 RGB images, "
          f"max_batch {args.max_batch} images per forward, {args.repeats} repeat(s), median")
    print(f"hardware: {describe_hardware(device)}")
    print(f"code: git {git_commit(short=True)} | 1-min load average before: {load:.2f}")
    rows = []
    for model_name in args.models.split(","):
        model, weights = build_model(model_name)
        model = model.to(device).eval()
        target = torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)
        names = applicable_methods(model) if args.methods == "all" else args.methods.split(",")
        with torch.inference_mode():
            model(x)  # warm-up
        print(f"\n{model_name} ({weights})")
        print(f"{'method':<10} {'hyper-parameters':<22} {'s/batch':>9} {'images/s':>10} "
              f"{'at default N':>13} {'fwd images':>11} {'bare fwd s':>11} {'ratio':>7}")
        for name in names:
            METHODS.get(name)
            hparams: dict[str, Any] = {}
            if name == "rise":
                hparams = {"n_masks": args.rise_masks, "seed": args.seed}
            elif name == "lime":
                hparams = {"num_samples": args.lime_samples, "seed": args.seed}
            try:
                row = time_method(model, name, hparams, x, target, args.repeats, args.max_batch)
            except NotApplicableError:
                print(f"{name:<10} does not apply to {model_name}")
                continue
            row["model"] = model_name
            rows.append(row)
            shown = ", ".join(f"{k}={v}" for k, v in hparams.items() if k != "seed") or "defaults"
            default = row.get("images_per_s_at_default")
            default_text = "-" if default is None else f"{default:.3f}"
            bare_text = f"{row['bare_seconds']:.2f}" if "bare_seconds" in row else "-"
            ratio_text = f"{row['overhead']:.2f}x" if "overhead" in row else "-"
            print(f"{name:<10} {shown:<22} {row['seconds']:>9.2f} {row['images_per_s']:>10.2f} "
                  f"{default_text:>13} {row.get('forward_images', '-'):>11} {bare_text:>11} "
                  f"{ratio_text:>7}")
    print(f"\n1-min load average after: {os.getloadavg()[0]:.2f}")
    ratios = [r["overhead"] for r in rows if "overhead" in r]
    if ratios:
        worst = max(ratios)
        verdict = "met" if worst <= OVERHEAD_GOAL else "MISSED"
        print(f"goal: perturbation methods within {OVERHEAD_GOAL:.2f}x of their bare forwards: "
              f"{verdict} (worst {worst:.2f}x)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"argv": sys.argv, "rows": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
