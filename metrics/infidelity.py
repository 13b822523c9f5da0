"""Infidelity (Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019).

**Definition** (the paper's eq. 2): for a map Φ of the model's target output f at x,

    INFD(Φ, f, x) = E_I[(Iᵀ Φ − (f(x) − f(x − I)))²],

estimated by Monte Carlo over ``num_perturbations`` draws of the perturbation I. Lower is better:
a map whose dot product with any perturbation predicts the output's change is faithful.

**Perturbation** (the paper's Gaussian one): I ~ N(0, σ²) per **pixel**, the same value in every
colour channel, σ = ``noise_std`` (0.2 in [0, 1] image units: the std of the authors' code,
``infid_sen_utils.set_zero_infid``). The maps are channel-summed (H, W), so Iᵀ Φ = Σ_hw I_hw Φ_hw
is the first-order change of f exactly when I is shared by the channels (for the gradient, Iᵀ Φ
= Iᵀ ∇f). x − I is not clipped to [0, 1] (the authors' code clips because it perturbs towards a
noisy black baseline; the paper's eq. 2 does not). The noise of an image is a pure function of
(seed, its sample id, the draw) (:func:`~attrib_bench.core.hashing.hashed_normal`): the same for
every batch composition, chunk size and device. f is the target's **logit**.

**Two stats per image.** ``infidelity``: with the authors' optimal scaling of the map (their
code's ``beta = mean(Δf·IᵀΦ) / mean((IᵀΦ)²)``, captum's ``normalize=True``), which makes the value
independent of the map's scale, as the paper's experiments report it; ``infidelity-raw``: eq. 2
as written (captum's ``normalize=False``). A map whose Iᵀ Φ are all 0 gets β = 0, as in captum.

**Cost.** One model input per image for f(x) and one per perturbation, the definition's minimum,
under ``torch.inference_mode``: f(x) for the whole batch in forwards of up to ``max_batch``, then
the perturbations of groups of max(1, ``max_batch`` // P) images, so that memory is bounded by
about max(``max_batch``, P) images whatever the chunk and the image size.

Quantus 0.6's ``Infidelity`` defaults to square removal instead (4×4 patches set to black,
cumulatively) and does not rescale; given this module's noise it agrees with
``infidelity-raw``, and captum's ``infidelity`` with both stats (``tests/test_infidelity.py``).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import nn

from attrib_bench.core.evaluation import eval_mode
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

#: The default count of images (the first in dataset order).
NUM_IMAGES = 1024
STATS: tuple[str, ...] = ("infidelity", "infidelity-raw")
NoiseStd = Annotated[float, Positive("noise std in [0, 1] image units")]


def target_logits(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                  max_batch: int) -> torch.Tensor:
    """(N,) float64 target logits of ``model`` on ``inputs`` (N, ...), ``max_batch`` per forward."""
    out = []
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(inputs), max_batch):
            logits = model(inputs[start:start + max_batch])
            out.append(logits.double().gather(1, target[start:start + max_batch, None])[:, 0])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def infidelity_scores(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                      maps: torch.Tensor, noise: torch.Tensor, max_batch: int,
                      clean: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(optimally scaled, raw) infidelity, each (B,) float64, of ``maps`` (B, H, W) for
    perturbations ``noise`` (B, P, H, W), shared by the channels of ``inputs`` (B, C, H, W).
    ``clean``: f(x), the (B,) target logits, if known (else computed here)."""
    b, p = noise.shape[:2]
    perturbed = (inputs[:, None] - noise[:, :, None].to(inputs.dtype)).flatten(0, 1)
    if clean is None:
        clean = target_logits(model, inputs, target, max_batch)
    logits = target_logits(model, perturbed, target.repeat_interleave(p), max_batch)
    delta = clean[:, None] - logits.view(b, p)  # f(x) − f(x − I)
    dot = (noise.double() * maps.double()[:, None]).sum(dim=(-2, -1))  # Iᵀ Φ, (B, P)
    raw = ((dot - delta) ** 2).mean(dim=1)
    num, den = (delta * dot).mean(dim=1), (dot * dot).mean(dim=1)
    beta = torch.where(den != 0, num / torch.where(den != 0, den, 1.0), 0.0)
    scaled = ((beta[:, None] * dot - delta) ** 2).mean(dim=1)
    return scaled, raw


@register_metric("infidelity", family="faithfulness",
                 reference="Yeh et al. 2019 (NeurIPS), eq. 2: infidelity")
class Infidelity(Metric):
    """Infidelity of a map under Gaussian pixel perturbations (Yeh et al. 2019, eq. 2).

    Hyper-parameters: ``num_images`` (1024, the first in dataset order, ground-truth targets);
    ``num_perturbations`` draws of I per image (100; the authors' code draws 10 000 per MNIST
    image, captum and Quantus default to 10); ``noise_std`` σ of I (0.2, the authors'); ``seed``
    (None: the run's); ``max_batch`` perturbed images per forward (256). See the module docstring.

    Rows: one per (image, stat), ``key`` "", stats "infidelity" (optimally scaled map, the
    authors') and "infidelity-raw" (eq. 2 as written); lower is better for both.
    """

    name: ClassVar[str] = "infidelity"
    description: ClassVar[str] = "Yeh et al. infidelity: map·noise vs the output's change"
    directions: ClassVar[dict[str, str]] = {stat: "lower" for stat in STATS}
    sample_count: ClassVar[str | None] = "num_images"
    rows_from_maps: ClassVar[bool] = True
    report_section: ClassVar[ReportSection | None] = ReportSection(
        "Infidelity", "The squared error between a map's dot product with Gaussian pixel noise "
        "and the change of the target's logit under that noise (Yeh et al. 2019, eq. 2; "
        "'infidelity' after the authors' optimal scaling of the map); lower is better.")

    def __init__(self, *, num_images: PositiveInt = NUM_IMAGES,
                 num_perturbations: PositiveInt = 100, noise_std: NoiseStd = 0.2,
                 seed: int | None = None, max_batch: PositiveInt = 256) -> None:
        values = typed_hparams("metric 'infidelity'", Infidelity, {
            "num_images": num_images, "num_perturbations": num_perturbations,
            "noise_std": noise_std, "seed": seed, "max_batch": max_batch})
        super().__init__(**values)

    def select(self, model: nn.Module, dataset: BaseImageSet, n_samples: int | None,
               ctx: SelectContext) -> SampleSet:
        """The first ``n_samples`` (None: ``num_images``) images in order, ground-truth targets."""
        wanted = self.hparams["num_images"] if n_samples is None else int(n_samples)
        return first_image_samples(f"metric {self.name!r}", dataset, wanted, NUM_IMAGES)

    def noise(self, samples: np.ndarray, height: int, width: int, run_seed: int,
              device: torch.device) -> torch.Tensor:
        """The perturbations I (B, P, H, W) float64 of the images ``samples`` (B,) ids."""
        seed = run_seed if self.hparams["seed"] is None else self.hparams["seed"]
        ids = torch.as_tensor(np.asarray(samples, dtype=np.int64), device=device)
        shape = (self.hparams["num_perturbations"], height, width)
        return self.hparams["noise_std"] * hashed_normal(int(seed), ids, shape, torch.float64)

    def evaluate(self, ctx: EvalContext, inputs: torch.Tensor, target: torch.Tensor,
                 samples: np.ndarray) -> pd.DataFrame:
        """Rows for one batch: per image, "infidelity" and "infidelity-raw"."""
        if len(inputs) == 0:
            return make_rows(np.zeros(0, dtype=np.int64), "", np.zeros(0))
        inputs, target = inputs.to(ctx.device), target.to(ctx.device).long()
        maps = check_maps(self.name, ctx.explain(inputs, target), inputs).to(inputs.device)
        # groups of images whose perturbations fill about one forward: memory stays
        # O(max(max_batch, P)·C·H·W) whatever the chunk (ImageNet-sized images included)
        group = max(1, self.hparams["max_batch"] // self.hparams["num_perturbations"])
        clean = target_logits(ctx.model, inputs.detach(), target, self.hparams["max_batch"])
        parts = []
        for start in range(0, len(inputs), group):
            part = slice(start, start + group)
            noise = self.noise(np.asarray(samples)[part], inputs.shape[2], inputs.shape[3],
                               ctx.seed, inputs.device)
            parts.append(infidelity_scores(ctx.model, inputs[part].detach(), target[part],
                                           maps[part].detach(), noise,
                                           self.hparams["max_batch"], clean[part]))
        scaled, raw = (torch.cat(column) for column in zip(*parts, strict=True))
        values = torch.stack([scaled, raw], dim=1).cpu().numpy()  # (B, 2)
        return make_rows(np.asarray(samples)[:, None], "", values,
                         stat=np.array(STATS)[None, :])
