"""target_gradients: one forward per distinct input, the same gradients as plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrib_bench.core.backward import target_gradients
from attrib_bench.core.registry import create_method, create_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5)).double().eval()


def _per_row(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference: one autograd call per row."""
    rows = []
    for x, t in zip(inputs, target, strict=True):
        leaf = x[None].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf)[0, t], leaf)
        rows.append(grad[0])
    return torch.stack(rows)


def test_runs_of_equal_rows_share_one_forward_and_match_per_row_autograd():
    """Runs of 3, 1, 2 equal rows and a row equal to a non-neighbour: 4+1 distinct forwards
    (a repeat that is not adjacent is its own run), 3 backward rounds, float64 exact to 1e-12."""
    model = _net()
    g = torch.Generator().manual_seed(1)
    a, b, c = (torch.rand(1, 3, 6, 6, generator=g, dtype=torch.float64) for _ in range(3))
    inputs = torch.cat([a, a, a, b, c, c, a])
    target = torch.tensor([0, 3, 4, 1, 2, 2, 1])
    seen = []
    forward = lambda x: (seen.append(len(x)), model(x))[1]  # noqa: E731
    with torch.enable_grad():
        grads = target_gradients(forward, inputs, target)
    assert seen == [4]  # a, b, c, a
    torch.testing.assert_close(grads, _per_row(model, inputs, target), rtol=1e-12, atol=0)
    assert not grads.requires_grad


def test_distinct_rows_are_one_forward_and_one_backward_like_autograd():
    model = _net()
    inputs = torch.rand(5, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 1, 2, 3, 4])
    leaf = inputs.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf).gather(1, target[:, None]).sum(), leaf)
    with torch.enable_grad():
        assert torch.equal(target_gradients(model, inputs, target), expected)


@pytest.mark.parametrize("name", ["xs-coda", "resnet56"])
def test_grid_batches_agree_with_captum(name):
    """A localisation-shaped batch (each grid n² times, one target per cell): Grad, IxG and
    IntGrad (5 steps, two rules, max_batch 3 so that steps are split into blocks) equal captum's
    Saliency, InputXGradient and IntegratedGradients; DeepLIFT on the CoDA-Net equals captum's
    DeepLift."""
    from captum.attr import DeepLift, InputXGradient, IntegratedGradients, Saliency

    torch.manual_seed(0)
    model = create_model(name).eval()
    grids = torch.rand(2, 3, 16, 16)
    inputs = grids[:, None].expand(2, 4, 3, 16, 16).reshape(8, 3, 16, 16)
    target = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    leaf = inputs.clone().requires_grad_(True)
    reference = {"grad": Saliency(model).attribute(leaf, target=target, abs=False).sum(1),
                 "ixg": InputXGradient(model).attribute(leaf, target=target).sum(1)}
    settings = {"grad": {}, "ixg": {}}
    for rule in ("gausslegendre", "riemann_trapezoid"):
        reference[f"intgrad-{rule}"] = IntegratedGradients(model).attribute(
            leaf, baselines=torch.zeros_like(leaf), target=target, n_steps=5,
            method=rule).sum(1)
        settings[f"intgrad-{rule}"] = {"n_steps": 5, "rule": rule, "max_batch": 3}
    if name == "xs-coda":
        reference["deeplift"] = DeepLift(model).attribute(
            leaf, baselines=torch.zeros_like(leaf), target=target).sum(1)
        settings["deeplift"] = {}
    for method, expected in reference.items():
        maps = create_method(method.split("-")[0], model, **settings[method]).attribute(
            inputs, target)
        scale = expected.abs().max()
        torch.testing.assert_close(maps / scale, expected.detach() / scale, rtol=0, atol=1e-5)
