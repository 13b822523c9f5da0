"""Metric speed: a metric's wall time against the bare model work it needs, and against Quantus.

Run on demand (never in CI):

    python benchmarks/metrics_speed.py [--metrics pixel-removal] [--images 64] [--batch 256]
                                       [--steps 128] [--order most-first] [--baseline black]
                                       [--repeats 1] [--threads N] [--device cpu] [--no-quantus]
                                       [--quick] [--json PATH]

One function per metric (``bench_<metric>``), each returning a dict of timings and ratios.

**pixel-removal** on ResNet-56 (the checked weights if ../shared/weights has them, else random;
speed does not depend on the weights), the first ``--images`` CIFAR-10 test images (uniform
random images if the data is absent), maps from ``ixg`` computed before the timing (the
metric's explainer returns them, as the runner's attribution cache does). Three timings, back to
back in one run:

- ``metric``: ``PixelRemoval(order, steps, baseline, max_batch=--batch).evaluate`` on the batch;
- ``bare``: the same number of model inputs (images × orders × (steps + 1)) through the model in
  forwards of ``--batch`` inputs under ``torch.inference_mode``: the floor (goal: metric within
  1.15× of it);
- ``quantus``: Quantus 0.6 ``PixelFlipping`` (black, no normalisation, softmax) on the same
  images and maps. It flattens the 3 channels as features and removes all of them (not 25 %),
  and its ``features_in_step`` must divide H·W: we take the largest divisor of H·W up to
  3·H·W / steps (16 for 32 px and 128 steps: 192 forwards per image, not 129). Its forwards hold
  ``min(--images, --batch)`` images (one per image per step). The model work per input is the
  same, so the comparison is per model input (goal: ≥ 3× faster than Quantus).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: split
import speed_harness  # noqa: E402
from speed_harness import timed  # noqa: E402

from attrib_bench.core.checkpoints import resolve_weights_root
from attrib_bench.core.errors import AttribBenchError
from attrib_bench.core.registry import create_method, create_model
from attrib_bench.data import load_cifar10
from attrib_bench.metrics.base import EvalContext
from attrib_bench.metrics.pixel_removal import ORDERS, PixelRemoval

OVERHEAD_GOAL = 1.15
QUANTUS_GOAL = 3.0


def load_resnet56(device: torch.device) -> tuple[torch.nn.Module, str]:
    if (resolve_weights_root() / "resnet56-4bfd9763.th").is_file():
        model, weights = create_model("resnet56", pretrained=True), "pretrained"
    else:
        model, weights = create_model("resnet56", pretrained=False), "random weights"
    return model.to(device).eval(), weights


def load_images(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        data = load_cifar10("test")
        return (data.float_images(slice(0, n)).to(device), data.labels[:n].to(device),
                f"first {n} CIFAR-10 test images")
    except AttribBenchError:
        g = torch.Generator().manual_seed(0)
        return (torch.rand(n, 3, 32, 32, generator=g).to(device),
                torch.randint(0, 10, (n,), generator=g).to(device), f"{n} random 32x32 images")


def bare_forwards(model: torch.nn.Module, inputs: int, batch: int, x: torch.Tensor) -> None:
    """``inputs`` model inputs in forwards of ``batch`` (a pool of the real images, repeated)."""
    pool = x.repeat(math.ceil(batch / len(x)), 1, 1, 1)[:batch].contiguous()
    with torch.inference_mode():
        done = 0
        while done < inputs:
            n = min(batch, inputs - done)
            model(pool[:n])
            done += n


def quantus_step(height: int, width: int, steps: int) -> int:
    """Quantus's ``features_in_step``: the largest divisor of H·W (its check) up to 3·H·W/steps."""
    pixels = height * width
    return max(d for d in range(1, max(1, 3 * pixels // steps) + 1) if pixels % d == 0)


def run_quantus(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor,
                steps: int, batch: int, device: torch.device) -> None:
    import quantus

    metric = quantus.PixelFlipping(features_in_step=quantus_step(*x.shape[2:], steps), abs=False,
                                   normalise=False, perturb_baseline="black",
                                   disable_warnings=True, display_progressbar=False)
    metric(model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
           a_batch=maps[:, None].cpu().numpy(), channel_first=True, softmax=True,
           device=str(device), batch_size=min(len(x), batch))


def bench_pixel_removal(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Pixel removal on ResNet-56: metric vs bare forwards vs Quantus (see the module doc)."""
    model, weights = load_resnet56(device)
    x, y, source = load_images(args.images, device)
    maps = create_method("ixg", model).attribute(x, y).detach()
    orders = ORDERS if args.order == "both" else (args.order,)
    inputs = len(x) * len(orders) * (args.steps + 1)
    metric = PixelRemoval(order=args.order, steps=args.steps, baseline=args.baseline,
                          max_batch=args.batch)
    ctx = EvalContext(model=model, explain=lambda inp, tgt: maps, make_method=lambda m: None,
                      device=device)
    ids = np.arange(len(x))
    print(f"pixel-removal: resnet56 ({weights}), {source}, ixg maps (precomputed), "
          f"order {args.order}, baseline {args.baseline}, {args.steps} steps, "
          f"{inputs} model inputs, forwards of {args.batch}")
    bare_forwards(model, args.batch, args.batch, x)  # warm-up
    results: dict[str, list[float]] = {"metric": [], "bare": [], "quantus": []}
    for _ in range(args.repeats):
        results["metric"].append(timed(lambda: metric.evaluate(ctx, x, y, ids), device))
        results["bare"].append(timed(lambda: bare_forwards(model, inputs, args.batch, x), device))
        if not args.no_quantus:
            results["quantus"].append(timed(
                lambda: run_quantus(model, x, y, maps, args.steps, args.batch, device), device))
    median = {k: statistics.median(v) for k, v in results.items() if v}
    quantus_inputs = len(x) * math.ceil(3 * x.shape[2] * x.shape[3]
                                        / quantus_step(*x.shape[2:], args.steps))
    out: dict[str, Any] = {"metric": "pixel-removal", "weights": weights, "images": len(x),
                           "inputs": inputs, "quantus_inputs": quantus_inputs,
                           "seconds": median, "all_seconds": results}
    out["metric_over_bare"] = median["metric"] / median["bare"]
    print(f"{'':28}{'seconds':>10}{'inputs':>10}{'inputs/s':>11}")
    for label, key, count in (("metric (evaluate)", "metric", inputs),
                              ("bare forwards", "bare", inputs),
                              ("quantus PixelFlipping", "quantus", quantus_inputs)):
        if key in median:
            print(f"{label:28}{median[key]:>10.2f}{count:>10}{count / median[key]:>11.1f}")
    met = "met" if out["metric_over_bare"] <= OVERHEAD_GOAL else "MISSED"
    print(f"metric / bare forwards: {out['metric_over_bare']:.3f}x "
          f"(goal <= {OVERHEAD_GOAL}: {met})")
    if "quantus" in median:
        speedup = (median["quantus"] / quantus_inputs) / (median["metric"] / inputs)
        out["quantus_over_metric_per_input"] = speedup
        print(f"quantus / metric, per model input: {speedup:.2f}x "
              f"(goal >= {QUANTUS_GOAL}: {'met' if speedup >= QUANTUS_GOAL else 'MISSED'})")
    return out


def bare_backwards(model: torch.nn.Module, grids: torch.Tensor, targets: torch.Tensor,
                   batch: int) -> None:
    """One forward + input-gradient backward per (grid, cell) in batches: what ixg needs."""
    inputs = grids.repeat_interleave(targets.shape[1], dim=0)
    flat = targets.reshape(-1)
    for i in range(0, len(inputs), batch):
        x = inputs[i:i + batch].detach().requires_grad_(True)
        chosen = model(x).gather(1, flat[i:i + batch, None]).sum()
        torch.autograd.grad(chosen, x)


def bench_localisation(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Localisation on ResNet-56 with ixg: the metric's evaluate (maps included) vs the bare
    forward + backward passes those maps need (one per grid cell), same batch size."""
    from attrib_bench.metrics.grids import compose_grids
    from attrib_bench.metrics.localisation import Localisation

    model, weights = load_resnet56(device)
    n, grids_n = 3, max(1, args.images // 9)
    x, y, source = load_images(9 * grids_n, device)
    grids = compose_grids(x.reshape(grids_n, 9, *x.shape[1:]))
    targets = y.reshape(grids_n, 9)
    method = create_method("ixg", model, max_batch=args.grid_batch)
    metric = Localisation(n=n)
    ctx = EvalContext(model=model, explain=method.attribute, make_method=lambda m: None,
                      device=device)
    ids = np.arange(grids_n)
    print(f"localisation: resnet56 ({weights}), {grids_n} 3x3 grids of the {source} (96 px), "
          f"ixg, {grids_n * 9} forward+backward passes in batches of {args.grid_batch}")
    bare_backwards(model, grids[:1], targets[:1], args.grid_batch)  # warm-up
    results: dict[str, list[float]] = {"metric": [], "bare": []}
    for _ in range(args.repeats):
        results["metric"].append(timed(lambda: metric.evaluate(ctx, grids, targets, ids), device))
        results["bare"].append(timed(
            lambda: bare_backwards(model, grids, targets, args.grid_batch), device))
    median = {k: statistics.median(v) for k, v in results.items()}
    ratio = median["metric"] / median["bare"]
    print(f"metric (evaluate, maps included) {median['metric']:.2f} s, bare fwd+bwd "
          f"{median['bare']:.2f} s: {ratio:.3f}x "
          f"(goal <= {OVERHEAD_GOAL}: {'met' if ratio <= OVERHEAD_GOAL else 'MISSED'})")
    return {"metric": "localisation", "weights": weights, "grids": grids_n, "seconds": median,
            "all_seconds": results, "metric_over_bare": ratio}


BENCHES: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "pixel-removal": bench_pixel_removal,
    "localisation": bench_localisation,
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256, help="model inputs per forward")
    parser.add_argument("--grid-batch", type=int, default=32,
                        help="localisation: 96 px grids per forward+backward")
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--order", default="most-first", choices=[*ORDERS, "both"])
    parser.add_argument("--baseline", default="black", choices=["black", "mean", "blur", "road"])
    parser.add_argument("--quick", action="store_true", help="8 images, 1 repeat (~1 minute)")


def _quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.images, args.repeats = min(args.images, 8), 1


def main(argv: list[str] | None = None) -> int:
    return speed_harness.main(__doc__, BENCHES, argv, _arguments, _quick)


if __name__ == "__main__":
    sys.exit(main())
