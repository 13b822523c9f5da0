"""``gradcam``: GradCAM (Selvaraju et al. 2017) on a layer of any convolutional model, via captum.

The layer: ``layer=`` (a module of the model, or its path such as ``"features.3"`` or
``"layer4.2"``), else one rule (:func:`default_layer`): **the output of the model's last
convolutional block**, the last feature map before the head: the model's declared
``gradcam_layer`` (:mod:`attrib_bench.models.protocols`), else timm's
``feature_info[-1]["module"]``, else torchvision's ``layer4`` or ``features`` (when they hold a
convolution), else found by structure (:func:`last_conv_block`): the largest module holding the
last ``nn.Conv2d`` and no part of the head, with the activation, normalisation and pooling
modules that follow it in an ``nn.Sequential`` (a plain ``Sequential``'s ReLU or pool after its
last convolution, not the convolution itself).
"""

from __future__ import annotations

import difflib
from typing import Literal

import torch
from torch import nn

from attrib_bench.core.checks import model_label
from attrib_bench.core.errors import MethodError, NotApplicableError
from attrib_bench.core.registry import register_method
from attrib_bench.methods.base import DEFAULT_MAX_BATCH, AttributionMethod
from attrib_bench.models import protocols

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


def resolve_layer(model: nn.Module, path: str, method: str = "gradcam", *,
                  model_name: str | None = None) -> nn.Module:
    """The submodule at ``path`` (``"features.3"``); a wrong path is one :class:`MethodError`
    line listing the model's convolutional layers (the first :data:`MAX_LISTED`), naming the
    model by ``model_name`` (else as :func:`attrib_bench.core.checks.model_label` does).

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
    raise MethodError(f"method {method!r}: {model_label(model, model_name)} has no layer "
                      f"{shown!r}; "
                      f"{hint}layers with a convolution: {listed or 'none'}")


#: Modules of a classifier's head: a module holding one is not part of the convolutional block.
HEAD_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)

#: Modules that end a convolutional block after its convolution in an ``nn.Sequential``: they
#: keep a (B, C, h, w) map (activations, normalisation, dropout, fixed-size pooling).
BLOCK_TAIL: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.Threshold,
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm, nn.modules.dropout._DropoutNd, nn.MaxPool2d, nn.AvgPool2d,
    nn.LPPool2d, nn.Identity)


def _holds_head(module: nn.Module) -> bool:
    return any(isinstance(m, HEAD_MODULES) for m in module.modules())


def _runs_in_order(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Sequential`` whose forward is Sequential's own (its
    children run one after the other, in order)."""
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def last_conv_block(model: nn.Module) -> tuple[nn.Module, str] | None:
    """The module whose output is ``model``'s last convolutional block's, by structure alone,
    and its path; None without an ``nn.Conv2d``.

    Take the last ``nn.Conv2d`` in module order; the block is the largest module below the
    model that holds it and no part of a head (:data:`HEAD_MODULES`: ``nn.Linear``,
    ``nn.Flatten``, adaptive pooling); where that block sits in an ``nn.Sequential``, the
    activation, normalisation, dropout and fixed-size pooling modules right after it
    (:data:`BLOCK_TAIL`) belong to it, and the last of them is the layer. So
    ``Sequential(conv, ReLU, conv, ReLU, MaxPool2d, Flatten, Linear)`` gives its ``MaxPool2d``
    (index 4), a torchvision ResNet ``layer4``, a VGG-style model ``features``: in each case the
    map the head reads.
    """
    convs = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    if not convs[-1]:  # the model is a convolution
        return model, ""
    parts = convs[-1].split(".")
    # the convolution's ancestors below the model, outermost first, then the convolution
    chain = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    path = next(p for p in chain if not _holds_head(model.get_submodule(p)))
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if _runs_in_order(parent):
        names = list(parent._modules)
        for name in names[names.index(child) + 1:]:
            if not isinstance(parent._modules[name], BLOCK_TAIL):
                break
            path = f"{parent_path}.{name}" if parent_path else name
    return model.get_submodule(path), path


def default_layer(model: nn.Module) -> tuple[nn.Module, str] | None:
    """GradCAM's default layer of ``model`` and how it was found, or None if there is none.

    One rule: **the output of the model's last convolutional block**, the last (B, C, h, w)
    feature map before the head pools it: the GradCAM paper weighs the feature maps of the
    last convolutional layer, the CoDA-Nets paper's GradCAM uses the last DAU layer and the
    ResNets' last stage, and torchvision's names mean it. Found, in order:
    the model's declared ``model.gradcam_layer`` (a capability), timm's
    ``model.feature_info[-1]["module"]`` (the library's last stage), torchvision's names
    ``model.layer4`` (ResNets) and ``model.features`` (VGG, AlexNet, DenseNet, MobileNet,
    EfficientNet, ConvNeXt: the convolutional part the ``classifier`` reads) when they hold an
    ``nn.Conv2d``, else by structure (:func:`last_conv_block`: a plain ``nn.Sequential`` gives
    the activation or pooling module that ends its last convolution's block, not the
    convolution itself). ``layer=`` chooses any other module.
    """
    model = protocols.unwrap(model)  # a DataParallel's module (its layers are the same)
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
    for attr in ("layer4", "features"):  # torchvision's names for the last block's output
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module) and any(isinstance(m, nn.Conv2d)
                                                 for m in module.modules()):
            return module, f"model.{attr}"
    found = last_conv_block(model)
    return (found[0], "the last convolutional block") if found else None


@register_method("gradcam", family="gradient", label="GradCAM", colour="#2ca02c")
class GradCAM(AttributionMethod):
    """GradCAM on a convolutional layer, ReLU, upsampled to the input size (captum LayerGradCam).

    The layer's activations weighted by their spatially averaged gradients of the target logit,
    summed over channels, clamped at 0 (``relu``), then upsampled from the layer's grid to
    (H, W) with captum's ``LayerAttribution.interpolate``. ``interpolation="nearest"`` is what
    the CoDA-Nets authors used: each layer cell becomes a constant block. ``layer``: a module of
    the model or its path (``"features.3"``, ``"layer4.2"``; a path also resolves on copies of
    the model, as the randomisation metric makes); ``None``: the output of the model's last
    convolutional block (:func:`default_layer`): its ``gradcam_layer`` (the last DAU layer of
    a CoDA-Net, the last stage of the CIFAR ResNets), else timm's last ``feature_info`` module,
    else the largest module holding the last ``nn.Conv2d`` and no part of the head, ended by
    the activation, normalisation and pooling modules after it in an ``nn.Sequential``
    (``layer4`` of a ResNet, ``features`` of a VGG-style model). The chosen layer's path is
    ``self.layer_name``.
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
                                     f"{self.model_label}: it is not an nn.Module; pass "
                                     "layer=<one of its modules>")
        if isinstance(layer, str):
            return resolve_layer(model, layer, model_name=self.model_name), layer
        if isinstance(layer, nn.Module):
            path = _module_path(model, layer)
            if path is None:
                raise MethodError(
                    f"method 'gradcam': the {type(layer).__name__} passed as layer is not a "
                    f"module of {self.model_label}; pass one of its modules or its path, "
                    f"e.g. {', '.join(conv_layers(model)[:3]) or 'none'}")
            return layer, path or "(the model itself)"
        if layer is not None:
            raise MethodError(f"method 'gradcam': layer must be a module of the model, its path "
                              f"(e.g. 'layer4.2') or None, got {type(layer).__name__}")
        found = default_layer(model)
        if found is None:
            raise NotApplicableError(
                f"method 'gradcam' does not apply to {self.model_label}: it has no "
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
        from attrib_bench.core.evaluation import forward_with_hooks

        super().preflight(inputs, target)
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
