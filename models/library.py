"""Models by a library's own name: ``torchvision:<arch>`` and ``timm:<arch>`` (issue 18).

``create_model("torchvision:resnet50", pretrained=True)`` builds torchvision's ResNet-50
(``torchvision.models.get_model``) with its default weights; ``create_model("timm:resnet18")``
builds timm's (``timm.create_model``; timm is the optional extra ``attrib-bench[timm]``). Either
comes wrapped in a :class:`LibraryModel`, which keeps the toolkit's contract (RGB (B, 3, H, W)
in [0, 1] → logits (B, K)) by doing the library's preprocessing inside ``forward``: the
normalisation with the weights' mean and std (torchvision: the weights enum's ``transforms()``;
timm: ``timm.data.resolve_data_config``; ImageNet's mean and std for random weights). Resizing and
cropping stay the dataset's business: ``input_size`` records what the weights were trained at.

The wrapper declares the capabilities of :mod:`attrib_bench.models.protocols`:
``probability = "softmax"`` (classifiers trained with cross-entropy), ``gradcam_layer`` (the
library's last convolutional stage, :func:`gradcam_path`) and, where the library model splits
cleanly, ``forward_features`` / ``forward_head`` (:class:`SplitLibraryModel`, for DiFull;
:func:`split_kind`).

Weights: ``pretrained=True`` takes the library's default weights through the library's own cache
and download (torchvision: ``$TORCH_HOME/hub/checkpoints``; timm: the Hugging Face cache,
``$HF_HOME``, which needs the ``huggingface_hub`` package), so it needs internet the first time.
``checkpoint=FILE`` loads a local state dict of the library model safely (safetensors, or
``torch.load(weights_only=True)``; :mod:`attrib_bench.core.checkpoints`) and keeps the file's sha256
as ``checkpoint_sha256``. ``num_classes=K`` builds a K-class head (random init); with a checkpoint
and no ``num_classes``, the head's size is read from the checkpoint.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attrib_bench.core.checkpoints import load_into, read_state_dict, sha256_file, unwrap_state
from attrib_bench.core.checks import check_images, model_label
from attrib_bench.core.errors import (
    AttribBenchError,
    CheckpointError,
    SettingError,
    UnknownNameError,
)
from attrib_bench.core.registry import MODELS
from attrib_bench.models import protocols
from attrib_bench.models.resnet_cifar import IMAGENET_MEAN, IMAGENET_STD

LIBRARIES: tuple[str, ...] = ("torchvision", "timm")
TIMM_MISSING = "pip install 'attrib-bench[timm]'"

#: torchvision classes → GradCAM's layer, the output of the last convolutional block (the one
#: rule of :func:`attrib_bench.methods.gradcam.default_layer`): a module path, or
#: "last:features" (the last child of ``features``, the last stage).
_TV_GRADCAM: dict[str, str] = {
    "ResNet": "layer4",
    "VGG": "features", "AlexNet": "features",  # conv, ReLU, max-pool: the block's output
    "DenseNet": "features",
    "MobileNetV2": "last:features", "MobileNetV3": "last:features",
    "EfficientNet": "last:features", "ConvNeXt": "last:features",
}
#: torchvision classes whose forward is ``classifier(flatten(avgpool(features(x))))``.
_TV_POOL_FLATTEN = ("VGG", "AlexNet", "EfficientNet", "MobileNetV3")


class LibraryModel(nn.Module):
    """A torchvision or timm classifier behind the toolkit's contract.

    RGB (B, 3, H, W) in [0, 1] → ``(x - mean) / std`` → the library model → logits (B, K).
    Attributes: ``library`` ("torchvision" or "timm"), ``arch`` (the library's name),
    ``mean`` / ``std`` (per-channel tuples), ``input_size`` ((3, H, W) the weights expect),
    ``num_classes`` (K), ``weights`` (what was loaded: a weights name, "random" or the checkpoint
    path), ``checkpoint_sha256`` (the checkpoint file's sha256, else None). The library model is
    ``self.model``, so its modules are ``model.<path>`` (e.g. GradCAM's ``model.layer4``).
    """

    #: trained with cross-entropy: class probabilities are the softmax of the logits
    probability = "softmax"

    def __init__(self, model: nn.Module, *, library: str, arch: str,
                 mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: tuple[int, int, int], num_classes: int,
                 gradcam_path: str | None = None, split: str | None = None,
                 weights: str = "random", checkpoint_sha256: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.library, self.arch, self.split = library, arch, split
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.input_size = tuple(int(v) for v in input_size)
        self.num_classes = int(num_classes)
        self.weights, self.checkpoint_sha256 = weights, checkpoint_sha256
        self._gradcam_path = gradcam_path
        self.register_buffer("norm_mean", torch.tensor(self.mean).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("norm_std", torch.tensor(self.std).view(1, -1, 1, 1),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"{self.library}:{self.arch}, num_classes={self.num_classes}"

    @property
    def gradcam_layer(self) -> nn.Module | None:
        """The library model's last convolutional stage (None: GradCAM finds its own)."""
        return self.model.get_submodule(self._gradcam_path) if self._gradcam_path else None

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → the library's input, ``(x - mean) / std``."""
        check_images(x)
        return (x - self.norm_mean) / self.norm_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → logits (B, K)."""
        return self.model(self.normalise(x))


class SplitLibraryModel(LibraryModel):
    """A :class:`LibraryModel` whose library model splits into features and head (DiFull).

    ``forward_head(forward_features(x)) == forward(x)``; ``split`` says how (:func:`split_kind`).
    """

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """RGB (B, 3, H, W) in [0, 1] → the last stage's map (B, C, h, w)."""
        return _FEATURES[self.split](self.model, self.normalise(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """A last-stage map (B, C, h, w) → logits (B, K)."""
        return _HEADS[self.split](self.model, f)


def _resnet_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision ResNet (``ResNet._forward_impl``): conv1, bn1, relu, maxpool, layer1..4."""
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(x))))


_FEATURES: dict[str | None, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "timm": lambda m, x: m.forward_features(x),
    "resnet": _resnet_features,
    "features-pool-flatten": lambda m, x: m.features(x),
}
_HEADS: dict[str | None, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "timm": lambda m, f: m.forward_head(f),
    "resnet": lambda m, f: m.fc(torch.flatten(m.avgpool(f), 1)),
    "features-pool-flatten": lambda m, f: m.classifier(torch.flatten(m.avgpool(f), 1)),
}

# ----------------------------------------------------------------------------- the libraries


def _torchvision_names() -> list[str]:
    """torchvision's classification models (``list_models(module=torchvision.models)``)."""
    from torchvision import models

    return models.list_models(module=models)


def _timm() -> Any:
    """The timm module; its absence is one line naming the install command."""
    try:
        import timm
        import timm.data
    except ImportError:
        raise AttribBenchError(f"timm models need the timm package: {TIMM_MISSING}") from None
    return timm


def _unknown(library: str, arch: str, names: list[str]) -> UnknownNameError:
    close = difflib.get_close_matches(arch, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "none is close"
    lister = ("torchvision.models.list_models(module=torchvision.models)"
              if library == "torchvision" else "timm.list_models()")
    return UnknownNameError(f"{library} has no classification model {arch!r}: {hint} "
                            f"({lister} lists all {len(names)})")


def check_arch(library: str, arch: str) -> None:
    """One :class:`UnknownNameError` line unless ``library`` builds classifier ``arch``."""
    if library == "torchvision":
        names = _torchvision_names()
        if arch not in names:
            raise _unknown(library, arch, names)
    elif ":" not in arch and not _timm().is_model(arch):  # "hf-hub:org/name" goes to timm as is
        raise _unknown(library, arch, _timm().list_models())


def _build(library: str, arch: str, pretrained: bool, num_classes: int | None,
           options: dict[str, Any]) -> nn.Module:
    """The bare library model (train mode, as the library returns it)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    try:
        if library == "timm":
            return _timm().create_model(arch, pretrained=pretrained, **extra, **options)
        from torchvision import models

        weights = models.get_model_weights(arch).DEFAULT if pretrained else None
        return models.get_model(arch, weights=weights, **extra, **options)
    except TypeError as exc:
        if not options:  # the library's own error, not the user's option
            raise
        raise SettingError(f"model '{library}:{arch}': {exc}: drop that option") from None


def _build_pretrained(library: str, arch: str, num_classes: int | None,
                      options: dict[str, Any]) -> nn.Module:
    """The library model with its default weights, downloaded into the library's cache once.

    A download that fails (no internet, a broken file) is one :class:`CheckpointError` line.
    """
    if library == "torchvision" and num_classes is not None:
        from torchvision import models

        default = len(models.get_model_weights(arch).DEFAULT.meta["categories"])
        if num_classes != default:
            raise CheckpointError(f"torchvision:{arch}'s pretrained weights have {default} "
                                  f"classes, not {num_classes}: drop num_classes, or pass "
                                  "checkpoint=FILE with weights for that head")
    try:
        return _build(library, arch, True, num_classes, options)
    except (OSError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        cache = "$TORCH_HOME/hub/checkpoints" if library == "torchvision" else "$HF_HOME"
        raise CheckpointError(
            f"cannot get {library}:{arch}'s pretrained weights ({reason}): the library downloads "
            f"them into its cache ({cache}) on first use, which needs internet; or pass "
            "checkpoint=FILE (--checkpoint)") from None


def preprocessing(library: str, arch: str, model: nn.Module, pretrained: bool
                  ) -> tuple[tuple[float, ...], tuple[float, ...], tuple[int, int, int]]:
    """(mean, std, input_size) the library model expects.

    torchvision: the default weights' ``transforms()`` (crop size; mean and std when
    ``pretrained``, else ImageNet's); timm: ``timm.data.resolve_data_config({}, model=model)``
    (the model's ``pretrained_cfg``).
    """
    if library == "timm":
        cfg = _timm().data.resolve_data_config({}, model=model)
        return tuple(cfg["mean"]), tuple(cfg["std"]), tuple(cfg["input_size"])
    from torchvision import models

    transforms = models.get_model_weights(arch).DEFAULT.transforms()
    size = int(transforms.crop_size[0])
    if pretrained:
        return tuple(transforms.mean), tuple(transforms.std), (3, size, size)
    return IMAGENET_MEAN, IMAGENET_STD, (3, size, size)


def gradcam_path(library: str, model: nn.Module) -> str | None:
    """Path (in the library model) of GradCAM's layer: the last convolutional stage.

    timm: ``feature_info[-1]["module"]``. torchvision: ResNets ``layer4``; VGG and AlexNet the
    last ``nn.Conv2d`` in ``features``; DenseNet ``features``; MobileNet, EfficientNet and
    ConvNeXt the last stage of ``features``. None for other torchvision architectures (GradCAM
    then takes the last ``nn.Conv2d``; ``--set gradcam.layer=PATH`` chooses another).
    """
    if library == "timm":
        info = getattr(model, "feature_info", None)
        try:
            return str(info[-1]["module"]) if info else None
        except (TypeError, KeyError, IndexError):
            return None
    rule = _TV_GRADCAM.get(type(model).__name__)
    features = getattr(model, "features", None)
    if rule is None or (rule != "layer4" and not isinstance(features, nn.Sequential)):
        return None
    if rule == "last:features":
        return f"features.{len(features) - 1}"
    return rule


def split_kind(library: str, model: nn.Module, probe: nn.Module | None,
               input_size: tuple[int, int, int]) -> str | None:
    """How the library model splits into ``forward_features`` / ``forward_head``, or None.

    timm: its own ``forward_features`` / ``forward_head`` when the features are a map
    (B, num_features, h, w) on a meta-device forward of ``probe`` at ``input_size`` (not a ViT's
    tokens, not a channels-last map). torchvision: ResNets (conv1..layer4 | avgpool, flatten,
    fc) and VGG, AlexNet, EfficientNet, MobileNetV3 (features | avgpool, flatten, classifier),
    as their ``forward`` does. Others have no clean split: DiFull skips them with its reason.
    """
    if library == "torchvision":
        name = type(model).__name__
        if name == "ResNet":
            return "resnet"
        return "features-pool-flatten" if name in _TV_POOL_FLATTEN else None
    if probe is None or not callable(getattr(probe, "forward_head", None)):
        return None
    try:
        with torch.no_grad():
            f = probe.forward_features(torch.zeros(1, *input_size, device="meta"))
    except Exception:  # noqa: BLE001 - the library cannot run on meta: no split offered
        return None
    channels = getattr(probe, "num_features", None)
    four_d = isinstance(f, torch.Tensor) and f.dim() == 4
    return "timm" if four_d and f.shape[1] == channels else None


# ----------------------------------------------------------------------------- checkpoints


def _classifier_path(model: nn.Module) -> str | None:
    """The head's ``nn.Linear`` path: timm's ``get_classifier()``, else the last Linear."""
    if callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()
        for path, module in model.named_modules():
            if module is head and isinstance(module, nn.Linear):
                return path
    linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def head_classes(model: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of ``state``'s head (``model``'s classifier path), or None if unknown."""
    path = _classifier_path(model)
    weight = state.get(f"{path}.weight") if path is not None else None
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 \
        else None


def _meta_build(library: str, arch: str, num_classes: int | None,
                options: dict[str, Any]) -> nn.Module | None:
    """The library model (random init) on the meta device: no memory, no weights; None if the
    library cannot build it there (e.g. torchvision's RegNets read values in ``__init__``)."""
    try:
        with torch.device("meta"):
            return _build(library, arch, False, num_classes, options).eval()
    except SettingError:
        raise
    except Exception:  # noqa: BLE001 - any failure on meta only means: no probe
        return None

# ----------------------------------------------------------------------------- the factory


def check_output(model: LibraryModel) -> int | None:
    """``protocols.check_logits`` on a meta-device forward of one (1, *input_size) input;
    returns the output's class count K (None when not checked).

    The values are unknown on meta, so only the type and shape are checked (the probabilities
    check needs values); a model that cannot run on meta is not checked here (the runner checks
    every model's output on a real image before it starts).
    """
    x = torch.zeros(1, *model.input_size, device="meta")
    try:
        with torch.no_grad():
            output = model.eval()(x)
    except Exception:  # noqa: BLE001 - the library cannot run on meta: skip the check
        return None
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        protocols.check_logits(output, 1, model)  # raises: not (B, K) logits
    protocols.check_logits(output[:, :1], 1, model)  # no values on meta: the value-free checks
    return int(output.shape[1])


def create_library_model(library: str, arch: str, pretrained: bool = False,
                         checkpoint: str | Path | None = None, num_classes: int | None = None,
                         sha256: str | None = None, weights_root: str | Path | None = None,
                         **options: Any) -> LibraryModel:
    """``library``'s classifier ``arch`` wrapped in a :class:`LibraryModel`, in eval mode.

    ``pretrained``: the library's default weights (its own cache; needs internet the first
    time); ``checkpoint``: a local state dict of the library model (wins over ``pretrained``),
    ``sha256`` its expected digest; ``num_classes``: a K-class head, random init (default: the
    library's 1000, or the checkpoint's head size); ``weights_root`` is ignored (the zoo's
    folder; library weights live in the library's cache); ``options`` go to the library's
    constructor (e.g. ``drop_rate=0.1`` for timm).
    """
    del weights_root
    check_arch(library, arch)
    state, digest = None, None
    if checkpoint is not None:
        state = read_state_dict(checkpoint, sha256)
        digest = sha256.lower() if sha256 else sha256_file(checkpoint)
        if num_classes is None:
            probe = _meta_build(library, arch, None, options)
            num_classes = head_classes(probe, unwrap_state(state, probe)) if probe else None
    use_pretrained = pretrained and checkpoint is None
    model = (_build_pretrained(library, arch, num_classes, options) if use_pretrained
             else _build(library, arch, False, num_classes, options))
    if state is not None:
        load_into(model, state, checkpoint)
    probe = _meta_build(library, arch, num_classes, options)
    mean, std, size = preprocessing(library, arch, model, use_pretrained)
    split = split_kind(library, model, probe, size)
    wrapper_cls = SplitLibraryModel if split else LibraryModel
    spec = dict(library=library, arch=arch, mean=mean, std=std, input_size=size,
                gradcam_path=gradcam_path(library, model), split=split)
    classes = None
    if probe is not None:
        with torch.device("meta"):
            classes = check_output(wrapper_cls(probe, num_classes=0, **spec))
    weights = (str(checkpoint) if checkpoint is not None
               else weights_name(library, arch, model) if use_pretrained else "random")
    return wrapper_cls(model, num_classes=classes or num_classes or _class_count(model),
                       weights=weights, checkpoint_sha256=digest, **spec).eval()


def weights_name(library: str, arch: str, model: nn.Module) -> str:
    """The pretrained weights' name: torchvision's enum member (``ResNet50_Weights.IMAGENET1K_V2``),
    timm's ``arch.tag`` (``resnet18.a1_in1k``)."""
    if library == "torchvision":
        from torchvision import models

        return str(models.get_model_weights(arch).DEFAULT)
    tag = (getattr(model, "pretrained_cfg", None) or {}).get("tag")
    return f"{arch.split('.')[0]}.{tag}" if tag else arch


def _class_count(model: nn.Module) -> int:
    """K when no forward could tell: ``num_classes`` (timm, SqueezeNet), else the head's (last
    ``nn.Linear``) ``out_features``."""
    count = getattr(model, "num_classes", None)
    if isinstance(count, int):
        return count
    path = _classifier_path(model)
    if path is None:
        raise AttribBenchError(f"cannot tell {model_label(model)}'s class count: pass "
                               "num_classes=K")
    return int(model.get_submodule(path).out_features)


MODELS.register_prefix(
    "torchvision", functools.partial(create_library_model, "torchvision"),
    "torchvision.models.get_model(NAME), e.g. torchvision:resnet50",
    family="library", library="torchvision")
MODELS.register_prefix(
    "timm", functools.partial(create_library_model, "timm"),
    f"timm.create_model(NAME), e.g. timm:resnet18 ({TIMM_MISSING})",
    family="library", library="timm")
