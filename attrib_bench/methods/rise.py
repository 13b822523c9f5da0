"""``rise``: Randomized Input Sampling for Explanation (Petsiuk et al., BMVC 2018).

N random masks: a binary s×s grid with keep probability p1, upsampled bilinearly to
(s+1)·⌈H/s⌉ × (s+1)·⌈W/s⌉ and cropped to H×W at a random shift of less than one cell. The map is
Σ_n score_target(x ⊙ M_n) · M_n / (N · p1). The upsampling is the authors'
``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)`` (pixel centres
aligned, mirrored at the border), computed as two small interpolation matrices. The masks depend
only on (N, s, p1, H, W, seed) and are drawn on the CPU from ``seed``, so they are the same on
every device; they are built once and kept in a small cache.

Image size: the s×s grid is relative to the input, so the defaults (s = 6, p1 = 0.1, 6000
masks, the CoDA-Nets authors' CIFAR-10 setting) need no rescaling: a mask cell is 1/6 of the
input's side at 32, 64 or 224 px, and on an n×n localisation grid 1/6 of the grid. They are kept
at every size (no :meth:`~attrib_bench.methods.base.AttributionMethod.image_size_defaults`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from attrib_bench.core.errors import MethodError
from attrib_bench.core.hparams import Between, PositiveInt, check_settings
from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH
from attrib_bench.methods.perturbation import (
    Chunk,
    PerturbationMethod,
    PerturbedScores,
    block_chunks,
    perturbations_per_forward,
)
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Score

_MASK_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_MASK_CACHE_SIZE = 2  # mask sets kept (6000 masks of 96×96 in float32 take 221 MB)


def rise_masks(n_masks: int, grid: int, p1: float, size: tuple[int, int], seed: int,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
               ) -> torch.Tensor:
    """RISE masks (n_masks, H, W) in [0, 1], drawn from ``seed`` (cached, do not modify)."""
    h, w = size
    key = (n_masks, grid, float(p1), h, w, int(seed), torch.device(device), dtype)
    if key in _MASK_CACHE:
        _MASK_CACHE.move_to_end(key)
        return _MASK_CACHE[key]
    with torch.inference_mode(False), torch.no_grad():  # normal tensors even when cached
        masks = _draw_masks(n_masks, grid, p1, h, w, int(seed), dtype).to(device)
    _MASK_CACHE[key] = masks
    while len(_MASK_CACHE) > _MASK_CACHE_SIZE:
        _MASK_CACHE.popitem(last=False)
    return masks


def linear_resize_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """(size_out, size_in) matrix of 1-D linear interpolation, skimage ``resize`` conventions.

    Pixel centres are aligned (source = (i + 0.5)·in/out − 0.5) and a source coordinate outside
    [0, in − 1] is mirrored about the edge sample (skimage ``mode="reflect"``, scipy "mirror"),
    as in ``skimage.transform.resize(order=1, mode="reflect", anti_aliasing=False)``, which the
    RISE authors use. (torch's bilinear ``interpolate`` repeats the edge instead.)
    """
    source = (torch.arange(size_out, dtype=torch.float64) + 0.5) * (size_in / size_out) - 0.5
    if size_in > 1:
        period = 2 * (size_in - 1)
        source = torch.remainder(source, period)
        source = torch.where(source > size_in - 1, period - source, source)
    else:
        source = torch.zeros_like(source)
    low = source.floor().long().clamp(0, max(size_in - 2, 0))
    frac = source - low
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    matrix[rows, low] += 1.0 - frac
    matrix[rows, (low + 1).clamp(max=size_in - 1)] += frac
    return matrix


def _draw_masks(n_masks: int, grid: int, p1: float, h: int, w: int, seed: int,
                dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    cell_h, cell_w = math.ceil(h / grid), math.ceil(w / grid)
    cells = (torch.rand(n_masks, 1, grid, grid, generator=generator) < p1).double()
    shift_y = torch.randint(0, cell_h, (n_masks, 1), generator=generator)
    shift_x = torch.randint(0, cell_w, (n_masks, 1), generator=generator)
    # Upsampling then cropping = two interpolation matrices restricted to each mask's crop.
    rows = linear_resize_matrix(grid, (grid + 1) * cell_h)[shift_y + torch.arange(h)]  # (N, H, s)
    cols = linear_resize_matrix(grid, (grid + 1) * cell_w)[shift_x + torch.arange(w)]  # (N, W, s)
    masks = torch.empty(n_masks, h, w, dtype=dtype)
    for i in range(0, n_masks, 500):  # bounds the float64 intermediate
        part = slice(i, i + 500)
        masks[part] = torch.einsum("nys,nst,nxt->nyx", rows[part], cells[part, 0], cols[part])
    return masks


@dataclass(frozen=True)
class MaskSet:
    """RISE's masks (N, H, W) in [0, 1]: copy n is the image times mask n (black elsewhere)."""

    masks: torch.Tensor

    @property
    def count(self) -> int:
        return len(self.masks)

    def apply(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """``images`` (m, C, H, W) times the masks ``which`` (m,)."""
        return images * self.masks[which][:, None]


@register_method("rise", family="perturbation", stochastic=True, label="RISE", colour="#e377c2")
class RISE(PerturbationMethod[MaskSet]):
    """RISE: mean of random smooth masks weighted by the target's score (6000 masks, s=6, p=0.1).

    ``n_masks`` N, ``grid`` s, ``p1`` keep probability; ``score``: how the target is scored,
    "sigmoid" or "softmax" probability or the raw "logit"; ``None`` (default): the model's own
    probability (:func:`attrib_bench.models.protocols.probability`: sigmoid for the BCE-trained
    CoDA-Nets, softmax for a model that declares nothing), kept resolved in ``self.score``.
    Masked pixels are black in RGB. Costs U · N forward images, U the number of distinct
    images in the batch (a repeated image is masked once for all its targets), in forwards of
    ``max_batch`` images; no more than ``max_batch`` masked images exist at a time.
    """

    name = "rise"

    def __init__(self, model: nn.Module, *, n_masks: PositiveInt = 6000, grid: PositiveInt = 6,
                 p1: Annotated[float, Between(0, 1, open_lo=True)] = 0.1,
                 score: Score | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        self.n_masks, self.grid, self.p1 = check_settings(f"method {self.name!r}", RISE, {
            "n_masks": n_masks, "grid": grid, "p1": p1}).values()
        self.score = protocols.resolve_score(score, model, f"method {self.name!r}", MethodError)

    def masks(self, size: tuple[int, int], device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """This method's masks (N, H, W) for images of ``size`` (H, W)."""
        return rise_masks(self.n_masks, self.grid, self.p1, size, self.seed, device, dtype)

    def perturbations(self, size: tuple[int, int], device: torch.device,
                      dtype: torch.dtype) -> MaskSet:
        h, w = size
        if self.grid > min(h, w):  # cells smaller than a pixel (and a huge mask grid)
            raise MethodError(f"method 'rise': grid {self.grid} exceeds the image size {h}×{w}: "
                              "use a grid of at most the image's shorter side (default 6)")
        return MaskSet(self.masks((h, w), device, dtype))

    def forward_chunks(self, images: int, count: int, device: torch.device) -> Iterator[Chunk]:
        """A block of images × the same masks per forward (RISE's order since its first
        version: a model's output for an image can change in the last bit with the batch it is
        in, so another order would change the maps' last digits)."""
        return block_chunks(images, count, self.max_batch, device)

    def maps(self, scores: PerturbedScores, perturbations: MaskSet) -> torch.Tensor:
        """Σ_n score(x ⊙ M_n) · M_n / (N · p1), summed over the masks of one forward at a time."""
        perturbed, masks = scores.perturbed, perturbations.masks
        u, n, r = perturbed.shape
        flat = masks.view(n, -1)
        saliency = perturbed.new_zeros(u, r, flat.shape[1])
        per = perturbations_per_forward(u, self.max_batch)
        for j in range(0, n, per):  # the forwards' chunks: keeps the float sums' order
            saliency += torch.einsum("nmr,mp->nrp", perturbed[:, j:j + per].contiguous(),
                                     flat[j:j + per])
        saliency = scores.per_image(saliency)  # (B, H·W)
        return (saliency / (n * self.p1)).view(-1, *masks.shape[1:])
