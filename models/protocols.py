"""What a model must offer, and the optional capabilities methods and metrics ask it for.

**Required.** A model is a callable (an ``nn.Module``): RGB images (B, 3, H, W), float, values in
[0, 1] → **logits** (B, K), one real score per class, before any sigmoid or softmax. Models
normalise their inputs themselves (the ResNet-56's mean/std, the CoDA-Nets' [r, g, b, 1−r, 1−g,
1−b] encoding live inside the model). :func:`check_logits` is the door check every method and
metric applies to a model's output.

**Optional capabilities** (duck-typed attributes; :data:`CAPABILITIES` lists them, and
:func:`capabilities` says which a model has). The names are the field's where one exists:

========================  ======================================================================
``probability``           "sigmoid" or "softmax": how the logits become class probabilities, i.e.
                          the output space the model was trained in (sigmoid for the BCE-trained
                          CoDA-Nets, softmax for cross-entropy models). Absent: "softmax" (the
                          usual classifier). Pixel removal, RISE and LIME score the target with
                          it (:func:`probability`, :func:`to_probability`, :func:`scores`).
``contributions``         ``contributions(x, target) -> (B, C', H, W)``: model-inherent
                          contribution maps that sum to the target logit minus the model's bias
                          (CoDA-Nets: W0→L(x) ⊙ x on the encoded input). Method ``inherent``.
``gradcam_layer``         the ``nn.Module`` whose output GradCAM weighs (the last DAU layer, a
                          ResNet's last stage). Method ``gradcam`` (a ``layer`` setting overrides).
``forward_features``      ``forward_features(x) -> (B, C, h, w)`` and ``forward_head(f) -> (B, K)``
``forward_head``          with ``forward_head(forward_features(x)) == forward(x)``: timm's split,
                          which the DiFull grid needs (each cell's features computed alone).
``encode``                ``encode(x) -> (B, C', H, W)`` and ``forward_encoded(z) -> (B, K)``: an
``forward_encoded``       input space of the model's own, in which pixel removal's
                          "encoded-zero" baseline zeroes a pixel (the CoDA-Nets' six channels;
                          their default baseline).
``temperature``           a float: the CoDA-Nets' logit temperature T (the T-series figures).
``head_pooling``          "sum" or "mean": how the head pools the evidence map into a logit
                          (absent: "sum"); DiFull scales the grid's contribution maps by it
                          (:func:`head_pooling`).
``linear_map``            ``forward_with_linear_map(x, target) -> (logits, W0→L(x))``: the
                          dynamic linear map, for ``train --lambda`` (:func:`linear_map`).
``keep_projection``       a *layer's* switch (the DAU layers'): True keeps A_oᵀp from the forward
                          for the backward, faster training for more activation memory;
                          ``train`` turns it on in every layer that has it
                          (:func:`keep_projections`).
========================  ======================================================================

Methods and metrics ask through the functions here, never by their own ``hasattr``.

**Scores.** What a perturbation method or metric follows for the target class is a
:data:`Score`: a probability ("sigmoid", "softmax") or the raw "logit". :func:`resolve_score`
turns a ``score`` setting (None: the model's own :func:`probability`) into one, and
:func:`scores` computes it; RISE, LIME and pixel removal all go through these two.
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from attrib_bench.core.checks import model_label
from attrib_bench.core.errors import ModelOutputError, SettingError

Probability = Literal["sigmoid", "softmax"]
PROBABILITIES: tuple[str, ...] = ("sigmoid", "softmax")
#: How a target is scored: a probability (:data:`PROBABILITIES`) or the raw logit.
Score = Literal["sigmoid", "softmax", "logit"]
#: The :data:`Score` values in the order error messages list them.
SCORES: tuple[str, ...] = ("softmax", "sigmoid", "logit")

#: capability → the attributes that make it (all must be present) and what it is for.
CAPABILITIES: dict[str, tuple[tuple[str, ...], str]] = {
    "probability": (("probability",), "how logits become probabilities (sigmoid or softmax)"),
    "contributions": (("contributions",), "model-inherent contribution maps (method inherent)"),
    "gradcam_layer": (("gradcam_layer",), "the layer GradCAM uses by default"),
    "features_head": (("forward_features", "forward_head"),
                      "a features/head split (DiFull grid localisation)"),
    "encoded_input": (("encode", "forward_encoded"),
                      "an encoded input space (pixel removal's encoded-zero baseline)"),
    "temperature": (("temperature",), "the logit temperature T (temperature figures)"),
    "head_pooling": (("head_pooling",),
                     "how the head pools its evidence map: 'sum' or 'mean' (DiFull's grids)"),
    "linear_map": (("forward_with_linear_map",),
                   "logits with the dynamic linear map W0→L(x) (train's --lambda term)"),
    "keep_projection": (("keep_projection",),
                        "a layer that can keep A_oᵀp for the backward (training speed)"),
}
#: The values of the ``head_pooling`` capability; absent means "sum".
HEAD_POOLINGS: tuple[str, ...] = ("sum", "mean")


def unwrap(model: object) -> object:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` wrappers (``.module``,
    nested too), else ``model``. Those wrappers only split a batch across GPUs: the numbers
    are the inner model's, so its capabilities and probability are what count. (A
    ``torch.compile`` module forwards attribute look-ups to the model itself already.)"""
    wrappers = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def has(model: object, capability: str) -> bool:
    """Whether ``model`` (or the model inside a DataParallel wrapper, :func:`unwrap`) offers
    ``capability`` (a key of :data:`CAPABILITIES`)."""
    attributes, _ = CAPABILITIES[capability]
    inner = unwrap(model)
    return all(getattr(inner, a, None) is not None for a in attributes)


def capabilities(model: object) -> list[str]:
    """The capabilities ``model`` offers, in :data:`CAPABILITIES` order."""
    return [name for name in CAPABILITIES if has(model, name)]


def checkpoint_sha256(model: object) -> str | None:
    """The sha256 of the weights file ``model`` (or a DataParallel's module, :func:`unwrap`)
    says it was loaded from: its ``checkpoint_sha256`` (a torchvision:/timm: model built
    with a checkpoint, :class:`~attrib_bench.models.library.LibraryModel`), else None. The
    run manifest records it for a module given to ``run()``, whose weights file the runner
    does not see."""
    return getattr(unwrap(model), "checkpoint_sha256", None) or None


def _declared(model: object, attribute: str, choices: tuple[str, ...], default: str) -> str:
    """``model``'s (or its DataParallel's module's) ``attribute`` if it is one of ``choices``,
    ``default`` if absent; one :class:`ModelOutputError` line for anything else."""
    declared = getattr(unwrap(model), attribute, None)
    if declared is None:
        return default
    if declared not in choices:
        raise ModelOutputError(f"{model_label(model)}: {attribute} must be "
                               f"{' or '.join(map(repr, choices))}, got {str(declared)[:40]!r}")
    return declared


def probability(model: object) -> Probability:
    """How ``model``'s logits become probabilities: its ``probability``, else "softmax".

    Raises :class:`ModelOutputError` if the model declares something else.
    """
    return _declared(model, "probability", PROBABILITIES, "softmax")  # type: ignore[return-value]


def head_pooling(model: object) -> str:
    """How ``model``'s head pools its spatial evidence into a logit: its ``head_pooling``
    ("mean": B-cos's global average pool), else "sum" (the CoDA-Nets). DiFull divides a grid's
    contribution maps by the cell count for "mean". Raises :class:`ModelOutputError` for any
    other declared value."""
    return _declared(model, "head_pooling", HEAD_POOLINGS, "sum")


def linear_map(model: object, x: torch.Tensor,
               target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s logits (B, K) and dynamic linear map W0→L(x) of class ``target`` (B,) for
    images ``x`` (B, 3, H, W) in [0, 1], from one forward pass: its ``forward_with_linear_map``
    (the ``linear_map`` capability; a DataParallel wrapper's module's). The map has the shape of
    the model's encoded input (a CoDA-Net's (B, 6, H, W)) and is attached to the parameters
    (``train --lambda`` penalises its mean absolute value). Raises :class:`ModelOutputError`
    (one line) if the model has none."""
    if not has(model, "linear_map"):
        raise ModelOutputError(f"{model_label(model)} has no forward_with_linear_map (the "
                               "linear_map capability, a CoDA-Net's W0→L(x))")
    return unwrap(model).forward_with_linear_map(x, target)


def keep_projections(model: torch.nn.Module, keep: bool = True) -> int:
    """Set ``keep_projection`` on every layer of ``model`` that offers it (the DAU layers:
    True keeps A_oᵀp from the forward for the backward, speed over activation memory);
    returns how many layers have it (0 for a model without DAU layers)."""
    layers = [layer for layer in model.modules() if has(layer, "keep_projection")]
    for layer in layers:
        layer.keep_projection = keep
    return len(layers)


def to_probability(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits (N, K) → probabilities (N, K) by ``kind`` ("sigmoid" or "softmax").

    Raises :class:`ModelOutputError` for "softmax" over one logit (K = 1), which is 1 whatever
    the input: a score that cannot vary would make every map and curve look alike."""
    if kind != "sigmoid" and logits.dim() == 2 and logits.shape[1] == 1:
        raise ModelOutputError(ONE_LOGIT)
    return logits.sigmoid() if kind == "sigmoid" else logits.softmax(dim=1)


def scores(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Logits (N, K) → scores (N, K) by ``kind`` (a :data:`Score`): the logits themselves (the
    same tensor) for "logit", else the probabilities of :func:`to_probability`."""
    return logits if kind == "logit" else to_probability(logits, kind)


def resolve_score(score: object, model: object, owner: str,
                  error: type[Exception] = SettingError) -> Score:
    """A ``score`` setting checked: one of :data:`SCORES`, or None for ``model``'s own
    :func:`probability` ("sigmoid" for the BCE-trained CoDA-Nets, "softmax" when undeclared).

    ``owner`` starts the message ("method 'rise'"); ``error`` is the class raised for a value
    outside :data:`SCORES` (one line naming the choices), e.g. MethodError for a method,
    MetricError for a metric. ``model`` None: there is no model to ask (a caller that has only
    a forward function), so None is refused too.
    """
    if score is None and model is not None:
        return probability(model)
    if not isinstance(score, str) or score not in SCORES:
        shown = repr(score) if len(repr(score)) <= 40 else repr(score)[:37] + "..."
        fix = ", or None for the model's own probability" if model is not None else ""
        raise error(f"{owner}: score must be one of {', '.join(SCORES)}{fix}, got {shown}")
    return score  # type: ignore[return-value]


def probability_label(kind: str) -> str:
    """How plots and tables name the score: "sigmoid probability of the target"."""
    return f"{kind} probability of the target"


def describe_output(output: Any) -> str:
    """A bounded description of a model output: types and shapes, never a tensor's values."""
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)} ({output.dtype})"
    if isinstance(output, (tuple, list)):
        parts = [describe_output(o) if isinstance(o, torch.Tensor) else type(o).__name__
                 for o in output[:4]]
        more = f", … ({len(output)} items)" if len(output) > 4 else ""
        text = f"a {type(output).__name__} of [{', '.join(parts)}{more}]"
        return text if len(text) <= 160 else text[:157] + "..."
    if isinstance(output, dict):
        keys = ", ".join(repr(k)[:20] for k in list(output)[:5])
        return f"a dict with keys [{keys}{', …' if len(output) > 5 else ''}]"
    return f"a {type(output).__name__}"


#: Why a one-logit model needs a declared sigmoid, and the fix.
ONE_LOGIT = ("one logit per image (K = 1): its softmax is 1 for every input, so every score "
             "would be constant; return two logits (e.g. torch.cat([-z, z], 1) / 2), or declare "
             "model.probability = 'sigmoid' and explain target 0")


def check_logits(output: Any, batch: int, model: object = None) -> torch.Tensor:
    """``output`` if it is (batch, K) floating logits; one :class:`ModelOutputError` line if not.

    Refused: a tuple/list/dict (e.g. (logits, features): return the logits only, or wrap the
    model), a shape other than (B, K), one logit (K = 1) unless the model declares
    ``probability = "sigmoid"`` (:data:`ONE_LOGIT`), and **probabilities**: every row
    non-negative and summing to 1 (a final softmax; attribution benchmarks explain logits). A
    model whose logits happen to look like that (K ≥ 2, all rows) is practically impossible.
    """
    name = model_label(model) if model is not None else "the model"
    if not isinstance(output, torch.Tensor):
        raise ModelOutputError(f"{name} returned {describe_output(output)}; attrib-bench needs "
                               "logits (B, K): return only the logits (wrap the model in a "
                               "module whose forward picks them)")
    if output.dim() != 2 or output.shape[0] != batch:
        raise ModelOutputError(f"{name} returned {describe_output(output)} for {batch} images; "
                               f"attrib-bench needs logits of shape ({batch}, K)")
    if not output.is_floating_point():
        raise ModelOutputError(f"{name} returned {output.dtype} values; logits must be floating "
                               "point")
    if output.shape[1] == 1 and not output.is_meta and probability(model) != "sigmoid":
        raise ModelOutputError(f"{name}: {ONE_LOGIT}")
    if output.shape[1] >= 2 and output.shape[0] > 0:
        values = output.detach()
        sums = values.double().sum(dim=1)
        if bool((values >= 0).all()) and bool(((sums - 1).abs() < 1e-4).all()):
            raise ModelOutputError(f"{name} returns probabilities (rows are non-negative and sum "
                                   "to 1): attrib-bench needs logits; remove the final softmax "
                                   "(and declare model.probability = 'softmax')")
    return output
