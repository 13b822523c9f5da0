"""The random-logit test (Sixt, Granz and Landgraf, "When Explanations Lie", ICML 2020).

An explanation of a class should depend on the class: the map of an image for its label and the
map of the same image for a randomly chosen *other* class should differ. Sixt et al. compare the
two maps with SSIM and find that several modified-backprop methods (e.g. DeepLIFT's and LRP's
αβ rules, PatternAttribution) give nearly the same map for every logit (arXiv:1912.09818).
Lower is better.

**Samples and classes:** the first ``num_images`` images in dataset order, explained for their
ground-truth label ``t`` and for one other class ``o ≠ t`` drawn uniformly from the remaining
K − 1 classes. The draw is counter-based (:func:`other_classes`: a hash of (seed, sample id), as
:mod:`attrib_bench.core.hashing`'s noise): it depends on neither the batch, the chunk size, the
device nor the global RNG, so a sample gets the same class in every run with the same seed.

**Similarities** per image of the two maps, the same three as the randomisation test
(:func:`attrib_bench.metrics.randomisation.similarities`): ``ssim`` (the paper's; skimage's
defaults, 7×7 window, on the maps each scaled to [0, 1] by its own min and max, data_range 1),
``spearman`` and ``spearman_abs``. A non-finite map gives NaN.

**Quantus 0.6** (``quantus.RandomLogit``) differs in its SSIM: it flattens each map to one row of
H·W values and runs skimage's SSIM on that 1-D signal (a 7-long window along the rows), on maps
divided by the largest absolute value in the whole batch (so a score depends on the batch), with
data_range the joint range of the two maps. We
follow the paper (SSIM of the two images); ``tests/test_random_logit.py`` shows the difference
and agrees with Quantus when Quantus is given the image SSIM.

Cost: two attributions per image (one of them, the label's, shared through the run's cache with
the other metrics that explain the first images for their labels), no other model pass.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.errors import MetricError
from attrib_bench.core.hashing import M32, hash32
from attrib_bench.core.hparams import AtLeast, PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.metrics.base import (
    EvalContext,
    Explainer,
    Metric,
    ReportSection,
    SampleSet,
    SelectContext,
    first_image_samples,
    make_rows,
    typed_hparams,
)
from attrib_bench.metrics.randomisation import STATS, similarities

#: The default count of images (the first in dataset order), as the randomisation test's.
NUM_IMAGES = 100
#: Mixed into the seed so that the class draw is not ROAD's noise stream for the same seed.
CLASS_SALT = 0x52414E44  # "RAND"


def other_classes(seed: int, samples: torch.Tensor, target: torch.Tensor,
                  num_classes: int) -> torch.Tensor:
    """One class ``o ≠ target`` per sample, uniform over the other ``num_classes − 1``: (n,) long.

    A pure function of (seed, sample id, target, K): ``u = hash(seed, id) mod (K − 1)``, then
    ``o = u + (u ≥ target)`` (the u-th class once the target is skipped, as Quantus indexes its
    off-target classes). The modulo bias is below K / 2³².
    """
    if num_classes < 2:
        raise MetricError(f"metric 'random-logit' needs a model with at least 2 classes, got "
                          f"{num_classes}")
    device = target.device
    ids = samples.to(device=device, dtype=torch.int64).reshape(-1)
    h = torch.full((1,), hash32(torch.tensor((seed ^ CLASS_SALT) & M32)).item()
                   ^ ((seed >> 32) & M32), dtype=torch.int64, device=device)
    h = hash32(hash32(h ^ (ids & M32)) ^ ((ids >> 32) & M32))
    u = h % (num_classes - 1)
    return u + (u >= target.reshape(-1)).long()


def random_logit_similarities(explain: Explainer, inputs: torch.Tensor, target: torch.Tensor,
                              other: torch.Tensor) -> dict[str, torch.Tensor]:
    """The similarities (:data:`STATS`, each (B,) float64) of each image's map for ``target``
    and its map for ``other`` (both (B,) classes): two batched calls of ``explain``."""
    return similarities(explain(inputs, target), explain(inputs, other))


@register_metric("random-logit", family="sanity-check", ranks=False,
                 reference="Sixt et al. 2020 (ICML), random-logit test")
class RandomLogit(Metric):
    """Random-logit test: similarity of the map for the label and the map for another class.

    Hyper-parameters: ``num_images`` (default 100, the first images in dataset order);
    ``num_classes`` None (the model's, from one image's logits) or K ≥ 2, the classes the other
    class is drawn from (as Quantus's ``num_classes``); ``seed`` of the draw (None: the run's
    seed). Rows: ``key`` = "", ``stat`` in ssim, spearman, spearman_abs, plus an int column
    ``other_class``, the class drawn. Lower is better for all three.
    """

    name: ClassVar[str] = "random-logit"
    description: ClassVar[str] = "Sixt et al. (2020) random-logit test: label vs other-class maps"
    directions: ClassVar[dict[str, str]] = {stat: "lower" for stat in STATS}
    sample_count: ClassVar[str | None] = "num_images"
    rows_from_maps: ClassVar[bool] = True
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Random logit (a check, not a ranking)", "The similarity (SSIM, Spearman) of each "
        "image's map for its label to its map for a randomly drawn other class (Sixt et al. "
        "2020): a method that explains the class gives different maps, so lower is better.",
        short="random logit")

    def __init__(self, *, num_images: PositiveInt = NUM_IMAGES,
                 num_classes: Annotated[int, AtLeast(2)] | None = None,
                 seed: int | None = None) -> None:
        super().__init__(**typed_hparams("metric 'random-logit'", RandomLogit, {
            "num_images": num_images, "num_classes": num_classes, "seed": seed}))

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)

    def num_classes(self, model: nn.Module, example: torch.Tensor) -> int:
        """K: the setting, else the width of ``model``'s logits on ``example`` (one image)."""
        if self.hparams["num_classes"] is not None:
            return int(self.hparams["num_classes"])
        with torch.no_grad():
            return int(model(example).shape[-1])

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: the three similarities per image, and the class drawn."""
        if len(inputs) == 0:
            rows = make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
            rows["other_class"] = np.zeros(0, dtype=np.int64)
            return rows
        inputs, target = inputs.to(ctx.device), target.to(ctx.device)
        seed = ctx.seed if self.hparams["seed"] is None else self.hparams["seed"]
        k = self.num_classes(ctx.model, inputs[:1])
        if int(target.max()) >= k:
            raise MetricError(f"metric 'random-logit': label {int(target.max())} but "
                              f"num_classes={k}: pass num_classes > every label")
        other = other_classes(int(seed), torch.as_tensor(samples), target, k)
        values = random_logit_similarities(ctx.explain, inputs, target, other)
        frames = []
        for stat, value in values.items():
            rows = make_rows(samples, "", value.cpu().numpy(), stat=stat)
            rows["other_class"] = other.cpu().numpy().astype(np.int64)
            frames.append(rows)
        return pd.concat(frames, ignore_index=True)
