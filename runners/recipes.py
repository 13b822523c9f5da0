"""The model families' published training recipes: what ``attrib-bench train`` uses where a run
is silent. Kept apart from :mod:`attrib_bench.runners.train` so that the CLI can show the
defaults in ``train --help`` without importing the trainer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["step", "cosine"]


@dataclass(frozen=True)
class Recipe:
    """A model family's published training defaults (what ``train`` uses where a run is silent).

    ``lr`` is the peak learning rate at ``batch_size`` (also the config's
    ``lr_reference_batch``), Adam throughout, BCE on one-hot targets, random flip and 4 px crop.
    """

    epochs: int
    batch_size: int
    lr: float
    schedule: Schedule
    source: str


#: family → recipe; families not listed (ResNet-56, library models) get the CoDA-Nets recipe,
#: the one this trainer implements (Adam + BCE; akamaster's ResNet-56 SGD recipe is not here).
RECIPES: dict[str, Recipe] = {
    "coda": Recipe(200, 16, 2.5e-4, "step",
                   "CoDA-Nets (Böhle et al., CVPR 2021, supplement): Adam 2.5e-4, batch 16, "
                   "lr ÷1.5 every 30 epochs, 200 epochs"),
    "bcos": Recipe(100, 64, 1e-3, "cosine",
                   "bcos package, experiments/CIFAR10 (B-cos v2, Böhle et al. TPAMI 2024): Adam "
                   "1e-3, batch 64, cosine annealing over 100 epochs, BCE"),
}


def recipe_for(model: str) -> Recipe:
    """The training recipe of registered ``model``'s family (:data:`RECIPES`; else CoDA's)."""
    from attrib_bench.core.registry import MODELS

    return RECIPES.get(str(MODELS.get(model).metadata.get("family")), RECIPES["coda"])
