"""Every registered model keeps the promises its capabilities make (models/protocols.py), and every
registered metric is described, ranked and typed the way the runner and the listings expect.

All models are built on the meta device (no memory, no init cost) for the declarations; the
forward checks run on the small ones (the xs CoDA-Nets and the ResNet-56), untrained, in float64,
on two random 32 px images.
"""

from __future__ import annotations

import math
import re
import typing

import pytest
import torch
from torch import nn

from attrib_bench.core.errors import MetricError, ModelOutputError, SettingError
from attrib_bench.core.hparams import convert, hparams_of, resolve
from attrib_bench.core.registry import METRICS, MODELS
from attrib_bench.metrics.base import Metric
from attrib_bench.models import protocols

MODEL_NAMES = MODELS.names()
#: Models small enough for forward checks at 32 px on a CPU (float64, untrained).
SMALL = [n for n in MODEL_NAMES if n == "resnet56" or n.startswith("xs-coda")]
#: The probability each family was trained for: BCE (one-vs-rest) or cross-entropy.
FAMILY_PROBABILITY = {"coda": "sigmoid", "resnet": "softmax"}


def _meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return MODELS.create(name, pretrained=False)


def _small(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODELS.create(name, pretrained=False).double().eval()


def _images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def test_the_small_models_are_registered():
    assert {"xs-coda", "resnet56"} <= set(SMALL)


# ----------------------------------------------------------------------------- declarations


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_declared_capabilities_have_the_promised_kind(name):
    model = _meta(name)
    has = protocols.capabilities(model)
    if "probability" in has:
        assert model.probability in protocols.PROBABILITIES
    family = MODELS.get(name).metadata.get("family")
    if family in FAMILY_PROBABILITY:
        assert protocols.probability(model) == FAMILY_PROBABILITY[family]
    for capability in ("contributions", "features_head", "encoded_input"):
        if capability in has:
            attributes = protocols.CAPABILITIES[capability][0]
            assert all(callable(getattr(model, a)) for a in attributes), (name, capability)
    if "gradcam_layer" in has:
        layer = model.gradcam_layer
        assert isinstance(layer, nn.Module)
        assert any(m is layer for m in model.modules()), f"{name}: gradcam_layer is not its own"
    if "temperature" in has:
        t = model.temperature
        assert isinstance(t, float) and math.isfinite(t) and t > 0


def test_a_bad_probability_declaration_is_one_line():
    model = nn.Linear(2, 2)
    model.probability = "tanh"
    with pytest.raises(ModelOutputError) as info:
        protocols.probability(model)
    assert "\n" not in str(info.value) and "'sigmoid' or 'softmax'" in str(info.value)


# ----------------------------------------------------------------------------- scores


def test_scores_are_the_logits_or_their_probability():
    """The one scoring helper RISE, LIME and pixel removal use (moved from methods/base)."""
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    assert protocols.scores(logits, "logit") is logits
    torch.testing.assert_close(protocols.scores(logits, "softmax"), logits.softmax(1))
    torch.testing.assert_close(protocols.scores(logits, "sigmoid"), logits.sigmoid())
    assert set(protocols.SCORES) == {*protocols.PROBABILITIES, "logit"}
    assert set(protocols.SCORES) == set(typing.get_args(protocols.Score))


def test_resolve_score_none_is_the_models_probability_and_others_are_one_line():
    declared = nn.Linear(2, 2)
    declared.probability = "sigmoid"
    assert protocols.resolve_score(None, declared, "method 'rise'") == "sigmoid"
    assert protocols.resolve_score(None, nn.Linear(2, 2), "method 'rise'") == "softmax"
    for score in protocols.SCORES:
        assert protocols.resolve_score(score, declared, "method 'rise'") == score
    for bad in ("prob", 1, "x" * 100):
        with pytest.raises(SettingError) as info:  # the default class
            protocols.resolve_score(bad, declared, "method 'rise'")
        message = str(info.value)
        assert "\n" not in message and len(message) < 160
        assert message.startswith("method 'rise': score must be one of softmax, sigmoid, logit, "
                                  "or None for the model's own probability, got ")
    with pytest.raises(MetricError, match="^removal_curves: score must be one of softmax, "
                                          "sigmoid, logit, got None$"):
        protocols.resolve_score(None, None, "removal_curves", MetricError)  # no model to ask


# ----------------------------------------------------------------------------- forward checks


@pytest.mark.parametrize("name", SMALL)
def test_capabilities_agree_with_the_forward_pass(name):
    model = _small(name)
    x = _images()
    has = protocols.capabilities(model)
    called = []
    if "gradcam_layer" in has:
        handle = model.gradcam_layer.register_forward_hook(lambda *a: called.append(True))
    with torch.no_grad():
        logits = protocols.check_logits(model(x), 2, model)
    if "gradcam_layer" in has:
        handle.remove()
        assert called, f"{name}: the forward pass never calls gradcam_layer"
    if "features_head" in has:
        with torch.no_grad():
            split = model.forward_head(model.forward_features(x))
        torch.testing.assert_close(split, logits, rtol=1e-12, atol=1e-12)
    if "encoded_input" in has:
        with torch.no_grad():
            encoded = model.forward_encoded(model.encode(x))
        torch.testing.assert_close(encoded, logits, rtol=1e-12, atol=1e-12)
    if "contributions" in has:
        # completeness: each map sums to its target's logit minus one bias, whatever the target
        rests = []
        for target in (torch.tensor([0, 1]), torch.tensor([3, 3])):
            maps = model.contributions(x, target)
            assert maps.dim() == 4 and maps.shape[0] == 2 and maps.shape[-2:] == x.shape[-2:]
            rests.append(logits.gather(1, target[:, None])[:, 0] - maps.sum(dim=(1, 2, 3)))
        rest = torch.cat(rests)
        bias = getattr(model, "logit_bias", float(rest[0]))
        torch.testing.assert_close(rest, torch.full_like(rest, bias), rtol=1e-9, atol=1e-12)
    probs = protocols.to_probability(logits, protocols.probability(model))
    assert ((probs >= 0) & (probs <= 1)).all()


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_is_described_ranked_and_typed(name):
    factory = METRICS.get(name).factory
    metric = factory()
    assert isinstance(metric, Metric) and metric.name == name
    assert isinstance(metric.description, str) and metric.description.strip()
    assert metric.directions and set(metric.directions.values()) <= {"higher", "lower"}
    for key in metric.directions:
        variant, _, stat = key.rpartition("/")
        assert metric.direction(variant, stat) in ("higher", "lower"), key
    assert metric.direction("", "no-such-stat") == ""
    specs = hparams_of(factory)
    for spec in specs.values():
        assert not re.search(r"\bany\b", spec.type_name), f"{name}.{spec.name} is untyped"
        assert convert(spec.default, spec, name) == spec.default, f"{name}.{spec.name} default"
    # the metric records every resolved hyper-parameter, defaults included
    assert metric.hparams == resolve(f"metric {name!r}", factory, {})


def test_head_pooling_and_linear_map_are_declared_capabilities(one_line):
    """Read through protocols, never by each caller's own getattr (issue 42)."""
    from attrib_bench.models.coda_net import build_coda

    plain = nn.Linear(2, 2)
    assert protocols.head_pooling(plain) == "sum"
    assert not protocols.has(plain, "head_pooling") and not protocols.has(plain, "linear_map")
    plain.head_pooling = "mean"
    assert protocols.head_pooling(nn.DataParallel(plain)) == "mean"
    plain.head_pooling = "max"
    with pytest.raises(ModelOutputError) as error:
        protocols.head_pooling(plain)
    one_line(error, "head_pooling must be 'sum' or 'mean'", "'max'")
    coda = build_coda("xs")
    assert protocols.has(coda, "linear_map") and protocols.head_pooling(coda) == "sum"


def test_checkpoint_sha256_is_read_through_protocols():
    """The weights file a module records (a library model built with a checkpoint), also
    inside DataParallel; None for a module that records none (issue 42)."""
    from attrib_bench.models.library import LibraryModel

    plain = nn.Linear(2, 2)
    assert protocols.checkpoint_sha256(plain) is None
    plain.checkpoint_sha256 = ""
    assert protocols.checkpoint_sha256(plain) is None
    spec = dict(library="torchvision", arch="tiny", mean=(0.5,) * 3, std=(0.25,) * 3,
                input_size=(3, 8, 8), num_classes=2)
    digest = "0123456789abcdef" * 4
    loaded = LibraryModel(nn.Linear(2, 2), **spec, weights="w.pt", checkpoint_sha256=digest)
    assert protocols.checkpoint_sha256(loaded) == digest
    assert protocols.checkpoint_sha256(nn.DataParallel(loaded)) == digest
    assert protocols.checkpoint_sha256(LibraryModel(nn.Linear(2, 2), **spec)) is None
