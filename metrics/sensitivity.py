"""Max-sensitivity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS
2019, eq. 5): how much a method's map can change when the input moves a little.

**Definition.** SENS_MAX(Φ, f, x, r) = max over y with ‖y − x‖∞ ≤ r of ‖Φ(f, y) − Φ(f, x)‖,
estimated by the max over ``num_samples`` points y drawn uniformly from the L∞ ball (the
authors' code, ``infid_sen_utils.sample_eps_Inf`` / ``get_exp_sens``: u ~ U[−r, r] per pixel and
channel), and divided by ‖Φ(f, x)‖ as their code does (stat ``max-sensitivity``; captum's
``sensitivity_max`` normalises the same way). ``max-sensitivity-raw`` is eq. 5 without the
division. Norms are Frobenius norms of the (H, W) maps. Lower is better for both.

**The method runs again** on every perturbed input, for the same target (the image's ground
truth): the maps of x come from the run's (cached) explainer, those of the y from
``ctx.make_method(ctx.model)``, the same method with the same settings, uncached (each y is new).
The points of groups of max(1, ``max_batch`` // S) images go to the method together (in calls
of at most ``max_batch``; the method batches them further by its own ``max_batch``), so memory
is bounded by about max(``max_batch``, S) images whatever the chunk.

**Deviations, stated.** y is clipped to [0, 1] (a method refuses inputs outside the image range;
a clipped point is still in the ball); captum and Quantus do not clip, so the tests compare on
images whose ball stays inside [0, 1]. A map of norm 0 is divided by 1 (captum's rule), so a
method that always returns 0 scores 0. The noise is a pure function of (seed, sample id, draw):
the same for every batch composition and device. Quantus 0.6's ``MaxSensitivity`` draws its noise
the same way (uniform, ``lower_bound`` = 0.2) but one sample at a time.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.hashing import hashed_normal
from attrib_bench.core.hparams import Positive, PositiveInt
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

#: The default count of images (the first in dataset order); each costs ``num_samples`` maps.
NUM_IMAGES = 100
STATS: tuple[str, ...] = ("max-sensitivity", "max-sensitivity-raw")
Radius = Annotated[float, Positive("L-infinity radius in [0, 1] image units")]


def uniform_ball(seed: int, samples: torch.Tensor, shape: tuple[int, ...], radius: float,
                 dtype: torch.dtype) -> torch.Tensor:
    """U[−radius, radius] noise (n, *shape), a pure function of (seed, sample id, position):
    erf(z/√2) of the counter-based normal z of :func:`hashed_normal` is uniform on (−1, 1)."""
    z = hashed_normal(seed, samples, shape, torch.float64)
    return (radius * torch.erf(z / math.sqrt(2.0))).to(dtype)


def sensitivities(maps: torch.Tensor, perturbed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised, raw) max-sensitivity, each (B,) float64, of ``maps`` (B, H, W) against the
    maps of the perturbed inputs ``perturbed`` (B, S, H, W)."""
    base = maps.double()
    diff = (perturbed.double() - base[:, None]).flatten(2).norm(dim=2)  # (B, S)
    raw = diff.amax(dim=1)
    norm = base.flatten(1).norm(dim=1)
    return raw / torch.where(norm == 0, 1.0, norm), raw


@register_metric("max-sensitivity", family="robustness",
                 reference="Yeh et al. 2019 (NeurIPS), eq. 5: max-sensitivity")
class MaxSensitivity(Metric):
    """Max-sensitivity of a method's maps in an L∞ ball (Yeh et al. 2019, eq. 5).

    Hyper-parameters: ``num_images`` (100, the first in dataset order, ground-truth targets);
    ``num_samples`` points y per image (10, captum's default; the authors' code takes it from the
    caller); ``radius`` r of the L∞ ball (0.2 in [0, 1] image units: Quantus's default, the
    authors' code takes it from the caller); ``seed`` (None: the run's); ``max_batch`` perturbed
    inputs handed to the method at once (64). See the module docstring.

    Rows: one per (image, stat), ``key`` "", stats "max-sensitivity" (÷ ‖Φ(f, x)‖, the authors'
    and captum's) and "max-sensitivity-raw" (eq. 5); lower is better for both.
    """

    name: ClassVar[str] = "max-sensitivity"
    description: ClassVar[str] = "Yeh et al. max-sensitivity: map change in an L-inf ball"
    directions: ClassVar[dict[str, str]] = {stat: "lower" for stat in STATS}
    sample_count: ClassVar[str | None] = "num_images"
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Max-sensitivity", "The largest change of a method's map, relative to its norm, when "
        "the image moves within a small L∞ ball (Yeh et al. 2019, eq. 5, over uniform samples); "
        "lower is better.")

    def __init__(self, *, num_images: PositiveInt = NUM_IMAGES, num_samples: PositiveInt = 10,
                 radius: Radius = 0.2, seed: int | None = None,
                 max_batch: PositiveInt = 64) -> None:
        values = typed_hparams("metric 'max-sensitivity'", MaxSensitivity, {
            "num_images": num_images, "num_samples": num_samples, "radius": radius,
            "seed": seed, "max_batch": max_batch})
        super().__init__(**values)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)

    def perturbed(self, inputs: torch.Tensor, samples: np.ndarray, run_seed: int
                  ) -> torch.Tensor:
        """The points y (B, S, C, H, W): clip(x + u, 0, 1), u uniform in the L∞ ball."""
        seed = run_seed if self.hparams["seed"] is None else self.hparams["seed"]
        ids = torch.as_tensor(np.asarray(samples, dtype=np.int64), device=inputs.device)
        shape = (self.hparams["num_samples"], *inputs.shape[1:])
        noise = uniform_ball(int(seed), ids, shape, self.hparams["radius"], inputs.dtype)
        return (inputs[:, None] + noise).clamp(0.0, 1.0)

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: per image, "max-sensitivity" and "max-sensitivity-raw"."""
        if len(inputs) == 0:
            return make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
        inputs, target = inputs.to(ctx.device), target.to(ctx.device).long()
        maps = check_maps(self.name, ctx.explain(inputs, target), inputs).detach()
        method = ctx.make_method(ctx.model)
        s, step = self.hparams["num_samples"], self.hparams["max_batch"]
        group = max(1, step // s)  # images whose points fill about one call of the method
        parts = []
        for start in range(0, len(inputs), group):
            part = slice(start, start + group)
            ys = self.perturbed(inputs[part].detach(), np.asarray(samples)[part], ctx.seed)
            flat, targets = ys.flatten(0, 1), target[part].repeat_interleave(s)
            out = [method.attribute(flat[i:i + step], targets[i:i + step]).detach()
                   for i in range(0, len(flat), step)]
            others = check_maps(self.name, torch.cat(out), flat).to(maps.device)
            parts.append(sensitivities(maps[part].to(others.dtype),
                                       others.view(len(ys), s, *maps.shape[1:])))
        normalised, raw = (torch.cat(column) for column in zip(*parts, strict=True))
        values = torch.stack([normalised, raw], dim=1).cpu().numpy()  # (B, 2)
        return make_rows(np.asarray(samples)[:, None], "", values,
                         stat=np.array(STATS)[None, :])
