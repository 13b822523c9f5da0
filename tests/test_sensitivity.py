"""Max-sensitivity (Yeh et al. 2019, eq. 5): known answers, invariants, agreement with captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import MetricSettingError
from attrib_bench.core.registry import METRICS, create_method
from attrib_bench.metrics.base import EvalContext
from attrib_bench.metrics.sensitivity import MaxSensitivity, uniform_ball

CPU = torch.device("cpu")


class Linear(nn.Module):
    """logits_k = Σ_{c,h,w} W_k ⊙ x + b_k."""

    def __init__(self, size: int = 8, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, 3, size, size, generator=g,
                                               dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(classes, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


class Small(nn.Module):
    """A tiny non-linear classifier (conv, ReLU, pooling, linear), float64."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1).double()
        self.head = nn.Linear(6 * 4 * 4, 4).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def images(n: int = 3, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0.3, 0.7], so that a ball of radius ≤ 0.3 is never clipped."""
    g = torch.Generator().manual_seed(seed)
    return (0.3 + 0.4 * torch.rand(n, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 4, (n,), generator=g))


class Counting:
    """Wraps a method and counts the inputs of each call of ``attribute``."""

    def __init__(self, method) -> None:
        self.method, self.calls = method, []

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(inputs))
        return self.method.attribute(inputs, target)


def context(model: nn.Module, method: str = "ixg", seed: int = 0, made: list | None = None
            ) -> EvalContext:
    def make(m: nn.Module):
        wrapped = Counting(create_method(method, m))
        if made is not None:
            made.append(wrapped)
        return wrapped

    return EvalContext(model, create_method(method, model).attribute, make, CPU, seed=seed)


def scores(rows, stat: str) -> np.ndarray:
    return rows[rows["stat"] == stat].sort_values("sample")["value"].to_numpy()


def test_known_answers_on_a_linear_model() -> None:
    """Grad of a linear model never changes: 0. IxG's change is Σ_c W_c u_c, by hand."""
    model = Linear()
    x, t = images()
    rows = MaxSensitivity(num_samples=6).evaluate(context(model, "grad"), x, t, np.arange(3))
    assert np.abs(rows["value"]).max() < 1e-12
    metric = MaxSensitivity(num_samples=6, radius=0.2, seed=4)
    rows = metric.evaluate(context(model, "ixg"), x, t, np.arange(3))
    noise = uniform_ball(4, torch.arange(3), (6, 3, 8, 8), 0.2, torch.float64)
    w = model.weight.detach()[t]  # (3, 3, 8, 8)
    change = (w[:, None] * noise).sum(2).flatten(2).norm(dim=2).amax(1)
    norm = (w * x).sum(1).flatten(1).norm(dim=1)
    np.testing.assert_allclose(scores(rows, "max-sensitivity-raw"), change.numpy(), rtol=1e-10)
    np.testing.assert_allclose(scores(rows, "max-sensitivity"), (change / norm).numpy(),
                               rtol=1e-10)


def test_noise_is_uniform_in_the_ball_and_scales_with_the_radius() -> None:
    u = uniform_ball(0, torch.arange(4), (2000,), 0.3, torch.float64)
    assert u.abs().max() <= 0.3 and u.abs().max() > 0.29
    assert abs(float(u.mean())) < 0.01 and abs(float(u.var()) - 0.09 / 3) < 0.002
    # same seed: y − x scales with r, so IxG's raw sensitivity on a linear model does too
    model = Linear()
    x, t = images()
    small = MaxSensitivity(num_samples=5, radius=0.1).evaluate(context(model), x, t,
                                                               np.arange(3))
    large = MaxSensitivity(num_samples=5, radius=0.25).evaluate(context(model), x, t,
                                                                np.arange(3))
    np.testing.assert_allclose(scores(large, "max-sensitivity-raw"),
                               2.5 * scores(small, "max-sensitivity-raw"), rtol=1e-10)
    # the points are clipped to [0, 1]
    ys = MaxSensitivity(num_samples=5, radius=0.9).perturbed(x, np.arange(3), 0)
    assert ys.min() >= 0 and ys.max() <= 1 and (ys == 1).any()


def test_reruns_the_method_in_chunks_and_does_not_depend_on_batching() -> None:
    model = Small()
    x, t = images(n=4)
    made: list = []
    metric = MaxSensitivity(num_samples=5, max_batch=7)
    whole = metric.evaluate(context(model, made=made), x, t, np.arange(20, 24))
    assert len(made) == 1 and made[0].calls == [5, 5, 5, 5]  # 4 images × 5 points, 7 // 5
    made.clear()
    MaxSensitivity(num_samples=5, max_batch=10).evaluate(context(model, made=made), x, t,
                                                         np.arange(20, 24))
    assert made[0].calls == [10, 10]  # groups of 10 // 5 = 2 images
    made.clear()
    MaxSensitivity(num_samples=5, max_batch=3).evaluate(context(model, made=made), x, t,
                                                        np.arange(20, 24))
    assert made[0].calls == [3, 2] * 4  # one image's 5 points in calls of at most 3
    parts = [MaxSensitivity(num_samples=5, max_batch=64).evaluate(
        context(model), x[i:i + 1], t[i:i + 1], np.array([20 + i])) for i in range(4)]
    np.testing.assert_allclose(whole["value"].to_numpy(),
                               np.concatenate([p["value"].to_numpy() for p in parts]),
                               rtol=1e-10)
    assert (whole["value"] > 0).all()
    other = MaxSensitivity(num_samples=5, seed=3).evaluate(context(model), x, t,
                                                           np.arange(20, 24))
    assert not np.allclose(other["value"], whole["value"])


def test_agrees_with_captum_sensitivity_max_on_the_same_points() -> None:
    """captum.metrics.sensitivity_max (norm 'fro') given this metric's points: ≤ 1e-10
    relative, n = 3 images × 8 points, r = 0.1, IxG on a float64 conv net."""
    captum_metrics = pytest.importorskip("captum.metrics")
    model = Small()
    x, t = images()
    metric = MaxSensitivity(num_samples=8, radius=0.1, seed=2)
    rows = metric.evaluate(context(model), x, t, np.arange(3))
    ours = scores(rows, "max-sensitivity")
    ys = metric.perturbed(x, np.arange(3), 0)  # (3, 8, 3, 8, 8)
    method = create_method("ixg", model)

    def explain(inputs, target):  # captum passes (and wants back) a tuple the first time
        single = inputs[0] if isinstance(inputs, tuple) else inputs
        target = torch.as_tensor(target).expand(len(single))
        with torch.enable_grad():  # captum calls it under no_grad
            maps = method.attribute(single, target)
        return (maps,) if isinstance(inputs, tuple) else maps

    for i in range(3):
        def perturb(inputs, perturb_radius, i=i):
            inputs = inputs[0] if isinstance(inputs, tuple) else inputs
            assert inputs.shape[0] == 8 and perturb_radius == 0.1
            return ys[i]

        theirs = captum_metrics.sensitivity_max(explain, x[i:i + 1], perturb, perturb_radius=0.1,
                                                n_perturb_samples=8, target=int(t[i]))
        assert abs(float(theirs) - ours[i]) <= 1e-10 * max(1.0, abs(ours[i]))


def test_a_zero_map_is_divided_by_one_and_settings_are_checked() -> None:
    model = Linear()
    x, t = images(n=2)
    ctx = EvalContext(model, lambda i, tt: torch.zeros(len(i), 8, 8, dtype=i.dtype),
                      lambda m: Counting(create_method("ixg", m)), CPU)
    rows = MaxSensitivity(num_samples=3).evaluate(ctx, x, t, np.arange(2))
    np.testing.assert_allclose(scores(rows, "max-sensitivity"),
                               scores(rows, "max-sensitivity-raw"))
    assert METRICS.get("max-sensitivity").factory is MaxSensitivity
    assert MaxSensitivity.directions == {"max-sensitivity": "lower",
                                         "max-sensitivity-raw": "lower"}
    for bad in ({"radius": 0.0}, {"num_samples": 0}, {"max_batch": 0}):
        with pytest.raises(MetricSettingError):
            MaxSensitivity(**bad)


def test_agrees_with_quantus_max_sensitivity_on_the_same_points() -> None:
    """quantus.MaxSensitivity (0.6, Frobenius norms, no normalise/abs) given this metric's
    points one step at a time: ≤ 1e-6 relative (Quantus works in float32 numpy), n = 3 images
    × 6 points, r = 0.1, IxG on a float64 conv net."""
    quantus = pytest.importorskip("quantus")
    model = Small()
    x, t = images()
    metric = MaxSensitivity(num_samples=6, radius=0.1, seed=5)
    ours = scores(metric.evaluate(context(model), x, t, np.arange(3)), "max-sensitivity")
    ys = metric.perturbed(x, np.arange(3), 0)  # (3, 6, 3, 8, 8)
    method = create_method("ixg", model)
    step = iter(range(6))

    def perturb(arr, indices, **kwargs):
        return ys[:, next(step)].reshape(len(arr), -1).numpy()

    def explain(model, inputs, targets, **kwargs):
        maps = method.attribute(torch.as_tensor(inputs, dtype=torch.float64),
                                torch.as_tensor(targets))
        return maps[:, None].detach().numpy()

    a_batch = explain(model, x.numpy(), t.numpy())
    theirs = quantus.MaxSensitivity(nr_samples=6, perturb_func=perturb, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=t.numpy(), a_batch=a_batch,
        explain_func=explain, device="cpu", batch_size=3)
    np.testing.assert_allclose(np.asarray(theirs, dtype=np.float64), ours, rtol=1e-6)
