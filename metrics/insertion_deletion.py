"""Insertion and deletion (Petsiuk et al., "RISE", BMVC 2018, §4.2), as the authors' code
(eclique/RISE, ``evaluation.py``: ``CausalMetric``, ``gkern``, ``auc``).

**Deletion**: the pixels of each image are removed most important first (the channel-summed map,
descending; ties in raster order, :func:`~attrib_bench.metrics.pixel_removal.removal_ranks`),
``k`` at a time, and a removed pixel becomes 0 in every channel (the authors'
``substrate_fn=torch.zeros_like``). **Insertion**: the start is the image blurred by the authors'
kernel (:func:`rise_blur`: 11×11, σ = 5, zero padding) and the original pixels are put back most
important first, ``k`` at a time. Both run until every pixel is removed or inserted:
n = ⌈H·W / k⌉ steps, n + 1 points (the last step may hold fewer than k pixels, as the authors'
slices). The authors' k is 224 on 224×224 images (224 steps): ``steps`` = 224 sets
k = ⌈H·W / steps⌉ on any size (224 at 224 px, 5 at 32 px, so 205 steps there).

**Score**: the target's probability (the authors' model ends in a softmax; here the model's
declared probability, or ``score``) at every point; per curve the area under it over
x ∈ [0, 1], the authors' ``auc``: (Σ a − a₀/2 − a_n/2) / n, the trapezoid rule. Deletion: lower
is better (the probability falls fast); insertion: higher is better.

Every (variant, image, step) input goes through the model in chunked forwards of up to
``max_batch`` (one :func:`~attrib_bench.metrics.pixel_removal.removal_curves` call for both
variants: insertion is "removal" from the blurred image whose fill is the original).

**Against Quantus 0.6**: its nearest peer for deletion is ``PixelFlipping`` (most important
first, ``features_in_step`` pixels, ``perturb_baseline="black"``: each image's minimum, so 0 only
where the image holds a 0); it returns the curve without its unperturbed point and takes no
area. The tests compare the curves on shared inputs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.errors import MetricError
from attrib_bench.core.evaluation import eval_mode
from attrib_bench.core.hparams import Positive, PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.metrics.base import (
    EvalContext,
    Metric,
    MetricFigure,
    ReportSection,
    SampleSet,
    SelectContext,
    check_maps,
    first_image_samples,
    make_rows,
    typed_hparams,
)
from attrib_bench.metrics.pixel_removal import curve_aucs, image_fill, removal_curves
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Probability

#: The default count of images (the first in dataset order), as pixel removal's.
NUM_IMAGES = 1024
VARIANTS: tuple[str, str] = ("deletion", "insertion")
#: The blur's Gaussian std in pixels (the authors' ``ksig = 5``).
BlurStd = Annotated[float, Positive("Gaussian std in pixels")]


def rise_kernel(size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The authors' ``gkern(klen, nsig)``: scipy's ``gaussian_filter`` (mode "reflect",
    truncate 4) of a ``size``×``size`` unit impulse at the centre; (size, size) float64."""
    from scipy.ndimage import gaussian_filter  # only to build the kernel

    impulse = np.zeros((size, size))
    impulse[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(impulse, sigma))


def rise_blur(images: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """(B, C, H, W) → the same blurred per channel by :func:`rise_kernel`, zero padding
    ``size // 2`` (the authors' ``conv2d(x, kern, padding=klen // 2)``; edges darken)."""
    b, c, h, w = images.shape
    kernel = rise_kernel(size, sigma).to(images.device, images.dtype)
    x = F.conv2d(images.reshape(b * c, 1, h, w), kernel[None, None], padding=size // 2)
    return x.reshape(b, c, h, w)


def step_pixels(height: int, width: int, steps: int) -> tuple[int, int]:
    """(k, n): k = ⌈H·W / steps⌉ pixels per step and n = ⌈H·W / k⌉ steps to cover the image."""
    k = math.ceil(height * width / steps)
    return k, math.ceil(height * width / k)


@register_metric("insertion-deletion", family="faithfulness",
                 reference="Petsiuk et al. 2018 (RISE), §4.2: insertion and deletion")
class InsertionDeletion(Metric):
    """Insertion and deletion (Petsiuk et al. 2018, §4.2): AUC as pixels go or come back.

    Deletion removes the most important pixels first (to 0), insertion puts them back into a
    blurred image first (the module docstring has the protocol). Hyper-parameters: ``steps``
    (224, the authors'; k = ⌈H·W / steps⌉ pixels per step), ``blur_size`` (11) and ``blur_sigma``
    (5) of the insertion's start, ``num_images`` (1024, the first in dataset order, ground-truth
    targets), ``score`` None (the model's declared probability), "sigmoid" or "softmax",
    ``max_batch`` (variant, image, step) inputs per forward (256).

    Rows: per (image, variant, step) stat "prob", with ``removed`` (pixels deleted or inserted)
    and ``probability``; summary "prob-auc" per (image, variant): deletion lower, insertion
    higher is better.
    """

    name: ClassVar[str] = "insertion-deletion"
    description: ClassVar[str] = "RISE insertion and deletion: AUC as salient pixels go or come"
    directions: ClassVar[dict[str, str]] = {"deletion/prob-auc": "lower",
                                            "insertion/prob-auc": "higher"}
    sample_count: ClassVar[str | None] = "num_images"
    curve_key: ClassVar[str | None] = "removed"
    rows_from_maps: ClassVar[bool] = True
    figures: ClassVar[Mapping[str, MetricFigure] | None] = None
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Insertion and deletion", "The target's probability as the most important pixels are "
        "deleted (to black) or inserted into a blurred image (Petsiuk et al. 2018, §4.2); the "
        "area under the curve is better low for deletion, high for insertion.", "ins/del")

    def __init__(self, *, steps: PositiveInt = 224, blur_size: PositiveInt = 11,
                 blur_sigma: BlurStd = 5.0, num_images: PositiveInt = NUM_IMAGES,
                 score: Probability | None = None, max_batch: PositiveInt = 256) -> None:
        values = typed_hparams("metric 'insertion-deletion'", InsertionDeletion, {
            "steps": steps, "blur_size": blur_size, "blur_sigma": blur_sigma,
            "num_images": num_images, "score": score, "max_batch": max_batch})
        if values["blur_size"] % 2 == 0:
            raise MetricError(f"metric 'insertion-deletion': blur_size must be odd (the kernel "
                              f"has a centre), got {values['blur_size']}: use e.g. 11")
        super().__init__(**values)

    def effective_probability(self, model: object) -> Probability:
        """The probability used: ``score`` if set, else the model's declared one."""
        return self.hparams["score"] or protocols.probability(model)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        samples = first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)
        k, n = step_pixels(*dataset.image_size, self.hparams["steps"])
        samples.info.update(pixels_per_step=k, points=n + 1,
                            probability=self.effective_probability(model))
        return samples

    def curves(self, model: nn.Module, inputs: torch.Tensor, maps: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(2, B, n + 1) float64 scores (deletion, insertion) on the CPU, and k."""
        b, _, height, width = inputs.shape
        k, n = step_pixels(height, width, self.hparams["steps"])
        blurred = rise_blur(inputs, self.hparams["blur_size"], self.hparams["blur_sigma"])
        starts = torch.cat([inputs, blurred])  # deletion from x, insertion from blur(x)
        fill = image_fill(torch.cat([torch.zeros_like(inputs), inputs]))
        with eval_mode(model):
            _, scores = removal_curves(model, starts, torch.cat([maps, maps]),
                                       torch.cat([target, target]), steps=n, pixels=k,
                                       orders=("most-first",), fill=fill,
                                       score=self.effective_probability(model),
                                       max_batch=self.hparams["max_batch"])
        return scores[0].view(2, b, n + 1), k

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: variants × images × (n + 1) steps, stat "prob"."""
        inputs, target = inputs.to(ctx.device), target.to(ctx.device).long()
        b, _, height, width = inputs.shape
        maps = check_maps(self.name, ctx.explain(inputs, target) if b
                          else torch.zeros(0, height, width), inputs)
        scores, k = self.curves(ctx.model, inputs, maps.to(inputs.device), target)
        step = np.arange(scores.shape[-1])
        rows = make_rows(np.asarray(samples, dtype=np.int64)[None, :, None], step[None, None, :],
                         scores.numpy(), variant=np.array(VARIANTS)[:, None, None], stat="prob")
        removed = np.minimum(step * k, height * width)
        rows["removed"] = np.broadcast_to(removed[None, None, :], scores.shape).ravel()
        rows["probability"] = self.effective_probability(ctx.model)
        return rows

    def summarise(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Per (sample, variant): the curve's AUC (the authors' ``auc``) as stat "prob-auc"."""
        return curve_aucs(rows)

    def direction(self, variant: str, stat: str) -> str:
        """"lower" (deletion) or "higher" (insertion) for "prob-auc"; "" otherwise."""
        return self.directions.get(f"{variant}/{stat}", "")
