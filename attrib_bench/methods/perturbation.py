"""The loop every perturbation method shares: perturb, score in batched forwards, map.

A perturbation method explains an image by how the model's score of a class changes on
perturbed copies of it (occlusion's black patches, RISE's random masks, LIME's hidden
superpixels). What differs between them is the perturbations and how the scores become a map;
the rest is the same and lives here, once:

- identical images of a batch (a localisation grid comes once per cell class) are perturbed once
  for all the classes asked for them (:func:`~attrib_bench.methods.base.shared_images`);
- the perturbed copies go through the model in forwards of at most ``max_batch`` images;
- each forward's scores are read for the asked classes only (``score``: the raw "logit", or a
  "sigmoid" or "softmax" probability, :func:`attrib_bench.models.protocols.scores`).

:class:`BlackBoxMethod` holds the first and the last (LIME builds on it: the ``lime`` package
draws its own perturbations per image); :class:`PerturbationMethod` adds the loop over
perturbations that are the same for every image of a size, with two hooks a method fills in:
:meth:`~PerturbationMethod.perturbations` and :meth:`~PerturbationMethod.maps`. This is
captum's ``FeatureAblation`` pattern (one loop, the perturbations per method), with the forwards
shared by every class asked for an image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar, final

import torch

from attrib_bench.methods.base import AttributionMethod, SharedImages, shared_images
from attrib_bench.models import protocols
from attrib_bench.models.protocols import Score

#: One forward's work: the distinct image (m,) and the perturbation (m,) of each copy in it.
Chunk = tuple[torch.Tensor, torch.Tensor]


class Perturbations(Protocol):
    """What a method does to images of one size: ``count`` perturbations, P, the same for
    every image; ``apply`` makes the copies of one forward."""

    count: int

    def apply(self, images: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        """Copies (m, C, H, W): ``images[i]`` (m, C, H, W) under perturbation ``which[i]``
        (m,), an index in [0, P)."""
        ...


@dataclass(frozen=True)
class PerturbedScores:
    """The model's scores for the distinct images of a batch (``shared``), perturbed and not.

    ``perturbed`` (U, P, R): the score of class ``shared.classes[u, r]`` on image u under
    perturbation p; ``reference`` (U, R): the same on the unperturbed images, or None unless the
    method sets ``uses_reference``. U distinct images, R classes asked per image at most.
    """

    perturbed: torch.Tensor
    reference: torch.Tensor | None
    shared: SharedImages

    def drops(self) -> torch.Tensor:
        """(B, P): for each image of the batch, its class's score on the image minus its score
        under each perturbation (needs ``reference``)."""
        if self.reference is None:
            raise TypeError("drops() needs the unperturbed scores: set uses_reference = True")
        image, slot = self.shared.image_of, self.shared.slot_of
        return self.reference[image, slot, None] - self.perturbed[image, :, slot]

    def per_image(self, values: torch.Tensor) -> torch.Tensor:
        """Values (U, R, ...) per (distinct image, class) → (B, ...), one per batch image."""
        return values[self.shared.image_of, self.shared.slot_of]


def pair_chunks(images: int, count: int, max_batch: int,
                device: torch.device | str = "cpu") -> Iterator[Chunk]:
    """Every (image, perturbation) pair, image-major, cut into forwards of ``max_batch``.

    The default order: every forward but the last is full (captum's ``perturbations_per_eval``
    fills its forwards the same way).
    """
    pairs = images * count
    for start in range(0, pairs, max_batch):
        pair = torch.arange(start, min(start + max_batch, pairs), device=device)
        yield pair // count, pair % count


def perturbations_per_forward(images: int, max_batch: int) -> int:
    """How many perturbations :func:`block_chunks` puts in one forward (at least 1)."""
    return max(1, max_batch // min(images, max_batch))


def block_chunks(images: int, count: int, max_batch: int,
                 device: torch.device | str = "cpu") -> Iterator[Chunk]:
    """Forwards of a block of images (at most ``max_batch``) × the same block of perturbations
    (:func:`perturbations_per_forward`), image-major; blocks of images outermost."""
    per_forward = min(images, max_batch)
    per = perturbations_per_forward(images, max_batch)
    for i in range(0, images, per_forward):
        block = torch.arange(i, min(i + per_forward, images), device=device)
        for j in range(0, count, per):
            which = torch.arange(j, min(j + per, count), device=device)
            yield block.repeat_interleave(len(which)), which.repeat(len(block))


class BlackBoxMethod(AttributionMethod):
    """A method that reads only the model's scores: explains each distinct image once.

    Identical images of a batch are explained once for all the classes asked for them:
    :meth:`explain_distinct` gets them grouped (:class:`~attrib_bench.methods.base.SharedImages`).
    ``score`` (class attribute or set in ``__init__``): what is read from the logits, "logit"
    unless a method sets another (:func:`attrib_bench.models.protocols.resolve_score`).
    """

    needs_grad = False
    score: Score = "logit"

    @final
    def _attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.explain_distinct(shared_images(inputs, target))

    def explain_distinct(self, shared: SharedImages) -> torch.Tensor:
        """Maps (B, H, W) of the batch that ``shared`` groups into distinct images."""
        raise NotImplementedError

    def model_scores(self, batch: torch.Tensor) -> torch.Tensor:
        """Scores (m, K) of every class on ``batch`` (m, C, H, W), one forward."""
        return protocols.scores(self.model(batch), self.score)

    def class_scores(self, batch: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scores (m, R) on ``batch`` (m, C, H, W) of the classes ``classes`` (m, R)."""
        return self.model_scores(batch).gather(1, classes)


#: A method's own :class:`Perturbations` type.
P = TypeVar("P", bound=Perturbations)


class PerturbationMethod(BlackBoxMethod, Generic[P]):
    """Base of a method whose perturbations are the same for every image of a size.

    A method fills in two hooks: :meth:`perturbations`, what it does to images of a size (a
    :class:`Perturbations`), and :meth:`maps`, the maps from the scores (a
    :class:`PerturbedScores`); ``uses_reference = True`` also scores the unperturbed images.
    The base groups identical images, makes the copies of each distinct image, runs them through
    the model in forwards of at most ``max_batch`` images (:meth:`forward_chunks`, by default
    :func:`pair_chunks`) and reads the scores of the classes asked for each image. Costs
    U · P forward images (U · (P + 1) with the reference), U distinct images, P perturbations.
    """

    #: True: :class:`PerturbedScores` also holds the scores of the unperturbed images.
    uses_reference: ClassVar[bool] = False

    def perturbations(self, size: tuple[int, int], device: torch.device,
                      dtype: torch.dtype) -> P:
        """The perturbations of images of ``size`` (H, W) on ``device`` in ``dtype``; raises
        :class:`~attrib_bench.core.errors.MethodError` if the method's settings do not fit it."""
        raise NotImplementedError

    def maps(self, scores: PerturbedScores, perturbations: P) -> torch.Tensor:
        """Maps (B, H, W) of the batch from its scores."""
        raise NotImplementedError

    def forward_chunks(self, images: int, count: int, device: torch.device) -> Iterator[Chunk]:
        """The forwards that score ``images`` × ``count`` copies; each at most ``max_batch``."""
        return pair_chunks(images, count, self.max_batch, device)

    @final
    def explain_distinct(self, shared: SharedImages) -> torch.Tensor:
        images, classes = shared.images, shared.classes
        perturbations = self.perturbations(tuple(images.shape[2:]), images.device, images.dtype)
        reference = self.scores_in_chunks(images, classes) if self.uses_reference else None
        perturbed = images.new_empty(len(images), perturbations.count, classes.shape[1])
        for image, which in self.forward_chunks(len(images), perturbations.count, images.device):
            copies = perturbations.apply(images[image], which)
            perturbed[image, which] = self.class_scores(copies, classes[image])
        return self.maps(PerturbedScores(perturbed, reference, shared), perturbations)

    def scores_in_chunks(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Scores (N, R) of ``classes`` (N, R) on ``images`` (N, C, H, W), ``max_batch`` at once."""
        return torch.cat([self.class_scores(images[i:i + self.max_batch],
                                            classes[i:i + self.max_batch])
                          for i in range(0, len(images), self.max_batch)])
