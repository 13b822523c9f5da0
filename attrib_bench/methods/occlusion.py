"""``occlusion`` and the paper's presets ``occ5``, ``occ9``: sliding black patches, vectorised.

Every (image, patch position) pair is one occluded copy; all copies go through the model in
batched forwards of ``max_batch`` images (captum's ``Occlusion`` runs one patch position per
forward per batch). Per pixel: the mean, over the patches that cover it, of
logit_target(x) − logit_target(x with the patch black). Patch positions follow captum's: starts
0, s, 2s, … for ceil((H − K)/s) + 1 positions per axis, the last one cropped at the border if
(H − K) is not a multiple of s, so every pixel is covered. captum's ``Occlusion`` with
``sliding_window_shapes=(3, K, K)``, ``strides=(3, s, s)``, ``baselines=0`` gives the same value
on each of the three channels; a pixel here has that value once (not summed over channels), so
that K = 1 on a linear model gives exactly Σ_channels w ⊙ x.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from attrib_bench.core.errors import MethodError
from attrib_bench.core.hparams import PositiveInt, check_settings
from attrib_bench.core.registry import METHODS, register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, REFERENCE_SIDE
from attrib_bench.methods.perturbation import PerturbationMethod, PerturbedScores


def window_cover(length: int, size: int, stride: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """(positions, length) 0/1 matrix: row i covers [i·stride, i·stride + size) ∩ [0, length)."""
    count = math.ceil((length - size) / stride) + 1
    starts = torch.arange(count, device=device).mul_(stride).unsqueeze(1)
    pixels = torch.arange(length, device=device).unsqueeze(0)
    return ((pixels >= starts) & (pixels < starts + size)).to(dtype)


@dataclass(frozen=True)
class SlidingPatches:
    """The patch positions: ``rows`` (nh, H) × ``cols`` (nw, W) covers (:func:`window_cover`),
    position p = i·nw + j; an occluded pixel takes ``baseline``."""

    rows: torch.Tensor
    cols: torch.Tensor
    baseline: float

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def apply(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """``images`` (m, C, H, W) with patch ``which`` (m,) set to the baseline."""
        nw = len(self.cols)
        patch = self.rows[which // nw, :, None] * self.cols[which % nw, None, :]  # (m, H, W)
        patch = patch.unsqueeze(1)
        return images * (1.0 - patch) + self.baseline * patch


@register_method("occlusion", family="perturbation", label="Occlusion", colour="#8c564b")
class Occlusion(PerturbationMethod[SlidingPatches]):
    """Sliding black K×K patch, stride s: mean logit drop over the patches covering each pixel.

    ``patch_size`` K and ``stride`` s in pixels (s ≤ K, so that every pixel is covered);
    ``baseline``: the RGB value of the patch (0: black, as in the paper). Costs
    U · (1 + positions) forward images, U the number of distinct images in the batch (a
    repeated image is occluded once for all its targets), positions = (ceil((H − K)/s) + 1)²,
    batched by ``max_batch``. The defaults are ``occ5``'s, for 32 px images; on larger images
    the runner scales patch and stride with the image side (:meth:`image_size_defaults`).
    """

    name = "occlusion"
    uses_reference = True  # a pixel's value is a drop from the unoccluded logit

    @classmethod
    def image_size_defaults(cls, defaults: Mapping[str, Any], image_size: tuple[int, int]
                            ) -> dict[str, Any]:
        """Patch and stride scaled by side / 32 (side = min(H, W)), rounded, at least 1.

        The paper's patches are a fixed share of a 32 px CIFAR-10 image (occ5: 4 px = 1/8 of
        the side, occ9: 8 px = 1/4, stride 2 = 1/16), so the same share of a larger image:
        occ5 8/4 and occ9 16/4 at 64 px, occ5 28/14 and occ9 56/14 at 224 px (patch/stride).
        Images smaller than 32 px keep the 32 px values.
        """
        scale = max(min(image_size) / REFERENCE_SIDE, 1.0)
        return {key: max(1, round(defaults[key] * scale)) for key in ("patch_size", "stride")}

    def __init__(self, model: nn.Module, *, patch_size: PositiveInt = 4, stride: PositiveInt = 2,
                 baseline: float = 0.0, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        patch_size, stride = check_settings(f"method {self.name!r}", Occlusion, {
            "patch_size": patch_size, "stride": stride}).values()
        if stride > patch_size:
            raise MethodError(f"method {self.name!r}: stride {stride} > patch_size "
                              f"{patch_size} would leave pixels uncovered: use stride <= "
                              "patch_size")
        self.patch_size, self.stride, self.baseline = patch_size, stride, float(baseline)

    def perturbations(self, size: tuple[int, int], device: torch.device,
                      dtype: torch.dtype) -> SlidingPatches:
        h, w = size
        k = self.patch_size
        if k > min(h, w):
            raise MethodError(f"method {self.name!r}: patch_size {k} exceeds the image size "
                              f"{h}×{w}")
        return SlidingPatches(window_cover(h, k, self.stride, device, dtype),
                              window_cover(w, k, self.stride, device, dtype), self.baseline)

    def maps(self, scores: PerturbedScores, perturbations: SlidingPatches) -> torch.Tensor:
        """Per pixel: the mean logit drop over the patches that cover it."""
        rows, cols = perturbations.rows, perturbations.cols
        drops = scores.drops().view(-1, len(rows), len(cols))  # (B, nh, nw)
        total = torch.einsum("bij,iy,jx->byx", drops, rows, cols)
        count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        return total / count


# The presets of the paper. The authors' code zeroes an effective (K−1)×(K−1) patch for Occ-K.
METHODS.add(
    "occ5", functools.partial(Occlusion, patch_size=4, stride=2),
    description="Occlusion-5 as in the paper: black 4×4 patches (the authors' code's effective "
                "size for K=5), stride 2",
    family="perturbation", label="Occ5", colour="#ff7f0e")
METHODS.add(
    "occ9", functools.partial(Occlusion, patch_size=8, stride=2),
    description="Occlusion-9 as in the paper: black 8×8 patches (the authors' code's effective "
                "size for K=9), stride 2",
    family="perturbation", label="Occ9", colour="#bcbd22")
