"""Cost of the paper's λ·mean|W0→L| regulariser, and of bf16 autocast, in a CoDA-Net training step.

One training step = forward, BCE-with-logits on one-hot targets, backward, Adam step, on random
images (B, 3, 32, 32) in [0, 1], with the DAU layers' ``keep_projection`` on (as in training).
Variants, timed on the same model and data, interleaved in rounds so that a change of machine
load hits them alike:

- ``plain``: the loss is BCE only (float32);
- ``lambda``: BCE + λ·lambda_penalty(model, x, labels) (the linear map W0→L(x) of the true
  class, back-projected with the dynamic weights attached, then a double backward);
- ``lambda-shared``: the same loss from ``model.forward_with_linear_map`` (one forward pass for
  the logits and the linear map, so one backward pass through it);
- ``bf16-autocast``: the plain step with the forward under ``torch.autocast(dtype=bfloat16)``.

Reported: the median time of one step [s] per variant, images/s (batch / median) and the ratios
(λ steps / plain step, bf16 step / float32 step) of the medians and of the fastest steps (the
latter is the better estimate on a shared machine). Usage:
    python benchmarks/lambda_cost.py [--model xs-coda] [--batch-size 32] [--seconds 4]
        [--lam 0.1] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

# isort: split
from attrib_bench.core.perf import retain_freed_memory
from attrib_bench.core.registry import create_model
from attrib_bench.models.coda_net import lambda_penalty
from attrib_bench.runners.train import bce_one_hot


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
              labels: torch.Tensor, lam: float, autocast: bool = False,
              shared: bool = False) -> Callable[[], float]:
    """A closure running one training step; returns the loss (a float: syncs the device)."""
    device = x.device.type

    def step() -> float:
        if shared:
            logits, linear_map = model.forward_with_linear_map(x, labels)
            loss = bce_one_hot(logits, labels) + lam * linear_map.abs().mean()
        else:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
                loss = bce_one_hot(model(x), labels)
            if lam:
                loss = loss + lam * lambda_penalty(model, x, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="xs-coda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="timed seconds per variant (after two warm-up steps each)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds")
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is steadier on a shared CPU")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu":
        retain_freed_memory()
    torch.manual_seed(0)
    model = create_model(args.model).to(device).train()
    for layer in model.modules():
        if hasattr(layer, "keep_projection"):
            layer.keep_projection = True
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(args.batch_size, 3, 32, 32, device=device)
    labels = torch.randint(0, model.config.num_classes, (args.batch_size,), device=device)
    variants = {
        "plain": make_step(model, optimizer, x, labels, 0.0),
        "lambda": make_step(model, optimizer, x, labels, args.lam),
        "lambda-shared": make_step(model, optimizer, x, labels, args.lam, shared=True),
        "bf16-autocast": make_step(model, optimizer, x, labels, 0.0, autocast=True),
    }
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    params = sum(p.numel() for p in model.parameters())
    print(f"lambda cost | {args.model} ({params / 1e6:.2f} M params) | batch {args.batch_size} "
          f"| {cpu_model()} | {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads "
          f"| torch {torch.__version__} | {device}")
    for step in variants.values():  # warm-up (allocator, oneDNN primitives)
        step()
        step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds / args.rounds or not times[name]:
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    median = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"timing: 2 warm-up steps each, then {args.rounds} interleaved rounds, "
          f"~{args.seconds:g} s per variant; 1-min load average {load_before:.2f} before, "
          f"{load_after:.2f} after")
    print(f"{'variant':15s} {'steps':>6s} {'median [s]':>11s} {'min..max [s]':>16s} "
          f"{'img/s':>8s}")
    for name, ts in times.items():
        print(f"{name:15s} {len(ts):6d} {median[name]:11.3f} "
              f"{min(ts):7.3f}..{max(ts):<7.3f} {args.batch_size / median[name]:8.1f}")
    fastest = {name: min(ts) for name, ts in times.items()}
    for label, num, den in (("lambda step / plain step", "lambda", "plain"),
                            ("lambda-shared step / plain step", "lambda-shared", "plain"),
                            ("bf16-autocast step / float32 step", "bf16-autocast", "plain")):
        print(f"{label}: {median[num] / median[den]:.2f}x (medians), "
              f"{fastest[num] / fastest[den]:.2f}x (fastest steps)")
    print(f"(λ = {args.lam:g}; its value does not change the cost)")


if __name__ == "__main__":
    main()
