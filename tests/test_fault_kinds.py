"""Fault kinds from peers' bug reports (issue 41's five more kinds), each a rule:

1. Wrapping a model in ``nn.DataParallel`` never changes a number (pytorch-grad-cam#322,
   captum#342): capabilities, probability and GradCAM's layer are the inner model's.
2. A gradient method on a forward that cuts the graph to the input is one line, found before
   any work (pytorch-grad-cam#381, torch-cam#26), and gradient-free methods still apply.
3. A score that cannot vary is refused: softmax over one logit (tf-keras-vis#78, captum#455).
(4. wrapped checkpoint keys: tests/test_checkpoints.py; 5. hooks and modes after an error:
tests/test_method_state_after_error.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import attrib_bench as ab
from attrib_bench.core.errors import AttribBenchError, NotApplicableError
from attrib_bench.methods.gradcam import default_layer
from attrib_bench.models import protocols

GRADIENT_METHODS = ["grad", "ixg", "intgrad", "deeplift", "gradcam"]


def _net(classes: int = 10) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes)).eval()


# 1. dataparallel_hides_capabilities.py
def test_a_dataparallel_wrapper_keeps_the_models_capabilities():
    model = _net()
    model.probability, model.gradcam_layer = "sigmoid", model[0]
    wrapped = nn.DataParallel(model)
    assert protocols.capabilities(wrapped) == protocols.capabilities(model)
    assert protocols.probability(wrapped) == "sigmoid"
    assert default_layer(wrapped)[0] is model[0]


def test_a_dataparallel_wrapper_gives_the_same_numbers(signal_set):
    model = _net()
    model.probability = "sigmoid"
    kw = dict(methods="ixg,gradcam", metrics="pixel-removal", n_samples=2, progress=False,
              dataset=signal_set(20, 16), settings=["pixel-removal.steps=4"])
    key = ["method", "sample", "variant", "stat", "removed"]
    plain = ab.run({"m": model}, **kw).sort_values(key)
    wrapped = ab.run({"m": nn.DataParallel(model)}, **kw).sort_values(key)
    assert (plain.method.unique() == wrapped.method.unique()).all()
    np.testing.assert_array_equal(plain.value.to_numpy(), wrapped.value.to_numpy())


# 2. graph_cut_in_forward.sh
class _Cut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone, self.head = _net().__getitem__(slice(0, 2)), _net()[2:]

    def forward(self, x):
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
@pytest.mark.parametrize("frozen", [False, True])
def test_a_forward_without_a_graph_to_the_input_is_one_line(name, frozen):
    model = _Cut().eval().requires_grad_(not frozen)
    x = torch.rand(1, 3, 16, 16)
    method = ab.create_method(name, model)
    with pytest.raises(NotApplicableError) as info:   # preflight: `run` skips the part
        method.preflight(x, torch.tensor([1]))
    assert "\n" not in str(info.value) and "no_grad" in str(info.value)
    with pytest.raises(NotApplicableError, match="through autograd"):
        ab.create_method(name, model).attribute(x, torch.tensor([1]))


def test_a_run_skips_gradient_methods_on_a_cut_graph_and_finishes_the_others(signal_set):
    rows = ab.run({"cut": _Cut().eval()}, "all", "pixel-removal", n_samples=2, progress=False,
                  dataset=signal_set(20, 16), settings=["pixel-removal.steps=4"])
    assert {"occlusion", "rise", "lime"} <= set(rows.method)
    assert not set(GRADIENT_METHODS) & set(rows.method)


# 3. single_logit_binary.py
@pytest.mark.parametrize("name", ["rise", "lime"])
def test_one_logit_scored_by_softmax_is_refused(name):
    with pytest.raises(AttribBenchError, match="logit"):
        ab.create_method(name, _net(classes=1)).attribute(torch.rand(2, 3, 16, 16), 0)


def test_softmax_of_one_logit_is_never_a_score():
    with pytest.raises(AttribBenchError):
        protocols.scores(torch.zeros(2, 1), "softmax")


def test_one_logit_with_declared_sigmoid_works():
    model = _net(classes=1)
    model.probability = "sigmoid"
    maps = ab.create_method("rise", model, n_masks=8).attribute(torch.rand(2, 3, 16, 16), 0)
    assert maps.shape == (2, 16, 16) and maps.std() > 0


def test_a_runs_model_checks_name_the_model_as_given(signal_set, tmp_path, one_line):
    """The door checks a run makes before any work (output classes, a checkpoint that does
    not fit) say "model 'NAME'", not the module's Python class."""
    from attrib_bench.core.errors import CheckpointError, ModelOutputError
    from attrib_bench.models.resnet_cifar import resnet56

    kw = dict(n_samples=2, progress=False, dataset=signal_set(20, 32),
              settings=["pixel-removal.steps=4"])
    with pytest.raises(ModelOutputError) as error:
        ab.run({"one-logit": _net(classes=1)}, "grad", "pixel-removal", **kw)
    one_line(error, "model 'one-logit': one logit per image")
    path = tmp_path / "net.pt"
    torch.save({f"net.{k}": v for k, v in resnet56().state_dict().items()}, path)
    with pytest.raises(CheckpointError) as error:
        ab.run("resnet56", "grad", "pixel-removal", checkpoint=str(path), **kw)
    one_line(error, "does not fit model 'resnet56'", limit=400)
