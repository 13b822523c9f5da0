"""Pixel removal (CoDA-Nets, Böhle et al. CVPR 2021, Fig. 7): remove pixels in the order a map
ranks them and follow the model's target score.

**Protocol (the paper's defaults).** The first ``num_images`` = 1024 test images in dataset order,
misclassified ones included, each explained for its ground-truth class. Pixels are ranked by the
channel-summed map: ``least-first`` ascending (most negative first; the paper), ``most-first``
descending (its supplement). Removal is cumulative: step s removes the first s·k ranked pixels,
s = 0 … ``steps``, so a curve has ``steps`` + 1 points (129 for the defaults). The ranking uses a
stable sort: **ties are removed in raster order** (row-major, top-left first) in both orders.

**Pixels per step.** k = round(``fraction``·H·W / ``steps``), half up, at least 1 (2 for 32 px and
the defaults: 0.25·1024 / 128 = 2 exactly). When the division is not exact, every step still
removes k pixels, so the last point has ``steps``·k removed pixels rather than exactly
``fraction``·H·W (the ``removed`` column says how many); more than H·W is an error.

**What a removed pixel becomes** is the ``baseline``'s fill; :data:`FILLS` maps each name to
the function that builds it and says whether it fills in the model's encoded input space.
``baseline`` None (the default) is the model's own: "encoded-zero" for a model with the
``encoded_input`` capability of :mod:`attrib_bench.models.protocols` (the CoDA-Nets: the paper's
protocol), "black" for any other. A baseline that is set is used on every model; the SampleSet
info records the resolved one (``effective_baseline``).

- ``encoded-zero``: 0 in **all six** encoded channels [r, g, b, 1−r, 1−g, 1−b] of a CoDA-Net
  (the authors' choice): the inputs go through the model's ``encode``, are filled there and
  scored by its ``forward_encoded``. Only for models with the ``encoded_input`` capability;
  :meth:`PixelRemoval.select` refuses it for others.
- ``black``: 0 in every RGB channel, scored by the model's own forward (on a CoDA-Net that is
  [0, 0, 0, 1, 1, 1] after its encoding, another curve than encoded-zero's). This and the
  baselines below fill in RGB space, on every model.
- ``mean``: the per-channel mean of the dataset given to :meth:`PixelRemoval.select` (all of its
  images), or the ``mean`` hyper-parameter if set; evaluated without a select, CIFAR-10's
  training-set mean :data:`CIFAR10_MEAN`.
- ``blur``: the image blurred by a Gaussian of std ``sigma`` px (radius int(4σ + 0.5), edges
  replicated: scipy.ndimage.gaussian_filter with mode="nearest" and its default truncate=4).
- ``road``: noisy linear imputation (ROAD, Rong et al. ICML 2022): each removed pixel is the
  weighted mean of its in-image 8 neighbours (1/6 direct, 1/12 diagonal), removed neighbours
  included, i.e. one sparse linear system per (image, step); solved for all of them at once by
  :func:`road_impute`, then Gaussian noise of std ``road_noise`` is added (see there).

**Scores.** Rows hold the target's ``logit`` and ``prob`` at every step. ``prob`` is the target's
probability in the output space the explained model was trained in, its declared
``probability`` (:func:`attrib_bench.models.protocols.probability`): "sigmoid" for the BCE-trained
CoDA-Nets (the paper's score), "softmax" for cross-entropy models such as the ResNet-56 (whose
sigmoid saturates near 1.0 and flattens its curves) and for models that declare nothing. The
``score`` hyper-parameter ("sigmoid" or "softmax") overrides it for every model. The SampleSet
info records the effective one (``info["probability"]``), which plots name. All (order, image,
step) inputs go through the model in batched forwards of up to ``max_batch`` inputs under
``torch.inference_mode``; results do not depend on it.

**Summary.** Per (sample, order, stat): the area under the curve, trapezoid rule over
x = step / ``steps`` ∈ [0, 1] (the removed fraction normalised to the removed range), so a flat
curve's AUC is its value. Summary stats are "prob-auc" and "logit-auc"; least-first: higher is
better (the ranking found pixels that do not support the class), most-first: lower is better.
:attr:`PixelRemoval.directions` is keyed "order/stat", read through :meth:`PixelRemoval.direction`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, get_args

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.checks import model_label
from attrib_bench.core.errors import MetricError
from attrib_bench.core.evaluation import eval_mode
from attrib_bench.core.hashing import hashed_normal
from attrib_bench.core.hparams import AtLeast, Between, Positive, PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.data.predict import INFERENCE_BATCH
from attrib_bench.metrics.base import (
    EvalContext,
    FigureTables,
    Metric,
    MetricFigure,
    ReportSection,
    SampleSet,
    SelectContext,
    SeriesPanel,
    check_maps,
    first_image_samples,
    make_rows,
    typed_hparams,
)
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Probability

Order = Literal["least-first", "most-first"]
ORDERS: tuple[str, ...] = get_args(Order)
#: The ``order`` hyper-parameter: one order, or both.
OrderChoice = Literal["least-first", "most-first", "both"]
#: What a removed pixel becomes (:data:`FILLS`); the ``baseline`` hyper-parameter, None: the
#: model's own (:meth:`PixelRemoval.effective_baseline`).
Baseline = Literal["encoded-zero", "black", "mean", "blur", "road"]
BASELINES: tuple[str, ...] = get_args(Baseline)
STATS: tuple[str, ...] = ("prob", "logit")

#: CIFAR-10 training-set per-channel mean (RGB in [0, 1]); the ``mean`` baseline without select.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914009, 0.4821585, 0.4465309)

#: ROAD neighbour weights (Rong et al. 2022): 1/6 for the 4 direct, 1/12 for the 4 diagonal ones.
ROAD_KERNEL: tuple[tuple[float, ...], ...] = ((1 / 12, 1 / 6, 1 / 12),
                                              (1 / 6, 0.0, 1 / 6),
                                              (1 / 12, 1 / 6, 1 / 12))
#: The ROAD solver stops when every system's residual is below this (max-abs, image units) ...
ROAD_TOL = 1e-6
#: ... or after this many conjugate-gradient iterations.
ROAD_MAX_ITER = 1000
#: On a GPU the solver reads the convergence test back to the host only every this many
#: iterations (a read is a sync); it stops updating at the same iteration as on the CPU.
ROAD_CHECK_EVERY = 16

#: ``fill(x (n, C, H, W), removed (n, H, W) bool, image (n,) long) -> (n, C, H, W)``: the values
#: removed pixels take; ``image`` indexes the batch, for fills that depend on the image.
Fill = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- ranking, steps


def channel_means(dataset: BaseImageSet, batch_size: int = INFERENCE_BATCH) -> list[float]:
    """Per-channel mean of every pixel of ``dataset`` in [0, 1]: (C,) floats, summed exactly in
    float64 over uint8 batches (one pass; a file-backed set is decoded batch by batch)."""
    sums = torch.zeros(dataset.channels, dtype=torch.float64)
    for batch, _ in dataset.batches(batch_size, workers=None):
        sums += batch.sum(dim=(0, 2, 3), dtype=torch.float64)
    height, width = dataset.image_size
    count = len(dataset) * height * width * 255.0
    return (sums / max(count, 1.0)).tolist()


def pixels_per_step(height: int, width: int, fraction: float, steps: int) -> int:
    """k = round(fraction·H·W / steps), half up, at least 1; raises if steps·k > H·W."""
    k = max(1, math.floor(fraction * height * width / steps + 0.5))
    if steps * k > height * width:
        raise MetricError(f"metric 'pixel-removal': {steps} steps of {k} pixels exceed the "
                          f"{height}x{width} image: use fewer steps or a smaller fraction")
    return k


def removal_ranks(maps: torch.Tensor, order: str) -> torch.Tensor:
    """(B, H, W) maps → (B, H·W) long: each pixel's position in the removal order (0 = first).

    ``least-first`` ranks ascending, ``most-first`` descending; the sort is stable, so ties go in
    raster order. Rows with NaN are ranked as if they were 0 (their curves are NaN anyway).
    """
    flat = torch.nan_to_num(maps.detach().flatten(1), nan=0.0)
    index = flat.sort(dim=1, stable=True, descending=(order == "most-first")).indices
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(index)
    return torch.empty_like(index).scatter_(1, index, positions)


# ----------------------------------------------------------------------------- fills


def constant_fill(value: torch.Tensor | float) -> Fill:
    """Removed pixels take ``value``: a scalar or a per-channel (C,) tensor.

    The value reaches the batch's device once per fill, not once per batch: a host-to-GPU copy
    of a Python number waits for the GPU to finish its queue (a sync per forward).
    """
    base = value if isinstance(value, torch.Tensor) else torch.as_tensor(value,
                                                                          dtype=torch.float64)
    placed: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def fill(x: torch.Tensor, removed: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        v = placed.get((x.device, x.dtype))
        if v is None:
            v = placed[(x.device, x.dtype)] = base.to(device=x.device, dtype=x.dtype)
        return v.reshape(1, -1, 1, 1).expand_as(x) if v.dim() == 1 else v.expand_as(x)

    return fill


def image_fill(images: torch.Tensor) -> Fill:
    """Removed pixels take the value of ``images`` (B, C, H, W) (e.g. the blurred inputs)."""

    def fill(x: torch.Tensor, removed: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return images.index_select(0, image)

    return fill


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, C, H, W) → the same, blurred by a separable Gaussian of std ``sigma`` px.

    Radius int(4σ + 0.5), normalised kernel, edges replicated: scipy.ndimage.gaussian_filter
    with ``mode="nearest"`` and its default truncate=4, per image and channel.
    """
    radius = int(4.0 * sigma + 0.5)
    if radius == 0:
        return images.clone()
    t = torch.arange(-radius, radius + 1, dtype=torch.float64, device=images.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(images.dtype)
    b, c, h, w = images.shape
    x = images.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


def road_impute(images: torch.Tensor, removed: torch.Tensor, tol: float = ROAD_TOL,
                max_iter: int = ROAD_MAX_ITER, check_every: int | None = None) -> torch.Tensor:
    """ROAD's linear imputation without noise: (N, C, H, W) images, (N, H, W) bool removed mask.

    Every removed pixel i satisfies D_i·x_i = Σ_j w_ij·x_j over its in-image neighbours j (8,
    :data:`ROAD_KERNEL` weights, D_i their sum; removed neighbours are unknowns too): one sparse
    symmetric positive (semi-)definite system per image and channel. All are solved at once by
    conjugate gradients preconditioned with D (an operator product is a few shifted adds on the
    whole batch), until every residual's max-abs is below ``tol`` or after ``max_iter``
    iterations (on 32 px images, 25 % removed, ~30 iterations reach ~2e-6 in float32). The start
    is the mean of the image's kept pixels (per channel), which is also the value of a removed
    region with no kept neighbour (where the system is singular; 0 if nothing is kept). Returns
    the images with the removed pixels replaced; kept pixels are unchanged.

    ``check_every`` (None: 1 on the CPU, :data:`ROAD_CHECK_EVERY` elsewhere): how often the
    convergence test is read on the host. Between reads the test stays on the device and zeroes
    the step once every residual is small, so the result is exactly that of stopping at the first
    converged iteration (as ``check_every=1`` does), without a host sync per iteration.
    """
    n, c, h, w = images.shape
    x_all = images.reshape(n * c, 1, h, w)
    mask = removed.to(images.dtype).repeat_interleave(c, dim=0)[:, None]  # (n·c, 1, H, W)
    keep = 1.0 - mask

    def neighbours(t: torch.Tensor) -> torch.Tensor:
        # Σ_j w_ij t_j = (([1,2,1] ⊗ [1,2,1]) * t − 4 t) / 12, zero padded (out-of-image: 0);
        # separable shifted adds (a 1-channel 3×3 conv2d is several times slower on CPU).
        p = F.pad(t, (1, 1, 1, 1))
        rows = p[..., :-2] + 2.0 * p[..., 1:-1] + p[..., 2:]
        both = rows[..., :-2, :] + 2.0 * rows[..., 1:-1, :] + rows[..., 2:, :]
        return (both - 4.0 * t) / 12.0

    diag = neighbours(torch.ones(1, 1, h, w, dtype=images.dtype, device=images.device))

    def apply(t: torch.Tensor) -> torch.Tensor:  # A t on the removed set, t supported there
        return mask * (diag * t - neighbours(t))

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    kept = keep.sum(dim=(1, 2, 3), keepdim=True)
    start = (x_all * keep).sum(dim=(1, 2, 3), keepdim=True) / kept.clamp_min(1.0)
    x = mask * start
    rhs = mask * neighbours(keep * x_all)
    r = rhs - apply(x)
    z = r / diag
    p = z
    rz = dot(r, z)
    if check_every is None:
        check_every = 1 if images.device.type == "cpu" else ROAD_CHECK_EVERY
    active = None  # check_every > 1: 1 until the first converged iteration, then 0 (on device)
    for iteration in range(max_iter):
        if check_every == 1:
            if r.abs().amax() <= tol:
                break
        else:
            going = (r.abs().amax() <= tol).logical_not().to(images.dtype)  # NaN: going
            active = going if active is None else active * going
            if (iteration + 1) % check_every == 0 and not active:
                break
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(torch.finfo(pap.dtype).tiny), 0.0)
        if active is not None:
            alpha = alpha * active  # exactly alpha while unconverged, 0 after: x and r stay put
        x = x + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_next = dot(r, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp_min(torch.finfo(rz.dtype).tiny), 0.0)
        p = z + beta * p
        rz = rz_next
    return (keep * x_all + mask * x).reshape(n, c, h, w)


def road_fill(samples: torch.Tensor, noise: float, seed: int, tol: float = ROAD_TOL,
              max_iter: int = ROAD_MAX_ITER) -> Fill:
    """ROAD noisy linear imputation: :func:`road_impute` plus ``noise``·N(0, 1) per removed value.

    The noise field of an image is fixed by (seed, its sample id in ``samples`` (B,)) through
    :func:`hashed_normal`: a pixel gets the same noise at every step it is removed in.
    """

    def fill(x: torch.Tensor, removed: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        filled = road_impute(x, removed, tol, max_iter)
        if noise > 0:
            ids = samples.to(x.device).index_select(0, image)
            filled = filled + noise * hashed_normal(seed, ids, x.shape[1:], x.dtype)
        return filled

    return fill


# ----------------------------------------------------------------------------- the baselines


@dataclass(frozen=True)
class FillSettings:
    """What a baseline's fill may use besides the batch: ``mean`` the ``mean`` baseline's
    per-channel value (C,) in [0, 1] image units, ``sigma`` the blur's Gaussian std in px,
    ``road_noise`` ROAD's noise std in [0, 1] image units, ``seed`` ROAD's noise seed."""

    mean: tuple[float, ...]
    sigma: float
    road_noise: float
    seed: int


#: ``build(inputs (B, C, H, W) in the fill's input space, sample ids (B,), settings) -> Fill``.
FillBuilder = Callable[[torch.Tensor, np.ndarray, FillSettings], Fill]


@dataclass(frozen=True)
class FillSpec:
    """A baseline: ``build`` makes its :data:`Fill` for a batch; ``encoded`` True: it fills in
    the model's encoded input space (``encode``, fill, ``forward_encoded``: the model needs the
    ``encoded_input`` capability), False: in RGB, scored by the model's own forward."""

    build: FillBuilder
    encoded: bool = False


def zero_builder(inputs: torch.Tensor, samples: np.ndarray, settings: FillSettings) -> Fill:
    """0 in every channel of the input space (black in RGB; encoded-zero in a CoDA-Net's)."""
    return constant_fill(0.0)


def mean_builder(inputs: torch.Tensor, samples: np.ndarray, settings: FillSettings) -> Fill:
    """``settings.mean`` per channel; one MetricError line if it has another channel count."""
    mean = torch.tensor(settings.mean, dtype=inputs.dtype)
    if mean.numel() != inputs.shape[1]:
        raise MetricError(f"metric 'pixel-removal': mean has {mean.numel()} values but the "
                          f"inputs have {inputs.shape[1]} channels: give one per channel")
    return constant_fill(mean.to(inputs.device))


def blur_builder(inputs: torch.Tensor, samples: np.ndarray, settings: FillSettings) -> Fill:
    """The batch blurred by :func:`gaussian_blur` of std ``settings.sigma`` px."""
    return image_fill(gaussian_blur(inputs, settings.sigma))


def road_builder(inputs: torch.Tensor, samples: np.ndarray, settings: FillSettings) -> Fill:
    """:func:`road_fill` with the batch's sample ids, ``settings.road_noise`` and ``seed``."""
    ids = torch.as_tensor(np.asarray(samples, dtype=np.int64), device=inputs.device)
    return road_fill(ids, settings.road_noise, settings.seed)


#: Baseline name → how its fill is built and in which input space (see the module docstring).
FILLS: dict[str, FillSpec] = {
    "encoded-zero": FillSpec(zero_builder, encoded=True),
    "black": FillSpec(zero_builder),
    "mean": FillSpec(mean_builder),
    "blur": FillSpec(blur_builder),
    "road": FillSpec(road_builder),
}
#: The baselines every model takes (they fill in RGB space).
RGB_BASELINES: tuple[str, ...] = tuple(name for name, spec in FILLS.items() if not spec.encoded)


# ----------------------------------------------------------------------------- curves


def removal_curves(forward: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor,
                   maps: torch.Tensor, targets: torch.Tensor, *, steps: int, pixels: int,
                   orders: Sequence[str] = ("least-first",), fill: Fill | None = None,
                   score: str, max_batch: int = 256
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Target logits and scores along the removal curves: both float64 (V, B, steps + 1), CPU.

    ``forward``: model inputs (n, C, H, W) → logits (n, K), any C (3 for RGB, 6 for a CoDA-Net's
    encoded input, 1 for a grey model); ``inputs`` (B, C, H, W) in that space; ``maps`` (B, H, W);
    ``targets`` (B,) long. Step s of order v removes the first s·``pixels`` pixels of that order
    (:func:`removal_ranks`), which take ``fill``'s values (default 0 in every channel). Every
    (order, image, step) input is built in chunks of ``max_batch`` and run in one forward each,
    under ``torch.inference_mode``. ``score``: "sigmoid" or "softmax" (the target's probability)
    or "logit", by :func:`attrib_bench.models.protocols.scores` over the float64 logits (None is
    refused: a forward function declares no probability). Images whose map has a NaN or inf get
    NaN curves and cost no forward.
    """
    score = protocols.resolve_score(score, None, "removal_curves", MetricError)
    fill = fill or constant_fill(0.0)
    v, (b, _, h, w) = len(orders), inputs.shape
    points = steps + 1
    logits_out = torch.full((v, b, points), float("nan"), dtype=torch.float64)
    scores_out = logits_out.clone()
    valid = torch.isfinite(maps.detach()).flatten(1).all(dim=1).cpu()
    good = valid.nonzero().flatten()
    if len(good) == 0:
        return logits_out, scores_out
    device = inputs.device
    ranks = torch.stack([removal_ranks(maps.to(device), o) for o in orders])  # (V, B, H·W)
    good_d = good.to(device)
    total = v * len(good) * points
    logit_flat = torch.empty(total, dtype=torch.float64, device=device)
    score_flat = torch.empty_like(logit_flat)
    with torch.inference_mode():
        for start in range(0, total, max_batch):
            pair = torch.arange(start, min(start + max_batch, total), device=device)
            order_i, rest = pair // (len(good) * points), pair % (len(good) * points)
            image = good_d[rest // points]
            step = rest % points
            removed = ranks[order_i, image] < (step * pixels)[:, None]  # (n, H·W)
            removed = removed.view(-1, h, w)
            x = inputs.index_select(0, image)
            x = torch.where(removed[:, None], fill(x, removed, image), x)
            output = forward(x)
            if start == 0:  # logits (n, K), not probabilities or a tuple: one line if not
                protocols.check_logits(output, len(x), getattr(forward, "__self__", forward))
            logits = output.double()
            target = targets.index_select(0, image)[:, None]
            logit_flat[pair] = logits.gather(1, target)[:, 0]
            score_flat[pair] = protocols.scores(logits, score).gather(1, target)[:, 0]
    logits_out[:, good] = logit_flat.cpu().view(v, len(good), points)
    scores_out[:, good] = score_flat.cpu().view(v, len(good), points)
    return logits_out, scores_out


def curve_auc(values: np.ndarray) -> np.ndarray:
    """(..., steps + 1) curves → (...): trapezoid area over x = step / steps ∈ [0, 1]."""
    values = np.asarray(values, dtype=np.float64)
    steps = values.shape[-1] - 1
    if steps < 1:
        return np.full(values.shape[:-1], np.nan)
    inner = values[..., 1:-1].sum(axis=-1)
    return (inner + 0.5 * (values[..., 0] + values[..., -1])) / steps


# ----------------------------------------------------------------------------- metric


#: The default count of images (the first in dataset order).
NUM_IMAGES = 1024
#: The share of each image's pixels removed in all.
Fraction = Annotated[float, Between(0, 1, open_lo=True)]
#: The blur baseline's Gaussian std in pixels.
BlurStd = Annotated[float, Positive("Gaussian std in pixels")]
#: The ROAD baseline's noise std in [0, 1] image units.
NoiseStd = Annotated[float, AtLeast(0)]


def _removal_figure(tables: FigureTables) -> Any:
    """Fig. 6, right, with this metric's AUC
    (:func:`attrib_bench.metrics.figures.pixel_removal_figure`)."""
    from attrib_bench.metrics.figures import pixel_removal_figure  # matplotlib: only to draw

    return pixel_removal_figure(tables.results, tables.curves, tables.manifest, auc=curve_auc,
                                metric=tables.metric)


def curve_aucs(rows: pd.DataFrame, points: int | None = None) -> pd.DataFrame:
    """Per (sample, variant, stat) of curve ``rows`` (``key``: the step): the AUC
    (:func:`curve_auc`) as stat "<stat>-auc". With ``points``, the curve has steps 0 …
    points − 1, and a missing one gives a NaN AUC; without, the steps the rows hold."""
    if rows.empty:
        return pd.DataFrame({"sample": np.zeros(0, np.int64), "variant": [], "stat": [],
                             "value": np.zeros(0)})
    table = (rows.assign(step=rows["key"].astype(int))
             .set_index(["sample", "variant", "stat", "step"])["value"].unstack("step"))
    if points is not None:
        table = table.reindex(columns=range(points))
    out = table.index.to_frame(index=False)
    out["stat"] = out["stat"].astype(str) + "-auc"
    out["value"] = curve_auc(table.to_numpy())
    return out.sort_values(["sample", "variant", "stat"], ignore_index=True)


@register_metric("pixel-removal", family="faithfulness",
                 reference="Böhle et al. 2021 (CoDA-Nets), Fig. 7: pixel removal")
class PixelRemoval(Metric):
    """Remove pixels least (or most) important first and follow the target's probability.

    Hyper-parameters: ``order`` "least-first" (the paper), "most-first" or "both" (default);
    ``fraction`` of the pixels removed in all (0.25) in ``steps`` steps (128; k pixels per step,
    see the module docstring); ``num_images`` (1024, the first in dataset order, ground-truth
    targets); ``baseline`` (:data:`FILLS`, see the module docstring) None (default: the model's
    own, "encoded-zero" for a model with the ``encoded_input`` capability such as the CoDA-Nets,
    "black" for others), "encoded-zero" (such models only), "black", "mean", "blur" (Gaussian
    std ``sigma`` px, 2.0) or "road" (noise std ``road_noise``, 0.01, in [0, 1] image units;
    ``seed`` None: the run's seed); ``mean`` (C,) overrides the dataset mean; ``score`` None (the
    model's declared probability: sigmoid for CoDA-Nets, softmax for the ResNet-56 and models
    that declare none), "sigmoid" or "softmax" for every model; ``max_batch`` (order, image,
    step) inputs per forward (256).

    Rows: one per (image, order, step, stat): ``key`` = str(step), ``variant`` = order, ``stat``
    "prob" or "logit", plus an int column ``removed`` (pixels removed) and ``probability``
    ("sigmoid"/"softmax": what the "prob" rows hold; "" on logit rows). Summary: per (sample,
    order) "prob-auc" and "logit-auc"; :meth:`direction` gives higher for least-first, lower for
    most-first.
    """

    name: ClassVar[str] = "pixel-removal"
    curve_key: ClassVar[str | None] = "removed"
    description: ClassVar[str] = "CoDA-Nets pixel removal: target probability as pixels go"
    #: "order/summary stat" → "higher" or "lower" is better.
    directions: ClassVar[dict[str, str]] = {
        f"{order}/{stat}-auc": ("higher" if order == "least-first" else "lower")
        for order in ORDERS for stat in STATS
    }
    sample_count: ClassVar[str | None] = "num_images"
    rows_from_maps: ClassVar[bool] = True  # the curves' forwards are the cost; maps are cached
    figures: ClassVar[Mapping[str, MetricFigure] | None] = {"": MetricFigure(
        _removal_figure, "Pixel removal: mean probability of the target with a bootstrap 95 % "
                         "band, each method over its own images (n in the legend).")}
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Pixel removal", "The target's probability as pixels are removed, least or most "
        "important first (Böhle et al. 2021, Fig. 7); its AUC is better high when the least "
        "important go first, low when the most important do.")
    series_panels: ClassVar[tuple[SeriesPanel, ...]] = (
        SeriesPanel("pixel removal AUC, least first", "least-first", "prob-auc"),
        SeriesPanel("pixel removal AUC, most first", "most-first", "prob-auc"))

    def __init__(self, *, order: OrderChoice = "both", fraction: Fraction = 0.25,
                 steps: PositiveInt = 128, num_images: PositiveInt = NUM_IMAGES,
                 baseline: Baseline | None = None, sigma: BlurStd = 2.0,
                 road_noise: NoiseStd = 0.01, mean: list[float] | None = None,
                 score: Probability | None = None, max_batch: PositiveInt = 256,
                 seed: int | None = None) -> None:
        values = typed_hparams("metric 'pixel-removal'", PixelRemoval, {
            "order": order, "fraction": fraction, "steps": steps, "num_images": num_images,
            "baseline": baseline, "sigma": sigma, "road_noise": road_noise, "mean": mean,
            "score": score, "max_batch": max_batch, "seed": seed})
        if values["mean"] is not None and not values["mean"]:
            _bad("mean", values["mean"], "None or a per-channel list of numbers, e.g. "
                 "[0.49, 0.48, 0.45]")
        super().__init__(**values)
        self._dataset_mean: list[float] | None = None

    @property
    def orders(self) -> tuple[str, ...]:
        order = self.hparams["order"]
        return ORDERS if order == "both" else (order,)

    def effective_baseline(self, model: object) -> str:
        """The baseline (a key of :data:`FILLS`) used on ``model``: ``baseline`` if set, else
        "encoded-zero" for a model with the ``encoded_input`` capability, "black" for others.

        Raises one MetricError line for an encoded baseline on a model without that capability.
        """
        encoded = protocols.has(model, "encoded_input")
        baseline = self.hparams["baseline"]
        if baseline is None:
            return "encoded-zero" if encoded else "black"
        if FILLS[baseline].encoded and not encoded:
            choices = f"{', '.join(RGB_BASELINES[:-1])} or {RGB_BASELINES[-1]}"
            raise MetricError(f"metric 'pixel-removal': baseline {baseline} needs a model with "
                              f"an encoded input (encode and forward_encoded, as the CoDA-Nets "
                              f"have), which {model_label(model)} lacks: use baseline "
                              f"{choices}, or None (the model's own)")
        return baseline

    def effective_probability(self, model: object) -> Probability:
        """The ``prob`` rows' score for ``model``: ``score`` if set, else its declared one."""
        return self.hparams["score"] or protocols.probability(model)

    def channel_mean(self) -> list[float]:
        """The ``mean`` baseline's value: the hparam, else select's dataset, else CIFAR-10's."""
        return self.hparams["mean"] or self._dataset_mean or list(CIFAR10_MEAN)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets.

        Resolves the baseline first (:meth:`effective_baseline`: an encoded baseline on a model
        without an encoded input fails here, before any work). ``ctx`` is not needed: nothing
        is classified.
        """
        baseline = self.effective_baseline(model)
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        samples = first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES,
                                      effective_baseline=baseline,
                                      probability=self.effective_probability(model))
        height, width = dataset.image_size
        k = pixels_per_step(height, width, self.hparams["fraction"], self.hparams["steps"])
        info = samples.info
        info.update(pixels_per_step=k, points=self.hparams["steps"] + 1,
                    max_removed=self.hparams["steps"] * k, image_pixels=height * width)
        if baseline == "mean" and self.hparams["mean"] is None:
            self._dataset_mean = channel_means(dataset)
        if baseline == "mean":
            info["mean"] = self.channel_mean()
            channels = dataset.channels
            if len(info["mean"]) != channels:
                raise MetricError(f"metric 'pixel-removal': mean has {len(info['mean'])} values "
                                  f"but {dataset.name} has {channels} channels: give one per "
                                  "channel")
        return samples

    def fill_settings(self, run_seed: int) -> FillSettings:
        """The hyper-parameters the fills use; ROAD's seed is ``seed``, else ``run_seed``."""
        seed = run_seed if self.hparams["seed"] is None else self.hparams["seed"]
        return FillSettings(mean=tuple(self.channel_mean()), sigma=float(self.hparams["sigma"]),
                            road_noise=float(self.hparams["road_noise"]), seed=int(seed))

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: orders × images × (steps + 1) × 2 stats, plus ``removed``.

        ``inputs`` (B, 3, H, W) RGB in [0, 1], ``target`` (B,) class indices, ``samples`` (B,)
        ids; the baseline's fill (:data:`FILLS`) works in RGB or the model's encoded space.
        """
        steps = self.hparams["steps"]
        if len(inputs) == 0:
            return _empty_rows()
        inputs, target = inputs.to(ctx.device), target.to(ctx.device).long()
        maps = check_maps(self.name, ctx.explain(inputs, target), inputs)
        _, _, height, width = inputs.shape
        k = pixels_per_step(height, width, self.hparams["fraction"], steps)
        model = ctx.model
        spec = FILLS[self.effective_baseline(model)]
        forward = model.forward_encoded if spec.encoded else model
        space = (model.encode(inputs) if spec.encoded else inputs).detach()
        fill = spec.build(space, samples, self.fill_settings(ctx.seed))
        with eval_mode(model):
            logits, probs = removal_curves(
                forward, space, maps.to(inputs.device), target, steps=steps, pixels=k,
                orders=self.orders, fill=fill, score=self.effective_probability(model),
                max_batch=self.hparams["max_batch"])
        values = np.stack([probs.numpy(), logits.numpy()], axis=-1)  # (V, B, S+1, 2)
        step = np.arange(steps + 1)
        rows = make_rows(np.asarray(samples)[None, :, None, None], step[None, None, :, None],
                         values, variant=np.array(self.orders)[:, None, None, None],
                         stat=np.array(STATS)[None, None, None, :])
        rows["removed"] = np.broadcast_to((step * k)[None, None, :, None], values.shape).ravel()
        # which probability the "prob" rows hold, so that a table names it ("" on logit rows)
        rows["probability"] = np.where(rows["stat"] == "prob",
                                       self.effective_probability(model), "")
        return rows

    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Per (sample, order, stat): the curve's AUC (:func:`curve_auc`) as stat "<stat>-auc".

        A curve with a NaN point or a missing step has a NaN AUC.
        """
        return curve_aucs(rows, self.hparams["steps"] + 1)

    def direction(self, variant: str, stat: str) -> str:
        """"higher" (least-first) or "lower" (most-first) for an AUC stat; "" otherwise."""
        return self.directions.get(f"{variant}/{stat}", "")


def _empty_rows() -> pd.DataFrame:
    rows = make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
    rows["removed"] = np.zeros(0, dtype=np.int64)
    rows["probability"] = np.zeros(0, dtype=str)
    return rows


def _bad(name: str, value: object, expected: str) -> None:
    raise MetricError(f"metric 'pixel-removal': {name} must be {expected}, got {value!r}")
