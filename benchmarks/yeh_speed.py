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
import json
import os
import statistics
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: split
from metrics_speed import bare_forwards, load_images, load_resnet56, timed  # noqa: E402

from attrib_bench.core.provenance import describe_hardware, git_commit  # noqa: E402
from attrib_bench.core.registry import create_method  # noqa: E402
from attrib_bench.metrics.base import EvalContext  # noqa: E402
from attrib_bench.metrics.infidelity import Infidelity  # noqa: E402
from attrib_bench.metrics.sensitivity import MaxSensitivity  # noqa: E402

OVERHEAD_GOAL = 1.15
QUANTUS_GOAL = 10.0


class Counter:
    """Counts the images that go through ``model``'s forward (a pre-hook)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.inputs = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        self.inputs += len(args[0])

    def counted(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            self.inputs = 0
            return fn()
        return run


def report(name: str, median: dict[str, float], inputs: dict[str, int], minimum: int
           ) -> dict[str, Any]:
    print(f"{'':30}{'seconds':>9}{'inputs':>9}{'s/input':>11}")
    for key in median:
        print(f"{name + ' ' + key:30}{median[key]:>9.2f}{inputs[key]:>9}"
              f"{median[key] / max(inputs[key], 1):>11.2e}")
    out: dict[str, Any] = {"seconds": median, "inputs": inputs, "minimum_inputs": minimum,
                           "metric_over_bare": median["metric"] / median["bare"],
                           "metric_inputs_over_minimum": inputs["metric"] / minimum}
    print(f"model inputs / the definition's minimum ({minimum}): "
          f"{out['metric_inputs_over_minimum']:.3f}x")
    met = "met" if out["metric_over_bare"] <= OVERHEAD_GOAL else "MISSED"
    print(f"metric / bare: {out['metric_over_bare']:.3f}x (goal <= {OVERHEAD_GOAL}: {met})")
    if "quantus" in median:
        ratio = (median["quantus"] / inputs["quantus"]) / (median["metric"] / inputs["metric"])
        out["quantus_over_metric_per_input"] = ratio
        print(f"quantus / metric, per model input: {ratio:.2f}x "
              f"(goal >= {QUANTUS_GOAL}: {'met' if ratio >= QUANTUS_GOAL else 'MISSED'})")
    return out


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
    counter = Counter(model)
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
    return {"metric": "infidelity", "weights": weights, "images": len(x),
            **measure("infidelity", runs, counter, args, device, minimum)}


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
    counter = Counter(model)
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
    return {"metric": "max-sensitivity", "weights": weights, "images": len(x),
            **measure("max-sensitivity", runs, counter, args, device, minimum)}


def measure(name: str, runs: dict[str, Callable[[], Any]], counter: Counter,
            args: argparse.Namespace, device: torch.device, minimum: int) -> dict[str, Any]:
    results: dict[str, list[float]] = {k: [] for k in runs}
    inputs: dict[str, int] = {}
    for _ in range(args.repeats):
        for key, fn in runs.items():
            results[key].append(timed(counter.counted(fn), device))
            inputs[key] = counter.inputs
    median = {k: statistics.median(v) for k, v in results.items()}
    return {**report(name, median, inputs, minimum), "all_seconds": results}


BENCHES: dict[str, Callable[[argparse.Namespace, torch.device], dict[str, Any]]] = {
    "infidelity": bench_infidelity,
    "max-sensitivity": bench_max_sensitivity,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(BENCHES), help="comma-separated")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--perturbations", type=int, default=100)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--batch", type=int, default=256, help="inputs per forward / call")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_quantus:
        import quantus  # noqa: F401 (its import, seconds, outside the timings)
    device = torch.device(args.device)
    unknown = [m for m in args.metrics.split(",") if m not in BENCHES]
    if unknown:
        parser.error(f"unknown metric(s) {', '.join(unknown)}: use {', '.join(BENCHES)}")
    print(f"hardware: {describe_hardware(device)}")
    print(f"code: git {git_commit(short=True)} | 1-min load average before: "
          f"{os.getloadavg()[0]:.2f} | median of {args.repeats} repeat(s)")
    results = [BENCHES[name](args, device) for name in args.metrics.split(",")]
    print(f"1-min load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
