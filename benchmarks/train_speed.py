"""Training throughput (images/s) of CoDA-Nets, as `attrib-bench train` runs them.

One training step = batched augmentation, forward, BCE loss, backward, Adam step, with the DAU
layers in training mode (keep_projection) and, on the CPU, glibc told to keep freed memory.
Usage: python benchmarks/train_speed.py [--models xs-coda,s-coda] [--batch-size 32]
       [--seconds 20] [--device cpu|cuda] [--compile] [--channels-last]
(--compile: torch.compile of the model as `train --compile` does; its compilation happens in the
warm-up steps, which are not timed.)
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

# isort: split
from attrib_bench.core.perf import retain_freed_memory
from attrib_bench.core.registry import create_model
from attrib_bench.runners.train import augment, bce_one_hot


def images_per_second(name: str, batch_size: int, seconds: float, device: torch.device,
                      compile_model: bool = False, channels_last: bool = False) -> tuple:
    """(images/s, steps timed) of training steps on random data, after two warm-up steps."""
    torch.manual_seed(0)
    model = create_model(name).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if compile_model else model
    for layer in model.modules():
        if hasattr(layer, "keep_projection"):
            layer.keep_projection = True
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        batch = augment(images, generator, 4, True).float().div_(255)
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        loss = bce_one_hot(forward(batch), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 3:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start), steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="xs-coda,s-coda")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        retain_freed_memory()
    print(f"training throughput | {platform.processor() or platform.machine()} | "
          f"{torch.get_num_threads()} torch threads | torch {torch.__version__} | {device}"
          f"{' | compiled' if args.compile else ''}"
          f"{' | channels_last' if args.channels_last else ''}")
    print(f"{'model':10s} {'params':>9s} {'batch':>6s} {'steps':>6s} {'img/s':>8s}")
    for name in args.models.split(","):
        params = sum(p.numel() for p in create_model(name).parameters())
        rate, steps = images_per_second(name, args.batch_size, args.seconds, device,
                                        args.compile, args.channels_last)
        print(f"{name:10s} {params / 1e6:8.2f}M {args.batch_size:6d} {steps:6d} {rate:8.1f}")


if __name__ == "__main__":
    main()
