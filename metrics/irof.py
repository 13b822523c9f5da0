"""IROF, Iterative Removal Of Features (Rieger and Hansen 2020, "IROF: a low resource evaluation
metric for explanation methods", arXiv:2003.08747, Eq. 1).

**Protocol.** Each image is cut into superpixels by SLIC (scikit-image
``slic(image, n_segments, compactness, sigma, start_label=0)`` on the (H, W, C) float64 image,
the call the paper's segmentation and Quantus make; its defaults ``n_segments=100``,
``compactness=10``, ``sigma=0``). Segments are ranked by their mean attribution (the
channel-summed map averaged over the segment's pixels), most relevant first; ties go to the
lower segment label. Removal is cumulative: step l = 0 … L (L the image's segment count)
replaces the first l ranked segments by the image's per-channel mean (the paper's "mean value";
every step in one chunked forward of up to ``max_batch`` (image, step) inputs).

**Score.** The curve is the target's probability relative to the unperturbed one,
r_l = p(x^l)_y / p(x^0)_y, over x = l / L ∈ [0, 1], so images with different segment counts
share one axis; IROF is the area **over** that curve, AOC = 1 − ∫ r dx (trapezoid rule), per
image (the paper's Eq. 1 averages it over images: the summary's mean). Higher is better: the
target's probability falls fast when the most relevant segments go first. r may exceed 1, so the
AOC may be negative.

**Against Quantus 0.6** (``quantus.IROF``; the difference raised in Quantus #113): Quantus's
curve has no l = 0 point and its area is ``np.trapz`` at unit spacing, so it returns
Q = L − trapz(r_1 … r_L), an area that grows with the image's segment count L, not a number in
the paper's [0, 1] range; the exact relation is AOC = (Q − (1 + r_1) / 2) / L
(``tests/test_irof.py`` checks it). Its default "mean" fill is one scalar over every channel and
pixel of the whole batch *as already perturbed*, so an image's score there depends on the other
images of its batch; ours is the per-channel mean of the unperturbed image.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.evaluation import eval_mode
from attrib_bench.core.hparams import AtLeast, Positive, PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.metrics.base import (
    EvalContext,
    Metric,
    ReportSection,
    SampleSet,
    SelectContext,
    check_maps,
    first_image_samples,
    make_rows,
    typed_hparams,
)
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Probability

#: The default count of images (the first in dataset order), as pixel removal's.
NUM_IMAGES = 1024
#: SLIC's compactness (scikit-image's default, as Quantus).
Compactness = Annotated[float, Positive("SLIC compactness")]
#: SLIC's Gaussian pre-smoothing std in pixels (0: none, scikit-image's default).
SlicSigma = Annotated[float, AtLeast(0)]


def slic_segments(inputs: torch.Tensor, n_segments: int = 100, compactness: float = 10.0,
                  sigma: float = 0.0) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] → (B, H, W) long superpixel labels 0 … L_b − 1 per image.

    scikit-image's ``slic`` on each (H, W, C) float64 image (SLIC is a CPU algorithm: one call
    per image, outside the forwards), labels made contiguous. On the inputs' device.
    """
    from skimage.segmentation import slic  # only when segmenting

    images = inputs.detach().cpu().double().permute(0, 2, 3, 1).numpy()
    channel_axis = -1 if images.shape[-1] > 1 else None
    out = np.empty(images.shape[:3], dtype=np.int64)
    for b, image in enumerate(images):
        labels = slic(image if channel_axis is not None else image[..., 0],
                      n_segments=n_segments, compactness=compactness, sigma=sigma,
                      start_label=0, channel_axis=channel_axis)
        out[b] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return torch.from_numpy(out).to(inputs.device)


def segment_ranks(maps: torch.Tensor, segments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's removal step and each image's segment count, all images at once.

    ``maps`` (B, H, W), ``segments`` (B, H, W) labels 0 … L_b − 1. Returns ``pixel_rank``
    (B, H·W) long: the position of the pixel's segment in the most-relevant-first order by mean
    attribution (a pixel is removed at steps l > pixel_rank), and ``counts`` (B,) = L_b.
    Ties keep the lower label first (stable sorts).
    """
    b = len(maps)
    flat = segments.flatten(1).long()
    counts = flat.amax(dim=1) + 1
    offsets = torch.cumsum(counts, 0) - counts
    label = flat + offsets[:, None]  # a global segment id, (B, H·W)
    total = int(counts.sum())
    sums = torch.zeros(total, dtype=torch.float64, device=maps.device)
    sums.scatter_add_(0, label.flatten(), maps.detach().flatten(1).double().flatten())
    sizes = torch.zeros_like(sums).scatter_add_(0, label.flatten(),
                                                torch.ones_like(sums[:1]).expand(label.numel()))
    means = torch.nan_to_num(sums / sizes, nan=0.0)
    owner = torch.repeat_interleave(torch.arange(b, device=maps.device), counts)
    order = means.sort(descending=True, stable=True).indices
    order = order[owner[order].sort(stable=True).indices]  # by image, most relevant first
    rank = torch.empty_like(order)
    rank[order] = torch.arange(total, device=maps.device) - offsets[owner[order]]
    return rank[label], counts


def irof_curves(forward: Any, inputs: torch.Tensor, maps: torch.Tensor, target: torch.Tensor,
                segments: torch.Tensor, *, score: str, max_batch: int = 256
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's score at every removal step: (B, max L + 1) float64 on the CPU (NaN past an
    image's own L, and for a map that is not finite), and the counts L (B,).

    Step l of image b replaces its first l segments (:func:`segment_ranks`) by the image's
    per-channel mean; all Σ (L_b + 1) inputs go through ``forward`` in chunks of ``max_batch``.
    """
    b, _, h, w = inputs.shape
    pixel_rank, counts = segment_ranks(maps, segments)
    points = counts + 1
    good = torch.isfinite(maps.flatten(1)).all(dim=1)
    out = torch.full((b, int(points.max()) if b else 1), float("nan"), dtype=torch.float64)
    image_of = torch.repeat_interleave(torch.arange(b, device=inputs.device)[good], points[good])
    step_of = torch.arange(len(image_of), device=inputs.device) - \
        (torch.cumsum(points[good], 0) - points[good]).repeat_interleave(points[good])
    mean = inputs.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
    values = torch.empty(len(image_of), dtype=torch.float64, device=inputs.device)
    with torch.inference_mode():
        for start in range(0, len(image_of), max_batch):
            image, step = image_of[start:start + max_batch], step_of[start:start + max_batch]
            removed = (pixel_rank.index_select(0, image) < step[:, None]).view(-1, 1, h, w)
            x = torch.where(removed, mean.index_select(0, image), inputs.index_select(0, image))
            output = forward(x)
            if start == 0:
                protocols.check_logits(output, len(x), getattr(forward, "__self__", forward))
            probs = protocols.scores(output.double(), score)
            values[start:start + len(image)] = probs.gather(1, target[image][:, None])[:, 0]
    out[image_of.cpu(), step_of.cpu()] = values.cpu()
    return out, counts.cpu()


def aoc(curves: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, max L + 1) scores and (B,) counts L → (B,) AOC = 1 − trapezoid area of
    r_l = p_l / p_0 over x = l / L (the paper's Eq. 1 per image); NaN if a point is."""
    curves = np.asarray(curves, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.int64)
    step = np.arange(curves.shape[1])[None, :]
    weight = np.where(step < counts[:, None], 1.0, 0.0) - 0.5 * (step == 0) \
        + 0.5 * (step == counts[:, None])  # trapezoid weights: ½ at both ends, 0 past L
    with np.errstate(divide="ignore", invalid="ignore"):
        r = curves / curves[:, :1]
        area = np.where(weight > 0, r * weight, 0.0).sum(axis=1) / np.maximum(counts, 1)
    bad = ~np.isfinite(np.where(weight > 0, r, 0.0)).all(axis=1) | (counts < 1)
    return np.where(bad, np.nan, 1.0 - area)


@register_metric("irof", family="faithfulness",
                 reference="Rieger and Hansen 2020, IROF (arXiv:2003.08747), Eq. 1")
class IROF(Metric):
    """IROF (Rieger and Hansen 2020, eq. 1): area over the target's curve as superpixels go.

    SLIC superpixels are replaced by the image's mean, most relevant first; the curve is the
    target's probability relative to the unperturbed image's (the module docstring has more).

    Hyper-parameters: ``n_segments`` (100), ``compactness`` (10) and ``sigma`` (0) of SLIC
    (scikit-image's defaults, which Quantus and the paper's segmentation use); ``num_images``
    (1024, the first in dataset order, ground-truth targets); ``score`` None (the model's declared
    probability), "sigmoid" or "softmax"; ``max_batch`` (image, step) inputs per forward (256).

    Rows: one per image, ``stat`` "aoc" (higher is better), ``key`` and ``variant`` "".
    """

    name: ClassVar[str] = "irof"
    description: ClassVar[str] = "IROF: area over the curve as superpixels go, most relevant first"
    directions: ClassVar[dict[str, str]] = {"aoc": "higher"}
    sample_count: ClassVar[str | None] = "num_images"
    rows_from_maps: ClassVar[bool] = True
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "IROF", "Superpixels removed most relevant first (replaced by the image's mean); the "
        "area over the target's relative probability curve (Rieger and Hansen 2020): higher "
        "is better.", "IROF")

    def __init__(self, *, n_segments: PositiveInt = 100, compactness: Compactness = 10.0,
                 sigma: SlicSigma = 0.0, num_images: PositiveInt = NUM_IMAGES,
                 score: Probability | None = None, max_batch: PositiveInt = 256) -> None:
        super().__init__(**typed_hparams("metric 'irof'", IROF, {
            "n_segments": n_segments, "compactness": compactness, "sigma": sigma,
            "num_images": num_images, "score": score, "max_batch": max_batch}))

    def effective_probability(self, model: object) -> Probability:
        """The probability used: ``score`` if set, else the model's declared one."""
        return self.hparams["score"] or protocols.probability(model)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES,
                                   probability=self.effective_probability(model))

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """One "aoc" row per image of the batch (NaN for a map that is not finite)."""
        if len(inputs) == 0:
            return make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0), stat="aoc")
        inputs, target = inputs.to(ctx.device), target.to(ctx.device).long()
        maps = check_maps(self.name, ctx.explain(inputs, target), inputs)
        segments = slic_segments(inputs, self.hparams["n_segments"], self.hparams["compactness"],
                                 self.hparams["sigma"])
        with eval_mode(ctx.model):
            curves, counts = irof_curves(ctx.model, inputs, maps.to(inputs.device), target,
                                         segments, score=self.effective_probability(ctx.model),
                                         max_batch=self.hparams["max_batch"])
        return make_rows(np.asarray(samples), "", aoc(curves.numpy(), counts.numpy()),
                         stat="aoc")
