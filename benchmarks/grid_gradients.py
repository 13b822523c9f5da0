"""Localisation-shaped gradients: plain autograd on every copy vs one forward per distinct grid.

Run on demand (never in CI):

    OMP_NUM_THREADS=1 python benchmarks/grid_gradients.py [--models xs-coda-sq-t1000,resnet56]
                                                          [--grids 4] [--side 96] [--repeats 2]

A batch shaped as grid localisation gives the methods: ``--grids`` random grids of ``--side`` px,
each repeated 9 times (3×3 cells) with a different target per copy. Timed per model, after one
warm-up call, median of ``--repeats``: (a) plain autograd, one forward and one backward of the
whole repeated batch (what captum's Saliency / InputXGradient do; the methods before
``attrib_bench.core.backward``), (b) :func:`attrib_bench.core.backward.target_gradients` (one
forward per distinct grid, 9 backward passes). Prints both, the ratio a / b and the largest relative
difference of the gradients. Trained weights load where the zoo has them (speed does not depend
on them).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attrib_bench.core.backward import target_gradients
from attrib_bench.core.registry import MODELS, create_model


def _plain(model: torch.nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    leaf = inputs.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    return grad


def _timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="xs-coda-sq-t1000,resnet56,bcos-resnet20-cifar10")
    parser.add_argument("--grids", type=int, default=4)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    grids = torch.rand(args.grids, 3, args.side, args.side, generator=generator)
    inputs = grids.repeat_interleave(9, 0)
    target = torch.stack([torch.randperm(10, generator=generator)[:9]
                          for _ in range(args.grids)]).reshape(-1)
    print(f"{args.grids} grids of {args.side} px × 9 targets, {torch.get_num_threads()} "
          f"thread(s), median of {args.repeats}")
    print("| model | plain autograd (s) | target_gradients (s) | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        model = create_model(name, pretrained=bool(MODELS.get(name).metadata.get("trained")))
        model.eval()
        plain_s, plain = _timed(lambda m=model: _plain(m, inputs, target), args.repeats)
        with torch.enable_grad():
            grouped_s, grouped = _timed(lambda m=model: target_gradients(m, inputs, target),
                                        args.repeats)
        diff = ((grouped - plain).abs().max() / plain.abs().max()).item()
        print(f"| {name} | {plain_s:.2f} | {grouped_s:.2f} | {plain_s / grouped_s:.2f}× | "
              f"{diff:.1e} |")


if __name__ == "__main__":
    main()
