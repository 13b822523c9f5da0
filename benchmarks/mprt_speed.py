"""Random-logit, eMPRT and sMPRT: wall time against the bare model work they need, and against
Quantus 0.6 on the same model, images and method.

Run on demand (never in CI):

    python benchmarks/mprt_speed.py [--metrics random-logit,emprt,smprt] [--images 8]
                                    [--smooth-samples 5] [--repeats 1] [--threads N]
                                    [--device cpu] [--no-quantus] [--json PATH]

Model: ResNet-56 (the checked weights if ../shared/weights has them, else random), the first
``--images`` CIFAR-10 test images, the ``grad`` method. Every input of the model or of a
randomised copy of it is counted (a global forward pre-hook on modules of the model's class).

- **random-logit**: ``RandomLogit().evaluate`` (both maps computed); ``bare``: ``grad`` for the
  labels and for the other classes; ``quantus``: ``quantus.RandomLogit`` (``a_batch=None``, so it
  explains both too) with ``grad`` as its explain_func. Minimum: 2 maps per image.
- **emprt**: ``EfficientMPRT().evaluate``; ``bare``: ``grad`` on the trained and the fully
  randomised model and one forward of each; ``quantus``: ``quantus.EfficientMPRT`` (its defaults,
  ``softmax=True``). Minimum: 2 maps + 2 forwards per image.
- **smprt**: ``SmoothMPRT(nr_samples=--smooth-samples)`` over every layer; ``bare``: ``grad`` on
  the (1 + layers) × samples copies; ``quantus``: ``quantus.SmoothMPRT`` with the same sample count,
  its ``quantus.explain`` handed ``grad`` (it calls that, not the explain_func). Minimum:
  (1 + layers) × samples maps per image (Quantus also explains the trained model twice).

Quantus / metric is per model input; issue 43's goals: ≥ 10× faster than Quantus, ≤ 1.15× bare.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: split
import speed_harness  # noqa: E402
from metrics_speed import load_images, load_resnet56  # noqa: E402
from speed_harness import InputCounter, measure  # noqa: E402

from attrib_bench.core.registry import create_method  # noqa: E402
from attrib_bench.metrics.base import EvalContext  # noqa: E402
from attrib_bench.metrics.emprt import EfficientMPRT, fully_randomised  # noqa: E402
from attrib_bench.metrics.random_logit import RandomLogit, other_classes  # noqa: E402
from attrib_bench.metrics.randomisation import randomisation_layers, randomised_models  # noqa: E402
from attrib_bench.metrics.smprt import SmoothMPRT, smoothed_maps, smoothing_noise  # noqa: E402


def _grad_explain(device: torch.device) -> Callable[..., np.ndarray]:
    """``grad`` as Quantus's explain function; its noisy copies clamped to [0, 1], as ours."""
    def explain(model, inputs, targets, **_):
        x = torch.as_tensor(inputs, device=device, dtype=torch.float32).clamp(0, 1)
        maps = create_method("grad", model).attribute(x, torch.as_tensor(targets, device=device))
        return maps[:, None].detach().cpu().numpy()
    return explain


def _quantus(name: str, call: dict[str, Any], **kwargs: Any) -> None:
    import quantus

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(quantus, name)(disable_warnings=True, **kwargs)(**call)


def bench(name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    model, weights = load_resnet56(device)
    x, y, source = load_images(args.images, device)
    ids, b = np.arange(len(x)), len(x)
    method = create_method("grad", model)
    ctx = EvalContext(model, method.attribute, lambda m: create_method("grad", m), device)
    layers = randomisation_layers(model, x[:1])
    explain = _grad_explain(device)
    call = {"model": model, "x_batch": x.cpu().numpy(), "y_batch": y.cpu().numpy(),
            "a_batch": None, "explain_func": explain, "device": str(device), "batch_size": b}
    runs: dict[str, Callable[[], Any]] = {}
    if name == "random-logit":
        other = other_classes(0, torch.as_tensor(ids), y, 10)
        runs["metric"] = lambda: RandomLogit(num_classes=10).evaluate(ctx, x, y, ids)
        runs["bare"] = lambda: (method.attribute(x, y), method.attribute(x, other))
        runs["quantus"] = lambda: _quantus("RandomLogit", call, num_classes=10)
        minimum = 2 * b
    elif name == "emprt":
        def bare() -> None:
            randomised = fully_randomised(model, layers, 0)
            method.attribute(x, y)
            create_method("grad", randomised).attribute(x, y)
            with torch.no_grad():
                model(x), randomised(x)
        runs["metric"] = lambda: EfficientMPRT().evaluate(ctx, x, y, ids)
        runs["bare"] = bare
        runs["quantus"] = lambda: _quantus("EfficientMPRT", {**call, "softmax": True})
        minimum = 4 * b
    else:
        n = args.smooth_samples
        noise = smoothing_noise(0, torch.as_tensor(ids), x, n, 0.1)

        def bare() -> None:
            smoothed_maps(method, x, y, noise, 256)
            for _, randomised in randomised_models(model, layers, "cascading", 0):
                smoothed_maps(create_method("grad", randomised), x, y, noise, 256)

        def quantus_run() -> None:
            import quantus

            original, quantus.explain = quantus.explain, explain
            try:
                _quantus("SmoothMPRT", call, nr_samples=n)
            finally:
                quantus.explain = original
        runs["metric"] = lambda: SmoothMPRT(nr_samples=n).evaluate(ctx, x, y, ids)
        runs["bare"] = bare
        runs["quantus"] = quantus_run
        minimum = (1 + len(layers)) * n * b
    if args.no_quantus:
        runs.pop("quantus")
    counter = InputCounter(kind=type(model))
    method.attribute(x[:2], y[:2])  # warm-up
    print(f"{name}: resnet56 ({weights}), {source}, grad, {len(layers)} layers")
    return {"weights": weights, "images": b,
            **measure(name, runs, counter, args.repeats, device, minimum)}


BENCHES: dict[str, speed_harness.Bench] = {
    name: functools.partial(bench, name) for name in ("random-logit", "emprt", "smprt")}


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--smooth-samples", type=int, default=5)


def main(argv: list[str] | None = None) -> int:
    return speed_harness.main(__doc__, BENCHES, argv, _arguments)


if __name__ == "__main__":
    sys.exit(main())
