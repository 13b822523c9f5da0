"""Infidelity (Yeh et al. 2019): known answers, invariants, agreement with captum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import MetricError, MetricSettingError
from attrib_bench.core.registry import METRICS
from attrib_bench.metrics.base import EvalContext
from attrib_bench.metrics.infidelity import Infidelity, infidelity_scores

CPU = torch.device("cpu")


class Linear(nn.Module):
    """logits_k = Σ_{c,h,w} W_k ⊙ x + b_k."""

    def __init__(self, size: int = 8, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, 3, size, size, generator=g))
        self.bias = nn.Parameter(torch.randn(classes, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


class Small(nn.Module):
    """A tiny non-linear classifier (conv, ReLU, pooling, linear)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x))
        return self.head(nn.functional.adaptive_avg_pool2d(h, 4).flatten(1))


def images(n: int = 3, size: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


def context(model: nn.Module, maps: torch.Tensor, seed: int = 0) -> EvalContext:
    return EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: None,
                       device=CPU, seed=seed)


def scores(rows, stat: str) -> np.ndarray:
    return rows[rows["stat"] == stat].sort_values("sample")["value"].to_numpy()


def test_channel_summed_weights_are_exact_on_a_linear_model() -> None:
    """f linear, I shared by the channels: Iᵀ(Σ_c W_c) = f(x) − f(x − I) exactly, so 0."""
    model = Linear().double()
    x, t = images()
    x = x.double()
    maps = model.weight.detach()[t].sum(1)
    rows = Infidelity(num_perturbations=16).evaluate(context(model, maps), x, t, np.arange(3))
    assert np.abs(scores(rows, "infidelity")).max() < 1e-18
    assert np.abs(scores(rows, "infidelity-raw")).max() < 1e-18


def test_known_answer_for_a_scaled_and_a_wrong_map() -> None:
    """A map 2·(the exact one): raw = mean((IᵀΦ)²)·1/4·… by hand; the scaled one is 0."""
    model = Linear().double()
    x, t = images(n=2)
    x = x.double()
    exact = model.weight.detach()[t].sum(1)
    metric = Infidelity(num_perturbations=8, noise_std=0.1, seed=3)
    noise = metric.noise(np.arange(2), 8, 8, 0, CPU)
    dot = (noise * exact[:, None]).sum((-2, -1))
    rows = metric.evaluate(context(model, 2 * exact), x, t, np.arange(2))
    # 2·IᵀΦ* − IᵀΦ* = IᵀΦ*: raw is mean((IᵀΦ*)²); beta = 1/2 rescales it to exact
    np.testing.assert_allclose(scores(rows, "infidelity-raw"), (dot ** 2).mean(1).numpy(),
                               rtol=1e-12)
    assert np.abs(scores(rows, "infidelity")).max() < 1e-18
    # a zero map: beta 0, both equal mean(Δf²) = mean((IᵀΦ*)²)
    rows = metric.evaluate(context(model, torch.zeros_like(exact)), x, t, np.arange(2))
    for stat in ("infidelity", "infidelity-raw"):
        np.testing.assert_allclose(scores(rows, stat), (dot ** 2).mean(1).numpy(), rtol=1e-12)


def test_invariants_batching_scale_and_forwards() -> None:
    model = Small()
    x, t = images(n=4)
    g = torch.Generator().manual_seed(5)
    maps = torch.randn(4, 8, 8, generator=g)
    metric = Infidelity(num_perturbations=10, max_batch=7)
    whole = metric.evaluate(context(model, maps), x, t, np.arange(10, 14))
    # one image at a time (noise follows the sample id, not the batch) and another max_batch
    parts = [Infidelity(num_perturbations=10, max_batch=64).evaluate(
        context(model, maps[i:i + 1]), x[i:i + 1], t[i:i + 1], np.array([10 + i]))
        for i in range(4)]
    np.testing.assert_allclose(whole["value"].to_numpy(),
                               np.concatenate([p["value"].to_numpy() for p in parts]),
                               rtol=1e-5, atol=1e-7)
    # the scaled stat does not depend on the map's scale; the raw one does
    scaled = metric.evaluate(context(model, 5 * maps), x, t, np.arange(10, 14))
    np.testing.assert_allclose(scores(scaled, "infidelity"), scores(whole, "infidelity"),
                               rtol=1e-5)
    assert not np.allclose(scores(scaled, "infidelity-raw"), scores(whole, "infidelity-raw"))
    # the scaled value is never above the raw one (beta minimises the squared error)
    assert (scores(whole, "infidelity") <= scores(whole, "infidelity-raw") + 1e-9).all()
    # model inputs: 4·(10 + 1), the definition's minimum; forwards: f(x) in one, then groups
    # of max_batch // P images (3 of 10 perturbations each for 32, 1 image in 2 forwards for 7)
    for max_batch, forwards in ((32, 1 + 2), (7, 1 + 4 * 2)):
        lin = Linear()
        lin.sizes = []
        lin.register_forward_pre_hook(lambda m, a: m.sizes.append(len(a[0])))
        Infidelity(num_perturbations=10, max_batch=max_batch).evaluate(
            context(lin, maps), x, t, np.arange(4))
        assert sum(lin.sizes) == 44 and len(lin.sizes) == forwards
        assert max(lin.sizes) <= max_batch
    # a seed changes the noise, and a NaN map gives NaN rows
    other = Infidelity(num_perturbations=10, seed=9).evaluate(context(model, maps), x, t,
                                                              np.arange(10, 14))
    assert not np.allclose(other["value"], whole["value"])
    bad = maps.clone()
    bad[1, 0, 0] = float("nan")
    rows = metric.evaluate(context(model, bad), x, t, np.arange(4))
    assert np.isnan(rows[rows["sample"] == 1]["value"]).all()
    assert np.isfinite(rows[rows["sample"] != 1]["value"]).all()


def test_agrees_with_captum_on_the_same_noise() -> None:
    """captum.metrics.infidelity with this metric's noise as its perturbation: ≤ 1e-9 relative
    (float64 model), n = 3 images × 32 perturbations, σ = 0.2, normalize True and False."""
    captum_metrics = pytest.importorskip("captum.metrics")
    model = Small().double()
    x, t = images()
    x = x.double()
    g = torch.Generator().manual_seed(7)
    maps = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    metric = Infidelity(num_perturbations=32, noise_std=0.2, seed=11)
    rows = metric.evaluate(context(model, maps), x, t, np.arange(3))
    noise = metric.noise(np.arange(3), 8, 8, 0, CPU)  # (3, 32, 8, 8)
    for normalize, stat in ((True, "infidelity"), (False, "infidelity-raw")):
        ours = scores(rows, stat)
        for i in range(3):
            pert = noise[i][:, None].expand(32, 3, 8, 8)

            def perturb(inputs, pert=pert):
                assert inputs.shape[0] == 32
                return pert, inputs - pert

            # captum multiplies element-wise: the (H, W) map spread over 3 channels, ÷ 3
            attr = (maps[i] / 3).expand(1, 3, 8, 8)
            theirs = captum_metrics.infidelity(model, perturb, x[i:i + 1], attr,
                                               target=int(t[i]), n_perturb_samples=32,
                                               normalize=normalize)
            assert abs(float(theirs) - ours[i]) <= 1e-9 * max(1.0, abs(ours[i]))


def test_registered_and_refuses_wrong_settings_and_maps() -> None:
    assert METRICS.get("infidelity").factory is Infidelity
    assert Infidelity.directions == {"infidelity": "lower", "infidelity-raw": "lower"}
    with pytest.raises(MetricSettingError):
        Infidelity(noise_std=0.0)
    with pytest.raises(MetricSettingError):
        Infidelity(num_perturbations=0)
    x, t = images()
    with pytest.raises(MetricError, match="needs maps"):
        Infidelity().evaluate(context(Small(), torch.zeros(3, 4, 4)), x, t, np.arange(3))


def test_scores_function_shapes() -> None:
    model = Linear()
    x, t = images(n=2)
    scaled, raw = infidelity_scores(model, x, t, torch.zeros(2, 8, 8), torch.zeros(2, 5, 8, 8),
                                    3)
    assert scaled.shape == raw.shape == (2,)
    # zero noise: x − I = x, 0 up to float32 rounding of f(x) in forwards of other sizes
    assert scaled.abs().max() < 1e-10 and raw.abs().max() < 1e-10


def test_agrees_with_quantus_given_the_same_noise_and_differs_by_default() -> None:
    """quantus.Infidelity (0.6) with this metric's noise as its perturbation (one block the
    image's size, so one perturbation per draw) gives eq. 2 unscaled: our "infidelity-raw"
    within 1e-4 relative (Quantus runs the model in float32), n = 3 images × 8 draws, σ = 0.2.
    Its default perturbation is another one (4×4 patches set to black, cumulatively), so its
    default value is not ours."""
    quantus = pytest.importorskip("quantus")
    model = Small().eval()  # Quantus refuses a model in training mode
    x, t = images()
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(3, 8, 8, generator=g)
    metric = Infidelity(num_perturbations=8, seed=1)
    ours = scores(metric.evaluate(context(model, maps), x, t, np.arange(3)), "infidelity-raw")
    noise = metric.noise(np.arange(3), 8, 8, 0, CPU).float()  # (3, 8, 8, 8)
    draw = iter(range(8))

    def perturb(arr, indices, **kwargs):
        k = next(draw)
        return (x - noise[:, k, None]).reshape(len(arr), -1).numpy()

    # Quantus broadcasts a (B, 1, H, W) map over the channels: Σ_c (Φ/3)·I = Φ·I
    a_batch = (maps / 3)[:, None].numpy()
    common = {"model": model, "x_batch": x.numpy(), "y_batch": t.numpy(), "a_batch": a_batch,
              "device": "cpu", "batch_size": 3}
    theirs = quantus.Infidelity(perturb_func=perturb, perturb_patch_sizes=[8], n_perturb_samples=8,
                                disable_warnings=True)(**common)
    np.testing.assert_allclose(np.asarray(theirs, dtype=np.float64), ours, rtol=1e-4)
    default = quantus.Infidelity(disable_warnings=True)(**common)
    assert not np.allclose(np.asarray(default, dtype=np.float64), ours, rtol=0.1)
