"""The efficient model-parameter randomisation test, eMPRT (Hedström et al., "Sanity Checks
Revisited: An Exploration to Repair the Model Parameter Randomisation Test", TMLR 2024).

MPRT (:mod:`attrib_bench.metrics.randomisation`) compares maps before and after randomising
layers with a similarity, which the authors show is confounded by the similarity measure and by
pre-processing. eMPRT asks instead whether the explanation becomes *more complex* once the model
is fully randomised: a map of a random model should look like noise, so its complexity, the
discrete entropy of the histogram of its values, should rise. Per image x with label t,

    eMPRT(x) = H(e(f̂, x, t)) / H(e(f, x, t)) − 1,

with f the trained model, f̂ the model with every layer randomised, e the method's map and
H(a) = −Σ_b p_b log p_b over ``n_bins`` equal-width bins between the map's min and max (the
authors' ``discrete_entropy`` in Quantus 0.6, ``np.histogram`` then ``scipy.stats.entropy``;
100 bins, their default). Higher is better (the map depends on the parameters).

The model's own change is reported beside it, so that a rise can be read against how much the
function changed: ``model_rise`` = H(softmax f̂(x)) / H(softmax f(x)) − 1, the relative rise in the
entropy of the predicted distribution (the authors' "model" scores). It is the same for every
method, so it is not ranked.

**The randomised model** is the randomisation test's fully randomised one (its cascading mode's
last step: every layer re-initialised with its own ``reset_parameters()``, seeded by (seed, layer
name), on a copy), so the two metrics randomise alike. Quantus randomises with
``torch.manual_seed(seed + 1)`` before each layer, which the tests sidestep with layers whose
initialiser does not use the global RNG. A map whose values are all equal has entropy 0: NaN.

**Samples:** the first ``num_images`` images in dataset order, for their ground-truth labels.
Cost per image: the trained model's map (shared through the run's cache), one map of the
randomised model, and one forward pass of each model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.hparams import PositiveInt
from attrib_bench.core.registry import register_metric
from attrib_bench.data import BaseImageSet
from attrib_bench.metrics.base import (
    EvalContext,
    Metric,
    ReportSection,
    SampleSet,
    SelectContext,
    first_image_samples,
    make_rows,
    typed_hparams,
)
from attrib_bench.metrics.randomisation import randomisation_layers, randomised_models

#: The default count of images (the first in dataset order), as the randomisation test's.
NUM_IMAGES = 100
#: Quantus 0.6 EfficientMPRT's default bin count (no binning rule).
N_BINS = 100
STATS: tuple[str, ...] = ("emprt", "model_rise")


def histogram_entropy(maps: torch.Tensor, n_bins: int = N_BINS) -> torch.Tensor:
    """Discrete entropy (nats) of each map's histogram: (B, ...) → (B,) float64.

    ``n_bins`` equal-width bins from the map's min to its max, binned as ``np.histogram`` does
    (its index, then its correction against the edges ``linspace(min, max, n_bins + 1)``; the
    last bin closed), then ``scipy.stats.entropy`` of the counts. A constant map (all in one
    bin) gives 0; a non-finite map NaN.
    """
    a = maps.detach().flatten(1).double()
    finite = torch.isfinite(a).all(1)
    a = torch.where(finite[:, None], a, torch.zeros_like(a))
    lo, hi = a.amin(1, keepdim=True), a.amax(1, keepdim=True)
    flat = hi == lo
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)  # numpy's range
    step = (hi - lo) / n_bins
    edges = torch.arange(n_bins + 1, device=a.device, dtype=a.dtype) * step + lo
    edges[:, -1] = hi[:, 0]
    index = ((a - lo) * (n_bins / (hi - lo))).long().clamp(0, n_bins - 1)
    index = index - (a < edges.gather(1, index)).long()
    index = index + ((a >= edges.gather(1, index + 1)) & (index != n_bins - 1)).long()
    counts = torch.zeros(a.shape[0], n_bins, dtype=a.dtype, device=a.device)
    counts.scatter_add_(1, index, torch.ones_like(a))
    p = counts / a.shape[1]
    h = -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(1)
    return torch.where(finite, h, torch.full_like(h, float("nan")))


def probability_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) per row: (B, K) → (B,) float64."""
    logp = torch.log_softmax(logits.detach().double(), dim=1)
    return -(logp.exp() * logp).sum(1)


def relative_rise(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """after / before − 1, NaN where ``before`` is 0."""
    ok = before != 0
    return torch.where(ok, after / torch.where(ok, before, torch.ones_like(before)) - 1.0,
                       torch.full_like(before, float("nan")))


def fully_randomised(model: nn.Module, layers: Sequence[str], seed: int) -> nn.Module:
    """A copy of ``model`` with every one of ``layers`` randomised: the randomisation test's
    last cascading step (:func:`attrib_bench.metrics.randomisation.randomised_models`)."""
    steps = randomised_models(model, layers, "cascading", seed)
    last = model
    for step in steps:
        last = step[1]
    return last


@register_metric("emprt", family="sanity-check",
                 reference="Hedström et al. 2024 (TMLR), efficient MPRT")
class EfficientMPRT(Metric):
    """eMPRT: the relative rise in a map's histogram entropy once every layer is randomised.

    Hyper-parameters: ``num_images`` (default 100, the first images in dataset order);
    ``n_bins`` (default 100, Quantus's); ``seed`` of the layers' draws (None: the run's seed).
    Rows: ``key`` "", ``stat`` ``emprt`` (higher is better) and ``model_rise`` (the model's
    output-entropy rise, the same for every method: not ranked), plus float columns
    ``complexity`` and ``complexity_random``: the two maps' entropies on the ``emprt`` rows, the
    two models' output entropies on the ``model_rise`` rows.
    """

    name: ClassVar[str] = "emprt"
    description: ClassVar[str] = "Hedström et al. (2024) efficient MPRT: rise of map entropy"
    directions: ClassVar[dict[str, str]] = {"emprt": "higher"}
    sample_count: ClassVar[str | None] = "num_images"
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Efficient MPRT", "The relative rise in the entropy of each map's histogram once every "
        "layer of the model is randomised (Hedström et al. 2024): a map that depends on the "
        "model becomes noise-like, so higher is better. The model's own output-entropy rise is "
        "shown beside it.", short="eMPRT")

    def __init__(self, *, num_images: PositiveInt = NUM_IMAGES, n_bins: PositiveInt = N_BINS,
                 seed: int | None = None) -> None:
        super().__init__(**typed_hparams("metric 'emprt'", EfficientMPRT, {
            "num_images": num_images, "n_bins": n_bins, "seed": seed}))

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: ``emprt`` and ``model_rise`` per image."""
        if len(inputs) == 0:
            rows = make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
            return rows.assign(complexity=np.zeros(0), complexity_random=np.zeros(0))
        inputs, target = inputs.to(ctx.device), target.to(ctx.device)
        seed = ctx.seed if self.hparams["seed"] is None else self.hparams["seed"]
        n_bins = int(self.hparams["n_bins"])
        layers = randomisation_layers(ctx.model, inputs[:1])
        randomised = fully_randomised(ctx.model, layers, int(seed))
        before = histogram_entropy(ctx.explain(inputs, target), n_bins)
        after = histogram_entropy(ctx.make_method(randomised).attribute(inputs, target), n_bins)
        with torch.no_grad():
            model_before = probability_entropy(ctx.model(inputs))
            model_after = probability_entropy(randomised(inputs))
        emprt = make_rows(samples, "", relative_rise(before, after).cpu().numpy(), stat="emprt")
        emprt = emprt.assign(complexity=before.cpu().numpy(),
                             complexity_random=after.cpu().numpy())
        model = make_rows(samples, "", relative_rise(model_before, model_after).cpu().numpy(),
                          stat="model_rise")
        model = model.assign(complexity=model_before.cpu().numpy(),
                             complexity_random=model_after.cpu().numpy())
        return pd.concat([emprt, model], ignore_index=True)
