"""IROF and insertion/deletion: wall time against the bare model work they need, and against
Quantus 0.6 on the same model, images and maps, per model input.

Run on demand (never in CI):

    python benchmarks/irof_speed.py [--metrics irof,insertion-deletion] [--images 8]
                                    [--batch 256] [--repeats 1] [--threads N] [--device cpu]
                                    [--no-quantus] [--json PATH]

Model: ResNet-56 (the checked weights if ../shared/weights has them, else random; speed does not
depend on the weights), the first ``--images`` CIFAR-10 test images (random ones if the data is
absent), ``ixg`` maps computed once beforehand. Every model input is counted by a forward
pre-hook, so the table gives the inputs each run needed beside the definition's minimum.

- **irof**: ``IROF(max_batch=--batch).evaluate`` (SLIC included); minimum: Σ (L_b + 1) inputs,
  L_b the image's segment count; ``bare``: that many inputs in forwards of ``--batch``;
  ``quantus``: ``quantus.IROF`` with its default "mean" fill (its mask broadcast to the three
  channels, which 0.6 otherwise refuses), all images in one batch (SLIC included).
- **insertion-deletion**: ``InsertionDeletion(max_batch=--batch).evaluate`` (both variants);
  minimum 2 · B · (n + 1); ``quantus``: ``quantus.PixelFlipping`` (deletion only, its nearest
  peer), the map repeated over the channels, 16 (channel, pixel) values per step (it needs a
  divisor of H·W: 192 steps at 32 px, beside our 205), compared per model input.

The goal of issue 43 is ≥ 10× faster than Quantus per model input and ≤ 1.15× the bare work.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: split
import speed_harness  # noqa: E402
from metrics_speed import bare_forwards, load_images, load_resnet56  # noqa: E402
from speed_harness import InputCounter, measure, timed  # noqa: E402

from attrib_bench.core.registry import create_method  # noqa: E402
from attrib_bench.metrics.base import EvalContext  # noqa: E402
from attrib_bench.metrics.insertion_deletion import InsertionDeletion, step_pixels  # noqa: E402
from attrib_bench.metrics.irof import IROF, slic_segments  # noqa: E402


def setup(args: argparse.Namespace, device: torch.device):
    model, weights = load_resnet56(device)
    x, y, source = load_images(args.images, device)
    maps = create_method("ixg", model).attribute(x, y).detach()
    ctx = EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: None,
                      device=device)
    bare_forwards(model, args.batch, args.batch, x)  # warm-up
    return model, weights, x, y, source, maps, ctx


def bench_irof(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, weights, x, y, source, maps, ctx = setup(args, device)
    metric = IROF(max_batch=args.batch)
    counts = slic_segments(x).flatten(1).amax(dim=1) + 1
    minimum = int((counts + 1).sum())
    seg_seconds = timed(lambda: slic_segments(x), device)
    print(f"irof: resnet56 ({weights}), {source}, ixg maps (precomputed), SLIC segments "
          f"{int(counts.min())}..{int(counts.max())} per image ({seg_seconds:.2f} s of SLIC "
          f"for all), forwards of {args.batch}")

    def quantus_run() -> None:
        import quantus
        from quantus.functions.perturb_func import baseline_replacement_by_mask

        np.trapz = getattr(np, "trapz", np.trapezoid)  # gone in NumPy 2.4; Quantus calls it

        def perturb(arr, mask, **kwargs):
            return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

        quantus.IROF(abs=False, normalise=False, perturb_func=perturb, disable_warnings=True,
                     return_aggregate=False)(
            model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
            a_batch=maps[:, None].cpu().numpy(), channel_first=True, softmax=True,
            device=str(device), batch_size=len(x))

    runs = {"metric": lambda: metric.evaluate(ctx, x, y, np.arange(len(x))),
            "bare": lambda: bare_forwards(model, minimum, args.batch, x)}
    if not args.no_quantus:
        runs["quantus"] = quantus_run
    counter = InputCounter(model)
    return {"weights": weights, "images": len(x), "slic_seconds": seg_seconds,
            **measure("irof", runs, counter, args.repeats, device, minimum)}


def bench_insertion_deletion(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, weights, x, y, source, maps, ctx = setup(args, device)
    metric = InsertionDeletion(max_batch=args.batch)
    k, n = step_pixels(x.shape[2], x.shape[3], metric.hparams["steps"])
    minimum = 2 * len(x) * (n + 1)
    print(f"insertion-deletion: resnet56 ({weights}), {source}, ixg maps (precomputed), "
          f"{n} steps of {k} px, both variants, forwards of {args.batch}")

    def quantus_run() -> None:
        import quantus

        quantus.PixelFlipping(features_in_step=16, abs=False, normalise=False,
                              perturb_baseline=0.0, disable_warnings=True,
                              return_aggregate=False)(
            model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
            a_batch=maps[:, None].repeat(1, 3, 1, 1).cpu().numpy(), channel_first=True,
            softmax=True, device=str(device), batch_size=len(x))

    runs = {"metric": lambda: metric.evaluate(ctx, x, y, np.arange(len(x))),
            "bare": lambda: bare_forwards(model, minimum, args.batch, x)}
    if not args.no_quantus:
        runs["quantus"] = quantus_run
    counter = InputCounter(model)
    return {"weights": weights, "images": len(x),
            **measure("insertion-deletion", runs, counter, args.repeats, device, minimum)}


BENCHES: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "irof": bench_irof,
    "insertion-deletion": bench_insertion_deletion,
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256, help="inputs per forward")


def main(argv: list[str] | None = None) -> int:
    return speed_harness.main(__doc__, BENCHES, argv, _arguments)


if __name__ == "__main__":
    sys.exit(main())
