"""Gradient-based methods, all computed by captum on the RGB input with a black (zero) baseline.

``grad`` (Saliency, signed), ``ixg`` (InputXGradient), ``intgrad`` (IntegratedGradients) and
``deeplift`` (DeepLift, rescale rule). The paper's settings: captum, RGB inputs, zero baselines,
20 integration steps. captum is imported when a method is built, not when the registry is listed.
On a CoDA-Net, which has no ReLU (no non-linearity that DeepLift's rules replace), ``deeplift``
equals ``ixg``.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import nn

from attrib_bench.errors import MethodError
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod
from attrib_bench.registry import register_method

IGRule = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right",
                 "riemann_middle"]


def _leaf(inputs: torch.Tensor) -> torch.Tensor:
    """A leaf copy that requires grad (captum warns when it has to set that itself)."""
    return inputs.detach().requires_grad_(True)


@register_method("grad", hparams={"abs": False}, family="gradient")
class Grad(AttributionMethod):
    """Gradient of the target logit w.r.t. the RGB input (captum Saliency, signed by default)."""

    name = "grad"

    def __init__(self, model: nn.Module, *, abs: bool = False,
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import Saliency

        self.abs = bool(abs)
        self._captum = Saliency(model)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(_leaf(inputs), target=target, abs=self.abs)


@register_method("ixg", hparams={}, family="gradient")
class InputXGradient(AttributionMethod):
    """Input × gradient of the target logit on the RGB input (captum InputXGradient)."""

    name = "ixg"

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import InputXGradient as CaptumIxG

        self._captum = CaptumIxG(model)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(_leaf(inputs), target=target)


@register_method("intgrad", hparams={"n_steps": 20, "rule": "gausslegendre"}, family="gradient")
class IntegratedGradients(AttributionMethod):
    """Integrated gradients from a black image, 20 steps (captum IntegratedGradients).

    ``n_steps`` points on the path from the zero baseline to the input, placed by captum's
    ``rule`` (its default, Gauss-Legendre). All steps of a chunk of images go through the model
    in batches of ``max_batch`` images (captum's ``internal_batch_size``).
    """

    name = "intgrad"

    def __init__(self, model: nn.Module, *, n_steps: int = 20, rule: IGRule = "gausslegendre",
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr._utils.approximation_methods import SUPPORTED_METHODS

        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
            raise MethodError(f"method 'intgrad': n_steps must be a positive int, got {n_steps!r}")
        if rule not in SUPPORTED_METHODS:
            raise MethodError(f"method 'intgrad': rule must be one of "
                              f"{', '.join(SUPPORTED_METHODS)}, got {rule!r}")
        self.n_steps, self.rule = n_steps, rule
        self._captum = CaptumIG(model)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._captum.attribute(_leaf(inputs), baselines=torch.zeros_like(inputs),
                                      target=target, n_steps=self.n_steps, method=self.rule,
                                      internal_batch_size=self.max_batch)


@register_method("deeplift", hparams={}, family="gradient")
class DeepLift(AttributionMethod):
    """DeepLIFT (rescale rule) against a black image (captum DeepLift); IxG on a CoDA-Net.

    captum replaces the gradients of the model's ``nn.ReLU`` (and other supported non-linearity)
    modules; a model whose non-linearities are not such modules (a CoDA-Net's DAU layers) gets
    plain gradients, so the result is input × gradient.
    """

    name = "deeplift"

    def __init__(self, model: nn.Module, *, max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import DeepLift as CaptumDeepLift

        self._captum = CaptumDeepLift(model)

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # captum warns on every call that it sets hooks
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
            return self._captum.attribute(_leaf(inputs), baselines=torch.zeros_like(inputs),
                                          target=target)
