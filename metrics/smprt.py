"""The smooth model-parameter randomisation test, sMPRT (Hedström et al., "Sanity Checks
Revisited: An Exploration to Repair the Model Parameter Randomisation Test", TMLR 2024).

MPRT (:mod:`attrib_bench.metrics.randomisation`) compares a method's map on the trained model with
its map on progressively randomised copies. The authors show that gradient noise in deep models
makes maps dissimilar even when a method ignores the randomisation, and repair it by denoising
every map as SmoothGrad does: the map of an image x is the mean of the method's maps of
``nr_samples`` noisy copies x + ε_n, ε_n ~ N(0, σ²), σ = ``noise_magnitude`` · (max x − min x),
the last copy noise-free (ε = 0, so that one sample is the plain map), for the trained model and
for each randomised one alike. The copies are clamped to [0, 1], the range attrib-bench's images
and methods use (Quantus adds the noise unclamped, to whatever its inputs are). Layers are
randomised cumulatively **bottom-up** (input layer first), the authors' default
(``order="top_down"``: output first, Adebayo et al.'s).
Defaults are theirs (Quantus 0.6 ``SmoothMPRT``): 50 samples, σ = 0.1 of the image's range.

**Noise** is counter-based (:func:`attrib_bench.core.hashing.hashed_normal`, a pure function of
(seed, sample id, position)): the same for any batching, and the same copies explain the trained
and every randomised model (common random numbers), so the similarities measure the
randomisation, not a change of noise.

**Layers and randomisation** are the randomisation test's (a layer's own ``reset_parameters()``,
seeded by (seed, layer name), on a copy; the trained model is untouched). **Similarities** per
(image, layer): the randomisation test's three; ``spearman_abs`` is the authors' (Quantus takes the
absolute value of the maps and ranks them; its scaling by the batch's second moment does not change
a rank). Lower is better. Rows: ``key`` the layer, ``variant`` the order, and ``layer_index``
(its place in the top-first list); the summary is the mean over the layers, as MPRT's.

Cost per image: (1 + layers) × ``nr_samples`` maps, the definition's; copies are explained
``max_batch`` at a time.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.hashing import hashed_normal
from attrib_bench.core.hparams import Between, PositiveInt
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
from attrib_bench.metrics.randomisation import (
    STATS,
    randomisation_layers,
    randomised_models,
    similarities,
)

Order = Literal["bottom_up", "top_down"]
#: The default count of images (the first in dataset order), as the randomisation test's.
NUM_IMAGES = 100
#: The authors' defaults (Quantus 0.6 SmoothMPRT).
NR_SAMPLES, NOISE_MAGNITUDE = 50, 0.1


def smoothing_noise(seed: int, samples: torch.Tensor, inputs: torch.Tensor, nr_samples: int,
                    magnitude: float) -> torch.Tensor:
    """The noise of each image's copies, (B, nr_samples, 3, H, W): N(0, σ²) with σ = magnitude ·
    (max − min) of the image, a function of (seed, sample id); the last copy's is 0."""
    b = len(inputs)
    z = hashed_normal(seed, samples.to(inputs.device), (nr_samples - 1, *inputs.shape[1:]),
                      inputs.dtype)
    span = inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1)
    eps = z * (magnitude * span).view(b, 1, 1, 1, 1)
    return torch.cat([eps, eps.new_zeros((b, 1, *inputs.shape[1:]))], dim=1)


def smoothed_maps(method: Any, inputs: torch.Tensor, target: torch.Tensor, noise: torch.Tensor,
                  max_batch: int) -> torch.Tensor:
    """The mean of ``method``'s maps of ``clamp(inputs + noise, 0, 1)`` over the copies: (B, H, W).

    ``noise`` (B, n, 3, H, W); copies are explained ``max_batch`` at a time (flattened image-major).
    """
    b, n = noise.shape[:2]
    copies = (inputs[:, None] + noise).clamp(0.0, 1.0).flatten(0, 1)
    targets = target.repeat_interleave(n)
    maps = [method.attribute(copies[i:i + max_batch], targets[i:i + max_batch]).detach()
            for i in range(0, len(copies), max_batch)]
    out = torch.cat(maps)
    return out.reshape(b, n, *out.shape[1:]).mean(1)


@register_metric("smprt", family="sanity-check", ranks=False,
                 reference="Hedström et al. 2024 (TMLR), smooth MPRT")
class SmoothMPRT(Metric):
    """sMPRT: MPRT on maps averaged over noisy copies of the input, layers randomised bottom-up.

    Hyper-parameters: ``num_images`` (default 100); ``nr_samples`` (50) and ``noise_magnitude``
    (0.1 of the image's range), the authors'; ``order`` "bottom_up" (theirs) or "top_down";
    ``layers`` None (all) or k (the first k in ``order``); ``seed`` of the noise and the layers'
    draws (None: the run's seed); ``max_batch`` noisy copies per attribution call (256).
    """

    name: ClassVar[str] = "smprt"
    description: ClassVar[str] = "Hedström et al. (2024) smooth MPRT: denoised maps, bottom-up"
    directions: ClassVar[dict[str, str]] = {stat: "lower" for stat in STATS}
    sample_count: ClassVar[str | None] = "num_images"
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Smooth MPRT (a check, not a ranking)", "The similarity of each map, averaged over noisy "
        "copies of the image, to the trained model's as layers are randomised bottom-up "
        "(Hedström et al. 2024): a method that explains the model drops. Its summary mean is "
        "over the randomised layers as well as the samples.", short="sMPRT")

    def __init__(self, *, num_images: PositiveInt = NUM_IMAGES,
                 nr_samples: PositiveInt = NR_SAMPLES,
                 noise_magnitude: Annotated[float, Between(0, 10)] = NOISE_MAGNITUDE,
                 order: Order = "bottom_up", layers: PositiveInt | None = None,
                 seed: int | None = None, max_batch: PositiveInt = 256) -> None:
        super().__init__(**typed_hparams("metric 'smprt'", SmoothMPRT, {
            "num_images": num_images, "nr_samples": nr_samples,
            "noise_magnitude": noise_magnitude, "order": order, "layers": layers,
            "seed": seed, "max_batch": max_batch}))

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)

    def ordered_layers(self, model: nn.Module, example: torch.Tensor) -> list[tuple[int, str]]:
        """(index in the top-first list, name) of the layers, in randomisation order."""
        named = list(enumerate(randomisation_layers(model, example)))
        if self.hparams["order"] == "bottom_up":
            named = named[::-1]
        k = self.hparams["layers"]
        return named if k is None else named[:k]

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: 3 stats × layers per image, plus ``layer_index``."""
        order = self.hparams["order"]
        if len(inputs) == 0:
            rows = make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0), variant=order)
            return rows.assign(layer_index=np.zeros(0, dtype=np.int64))
        inputs, target = inputs.to(ctx.device), target.to(ctx.device)
        seed = int(ctx.seed if self.hparams["seed"] is None else self.hparams["seed"])
        noise = smoothing_noise(seed, torch.as_tensor(samples), inputs,
                                int(self.hparams["nr_samples"]),
                                float(self.hparams["noise_magnitude"]))
        max_batch = int(self.hparams["max_batch"])
        original = smoothed_maps(ctx.make_method(ctx.model), inputs, target, noise, max_batch)
        layers = self.ordered_layers(ctx.model, inputs[:1])
        index_of = {name: i for i, name in layers}
        frames = []
        for name, randomised in randomised_models(ctx.model, [n for _, n in layers],
                                                  "cascading", seed):
            maps = smoothed_maps(ctx.make_method(randomised), inputs, target, noise, max_batch)
            for stat, values in similarities(original, maps).items():
                rows = make_rows(samples, name, values.cpu().numpy(), variant=order, stat=stat)
                frames.append(rows.assign(layer_index=np.int64(index_of[name])))
        return pd.concat(frames, ignore_index=True)
