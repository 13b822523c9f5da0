"""``inherent``: a CoDA-Net's own contribution maps W0→L(x)_target ⊙ x_enc, channels summed."""

from __future__ import annotations

import torch
from torch import nn

from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod


@register_method("inherent", family="model-inherent", label="Inherent (W·x)", colour="#d62728")
class Inherent(AttributionMethod):
    """The model-inherent linear contributions W0→L ⊙ x of a CoDA-Net (one backward, exact).

    Uses ``model.contributions(x, target)`` (B, 6, H, W): one backward pass in explanation mode
    (dynamic weights detached), on the encoded input [r, g, b, 1−r, 1−g, 1−b]; the map sums its
    six channels, so each pixel's value is its contribution to the target logit and the map sums
    to logit − b0. Applies only to models with ``.contributions``.
    """

    name = "inherent"
    requires = ("contributions",)

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.model.contributions(inputs, target)
