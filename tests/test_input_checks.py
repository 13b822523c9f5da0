"""Issue 41's input checks: targets of any integer kind, messages that name the model as the user
knows it, and GradCAM's one default-layer rule (the last convolutional block's output).

Tiny random models at 16 px; the file runs in seconds.
"""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import InputShapeError, MethodError, NotApplicableError, TargetError
from attrib_bench.core.registry import create_method
from attrib_bench.methods.gradcam import default_layer

SIZE = 16


def _images(batch: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def _layers() -> list[nn.Module]:
    """conv, ReLU, pool, conv, ReLU: the convolutional part of both model styles below."""
    torch.manual_seed(0)
    return [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()]


class VGGStyle(nn.Module):
    """torchvision's convention: ``features`` (the convolutions) + ``classifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*_layers())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        torch.manual_seed(1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _plain() -> nn.Sequential:
    """The same layers and weights as :class:`VGGStyle`, in one plain ``nn.Sequential``."""
    layers = _layers()
    torch.manual_seed(1)
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


# ---------------------------------------------------------------------------------------------
# 1. Targets: an integer scalar of any kind is a class index; bools and floats are refused


INTEGER_SCALARS = [3, np.int64(3), np.int32(3), np.uint8(3), np.int8(3), np.array(3),
                   np.array(3, dtype=np.uint16), torch.tensor(3),
                   torch.tensor(3, dtype=torch.uint8)]
INTEGER_ARRAYS = [np.array([3, 3]), np.array([3, 3], dtype=np.uint8),
                  torch.tensor([3, 3], dtype=torch.int16),
                  torch.tensor([3, 3], dtype=torch.uint8)]


@pytest.mark.parametrize("target", INTEGER_SCALARS + INTEGER_ARRAYS, ids=repr)
def test_integer_targets_of_any_kind_give_the_python_ints_maps(target):
    """``attribute(x, np.int64(3))`` used to be refused with "got int64"."""
    from attrib_bench.core.checks import check_target

    model = VGGStyle().eval()
    method = create_method("grad", model)
    x = _images()
    expected = method.attribute(x, 3)
    torch.testing.assert_close(method.attribute(x, target), expected, rtol=0, atol=0)
    assert torch.equal(check_target(target, 2, 10), torch.tensor([3, 3]))


@pytest.mark.parametrize(("target", "fix"), [
    (True, "as an int"), (np.bool_(True), "as an int"), (3.0, "int(target)"),
    (np.float64(3), "int(target)"), (np.float32(3.5), "int(target)"),
    (torch.tensor(3.0), "target.long()"), (torch.tensor([1.0, 2.0]), "target.long()"),
    (torch.tensor([True, False]), "target.long()"), (np.array([1.0, 2.0]), "astype(np.int64)"),
    (np.array([True, False]), "astype(np.int64)"), ([1, 2], "torch.tensor(target)"),
    ((1, 2), "torch.tensor(target)"), ("3", "LongTensor")], ids=repr)
def test_bool_float_and_other_targets_are_one_line_naming_the_fix(one_line, target, fix):
    method = create_method("grad", VGGStyle().eval())
    with pytest.raises(TargetError) as info:
        method.attribute(_images(), target)
    one_line(info.value, "class indices", fix)


@pytest.mark.parametrize("target", [2**70, np.uint64(2**64 - 1), -(2**70), 10, -1,
                                    np.array([0, 2**63], dtype=np.uint64),
                                    torch.tensor([0, 2**62])], ids=repr)
def test_out_of_range_targets_are_one_line_never_wrapped(one_line, target):
    """Python ints beyond int64 used to end in torch's RuntimeError (a traceback)."""
    method = create_method("grad", VGGStyle().eval())
    with pytest.raises(TargetError) as info:
        method.attribute(_images(), target)
    one_line(info.value, "class indices")


# ---------------------------------------------------------------------------------------------
# 2. Messages name the model by the name the user gave it, else by its class


def test_a_run_names_the_model_by_its_key_not_its_class(one_line):
    """``run({"tiny-cnn": model}, "inherent", ...)`` said "does not apply to Sequential"."""
    from attrib_bench import ImageSet, run

    generator = torch.Generator().manual_seed(0)
    images = ImageSet(torch.randint(0, 256, (8, 3, SIZE, SIZE), dtype=torch.uint8,
                                    generator=generator),
                      torch.randint(0, 10, (8,), generator=generator),
                      tuple(f"class {k}" for k in range(10)), "noise")
    with tempfile.TemporaryDirectory() as out, pytest.raises(NotApplicableError) as info:
        run({"tiny-cnn": _plain()}, "inherent", "pixel-removal", dataset=images, out=out,
            n_samples=2, progress=False)
    message = one_line(info.value, "model 'tiny-cnn'", "contributions")
    assert "Sequential" not in message


def test_methods_name_the_model_given_by_naming_else_its_class(one_line):
    from attrib_bench.core.checks import model_label, naming

    plain = _plain()
    with pytest.raises(NotApplicableError) as info:
        create_method("inherent", plain)
    one_line(info.value, "does not apply to Sequential")
    with naming("tiny-cnn"), pytest.raises(NotApplicableError) as info:
        create_method("inherent", plain)
    assert "Sequential" not in one_line(info.value, "does not apply to model 'tiny-cnn'")
    with naming("tiny-cnn"):
        method = create_method("grad", plain)
        with pytest.raises(MethodError) as info:
            create_method("gradcam", plain, layer="features.9")
    one_line(info.value, "model 'tiny-cnn' has no layer 'features.9'")
    with pytest.raises(InputShapeError) as info:  # named at construction, used later
        method.attribute(_images().double(), 1)
    one_line(info.value, "the parameters of model 'tiny-cnn' are torch.float32")
    assert model_label(plain) == "Sequential" and model_label(plain, "x") == "model 'x'"


# ---------------------------------------------------------------------------------------------
# 3. GradCAM's default layer: the output of the last convolutional block, one rule


def test_gradcam_default_is_the_last_blocks_output_in_every_model_style():
    """The VGG-style model takes ``features``; the same layers in a plain Sequential used to
    take the bare last convolution (its pre-ReLU output), a different map. Now both take the
    block's output (the ReLU after it): the same layer, the same maps."""
    vgg, plain = VGGStyle().eval(), _plain().eval()
    plain.load_state_dict({k.replace("features.", "").replace("classifier", "7"): v
                           for k, v in vgg.state_dict().items()})
    x, t = _images(), torch.tensor([1, 2])
    on_vgg, on_plain = create_method("gradcam", vgg), create_method("gradcam", plain)
    assert on_vgg.layer_name == "features" and on_plain.layer_name == "4"
    assert isinstance(on_plain.layer, nn.ReLU)
    a, b = on_vgg.attribute(x, t), on_plain.attribute(x, t)
    assert a.abs().max() > 0
    torch.testing.assert_close(a, b)


def test_gradcam_default_on_resnet_and_other_plain_models():
    import torchvision

    resnet = torchvision.models.resnet18(weights=None)
    assert default_layer(resnet)[0] is resnet.layer4
    pooled = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.LazyLinear(10))
    assert create_method("gradcam", pooled).layer_name == "3"  # the pool ends the block

    class Body(nn.Module):  # the head inside the same Sequential, under another name
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(*_layers(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(16, 10))

        def forward(self, x):
            return self.net(x)

    assert create_method("gradcam", Body()).layer_name == "net.4"

    class Blocks(nn.Module):  # the last block a module of its own: the block itself
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3)
            self.block = nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU())
            self.head = nn.Linear(4, 10)

        def forward(self, x):
            return self.head(self.block(self.stem(x)).mean((2, 3)))

    assert create_method("gradcam", Blocks()).layer_name == "block"


def test_methods_a_run_builds_per_chunk_name_the_model_by_its_run_name():
    """The runner builds each chunk's method (on this process or a worker) under the part's
    model name, so a message raised mid-run says "model 'NAME'", not the module's class."""
    from attrib_bench.runners.jobs import build_method

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 10))
    assert build_method("grad", model, {}, "my-net").model_label == "model 'my-net'"
    assert build_method("grad", model, {}).model_label == "Sequential"
