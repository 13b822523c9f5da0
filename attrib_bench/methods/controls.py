"""Control maps: "methods" that explain nothing about the model.

A metric that ranks one of them above a real method measures something other than the model's
reasons (the first step towards evaluating the metrics themselves; cf. Adebayo et al., NeurIPS
2018, who use edge detectors as model-independent baselines). None of them runs the model:

- ``random``: i.i.d. standard normal values, a pure function of (``seed``, the image's content,
  the pixel), so the same image gets the same map in every batch and chunk
  (:func:`attrib_bench.core.hashing.hashed_normal`).
- ``centre``: a Gaussian centred on the image, σ = ``sigma`` × the shorter side (the centre bias
  of photographs), the same for every image.
- ``edges``: the Sobel gradient magnitude of the image's channel mean, as
  ``skimage.filters.sobel`` computes it (kernels [1, 2, 1]/4 ⊗ [1, 0, −1], edges repeated,
  magnitude √((g_y² + g_x²) / 2)).

Each is registered with ``control=True`` (and family "control"), which ``compare`` and the report
read. On n×n grid localisation every control scores 1/n² on average over a grid's cells: a map
that does not depend on the target spreads the same positive mass over the cells whichever cell
is the target.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.hashing import M32, hash32, hashed_normal
from attrib_bench.core.hparams import Positive, check_settings
from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod


def image_ids(inputs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] → (B,) int64 ids in [0, 2³²): a hash of each image's 8-bit
    content (values rounded to 1/255), order-sensitive, the same on every device."""
    q = (inputs.detach().to(torch.float64) * 255).round().to(torch.int64).reshape(len(inputs), -1)
    pos = torch.arange(q.shape[1], dtype=torch.int64, device=q.device)
    return hash32(hash32((q + 256 * pos) & M32).sum(dim=1) & M32)


class _Control(AttributionMethod):
    """A map from the image alone; the model is never run (so no gradients are needed)."""

    needs_grad = False

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)


@register_method("random", family="control", label="Random (control)", colour="#bdbdbd",
                 control=True)
class RandomControl(_Control):
    """Seeded i.i.d. standard normal values per pixel (a control: explains nothing)."""

    name = "random"

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        noise = hashed_normal(self.seed, image_ids(inputs), inputs.shape[-2:], inputs.dtype)
        return noise.to(inputs.device)[:, None]


#: The centre control's Gaussian std: a positive fraction of the image's shorter side.
Width = Annotated[float, Positive("a fraction of the image's shorter side")]


@register_method("centre", family="control", label="Centre (control)", colour="#969696",
                 control=True)
class CentreControl(_Control):
    """A Gaussian centred on the image, the same for every image (a control)."""

    name = "centre"

    def __init__(self, model: nn.Module, *, sigma: Width = 0.25,
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        sigma = check_settings(f"method {self.name!r}", CentreControl, {"sigma": sigma})["sigma"]
        super().__init__(model, max_batch=max_batch, seed=seed)
        self.sigma = sigma

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        h, w = inputs.shape[-2:]
        s = self.sigma * min(h, w)
        y = torch.arange(h, dtype=inputs.dtype, device=inputs.device) - (h - 1) / 2
        x = torch.arange(w, dtype=inputs.dtype, device=inputs.device) - (w - 1) / 2
        bump = torch.exp(-(y[:, None] ** 2 + x[None] ** 2) / (2 * s * s))
        return bump.expand(len(inputs), 1, h, w).clone()


@register_method("edges", family="control", label="Edges (control)", colour="#636363",
                 control=True)
class EdgesControl(_Control):
    """The Sobel gradient magnitude of the image (a control: an edge detector, no model)."""

    name = "edges"

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gray = inputs.mean(dim=1, keepdim=True)
        padded = F.pad(gray, (1, 1, 1, 1), mode="replicate")
        smooth = torch.tensor([1.0, 2.0, 1.0], dtype=inputs.dtype, device=inputs.device) / 4
        diff = torch.tensor([1.0, 0.0, -1.0], dtype=inputs.dtype, device=inputs.device)
        ky = (diff[:, None] * smooth[None])[None, None]  # derivative along rows (y)
        kx = (smooth[:, None] * diff[None])[None, None]  # along columns (x)
        gy, gx = F.conv2d(padded, ky), F.conv2d(padded, kx)
        return torch.sqrt((gy * gy + gx * gx) / 2)
