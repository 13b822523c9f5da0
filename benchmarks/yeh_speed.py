"""Infidelity and max-sensitivity (Yeh et al. 2019): wall time against the bare model work they
need, and against Quantus 0.6 on the same model, images, maps and perturbations.

Run on demand (never in CI):

    python benchmarks/yeh_speed.py [--metrics infidelity,max-sensitivity] [--images 8]
                                   [--perturbations 100] [--samples 10] [--batch 256]
                                   [--repeats 1] [--threads N] [--device cpu] [--no-quantus]
                                   [--json PATH]

Model: ResNet-56 (the checked weights if ../shared/weights has them, else random; speed does not
depend on the weights), the first ``--images`` CIFAR-10 test images (random ones if the data is
absent). Every model input is counted by a forward pre-hook, so the table gives the model inputs
each run needed beside the definition's minimum.

- **infidelity**: ``Infidelity(num_perturbations=--perturbations).evaluate`` on precomputed
  ``ixg`` maps; ``bare``: the same number of inputs (images × (perturbations + 1)) in forwards
  of ``--batch``; ``quantus``: ``quantus.Infidelity`` given the metric's own noise (one block the
  image's size, ``n_perturb_samples`` = perturbations: the same model inputs, eq. 2 unscaled).
- **max-sensitivity**: ``MaxSensitivity(num_samples=--samples).evaluate``, ``ixg`` run again on
  every perturbed image; ``bare``: ``ixg`` on the same number of images (images × samples), same
  chunking; ``quantus``: ``quantus.MaxSensitivity`` given the metric's points and ``ixg`` as its
  ``explain_func``, one sample step (all images) at a time.

The comparison with Quantus is per model input; the goal of issue 43 is ≥ 10× faster than Quantus
and ≤ 1.15× the bare model work.
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
from speed_harness import InputCounter, measure  # noqa: E402

from attrib_bench.core.registry import create_method  # noqa: E402
from attrib_bench.metrics.base import EvalContext  # noqa: E402
from attrib_bench.metrics.infidelity import Infidelity  # noqa: E402
from attrib_bench.metrics.sensitivity import MaxSensitivity  # noqa: E402


def bench_infidelity(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, weights = load_resnet56(device)
    x, y, source = load_images(args.images, device)
    maps = create_method("ixg", model).attribute(x, y).detach()
    p = args.perturbations
    metric = Infidelity(num_perturbations=p, max_batch=args.batch)
    ctx = EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: None,
                      device=device)
    ids = np.arange(len(x))
    minimum = len(x) * (p + 1)
    counter = InputCounter(model)
    print(f"infidelity: resnet56 ({weights}), {source}, ixg maps (precomputed), {p} "
          f"perturbations, forwards of {args.batch}")
    noise = metric.noise(ids, x.shape[2], x.shape[3], 0, device).to(x.dtype)

    def quantus_run() -> None:
        import quantus

        draw = iter(range(p))

        def perturb(arr, indices, **kwargs):
            return (x - noise[:, next(draw), None]).reshape(len(arr), -1).cpu().numpy()

        quantus.Infidelity(perturb_func=perturb, perturb_patch_sizes=[x.shape[2]],
                           n_perturb_samples=p, disable_warnings=True)(
            model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
            a_batch=(maps / 3)[:, None].cpu().numpy(), device=str(device), batch_size=len(x))

    runs = {"metric": lambda: metric.evaluate(ctx, x, y, ids),
            "bare": lambda: bare_forwards(model, minimum, args.batch, x)}
    if not args.no_quantus:
        runs["quantus"] = quantus_run
    bare_forwards(model, args.batch, args.batch, x)  # warm-up
    return {"weights": weights, "images": len(x),
            **measure("infidelity", runs, counter, args.repeats, device, minimum)}


def bench_max_sensitivity(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, weights = load_resnet56(device)
    x, y, source = load_images(args.images, device)
    method = create_method("ixg", model, max_batch=args.batch)
    maps = method.attribute(x, y).detach()
    s = args.samples
    metric = MaxSensitivity(num_samples=s, max_batch=args.batch)
    ctx = EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: method,
                      device=device)
    ids = np.arange(len(x))
    minimum = len(x) * s
    counter = InputCounter(model)
    ys = metric.perturbed(x, ids, 0)
    flat, targets = ys.flatten(0, 1), y.repeat_interleave(s)
    print(f"max-sensitivity: resnet56 ({weights}), {source}, ixg run again on {s} points per "
          f"image, {args.batch} per method call")

    def bare() -> None:
        for i in range(0, len(flat), args.batch):
            method.attribute(flat[i:i + args.batch], targets[i:i + args.batch])

    def quantus_run() -> None:
        import quantus

        step = iter(range(s))

        def perturb(arr, indices, **kwargs):
            return ys[:, next(step)].reshape(len(arr), -1).cpu().numpy()

        def explain(model, inputs, targets, **kwargs):
            return method.attribute(torch.as_tensor(inputs, device=device),
                                    torch.as_tensor(targets, device=device))[:, None] \
                .detach().cpu().numpy()

        quantus.MaxSensitivity(nr_samples=s, perturb_func=perturb, disable_warnings=True)(
            model=model, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
            a_batch=maps[:, None].cpu().numpy(), explain_func=explain, device=str(device),
            batch_size=len(x))

    runs = {"metric": lambda: metric.evaluate(ctx, x, y, ids), "bare": bare}
    if not args.no_quantus:
        runs["quantus"] = quantus_run
    method.attribute(x[:2], y[:2])  # warm-up
    return {"weights": weights, "images": len(x),
            **measure("max-sensitivity", runs, counter, args.repeats, device, minimum)}


BENCHES: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "infidelity": bench_infidelity,
    "max-sensitivity": bench_max_sensitivity,
}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--perturbations", type=int, default=100)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="inputs per forward / call")


def main(argv: list[str] | None = None) -> int:
    return speed_harness.main(__doc__, BENCHES, argv, _arguments)


if __name__ == "__main__":
    sys.exit(main())
