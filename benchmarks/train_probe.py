"""Which precision and layout trains a CoDA-Net fastest on this device, exactly enough?

For each candidate setting (float32, TF32, bf16 autocast; NCHW or channels_last; then
torch.compile of the fastest exact eager one) this times the training step that `attrib-bench
train` runs (`runners.train.make_train_step`: augmentation, forward, BCE, backward, Adam) for a
few seconds, and checks the model's outputs on one batch against float64: the class evidence
may differ by at most 1e-2 (bf16, TF32) or 1e-4 (float32) of its largest magnitude. TF32 (10-bit
mantissa) gave 1.5e-3 on the H200 (2026-11-30) at 1.96x float32's speed: far below the noise of
a mini-batch step, so training may use it (evaluation and attribution stay float32).
It prints a table, the fastest exact-enough candidate (with --budget: the one that trains the
most images in that many seconds, its warm-up and compilation counted), and (--print-flags)
only that candidate's `train` flags, which `results/gpu/device_run.sh` passes on. The evidence
compared is the class evidence map (`features`, before pooling and b0).

Usage: python benchmarks/train_probe.py --device cuda [--model s-coda] [--batch-size 256]
       [--seconds 3] [--budget SECONDS] [--no-compile] [--json probe.json] [--print-flags]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass, replace

import torch

# isort: split
from attrib_bench.core.perf import retain_freed_memory
from attrib_bench.runners.train import (
    TrainConfig,
    augment,
    build_model,
    make_optimizer,
    make_train_step,
    set_tf32,
    time_steps,
    training_model,
)

#: Largest allowed |evidence − float64 evidence| / max |float64 evidence| per precision.
TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "bf16": 1e-2}


@dataclass
class Candidate:
    precision: str  # fp32, tf32, bf16
    channels_last: bool
    compile: bool = False
    images_per_s: float = float("nan")
    rel_error: float = float("nan")
    steps: int = 0
    compile_s: float = 0.0
    error: str = ""

    @property
    def exact_enough(self) -> bool:
        return not self.error and self.rel_error <= TOLERANCE[self.precision]

    def config(self, base: TrainConfig) -> TrainConfig:
        return replace(base, amp="bf16" if self.precision == "bf16" else "none",
                       tf32=self.precision == "tf32", channels_last=self.channels_last,
                       compile=self.compile)

    def flags(self) -> str:
        parts = ["--amp bf16" if self.precision == "bf16" else "--amp none",
                 "--tf32" if self.precision == "tf32" else "--no-tf32"]
        parts += ["--channels-last"] * self.channels_last + ["--compile"] * self.compile
        return " ".join(parts)

    def label(self) -> str:
        return (f"{self.precision}{' channels_last' if self.channels_last else ''}"
                f"{' compile' if self.compile else ''}")


def relative_error(config: TrainConfig, device: torch.device, images: torch.Tensor) -> float:
    """max |evidence − evidence in float64| / max |evidence in float64| on ``images``.

    The evidence is the CoDA-Net's class evidence map (``forward_features``, before pooling and the
    bias b0: adding b0 ≈ −2.2 in float32 would round away the evidence's digits); other models'
    logits.
    """
    reference = build_model(config).to(device, torch.float64).eval()
    model = build_model(config).to(device).eval()
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory)
    x = images.float().div(255)
    with torch.no_grad():
        exact = getattr(reference, "forward_features", reference)(x.double())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp == "bf16"):
            approx = getattr(model, "forward_features", model)(x.contiguous(memory_format=memory))
        approx = approx.double()
    return ((approx - exact).abs().max() / exact.abs().max()).item()


def training_rate(config: TrainConfig, device: torch.device, images: torch.Tensor,
                  labels: torch.Tensor, seconds: float) -> tuple[float, int, float]:
    """(images/s, timed steps, seconds of the two warm-up steps incl. compilation)."""
    model = training_model(config, device)
    step = make_train_step(model, config, device)
    optimizer = make_optimizer(model, config, device)
    generator = torch.Generator(device).manual_seed(0)

    def one() -> None:
        step(optimizer, augment(images, generator, 4, True), labels, 1e-4)

    per_step, steps, warm = time_steps(one, device, seconds)
    return len(images) / per_step, steps, warm


def measure(candidate: Candidate, base: TrainConfig, device: torch.device, images: torch.Tensor,
            labels: torch.Tensor, seconds: float) -> Candidate:
    config = candidate.config(base)
    if device.type == "cuda":
        set_tf32(config.tf32)
    try:
        candidate.rel_error = relative_error(config, device, images[:64])
        rate, steps, warm = training_rate(config, device, images, labels, seconds)
        candidate.images_per_s, candidate.steps, candidate.compile_s = rate, steps, warm
    except Exception as exc:  # a setting this device or torch cannot run is a result, not a stop
        candidate.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="s-coda")
    parser.add_argument("--temperature", type=float, default=1000.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--precisions", default=None,
                        help="Comma-separated subset of fp32,tf32,bf16 (default: all the "
                             "device has).")
    parser.add_argument("--budget", type=float, default=None,
                        help="Training seconds: rank by images trained in them, after the "
                             "warm-up (compilation counts against a short budget).")
    parser.add_argument("--json", default=None, help="Write every candidate's numbers here.")
    parser.add_argument("--print-flags", action="store_true",
                        help="Print only the chosen `attrib-bench train` flags on stdout.")
    args = parser.parse_args()
    device = torch.device(args.device)
    log = sys.stderr if args.print_flags else sys.stdout
    if device.type == "cpu":
        retain_freed_memory()
    base = TrainConfig(model=args.model, temperature=args.temperature,
                       batch_size=args.batch_size)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 3, 32, 32), generator=generator,
                           dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (args.batch_size,), generator=generator).to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        platform.processor() or platform.machine())
    print(f"train probe | {args.model} T={args.temperature:g} batch {args.batch_size} | {name} | "
          f"torch {torch.__version__} | {args.seconds:g} s per candidate", file=log)
    precisions = ["fp32", "tf32", "bf16"] if device.type == "cuda" else ["fp32", "bf16"]
    if args.precisions:
        precisions = [p for p in args.precisions.split(",") if p in TOLERANCE]
    results = []
    for precision in precisions:
        for channels_last in (False, True):
            results.append(measure(Candidate(precision, channels_last), base, device, images,
                                   labels, args.seconds))
            print(_row(results[-1]), file=log, flush=True)
    eager = [c for c in results if c.exact_enough]
    if eager and not args.no_compile:
        best = max(eager, key=lambda c: c.images_per_s)
        results.append(measure(replace(best, compile=True, images_per_s=float("nan"), steps=0,
                                       error=""), base, device, images, labels, args.seconds))
        print(_row(results[-1]), file=log, flush=True)
    passing = [c for c in results if c.exact_enough]
    if not passing:
        raise SystemExit("no candidate was exact enough: train with the defaults")
    def images_in_budget(c: Candidate) -> float:
        if args.budget is None:
            return c.images_per_s
        return c.images_per_s * max(0.0, args.budget - c.compile_s)

    best = max(passing, key=images_in_budget)
    print(f"fastest exact enough: {best.label()} ({best.images_per_s:.0f} img/s, rel. error "
          f"{best.rel_error:.1e}) -> attrib-bench train {best.flags()}", file=log)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "torch": torch.__version__, "model": args.model,
                       "batch_size": args.batch_size, "tolerance": TOLERANCE,
                       "candidates": [{**c.__dict__, "label": c.label(), "flags": c.flags(),
                                       "exact_enough": c.exact_enough} for c in results],
                       "chosen": best.flags()}, handle, indent=2)
    if args.print_flags:
        print(best.flags())


def _row(c: Candidate) -> str:
    if c.error:
        return f"  {c.label():28s} failed: {c.error}"
    verdict = "ok" if c.exact_enough else f"too inexact (> {TOLERANCE[c.precision]:.0e})"
    return (f"  {c.label():28s} {c.images_per_s:9.1f} img/s  {c.steps:5d} steps  warm-up "
            f"{c.compile_s:6.1f} s  rel. error {c.rel_error:.3e}  {verdict}")


if __name__ == "__main__":
    main()
