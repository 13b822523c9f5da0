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
from typing import Any

import torch
from torch import nn

from attrib_bench.errors import MethodError
from attrib_bench.methods.base import (
    DEFAULT_MAX_BATCH,
    REFERENCE_SIDE,
    AttributionMethod,
    shared_images,
)
from attrib_bench.registry import METHODS, register_method


def window_cover(length: int, size: int, stride: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """(positions, length) 0/1 matrix: row i covers [i·stride, i·stride + size) ∩ [0, length)."""
    count = math.ceil((length - size) / stride) + 1
    starts = torch.arange(count, device=device).mul_(stride).unsqueeze(1)
    pixels = torch.arange(length, device=device).unsqueeze(0)
    return ((pixels >= starts) & (pixels < starts + size)).to(dtype)


@register_method("occlusion", family="perturbation", label="Occlusion", colour="#8c564b")
class Occlusion(AttributionMethod):
    """Sliding black K×K patch, stride s: mean logit drop over the patches covering each pixel.

    ``patch_size`` K and ``stride`` s in pixels (s ≤ K, so that every pixel is covered);
    ``baseline``: the RGB value of the patch (0: black, as in the paper). Costs
    U · (1 + positions) forward images, U the number of distinct images in the batch (a
    repeated image is occluded once for all its targets), positions = (ceil((H − K)/s) + 1)²,
    batched by ``max_batch``. The defaults are ``occ5``'s, for 32 px images; on larger images
    the runner scales patch and stride with the image side (:meth:`image_size_defaults`).
    """

    name = "occlusion"
    needs_grad = False

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

    def __init__(self, model: nn.Module, *, patch_size: int = 4, stride: int = 2,
                 baseline: float = 0.0, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        for key, value in (("patch_size", patch_size), ("stride", stride)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MethodError(f"method {self.name!r}: {key} must be a positive int, "
                                  f"got {value!r}")
        if stride > patch_size:
            raise MethodError(f"method {self.name!r}: stride {stride} > patch_size "
                              f"{patch_size} would leave pixels uncovered: use stride <= "
                              "patch_size")
        self.patch_size, self.stride, self.baseline = patch_size, stride, float(baseline)

    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = inputs.shape
        k = self.patch_size
        if k > min(h, w):
            raise MethodError(f"method {self.name!r}: patch_size {k} exceeds the image size "
                              f"{h}×{w}")
        rows = window_cover(h, k, self.stride, inputs.device, inputs.dtype)  # (nh, H)
        cols = window_cover(w, k, self.stride, inputs.device, inputs.dtype)  # (nw, W)
        nh, nw = len(rows), len(cols)
        positions = nh * nw
        # Identical images (a localisation grid, once per cell class) are occluded once: one
        # forward scores every class asked for that image.
        shared = shared_images(inputs, target)
        images, classes = shared.images, shared.classes
        u = len(images)
        reference = torch.cat([
            self.model(images[i:i + self.max_batch]).gather(1, classes[i:i + self.max_batch])
            for i in range(0, u, self.max_batch)])  # (U, R)
        occluded_scores = torch.empty(u * positions, classes.shape[1], device=inputs.device,
                                      dtype=inputs.dtype)
        for start in range(0, u * positions, self.max_batch):
            pair = torch.arange(start, min(start + self.max_batch, u * positions),
                                device=inputs.device)
            image, where = pair // positions, pair % positions
            patch = rows[where // nw, :, None] * cols[where % nw, None, :]  # (m, H, W) in {0, 1}
            patch = patch.unsqueeze(1)
            occluded = images[image] * (1.0 - patch) + self.baseline * patch
            occluded_scores[pair] = self.model(occluded).gather(1, classes[image])
        occluded_scores = occluded_scores.view(u, positions, -1)
        drops = (reference[shared.image_of, shared.slot_of, None]
                 - occluded_scores[shared.image_of, :, shared.slot_of])  # (B, positions)
        drops = drops.view(b, nh, nw)
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
