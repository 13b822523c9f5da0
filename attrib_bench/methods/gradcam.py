"""``gradcam``: GradCAM (Selvaraju et al. 2017) on the model's GradCAM layer, via captum."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from attrib_bench.errors import MethodError
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod
from attrib_bench.registry import register_method

Interpolation = Literal["nearest", "bilinear", "area"]


@register_method("gradcam", hparams={"relu": True, "interpolation": "nearest"},
                 family="gradient")
class GradCAM(AttributionMethod):
    """GradCAM on model.gradcam_layer, ReLU, upsampled to the input size (captum LayerGradCam).

    The layer's activations weighted by their spatially averaged gradients of the target logit,
    summed over channels, clamped at 0 (``relu``), then upsampled from the layer's grid to
    (H, W) with captum's ``LayerAttribution.interpolate``. ``interpolation="nearest"`` is what
    the CoDA-Nets authors used: each layer cell becomes a constant block. ``layer``: any module of
    the model, instead of ``model.gradcam_layer`` (the last DAU layer of a CoDA-Net, the last
    stage of the CIFAR ResNets).
    """

    name = "gradcam"
    requires = ("gradcam_layer",)

    def __init__(self, model: nn.Module, *, layer: nn.Module | None = None, relu: bool = True,
                 interpolation: Interpolation = "nearest", max_batch: int = DEFAULT_MAX_BATCH,
                 seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import LayerGradCam

        if layer is None:  # an explicit layer replaces model.gradcam_layer
            self._require("gradcam_layer", "pass layer=<a module of the model> instead")

        if interpolation not in ("nearest", "bilinear", "area"):
            raise MethodError(f"method 'gradcam': interpolation must be nearest, bilinear or "
                              f"area, got {interpolation!r}")
        self.layer = model.gradcam_layer if layer is None else layer
        self.relu, self.interpolation = bool(relu), interpolation
        self._captum = LayerGradCam(model, self.layer)

    def _check_applicable(self) -> None:
        """Checked in ``__init__`` instead: a ``layer`` argument makes any model applicable."""

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerAttribution

        cam = self._captum.attribute(inputs, target=target, relu_attributions=self.relu)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]),
                                            interpolate_mode=self.interpolation)
