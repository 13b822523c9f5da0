"""``gradcam``: GradCAM (Selvaraju et al. 2017) on a layer of any convolutional model, via captum.

The layer: ``layer=`` (a module of the model, or its path such as ``"features.3"`` or
``"layer4.2"``), else a default found on the model (:func:`default_layer`): the model's declared
``gradcam_layer`` (:mod:`attrib_bench.models.protocols`), timm's ``feature_info[-1]["module"]``,
torchvision ResNets' ``layer4``, torchvision VGG/AlexNet/DenseNet-style ``features``, else the
last ``nn.Conv2d`` in module order.
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
from torch import nn

from attrib_bench.errors import MethodError, NotApplicableError
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod
from attrib_bench.models import protocols
from attrib_bench.registry import register_method

Interpolation = Literal["nearest", "bilinear", "area"]

#: Candidate layers a wrong-path message lists at most.
MAX_LISTED = 15


def conv_layers(model: nn.Module) -> list[str]:
    """Paths of the modules that are or hold an ``nn.Conv2d``, in module order (not the root)."""
    return [path for path, module in model.named_modules()
            if path and any(isinstance(m, nn.Conv2d) for m in module.modules())]


def _module_path(model: nn.Module, layer: nn.Module) -> str | None:
    """``layer``'s path in ``model`` ("" for the model itself), or None if it is not in it."""
    for path, module in model.named_modules():
        if module is layer:
            return path
    return None


#: Attributes under which a wrapper keeps the network it wraps (library models, B-cos).
WRAPPED = ("model", "net")


def resolve_layer(model: nn.Module, path: str, method: str = "gradcam") -> nn.Module:
    """The submodule at ``path`` (``"features.3"``); a wrong path is one :class:`MethodError`
    line listing the model's convolutional layers (the first :data:`MAX_LISTED`).

    A path not found on ``model`` is tried inside the network a wrapper holds
    (:data:`WRAPPED`: ``model.model`` of a torchvision/timm wrapper, ``model.net`` of a B-cos
    one), so ``layer4.1`` names the library's own layer as in its documentation.
    """
    for prefix in ("", *(f"{name}." for name in WRAPPED)):
        try:
            module = model.get_submodule(prefix + path)
        except AttributeError:
            module = None
        if isinstance(module, nn.Module) and path:
            return module
    candidates = conv_layers(model)
    close = difflib.get_close_matches(path, [p for p, _ in model.named_modules() if p], n=3,
                                      cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listed = ", ".join(candidates[:MAX_LISTED]) + (", …" if len(candidates) > MAX_LISTED else "")
    shown = path if len(path) <= 60 else path[:57] + "..."
    raise MethodError(f"method {method!r}: {type(model).__name__} has no layer {shown!r}; "
                      f"{hint}layers with a convolution: {listed or 'none'}")


def default_layer(model: nn.Module) -> tuple[nn.Module, str] | None:
    """GradCAM's default layer of ``model`` and how it was found, or None if there is none.

    In order: ``model.gradcam_layer`` (a declared capability), timm's
    ``model.feature_info[-1]["module"]``, ``model.layer4`` (torchvision ResNets),
    ``model.features`` (torchvision VGG, AlexNet, DenseNet, ...), the last ``nn.Conv2d``.
    """
    if protocols.has(model, "gradcam_layer"):
        declared = model.gradcam_layer
        if isinstance(declared, str):
            return resolve_layer(model, declared), "model.gradcam_layer"
        return declared, "model.gradcam_layer"
    info = getattr(model, "feature_info", None)
    try:
        last = info[-1]["module"] if info else None
    except (TypeError, KeyError, IndexError):
        last = None
    if isinstance(last, str) and last:
        try:
            module = model.get_submodule(last)
        except AttributeError:
            module = None
        if isinstance(module, nn.Module):
            return module, 'model.feature_info[-1]["module"]'
    for attr in ("layer4", "features"):
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            return module, f"model.{attr}"
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return (convs[-1], "the last nn.Conv2d") if convs else None


@register_method("gradcam", family="gradient", label="GradCAM", colour="#2ca02c")
class GradCAM(AttributionMethod):
    """GradCAM on a convolutional layer, ReLU, upsampled to the input size (captum LayerGradCam).

    The layer's activations weighted by their spatially averaged gradients of the target logit,
    summed over channels, clamped at 0 (``relu``), then upsampled from the layer's grid to
    (H, W) with captum's ``LayerAttribution.interpolate``. ``interpolation="nearest"`` is what
    the CoDA-Nets authors used: each layer cell becomes a constant block. ``layer``: a module of
    the model or its path (``"features.3"``, ``"layer4.2"``; a path also resolves on copies of
    the model, as the randomisation metric makes); ``None``: the model's ``gradcam_layer`` (the
    last DAU layer of a CoDA-Net, the last stage of the CIFAR ResNets), else timm's last
    ``feature_info`` module, ``layer4``, ``features``, else the last ``nn.Conv2d``
    (:func:`default_layer`). The chosen layer's path is ``self.layer_name``.
    """

    name = "gradcam"

    def __init__(self, model: nn.Module, *, layer: nn.Module | str | None = None,
                 relu: bool = True, interpolation: Interpolation = "nearest",
                 max_batch: int = DEFAULT_MAX_BATCH, seed: int = 0) -> None:
        super().__init__(model, max_batch=max_batch, seed=seed)
        from captum.attr import LayerGradCam

        if interpolation not in ("nearest", "bilinear", "area"):
            raise MethodError(f"method 'gradcam': interpolation must be nearest, bilinear or "
                              f"area, got {str(interpolation)[:40]!r}")
        self.layer, self.layer_name = self._resolve(model, layer)
        self.relu, self.interpolation = bool(relu), interpolation
        self._captum = LayerGradCam(model, self.layer)

    def _resolve(self, model: nn.Module, layer: object) -> tuple[nn.Module, str]:
        """The layer GradCAM hooks and its path in the model."""
        if not isinstance(model, nn.Module):
            if isinstance(layer, nn.Module):
                return layer, type(layer).__name__
            raise NotApplicableError(f"method 'gradcam' does not apply to "
                                     f"{type(model).__name__}: it is not an nn.Module; pass "
                                     "layer=<one of its modules>")
        if isinstance(layer, str):
            return resolve_layer(model, layer), layer
        if isinstance(layer, nn.Module):
            path = _module_path(model, layer)
            if path is None:
                raise MethodError(
                    f"method 'gradcam': the {type(layer).__name__} passed as layer is not a "
                    f"module of {type(model).__name__}; pass one of its modules or its path, "
                    f"e.g. {', '.join(conv_layers(model)[:3]) or 'none'}")
            return layer, path or "(the model itself)"
        if layer is not None:
            raise MethodError(f"method 'gradcam': layer must be a module of the model, its path "
                              f"(e.g. 'layer4.2') or None, got {type(layer).__name__}")
        found = default_layer(model)
        if found is None:
            raise NotApplicableError(
                f"method 'gradcam' does not apply to {type(model).__name__}: it has no "
                "nn.Conv2d and no model.gradcam_layer; pass layer=<the path of a module "
                "with a spatial (B, C, h, w) output>")
        module, _ = found
        path = _module_path(model, module)
        return module, path if path else type(module).__name__

    def __repr__(self) -> str:
        return (f"GradCAM(layer={self.layer_name!r}, relu={self.relu}, "
                f"interpolation={self.interpolation!r}, max_batch={self.max_batch})")

    def preflight(self, inputs: torch.Tensor, target: torch.Tensor) -> None:
        """One forward of ``inputs``: the layer must output a feature map (B, C, h, w).

        Raises :class:`NotApplicableError` (one line) for a layer with no spatial output (e.g. a
        ``Linear`` layer, output (B, K)) or one that the forward does not call.
        """
        from attrib_bench.evaluation import forward_with_hooks

        seen: list[object] = []
        forward_with_hooks(self.model, inputs[:1], [(self.layer, lambda m, i, o: seen.append(o))])
        self._check_layer_output(seen[-1] if seen else None)

    def _check_layer_output(self, output: object) -> None:
        if output is None:
            raise NotApplicableError(f"method 'gradcam': layer {self.layer_name!r} is not called "
                                     "by the model's forward: choose a layer it uses "
                                     "(--set gradcam.layer=PATH)")
        if not isinstance(output, torch.Tensor) or output.dim() != 4:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else \
                type(output).__name__
            raise NotApplicableError(f"method 'gradcam': layer {self.layer_name!r} outputs "
                                     f"{shape}; GradCAM needs a feature map (B, C, h, w): choose "
                                     "a convolutional layer (--set gradcam.layer=PATH)")

    def _attribute_chunk(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from captum.attr import LayerAttribution

        cam = self._captum.attribute(inputs, target=target, relu_attributions=self.relu)
        if cam.dim() != 4:  # a layer without spatial output (the API path, no preflight)
            self._check_layer_output(cam)
        return LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]),
                                            interpolate_mode=self.interpolation)
