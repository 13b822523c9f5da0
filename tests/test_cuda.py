"""CUDA smoke tests: on a GPU, attrib-bench gives the CPU's maps and numbers.

Skipped when CUDA is not available. ``ATTRIB_BENCH_SMOKE_DEVICE=cpu`` runs every test on the CPU
instead, as a rehearsal of the same code paths (it then compares the CPU with itself);
``ATTRIB_BENCH_SMOKE_DEVICE=cuda:1`` picks another GPU. Everything is tiny (under a minute on one
GPU, the 20 s training budget included); nothing here is marked ``slow``.

"Equal" below means max |device − CPU| ≤ tolerance · max |CPU|, per map or per group of rows:
1e-4 where rounding is not amplified, looser where a method or model amplifies float32 rounding
(see RTOL and the constants after it, each with its reason and how it was calibrated). The GPU
computes in IEEE float32 (:func:`attrib_bench.core.evaluation.ieee_float32`); TF32 would fail.

- ``test_method_maps_match_cpu[model-method]``: every registered method × a tiny CoDA-Net
  (``create_model("xs-coda", pretrained=False)``, seeded, T = 10, a 5-layer plan so that the CPU
  reference stays cheap) and a tiny CIFAR ResNet (ResNet-8, the class of ``resnet56``, random
  batch-norm statistics, registered for the test as ``smoke-resnet8``); pairs the runner skips
  (the method's ``requires``, :func:`attrib_bench.core.registry.applicable_methods`) are skipped.
  Two 32×32 images (CPU targets, device inputs) and one 3×3 grid of 96×96 repeated per class as
  the localisation metric does (device targets): the maps are on the inputs' device, in their
  dtype, finite, and equal to the CPU maps; the ReLU-gradient maps of the ResNet are also
  compared in float64. The stochastic methods use the same seed on both devices: RISE's masks
  and LIME's samples and superpixels are drawn on the CPU, so only the model's scores differ.
- ``test_rise_masks_are_the_cpu_masks``: RISE masks for a seed are bitwise the CPU masks.
- ``test_road_imputation_and_noise_match_cpu``: the ROAD solver on the device (convergence read
  every 16 iterations) and its counter-based noise equal the CPU's.
- ``test_randomisation_draws_on_the_cpu_and_keeps_the_rngs``: re-initialised layers are bitwise
  the CPU draws; the CPU and CUDA generators are left as they were.
- ``test_ieee_float32_switch``: inside the runner's precision block CUDA convolutions and matrix
  products are IEEE float32, nested and from threads; the settings are restored after; on a GPU
  a convolution inside is float32-exact.
- ``test_runner_metrics_match_cpu``: every registered metric through ``attrib_bench.run`` on a
  synthetic dataset (16 px images optimised to be confidently classified by both tiny models,
  so that the localisation grids do not depend on the device), one method per code path, 2
  samples: tables written, rows finite (but the metric's own NaN), manifest device and
  precision; a fresh device run equals the CPU run (pixel removal: see the test), and a device
  run that reads the CPU run's attribution cache (all hits) equals it in every row.
- ``test_cli_run_on_the_device``: ``attrib-bench run --device DEVICE`` through click's
  CliRunner writes the tables and records the device.
- ``test_train_time_budget``: ``train(TrainConfig(model="xs-coda", time_budget=20.0, ...))`` on a
  generated train set (512 images of 16 px), then ``export``: the plan (plan.json) fits the
  budget (checked on the plan, not the clock), the returned model on the device and finite,
  the exported weights finite, the schedule finished. Skipped while ``TrainConfig`` has no
  ``time_budget``.

CPU rehearsal (``OMP_NUM_THREADS=1``, a loaded 2-core CPU): about 2 minutes, half of it waiting
for the CPU; the runner test ~30 s (three runs), the training test 20 s.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import threading

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.registry import (
    METHODS,
    MODELS,
    applicable_methods,
    create_method,
    create_model,
    list_methods,
)
from attrib_bench.data import ImageSet
from attrib_bench.metrics.grids import compose_grids

SMOKE = os.environ.get("ATTRIB_BENCH_SMOKE_DEVICE", "").strip()
DEVICE = torch.device(SMOKE or "cuda")
REHEARSAL = DEVICE.type == "cpu"

pytestmark = pytest.mark.skipif(
    not REHEARSAL and not torch.cuda.is_available(),
    reason="CUDA is not available (ATTRIB_BENCH_SMOKE_DEVICE=cpu rehearses these tests on the CPU)")

#: How close a device map must be to the CPU map: max |device − CPU| / max |CPU| ≤ tolerance.
#: Both sides compute in IEEE float32, but not in the same order (cuDNN's algorithms are not the
#: CPU's), so the maps differ by rounding, amplified differently by each method and model. The
#: tolerances were set by injecting Gaussian noise into the output of every layer of the tiny
#: models on the CPU (tests compared against the clean CPU maps): noise of 1e-5 of each value
#: (about 80 float32 ulps, worse than cuDNN's float32 convolutions) must pass, noise of 5e-4
#: (TF32 convolutions, PyTorch's default on an H200, which the runner turns off) must fail.
#: With the smooth CoDA-Net, gradient maps moved by ≤ 8e-5 at 1e-5 noise (≥ 1e-3 at TF32
#: noise), so the brief's 1e-4 holds for them.
RTOL = 1e-4
#: The perturbation family (occlusion, RISE, LIME): an occlusion map is a difference of two nearly
#: equal logits and a LIME map a regression on scores, so the scores' rounding is amplified by
#: max |score| / max |map| (≈ 50 here). At 1e-5 noise: ≤ 4e-4 on the CoDA-Net, ≤ 2e-3 on the
#: ResNet; at TF32 noise ≥ 7e-3 and ≥ 3e-2.
PERTURBATION_RTOL = {"smooth": 1e-3, "relu": 5e-3}
#: The ResNet's GradCAM (gradients through ReLUs, averaged per channel): ≤ 1e-4 at 1e-5 noise,
#: ≥ 5e-3 at TF32 noise.
RELU_RTOL = 1e-3
#: Gradient maps of a ReLU network are not continuous in the activations: a pre-activation
#: within rounding of 0 takes the other ReLU branch on the other device and that unit's share of
#: the gradient appears or vanishes, so a few pixels move by up to tens of % of the map's maximum
#: (DeepLift's rescale multipliers Δout/Δin, with Δin ≈ 0, behave the same way). On the ResNet
#: these methods are therefore checked (a) in float32 by the share of pixels within
#: RELU_AGREE[0] of the maximum, at least RELU_AGREE[1] (at 1e-5 noise ≥ 98.8 %; at 4 ulps
#: ≥ 99.6 % were even within 1e-4; at TF32 noise ≤ 73 %), and (b) to RTOL in float64, where no
#: pre-activation comes that close to 0.
RELU_GRADIENT = ("grad", "ixg", "intgrad", "deeplift")
RELU_AGREE = (1e-2, 0.95)
#: The randomisation test's similarities (Spearman ρ, SSIM, all in [−1, 1]) are compared with
#: this absolute tolerance: Spearman is a rank statistic (pixels whose values differ by less than
#: rounding may swap ranks across devices, each adjacent swap moving ρ by ~12 / n³; 4 ulps of
#: noise moved ρ by ≤ 1.2e-4) and SSIM normalises each map by its own range (1e-5 noise moved it
#: by ≤ 5e-5), both of maps recomputed on randomised models.
SIMILARITY_ATOL = 5e-3


def has_relu(model: nn.Module) -> bool:
    return any(isinstance(m, nn.ReLU) for m in model.modules())


def map_rtol(method: str, relu: bool) -> float:
    """The tolerance for ``method``'s maps on a smooth (CoDA-Net) or ReLU (ResNet) model; for
    the ReLU-gradient methods on a ReLU model, RELU_AGREE applies instead."""
    if METHODS.get(method).metadata.get("family") == "perturbation":
        return PERTURBATION_RTOL["relu" if relu else "smooth"]
    return RELU_RTOL if relu else RTOL


#: A 5-layer CoDA-Net: the XS plan shortened (32 px → 8×8 in the last layer), T small so that
#: the logits are not all ≈ b0.
TINY_CODA = {"temperature": 10.0, "out_channels": (8, 8, 16, 16, 10), "ranks": (8, 8, 16, 16, 16),
             "kernels": (3, 3, 3, 3, 1), "strides": (1, 2, 1, 2, 1), "paddings": (1, 1, 1, 1, 0)}
RESNET = "smoke-resnet8"

#: Cheap settings for the costly methods (same on both devices).
CHEAP = {"rise": {"n_masks": 32}, "lime": {"num_samples": 24}, "intgrad": {"n_steps": 4},
         "occlusion": {"patch_size": 6, "stride": 4}, "occ5": {"stride": 4}, "occ9": {"stride": 4}}
#: On the 96 px grid (9 targets) fewer integration steps, and big occlusion patches (16
#: positions, the last one cropped at the border).
GRID = {"intgrad": {"n_steps": 2}, "occlusion": {"patch_size": 32, "stride": 24},
        "occ5": {"patch_size": 32, "stride": 24}, "occ9": {"patch_size": 32, "stride": 24}}


def rel_diff(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got − ref| / max |ref| (the plain max difference when ref is all zero)."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item() if ref.numel() else 0.0
    diff = (got - ref).abs().max().item() if ref.numel() else 0.0
    return diff / scale if scale > 0 else diff


def _smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Random smooth RGB images in [0, 1] (a 4×4 colour field upsampled, a little noise)."""
    g = torch.Generator().manual_seed(seed)
    field = F.interpolate(torch.rand(count, 3, 4, 4, generator=g), size=(size, size),
                          mode="bilinear", align_corners=False)
    return (0.85 * field + 0.15 * torch.rand(count, 3, size, size, generator=g)).clamp(0, 1)


def _tiny_coda(**_: object) -> nn.Module:
    torch.manual_seed(0)
    return create_model("xs-coda", pretrained=False, **TINY_CODA).eval()


def _run_coda(**_: object) -> nn.Module:
    """The runner's CoDA-Net: the tiny plan at T = 2, so that confident logits (> 0) are within
    reach of the synthetic images."""
    torch.manual_seed(0)
    return create_model("xs-coda", pretrained=False, **{**TINY_CODA, "temperature": 2.0}).eval()


def _tiny_resnet(**_: object) -> nn.Module:
    from attrib_bench.models.resnet_cifar import CifarResNet

    torch.manual_seed(0)
    model = CifarResNet(1)
    for module in model.modules():  # random statistics: eval-mode BN is not the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def registered():
    """``smoke-resnet8`` and ``smoke-coda`` (the runner's CoDA-Net, for the CLI) in the model
    registry, for this module."""
    added = []
    for name, factory, family in ((RESNET, _tiny_resnet, "resnet"),
                                  ("smoke-coda", _run_coda, "coda")):
        if name not in MODELS:
            MODELS.add(name, factory, description=f"tiny {family} for tests/test_cuda.py",
                       family=family)
            added.append(name)
    yield
    for name in added:
        MODELS.remove(name)


@pytest.fixture(scope="module")
def models(registered):
    return {"coda": _tiny_coda(), "resnet": create_model(RESNET, pretrained=False)}


# ----------------------------------------------------------------------------- methods


def _cases(method: str) -> list[tuple[str, torch.Tensor, torch.Tensor, dict]]:
    """(label, inputs, targets, hparams): two 32 px images with CPU targets, and a 3×3 grid of
    96 px repeated once per class asked for it (device targets), as the localisation metric
    does: all 9 classes for the perturbation methods, which perturb a repeated image once for
    all its classes; 3 for the others, which explain each copy on its own anyway."""
    hparams = {"seed": 3, **CHEAP.get(method, {})}
    images = _smooth_images(2, 32, seed=1)
    grid = compose_grids(_smooth_images(9, 32, seed=2)[None])  # (1, 3, 96, 96)
    grid_hparams = {**hparams, **GRID.get(method, {})}
    classes = 9 if METHODS.get(method).metadata.get("family") == "perturbation" else 3
    return [("32px", images, torch.tensor([3, 7]), hparams),
            ("grid96", grid.expand(classes, -1, -1, -1).contiguous(), torch.arange(classes),
             grid_hparams)]


@pytest.mark.parametrize("method", list_methods())
@pytest.mark.parametrize("model_name", ["coda", "resnet"])
def test_method_maps_match_cpu(model_name, method, models):
    cpu_model = models[model_name]
    if method not in applicable_methods(cpu_model):
        pytest.skip(f"{method} does not apply to the {model_name} (the runner skips the pair)")
    if method == "lime":
        pytest.importorskip("lime.lime_image", reason="the lime package (with scikit-image)")
    relu = has_relu(cpu_model)
    relu_gradient = relu and method in RELU_GRADIENT
    device_model = copy.deepcopy(cpu_model).to(DEVICE)
    for label, inputs, targets, hparams in _cases(method):
        ref = create_method(method, cpu_model, **hparams).attribute(inputs, targets)
        x = inputs.to(DEVICE)
        t = targets if label == "32px" else targets.to(DEVICE)
        got = create_method(method, device_model, **hparams).attribute(x, t)
        assert got.device == x.device, f"{label}: map on {got.device}, inputs on {x.device}"
        assert got.dtype == x.dtype and got.shape == ref.shape == (len(x), *x.shape[2:])
        assert torch.isfinite(got).all(), label
        assert ref.abs().max() > 0, f"{label}: the CPU map is all zero, a useless reference"
        if not relu_gradient:
            tolerance = map_rtol(method, relu)
            assert rel_diff(got, ref) <= tolerance, f"{label}: {rel_diff(got, ref):.2e}"
            continue
        error = (got.cpu() - ref).abs() / ref.abs().max()
        tolerance, least = RELU_AGREE
        share = (error <= tolerance).double().mean().item()
        assert share >= least, f"{label}: {share:.4f} of the pixels agree to {tolerance:g}"
        if label == "32px":  # float64: no ReLU branch flips, the maps must agree exactly
            ref64 = create_method(method, copy.deepcopy(cpu_model).double(), **hparams).attribute(
                inputs.double(), targets)
            got64 = create_method(method, copy.deepcopy(device_model).double(),
                                  **hparams).attribute(x.double(), t)
            assert got64.dtype == torch.float64 and got64.device == x.device
            assert rel_diff(got64, ref64) <= RTOL, f"float64: {rel_diff(got64, ref64):.2e}"


def test_rise_masks_are_the_cpu_masks():
    from attrib_bench.methods.rise import rise_masks

    cpu = rise_masks(40, 6, 0.1, (32, 32), seed=11).clone()
    got = rise_masks(40, 6, 0.1, (32, 32), seed=11, device=DEVICE)
    assert got.device.type == DEVICE.type and got.dtype == torch.float32
    assert torch.equal(got.cpu(), cpu)


def test_road_imputation_and_noise_match_cpu():
    from attrib_bench.metrics.pixel_removal import hashed_normal, road_impute

    g = torch.Generator().manual_seed(4)
    images = torch.rand(4, 3, 32, 32, generator=g)
    removed = torch.rand(4, 32, 32, generator=g) < 0.3
    ref = road_impute(images, removed)  # CPU: the convergence test is read every iteration
    got = road_impute(images.to(DEVICE), removed.to(DEVICE), check_every=16)
    if REHEARSAL:  # the same arithmetic, read back every 16 iterations: bitwise the same
        assert torch.equal(got, ref)
    assert got.device.type == DEVICE.type
    assert (got.cpu() - ref).abs().max() <= 1e-4  # both stop once residuals are < 1e-6
    ids = torch.tensor([0, 5, 2**40 + 3])
    noise_ref = hashed_normal(9, ids, (3, 8, 8))
    noise = hashed_normal(9, ids.to(DEVICE), (3, 8, 8))
    assert noise.device.type == DEVICE.type
    assert (noise.cpu() - noise_ref).abs().max() <= 1e-5


def test_randomisation_draws_on_the_cpu_and_keeps_the_rngs(models):
    from attrib_bench.metrics.randomisation import randomisation_layers, randomised_models

    cpu_model = models["coda"]
    device_model = copy.deepcopy(cpu_model).to(DEVICE)
    layers = randomisation_layers(cpu_model, _smooth_images(1, 16, seed=0))[:3]
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(DEVICE) if DEVICE.type == "cuda" else None
    pairs = zip(randomised_models(device_model, layers, "cascading", 5),
                randomised_models(cpu_model, layers, "cascading", 5), strict=True)
    for (name, got), (_, ref) in pairs:
        for (key, a), (_, b) in zip(got.state_dict().items(), ref.state_dict().items(),
                                    strict=True):
            assert a.device.type == DEVICE.type, key
            assert torch.equal(a.cpu(), b), f"{name}: {key}"
    assert torch.equal(torch.get_rng_state(), cpu_state)
    if cuda_state is not None:
        assert torch.equal(torch.cuda.get_rng_state(DEVICE), cuda_state)


def test_ieee_float32_switch():
    from attrib_bench.core.evaluation import _read_tf32, ieee_float32

    before = _read_tf32()
    ieee = ("ieee", "ieee") if before[0] == "fp32_precision" else (False, False)
    with ieee_float32("cpu"):
        assert _read_tf32() == before  # nothing changes for a CPU device
    errors = []

    def worker() -> None:
        try:
            for _ in range(50):
                with ieee_float32(torch.device("cuda")):
                    assert _read_tf32()[1:] == ieee
        except AssertionError as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with ieee_float32("cuda"):
        assert _read_tf32()[1:] == ieee
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for thread in threads:
            thread.start()
        with ieee_float32("cuda:0"):
            assert _read_tf32()[1:] == ieee
        for thread in threads:
            thread.join()
        assert _read_tf32()[1:] == ieee and not errors
    assert _read_tf32() == before
    if DEVICE.type == "cuda":  # on the GPU: a convolution inside is float32-exact (TF32: ~1e-3)
        x = torch.randn(4, 64, 16, 16, generator=torch.Generator().manual_seed(0))
        w = torch.randn(64, 64, 3, 3, generator=torch.Generator().manual_seed(1))
        ref = F.conv2d(x.double(), w.double(), padding=1)
        with ieee_float32(DEVICE):
            got = F.conv2d(x.to(DEVICE), w.to(DEVICE), padding=1)
        assert rel_diff(got, ref) <= 1e-4


# ----------------------------------------------------------------------------- runner


#: Margin (logits) by which every decision the metrics take from the logits (argmax, sigmoid
#: > 0.5, the order of a class's images) must be clear, so that device rounding cannot flip it.
MARGIN = 0.02


def _optimised_images(model: nn.Module, per_class: int, size: int, seed: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (per_class·10, 3, size, size) in [0, 1] that ``model`` classifies confidently as
    their label (a few Adam steps on the input, on the test device), and the labels (CPU)."""
    model = copy.deepcopy(model).to(DEVICE)  # fast on a GPU; the fixture checks on the CPU
    labels = torch.arange(10).repeat(per_class).to(DEVICE)
    start = _smooth_images(len(labels), size, seed).clamp(0.05, 0.95)
    free = torch.logit(start).to(DEVICE).requires_grad_(True)
    optimizer = torch.optim.Adam([free], lr=0.1)
    one_hot = F.one_hot(labels, 10).bool()
    for _ in range(40):
        logits = model(torch.sigmoid(free))
        target = logits.gather(1, labels[:, None])[:, 0]
        other = logits.masked_fill(one_hot, -math.inf).amax(1)
        loss = (F.relu(2.0 - (target - other)) + F.relu(2.0 - target)).sum()
        if loss.item() == 0:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.sigmoid(free).detach().cpu(), labels.cpu()


def _stable(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Bool (N,): every decision the metrics make from these logits is clear by MARGIN."""
    top2 = logits.topk(2, dim=1).values
    target = logits.gather(1, labels[:, None])[:, 0]
    keep = ((top2[:, 0] - top2[:, 1]) >= MARGIN) & (target.abs() >= MARGIN)
    for c in range(10):  # a class's images are ranked by their target logit
        idx = torch.nonzero(keep & (labels == c)).flatten()
        order = idx[target[idx].argsort()]
        close = torch.nonzero(target[order].diff() < MARGIN).flatten()
        keep[order[close + 1]] = False
    return keep


@pytest.fixture(scope="module")
def run_models(models):
    return {"coda": _run_coda(), "resnet": models["resnet"]}


@pytest.fixture(scope="module")
def synthetic(run_models) -> ImageSet:
    """16 px images optimised for each tiny model (CoDA's first), kept only where both models'
    decisions are clear by MARGIN: the same grids and samples on every device."""
    from attrib_bench.metrics.base import SelectContext
    from attrib_bench.metrics.localisation import Localisation

    parts = [_optimised_images(run_models[name], per_class=2, size=16, seed=i)
             for i, name in enumerate(("coda", "resnet"))]
    images = (torch.cat([p[0] for p in parts]) * 255).round().to(torch.uint8)
    labels = torch.cat([p[1] for p in parts])
    keep = torch.ones(len(labels), dtype=torch.bool)
    with torch.no_grad():
        for model in run_models.values():
            keep &= _stable(model(images.float() / 255), labels)
    data = ImageSet(images[keep], labels[keep], tuple(f"c{i}" for i in range(10)), "smoke")
    for model in run_models.values():  # raises if the pool allows fewer than 2 grids
        Localisation(n=2).select(model, data, RUN_HPARAMS["n_samples"], SelectContext())
    return data


#: One method per code path (model-inherent, captum gradients, GradCAM's layer hook, batched
#: occlusion, RISE's masks, LIME's CPU round trip); the others share these paths and are
#: compared map by map above.
RUN_METHODS = ("inherent", "ixg", "gradcam", "occlusion", "rise", "lime")
RUN_HPARAMS = {
    "methods": ",".join(RUN_METHODS),
    "metrics": "all",
    "n_samples": 2,
    "chunk_size": 2,
    "seed": 0,
    "progress": False,
    "method_hparams": {name: CHEAP[name] for name in RUN_METHODS if name in CHEAP},
    "metric_hparams": {"localisation": {"n": 2}, "localisation-difull": {"n": 2},
                       "pixel-removal": {"steps": 8, "baseline": "road"},
                       "randomisation": {"layers": 2}},
}
ROW_KEY = ["model", "method", "metric", "sample", "key", "variant", "stat"]
GROUP = ["model", "method", "metric", "stat"]


def _run(models, synthetic, device, out, **changes):
    from attrib_bench import run

    own = {name: copy.deepcopy(model) for name, model in models.items()}  # run moves them
    hparams = {**RUN_HPARAMS, **changes}
    if hparams["metrics"] != "all":  # the runner refuses settings for metrics it does not run
        hparams["metric_hparams"] = {name: value for name, value in
                                     hparams["metric_hparams"].items()
                                     if name in hparams["metrics"].split(",")}
    return run(own, dataset=synthetic, device=str(device), out=out, **hparams)


def _compare(got: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, metric, stat): max |Δ| / max |ref| ("rel"; max |Δ| for the
    randomisation test's similarities) and its tolerance ("rtol": the maps' tolerance for the
    method on that model, SIMILARITY_ATOL at least for similarities, 5 × RELU_AGREE[0] for the
    ReLU-gradient maps of the ResNet); both tables must have the same rows in the same order."""
    assert got[ROW_KEY].equals(ref[ROW_KEY])
    frame = ref[GROUP].assign(delta=(got["value"] - ref["value"]).abs(), scale=ref["value"].abs())
    out = frame.groupby(GROUP).agg(delta=("delta", "max"), scale=("scale", "max")).reset_index()
    similarity = out["metric"] == "randomisation"
    out["rel"] = (out["delta"] / out["scale"].where(out["scale"] > 0, 1.0)).where(~similarity,
                                                                                out["delta"])
    relu_model = out["model"] == "resnet"
    relu = out["method"].isin(RELU_GRADIENT) & relu_model
    out["rtol"] = [5 * RELU_AGREE[0] if r else max(SIMILARITY_ATOL, map_rtol(m, rm)) if sim
                   else map_rtol(m, rm)
                   for r, sim, m, rm in zip(relu, similarity, out["method"], relu_model,
                                            strict=True)]
    out["relu"] = relu
    return out


def test_runner_metrics_match_cpu(run_models, synthetic, tmp_path):
    from attrib_bench.core.registry import list_metrics

    pytest.importorskip("lime.lime_image", reason="the lime package (with scikit-image)")

    ref = _run(run_models, synthetic, "cpu", tmp_path / "cpu")
    got = _run(run_models, synthetic, DEVICE, tmp_path / "device")
    for out in ("cpu", "device"):
        for name in ("results.parquet", "results.csv", "summary.csv", "manifest.json"):
            assert (tmp_path / out / name).is_file(), f"{out}/{name}"
    manifest = json.loads((tmp_path / "device" / "manifest.json").read_text())
    assert manifest["device"] == str(DEVICE)
    assert manifest["cuda_float32"] == (None if REHEARSAL else "ieee")
    assert set(got["metric"]) == set(list_metrics())
    assert set(got["method"]) == set(RUN_METHODS)
    assert set(got["model"]) == {"coda", "resnet"}
    # Rows are finite, except the Spearman correlations of a constant map (the metric's NaN, e.g.
    # GradCAM of a ResNet whose top layer is randomised), which the CPU run has too.
    nonfinite = ~np.isfinite(got["value"])
    assert nonfinite.equals(~np.isfinite(ref["value"]))
    assert (got.loc[nonfinite, "metric"] == "randomisation").all()
    assert got.loc[nonfinite, "stat"].isin(["spearman", "spearman_abs"]).all()
    assert (got["flag"] == np.where(nonfinite, "nonfinite", "")).all()
    summary = pd.read_csv(tmp_path / "device" / "summary.csv")
    assert np.isfinite(summary["mean"]).all()

    # A fresh device run, with its own maps. Localisation and randomisation are continuous in
    # the maps: equal within the maps' tolerance (looser for the ReLU-gradient maps of the
    # ResNet, see RELU_GRADIENT). Pixel removal ranks pixels: two pixels whose values differ by
    # less than float32 rounding may swap places across devices, and a swap on a step boundary
    # changes that step's point; so at least 90 % of its groups are equal and every point is
    # within 5 % of its group's largest value (not checked for the ReLU-gradient maps, whose
    # few moved pixels may move far in the ranking). The cached run below checks it exactly.
    table = _compare(got, ref)
    removal = table["metric"] == "pixel-removal"
    bad = table[~removal & (table["rel"] > table["rtol"])]
    assert bad.empty, bad
    ranked = table[removal & ~table["relu"]]
    assert (ranked["rel"] <= ranked["rtol"]).mean() >= 0.9, ranked
    assert (ranked["rel"] <= 0.05).all(), ranked

    # A device run on the CPU run's attribution cache (the metrics whose maps it caches; the
    # randomisation test recomputes its maps): the same maps, so every row equal to RTOL.
    shutil.copytree(tmp_path / "cpu" / "cache", tmp_path / "cached" / "cache")
    cached_metrics = ["localisation", "localisation-difull", "pixel-removal"]
    cached = _run(run_models, synthetic, DEVICE, tmp_path / "cached",
                  metrics=",".join(cached_metrics))
    manifest = json.loads((tmp_path / "cached" / "manifest.json").read_text())
    assert manifest["cache"]["misses"] == 0 and manifest["cache"]["hits"] > 0, manifest["cache"]
    table = _compare(cached, ref[ref["metric"].isin(cached_metrics)].reset_index(drop=True))
    bad = table[table["rel"] > RTOL]
    assert bad.empty, bad


def test_cli_run_on_the_device(synthetic, registered, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from attrib_bench.cli import cli
    from attrib_bench.core.registry import DATASETS

    # The CLI reads datasets by name: serve the synthetic set as "cifar10" for this test.
    cifar10 = DATASETS.get("cifar10")
    monkeypatch.setitem(DATASETS._entries, "cifar10",
                        dataclasses.replace(cifar10, factory=lambda **_: synthetic))
    out = tmp_path / "cli"
    result = CliRunner().invoke(cli, [
        "run", "--model", f"smoke-coda,{RESNET}", "--method", "ixg,gradcam,rise",
        "--metric", "localisation,pixel-removal", "--set", "localisation.n=2",
        "--set", "pixel-removal.steps=8", "--set", "rise.n_masks=16", "--n-samples", "2",
        "--device", str(DEVICE), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "smoke-coda" in result.output
    results = pd.read_parquet(out / "results.parquet")
    assert len(results) and np.isfinite(results["value"]).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["device"] == str(DEVICE)


# ----------------------------------------------------------------------------- training


def test_train_time_budget(signal_set, tmp_path):
    train_module = pytest.importorskip("attrib_bench.runners.train")
    config_type = train_module.TrainConfig
    if "time_budget" not in {f.name for f in dataclasses.fields(config_type)}:
        pytest.skip("TrainConfig has no time_budget field yet (attrib-bench train --time-budget)")
    budget = 20.0
    options = {"model": "xs-coda", "temperature": 10.0, "batch_size": 32, "lr": 1e-3,
               "schedule": "cosine", "epochs": 1000, "crop_padding": 2, "time_budget": budget,
               "eval_every": 0}  # 0: evaluate after the last epoch only (where it exists)
    fields = {f.name for f in dataclasses.fields(config_type)}
    config = config_type(**{k: v for k, v in options.items() if k in fields})
    train_set, test_set = signal_set(512, 16, seed=0), signal_set(64, 16, seed=1)
    model = train_module.train(config, train_set, test_set, tmp_path / "run", device=DEVICE,
                               progress=False)
    exported = None
    if hasattr(train_module, "export"):
        exported = tmp_path / "run" / "smoke.safetensors"
        train_module.export(model, config, exported, dataset=train_set.name, test_accuracy=None,
                            epochs_done=1)
    # the budget is checked on the plan, not the clock: what the plan keeps for the rest of the
    # call (its setup, the planned steps at the measured step time, evaluations, checkpoints,
    # export, margin) fits the budget, and training ran to the planned step
    plan = train_module.BudgetPlan(**json.loads((tmp_path / "run" / "plan.json").read_text()))
    steps_per_epoch = len(train_set) // config.batch_size
    epochs = -(-plan.planned_steps // steps_per_epoch)
    cost = (plan.setup_s + plan.planned_steps * plan.step_s
            + plan.reserve(1 if plan.eval_s else 0, epochs))
    assert plan.planned_steps >= 1 and cost <= budget, plan
    parameters = list(model.parameters())
    assert parameters and all(p.device.type == DEVICE.type for p in parameters)
    assert all(torch.isfinite(p).all() for p in parameters)
    with torch.no_grad():
        logits = model(test_set.float_images().to(DEVICE))
    assert logits.device.type == DEVICE.type and torch.isfinite(logits).all()
    if exported is not None:
        from safetensors.torch import load_file

        weights = load_file(str(exported))
        assert weights and all(torch.isfinite(w.float()).all() for w in weights.values())
    if hasattr(train_module, "training_status"):
        assert train_module.training_status(tmp_path / "run")["finished"]
