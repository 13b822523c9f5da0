"""What every attribution method checks at the door, and the models a method cannot handle.

Inputs outside RGB [0, 1], in another dtype than the model, empty batches; model outputs that
are not (B, K) logits (a tuple, probabilities); DeepLift on a reused ReLU; GradCAM's layer on any
convolutional model; RISE's and LIME's score from the model's declared probability. Tiny random
models at 16 px (resnet18 at 32 px), cheap method settings: the file runs in seconds.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrib_bench.core.checks import check_range
from attrib_bench.core.errors import (
    InputShapeError,
    MethodError,
    ModelOutputError,
    NotApplicableError,
    TargetError,
)
from attrib_bench.core.registry import METHODS, create_method
from attrib_bench.methods import LIME, RISE, GradCAM
from attrib_bench.models import protocols

#: Cheap settings, so that looping over every method stays fast.
CHEAP = {"rise": {"n_masks": 8}, "lime": {"num_samples": 8}, "intgrad": {"n_steps": 2}}

SIZE = 16


class TinyNet(nn.Module):
    """A torchvision-style CNN (features / avgpool / classifier) that counts its forwards.

    ``output``: "logits" (a proper model), "tuple" ((logits, features)) or "softmax"
    (probabilities). It has ``contributions`` (input × gradient), so ``inherent`` applies too.
    """

    def __init__(self, output: str = "logits", classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, classes)
        self.output, self.calls = output, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        f = self.features(x)
        logits = self.classifier(torch.flatten(self.avgpool(f), 1))
        if self.output == "tuple":
            return logits, f
        if self.output == "softmax":
            return logits.softmax(dim=1)
        return logits

    def contributions(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = x.detach().requires_grad_(True)
        logits = self(x)
        chosen = (logits[0] if isinstance(logits, tuple) else logits).gather(1, target[:, None])
        (grad,) = torch.autograd.grad(chosen.sum(), x)
        return grad * x


def _tiny(output: str = "logits", dtype: torch.dtype = torch.float32) -> TinyNet:
    torch.manual_seed(0)
    return TinyNet(output).to(dtype).eval()


def _images(batch: int = 2, size: int = SIZE, dtype: torch.dtype = torch.float32,
            seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                      dtype=dtype)


def _build(name: str, model: nn.Module, **hparams):
    try:
        return create_method(name, model, **{"max_batch": 16, **CHEAP.get(name, {}), **hparams})
    except NotApplicableError as exc:  # e.g. inherent on a model without contributions
        pytest.skip(f"does not apply: {exc}")


ALL = METHODS.names()


# ---------------------------------------------------------------------------------------------
# The control: proper inputs work in every method (so the refusals below are not accidents)


@pytest.mark.parametrize("name", ALL)
def test_every_method_explains_a_proper_batch(name):
    model = _tiny()
    maps = _build(name, model).attribute(_images(), torch.tensor([1, 2]))
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all()
    assert model.calls > 0


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize("name", ALL)
def test_out_of_range_inputs_are_refused_before_the_model_runs(one_line, name):
    model = _tiny()
    method = _build(name, model)
    x, t = _images(), torch.tensor([1, 2])
    for bad, fix in ((x * 255, "divide by 255"), (x * 2 - 1, "normalise inside the model")):
        model.calls = 0
        with pytest.raises(InputShapeError) as info:
            method.attribute(bad, t)
        one_line(info.value, "[0, 1]", fix)
        assert model.calls == 0


def test_check_range_tolerance_and_messages(one_line):
    x = _images(1)
    assert check_range(x) is x
    assert check_range(x.clamp(1e-3, 1 - 1e-3) + 5e-7) is not None  # within the tolerance
    assert check_range(torch.zeros(0, 3, 4, 4) - 5).shape[0] == 0  # empty: nothing to check
    cases = ((x * 255, "divide by 255"), (x - 0.5, "normalise inside the model"),
             ((x - 0.45) / 0.25, "normalise inside the model"), (x * 1.5, "clamp"),
             (torch.cat([x.flatten(), torch.tensor([1 + 2e-6])]), "clamp"))
    for bad, fix in cases:
        with pytest.raises(InputShapeError) as info:
            check_range(bad)
        one_line(info.value, fix, f"[{bad.min().item():.4g}, {bad.max().item():.4g}]")


@pytest.mark.parametrize("name", ALL)
def test_inputs_in_another_dtype_than_the_model_are_one_line(one_line, name):
    model = _tiny()
    method = _build(name, model)
    t = torch.tensor([1, 2])
    with pytest.raises(InputShapeError) as info:
        method.attribute(_images(dtype=torch.float64), t)
    one_line(info.value, "torch.float64", "torch.float32", "inputs.float()", "model.double()")
    assert model.calls == 0
    double = _build(name, _tiny(dtype=torch.float64))
    with pytest.raises(InputShapeError) as info:
        double.attribute(_images(), t)
    one_line(info.value, "inputs.double()", "model.float()")


@pytest.mark.parametrize("name", ALL)
def test_an_empty_batch_gives_an_empty_map_without_running_the_model(one_line, name):
    for dtype in (torch.float32, torch.float64):
        model = _tiny(dtype=dtype)
        method = _build(name, model)
        x = _images(0, size=12, dtype=dtype)
        for target in (torch.zeros(0, dtype=torch.long), 3):
            maps = method.attribute(x, target)
            assert maps.shape == (0, 12, 12) and maps.dtype == dtype
        assert model.calls == 0
        with pytest.raises(TargetError) as info:  # the target's shape is still checked
            method.attribute(x, torch.tensor([1]))
        one_line(info.value, "shape (0,)")


# ---------------------------------------------------------------------------------------------
# The model's output


@pytest.mark.parametrize("name", ALL)
def test_a_tuple_output_is_one_short_line(one_line, name):
    method = _build(name, _tiny("tuple"))
    with pytest.raises(ModelOutputError) as info:
        method.attribute(_images(), torch.tensor([1, 2]))
    message = one_line(info.value, "TinyNet", "tuple", "logits")
    assert "tensor(" not in message  # shapes, never values


@pytest.mark.parametrize("name", ALL)
def test_a_model_ending_in_softmax_is_refused(one_line, name):
    method = _build(name, _tiny("softmax"))
    with pytest.raises(ModelOutputError) as info:
        method.attribute(_images(), torch.tensor([1, 2]))
    one_line(info.value, "probabilities", "softmax")


def test_a_wrong_output_shape_is_one_line(one_line):
    class Flat(nn.Module):
        def forward(self, x):
            return x.mean(1)  # (B, H, W)

    with pytest.raises(ModelOutputError) as info:
        create_method("grad", Flat()).attribute(_images(), torch.tensor([1, 2]))
    one_line(info.value, "(1, K)", "(1, 16, 16)")


# ---------------------------------------------------------------------------------------------
# RISE and LIME score the target with the model's own probability unless told otherwise


class Declared(TinyNet):
    probability = "sigmoid"


@pytest.mark.parametrize("cls", [RISE, LIME])
def test_score_none_is_the_models_declared_probability(one_line, cls):
    torch.manual_seed(0)
    sigmoid_model = Declared().eval()
    assert protocols.probability(sigmoid_model) == "sigmoid"
    assert cls(sigmoid_model).score == "sigmoid"
    assert cls(_tiny()).score == "softmax"  # undeclared
    assert cls(sigmoid_model, score="logit").score == "logit"
    assert cls(sigmoid_model, score="softmax").score == "softmax"
    assert create_method(cls.name, sigmoid_model, score=None).score == "sigmoid"
    sigmoid_model.probability = "tanh"
    with pytest.raises(ModelOutputError) as info:
        cls(sigmoid_model)
    one_line(info.value, "'sigmoid' or 'softmax'")


def test_rise_with_the_default_score_explains_the_declared_probability():
    torch.manual_seed(0)
    model = Declared().eval()
    x, t = _images(1), torch.tensor([3])
    hparams = {"n_masks": 8, "max_batch": 16}
    default = create_method("rise", model, **hparams).attribute(x, t)
    sigmoid = create_method("rise", model, score="sigmoid", **hparams).attribute(x, t)
    softmax = create_method("rise", model, score="softmax", **hparams).attribute(x, t)
    torch.testing.assert_close(default, sigmoid, rtol=0, atol=0)
    assert not torch.allclose(default, softmax)


# ---------------------------------------------------------------------------------------------
# DeepLift on a model that calls one ReLU module twice


class ReusedReLU(nn.Module):
    """The case script's model: one nn.ReLU module, called twice per forward."""

    def __init__(self, separate: bool = False) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.act2 = nn.ReLU() if separate else self.act
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.c2(self.act(self.c1(x))))
        return self.fc(h.mean((2, 3)))


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
def test_deeplift_on_a_reused_relu_is_one_not_applicable_line(one_line):
    torch.manual_seed(0)
    x, t = _images(), torch.tensor([1, 2])
    method = create_method("deeplift", ReusedReLU().eval())
    for call in (lambda: method.attribute(x, t), lambda: method.preflight(x[:1], t[:1])):
        with pytest.raises(NotApplicableError) as info:
            call()
        one_line(info.value, "'act'", "2 times", "give each use its own nn.ReLU module")
    # The fix named in the message works, and matches captum.
    from captum.attr import DeepLift

    torch.manual_seed(0)
    fixed = ReusedReLU(separate=True).eval()
    method = create_method("deeplift", fixed)
    method.preflight(x[:1], t[:1])
    maps = method.attribute(x, t)
    reference = DeepLift(fixed).attribute(x.clone().requires_grad_(True),
                                          baselines=torch.zeros_like(x), target=t).sum(1)
    torch.testing.assert_close(maps, reference.detach())


@pytest.mark.filterwarnings("ignore:Setting forward, backward hooks")
def test_deeplift_checks_each_image_shape_once_and_wraps_captum_errors(one_line, monkeypatch):
    torch.manual_seed(0)
    model = ReusedReLU(separate=True).eval()
    method = create_method("deeplift", model)
    runs = []
    original = method.preflight
    monkeypatch.setattr(method, "preflight", lambda x, t: (runs.append(x.shape), original(x, t)))
    t = torch.tensor([1, 2])
    method.attribute(_images(), t)
    method.attribute(_images(seed=1), t)
    method.attribute(_images(size=12), t)
    assert [tuple(s) for s in runs] == [(1, 3, 16, 16), (1, 3, 12, 12)]
    # A captum RuntimeError that the check does not catch is one bounded MethodError line.
    model.act2 = model.act  # reused again, but this shape has passed the check already
    with pytest.raises(MethodError) as info:
        method.attribute(_images(), t)
    assert not isinstance(info.value, NotApplicableError)
    one_line(info.value, "deeplift", "captum", limit=400)


# ---------------------------------------------------------------------------------------------
# GradCAM on any convolutional model


def _gradcam_reference(model: nn.Module, layer: nn.Module, x: torch.Tensor, t: torch.Tensor):
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
    return LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="nearest")[:, 0]


def test_gradcam_layer_by_path_equals_captum_on_that_module():
    model, x, t = _tiny(), _images(), torch.tensor([1, 2])
    method = create_method("gradcam", model, layer="features.3")
    assert method.layer is model.features[3] and method.layer_name == "features.3"
    maps = method.attribute(x, t)
    reference = _gradcam_reference(model, model.features[3], x, t).detach()
    assert reference.abs().max() > 0
    torch.testing.assert_close(maps, reference)
    by_module = create_method("gradcam", model, layer=model.features[3])
    assert by_module.layer_name == "features.3"


def test_gradcam_wrong_layer_is_one_line_listing_the_conv_layers(one_line):
    model = _tiny()
    with pytest.raises(MethodError) as info:
        create_method("gradcam", model, layer="features.9")
    one_line(info.value, "'features.9'", "features.0", "features.3")
    with pytest.raises(MethodError) as info:
        create_method("gradcam", model, layer=nn.Conv2d(3, 3, 1))  # not the model's
    one_line(info.value, "not a module of TinyNet")
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    with pytest.raises(MethodError) as info:
        create_method("gradcam", resnet, layer="layer5")
    message = one_line(info.value, "'layer5'", "conv1", "…", limit=600)
    assert "layer4.1.conv2" not in message  # bounded: the first few candidates only


def test_gradcam_default_layers():
    import torchvision

    tiny = _tiny()
    assert create_method("gradcam", tiny).layer_name == "features"

    class Declared(TinyNet):
        @property
        def gradcam_layer(self):
            return self.features[0]

    assert create_method("gradcam", Declared()).layer_name == "features.0"

    class TimmStyle(TinyNet):
        feature_info = [{"module": "features.0"}, {"module": "features.3"}]

    assert create_method("gradcam", TimmStyle()).layer_name == "features.3"

    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.fc = nn.Linear(4, 10)

        def forward(self, x):
            return self.fc(self.b(self.a(x)).mean((2, 3)))

    plain = Plain()
    method = create_method("gradcam", plain)
    assert method.layer is plain.b and method.layer_name == "b"

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    method = create_method("gradcam", resnet)
    assert method.layer is resnet.layer4 and method.layer_name == "layer4"
    x, t = _images(1, size=32), torch.tensor([7])
    maps = method.attribute(x, t)
    assert maps.shape == (1, 32, 32)
    torch.testing.assert_close(maps, _gradcam_reference(resnet, resnet.layer4, x, t).detach())


def test_gradcam_without_a_conv_is_not_applicable(one_line):
    class NoConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 10)

        def forward(self, x):
            return self.fc(x.mean((2, 3)))

    assert GradCAM.requires == ()
    with pytest.raises(NotApplicableError) as info:
        create_method("gradcam", NoConv())
    one_line(info.value, "NoConv", "nn.Conv2d", "layer=")
