"""The perturbation base (methods/perturbation.py): a toy method written on it in a few lines,
the grouping of repeated images, and chunking by ``max_batch``.

The toy, "remove one pixel at a time", on a linear model has a known answer: the logit drop of
pixel p is Σ_channels w_target ⊙ x at p (the bias cancels).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from attrib_bench.methods import Occlusion, PerturbationMethod, PerturbedScores
from attrib_bench.methods.perturbation import block_chunks, pair_chunks


@dataclass(frozen=True)
class OnePixelOff:
    """Copy p: the image with pixel p (row-major) black in every channel."""

    size: tuple[int, int]

    @property
    def count(self) -> int:
        return self.size[0] * self.size[1]

    def apply(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        keep = torch.ones(len(which), self.count, dtype=images.dtype, device=images.device)
        keep[torch.arange(len(which)), which] = 0.0
        return images * keep.view(-1, 1, *self.size)


class PixelDrop(PerturbationMethod[OnePixelOff]):
    """Each pixel: the logit drop when it alone is black."""

    name = "pixel-drop"
    uses_reference = True

    def perturbations(self, size, device, dtype) -> OnePixelOff:
        return OnePixelOff(size)

    def maps(self, scores: PerturbedScores, perturbations: OnePixelOff) -> torch.Tensor:
        return scores.drops().view(-1, *perturbations.size)


class Linear(nn.Module):
    """logits_k = ⟨w_k, x⟩ + b_k on (B, 3, H, W) images; counts the images of each forward."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)  # (K, 3, H, W), (K,)
        self.forwards: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards.append(len(x))
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


def _random_linear(size: tuple[int, int], classes: int = 3) -> Linear:
    g = torch.Generator().manual_seed(0)
    return Linear(torch.randn(classes, 3, *size, generator=g, dtype=torch.float64),
                  torch.randn(classes, generator=g, dtype=torch.float64))


def _images(n: int, size: tuple[int, int]) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(1),
                      dtype=torch.float64)


def test_toy_method_on_a_linear_model_gives_the_hand_computed_drops():
    x = torch.tensor([[[0.5, 1.0], [0.0, 0.25]],
                      [[1.0, 0.0], [0.5, 0.5]],
                      [[0.0, 0.0], [1.0, 0.5]]], dtype=torch.float64)[None]
    w1 = torch.tensor([[[1.0, 2.0], [3.0, 4.0]],
                       [[-1.0, 0.0], [1.0, 0.0]],
                       [[0.0, 1.0], [2.0, -2.0]]], dtype=torch.float64)
    model = Linear(torch.stack([torch.ones_like(w1), w1]), torch.tensor([0.3, -7.0]).double())
    maps = PixelDrop(model).attribute(x, torch.tensor([1]))
    # pixel (0, 0): 1·0.5 − 1·1 + 0·0 = −0.5; (0, 1): 2·1 = 2; (1, 0): 1·0.5 + 2·1 = 2.5;
    # (1, 1): 4·0.25 − 2·0.5 = 0
    expected = torch.tensor([[[-0.5, 2.0], [2.5, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-15)


def test_toy_method_equals_one_pixel_occlusion():
    """Occlusion with 1×1 patches, stride 1, black: the same drops, through its own hooks."""
    model, x, t = _random_linear((5, 4)), _images(3, (5, 4)), torch.tensor([0, 2, 1])
    toy = PixelDrop(model).attribute(x, t)
    torch.testing.assert_close(toy, (model.weight[t] * x).sum(1), rtol=1e-12, atol=1e-12)
    occlusion = Occlusion(model, patch_size=1, stride=1).attribute(x, t)
    torch.testing.assert_close(occlusion, toy, rtol=1e-12, atol=1e-12)


def test_repeated_images_get_one_set_of_forwards():
    """Image 0 three times (classes 1, 0, 1) and image 1 twice (2, 0): the model sees the
    copies of 2 distinct images, and each map equals its image explained alone."""
    size = (5, 4)
    model, distinct = _random_linear(size), _images(2, size)
    x, t = distinct[[0, 1, 0, 0, 1]], torch.tensor([1, 2, 0, 1, 0])
    method = PixelDrop(model, max_batch=1000)
    alone = torch.cat([method.attribute(x[i:i + 1], t[i:i + 1]) for i in range(5)])
    model.forwards.clear()  # the number of classes is known from here on
    maps = method.attribute(x, t)
    per_image = 20 + 1  # one copy per pixel, and the image itself
    assert sum(model.forwards) == 2 * per_image
    torch.testing.assert_close(maps, alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(maps[0], maps[2])  # same image, other class


@pytest.mark.parametrize("max_batch", [1, 3, 7, 41])
def test_chunking_by_max_batch_changes_no_map(max_batch):
    size = (5, 4)
    model, distinct = _random_linear(size), _images(3, size)
    x, t = distinct[[0, 1, 2, 1]], torch.tensor([0, 1, 2, 2])
    whole = PixelDrop(model, max_batch=1000).attribute(x, t)
    method = PixelDrop(model, max_batch=max_batch)
    method.num_classes(x)  # its one-image probe, before the count
    model.forwards.clear()
    chunked = method.attribute(x, t)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)
    assert max(model.forwards) <= max_batch
    assert sum(model.forwards) == 3 * (20 + 1)
    pairs, images = 3 * 20, 3  # full forwards of perturbed copies, then of the images
    assert len(model.forwards) == -(-pairs // max_batch) + -(-images // max_batch)


@pytest.mark.parametrize("chunks", [pair_chunks, block_chunks])
def test_chunk_orders_score_every_pair_once_within_max_batch(chunks):
    for images, count, max_batch in itertools.product((1, 3, 8), (1, 5, 12), (1, 4, 7, 100)):
        seen = []
        for image, which in chunks(images, count, max_batch):
            assert 0 < len(image) == len(which) <= max_batch
            seen += list(zip(image.tolist(), which.tolist(), strict=True))
        assert sorted(seen) == list(itertools.product(range(images), range(count)))
