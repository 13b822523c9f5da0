"""An exception in the middle of an attribution leaves the caller's model as it was.

A CUDA out-of-memory error, a Ctrl-C in a notebook or a model that raises on some batch must not
leave hooks registered (captum's DeepLift and GradCAM hooks would change or leak every later
forward; pytorch-grad-cam#132), the model in eval mode, parameters' ``requires_grad`` or the
global grad mode changed. Every registered method, on a tiny model whose middle layer raises
from its second call on (the door check's forward passes, the attribution's raises).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attrib_bench.core.errors import NotApplicableError
from attrib_bench.core.registry import METHODS, create_method

#: Cheap settings, so that looping over every method stays fast.
CHEAP = {"rise": {"n_masks": 8}, "lime": {"num_samples": 8}, "intgrad": {"n_steps": 2}}


class Flaky(nn.Module):
    """Identity that raises from its ``fail_at``-th call on (None: never)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise RuntimeError("simulated out of memory")
        return x


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("name", METHODS.names())
def test_an_error_mid_attribution_leaves_the_model_as_it_was(name):
    torch.manual_seed(0)
    flaky = Flaky()
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), flaky,
                          nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10))
    x, t = torch.rand(2, 3, 16, 16), torch.tensor([1, 2])
    with torch.no_grad():
        before = model.eval()(x)
    model.train()
    try:
        method = create_method(name, model, **{"max_batch": 16, **CHEAP.get(name, {})})
    except NotApplicableError as exc:  # e.g. inherent on a model without contributions
        pytest.skip(f"does not apply: {exc}")
    flaky.calls, flaky.fail_at = 0, 2
    try:
        method.attribute(x, t)
    except RuntimeError as exc:  # the model's own error, unchanged
        assert str(exc) == "simulated out of memory"
    flaky.fail_at = None
    assert _hooks(model) == 0
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert torch.is_grad_enabled()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)
