"""What the metric speed benchmarks share: counting model inputs, timing each run (the median of
``--repeats``), the report beside the goals, and the command line with its common options.

Used by ``metrics_speed.py`` (the paper's metrics) and by ``yeh_speed.py``, ``irof_speed.py`` and
``mprt_speed.py`` (issue 43's); each of those defines only its benches, what each run does and the
definition's minimum count of model inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from attrib_bench.core.provenance import describe_hardware, git_commit

#: A metric may cost at most this much more than the bare model work its definition needs.
OVERHEAD_GOAL = 1.15
#: Issue 43's goal: Quantus takes at least this much longer per model input.
QUANTUS_GOAL = 10.0

Bench = Callable[[argparse.Namespace, torch.device], dict[str, Any]]


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()``, device work included."""
    synchronise(device)
    start = time.perf_counter()
    fn()
    synchronise(device)
    return time.perf_counter() - start


class InputCounter:
    """Counts the images entering ``model``'s forward (a pre-hook on it), or with ``kind`` every
    module of that class (a model and its randomised copies)."""

    def __init__(self, model: torch.nn.Module | None = None, kind: type | None = None) -> None:
        self.inputs, self.kind = 0, kind
        if kind is None:
            model.register_forward_pre_hook(self._hook)
        else:
            torch.nn.modules.module.register_module_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: tuple) -> None:
        if self.kind is None or type(module) is self.kind:
            self.inputs += len(args[0])


def measure(name: str, runs: dict[str, Callable[[], Any]], counter: InputCounter,
            repeats: int, device: torch.device, minimum: int,
            quantus_goal: float = QUANTUS_GOAL) -> dict[str, Any]:
    """Time each run ``repeats`` times (median, seconds) with the model inputs it took; print
    them and the ratios: metric / bare work (goal ≤ :data:`OVERHEAD_GOAL`), model inputs / the
    definition's ``minimum``, and, with a "quantus" run, Quantus / metric per model input."""
    seconds: dict[str, list[float]] = {key: [] for key in runs}
    inputs: dict[str, int] = {}
    for _ in range(repeats):
        for key, fn in runs.items():
            counter.inputs = 0
            seconds[key].append(timed(fn, device))
            inputs[key] = counter.inputs
    median = {key: statistics.median(values) for key, values in seconds.items()}
    print(f"{'':30}{'seconds':>9}{'inputs':>9}{'s/input':>11}")
    for key in median:
        print(f"{name + ' ' + key:30}{median[key]:>9.2f}{inputs[key]:>9}"
              f"{median[key] / max(inputs[key], 1):>11.2e}")
    out: dict[str, Any] = {"metric": name, "seconds": median, "inputs": inputs,
                           "minimum_inputs": minimum, "all_seconds": seconds,
                           "metric_over_bare": median["metric"] / median["bare"],
                           "metric_inputs_over_minimum": inputs["metric"] / minimum}
    print(f"model inputs / the definition's minimum ({minimum}): "
          f"{out['metric_inputs_over_minimum']:.3f}x")
    met = "met" if out["metric_over_bare"] <= OVERHEAD_GOAL else "MISSED"
    print(f"metric / bare: {out['metric_over_bare']:.3f}x (goal <= {OVERHEAD_GOAL}: {met})")
    if "quantus" in median:
        ratio = (median["quantus"] / inputs["quantus"]) / (median["metric"] / inputs["metric"])
        out["quantus_over_metric_per_input"] = ratio
        print(f"quantus / metric, per model input: {ratio:.2f}x (goal >= {quantus_goal}: "
              f"{'met' if ratio >= quantus_goal else 'MISSED'}); per image: "
              f"{median['quantus'] / median['metric']:.2f}x")
    return out


def main(description: str, benches: dict[str, Bench], argv: list[str] | None = None,
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         adjust: Callable[[argparse.Namespace], None] | None = None) -> int:
    """The command line: ``--metrics`` (comma-separated names of ``benches``), the script's own
    options (``add_arguments``), ``--repeats``, ``--threads``, ``--device``, ``--no-quantus``,
    ``--json``; prints the hardware, the code version and the load average around the runs."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(benches), help="comma-separated")
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    if adjust is not None:
        adjust(args)
    unknown = [name for name in args.metrics.split(",") if name not in benches]
    if unknown:
        parser.error(f"unknown metric(s) {', '.join(unknown)}: use {', '.join(benches)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_quantus:
        import quantus  # noqa: F401 (its import, seconds, outside the timings)
    device = torch.device(args.device)
    print(f"hardware: {describe_hardware(device)}")
    print(f"code: git {git_commit(short=True)} | 1-min load average before: "
          f"{os.getloadavg()[0]:.2f} | median of {args.repeats} repeat(s)")
    results = [benches[name](args, device) for name in args.metrics.split(",")]
    print(f"1-min load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0
