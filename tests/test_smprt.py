"""sMPRT (Hedström et al. 2024): the smoothing by hand on a linear model, the noise (per sample,
the last copy noise-free, its scale), MPRT as its one-sample top-down case, and agreement with
Quantus 0.6 ``SmoothMPRT`` given the same model, maps and noise.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from torch import nn

from attrib_bench.core.errors import SettingError
from attrib_bench.core.registry import create_method, create_metric, list_metrics
from attrib_bench.metrics.base import EvalContext
from attrib_bench.metrics.randomisation import Randomisation
from attrib_bench.metrics.smprt import SmoothMPRT, smoothed_maps, smoothing_noise

SIZE = 8


class _Fixed:
    """reset_parameters draws from its own generator (seeded by the shape): the same new values
    whatever the global RNG, so Quantus's randomisation and ours give one model."""

    def reset_parameters(self) -> None:
        g = torch.Generator().manual_seed(sum(self.weight.shape) * 131 + self.weight.dim())
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=g, dtype=self.weight.dtype)
                              * 0.5)
            self.bias.copy_(torch.randn(self.bias.shape, generator=g, dtype=self.bias.dtype) * 0.1)


class FixedConv(_Fixed, nn.Conv2d):
    pass


class FixedLinear(_Fixed, nn.Linear):
    pass


def _model() -> nn.Module:
    model = nn.Sequential(FixedConv(3, 4, 3, padding=1), nn.ReLU(), FixedConv(4, 4, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), FixedLinear(16, 10))
    model = model.double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.4)
    return model.eval()


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def _context(model: nn.Module, method: str = "grad", seed: int = 0) -> EvalContext:
    return EvalContext(model, create_method(method, model).attribute,
                       lambda m: create_method(method, m), torch.device("cpu"), seed=seed)


# ----------------------------------------------------------------------------- noise, smoothing

def test_noise_per_sample_scale_and_last_copy():
    x = _images(3)
    x[1] *= 0.5  # half the range: half the noise
    ids = torch.tensor([4, 9, 11])
    noise = smoothing_noise(2, ids, x, 400, 0.1)
    assert noise.shape == (3, 400, 3, SIZE, SIZE) and (noise[:, -1] == 0).all()
    assert torch.equal(noise[1:2], smoothing_noise(2, ids[1:2], x[1:2], 400, 0.1))
    span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).numpy()
    std = noise[:, :-1].flatten(1).std(1).numpy()
    assert np.allclose(std, 0.1 * span, rtol=0.02)
    assert not torch.equal(noise, smoothing_noise(3, ids, x, 400, 0.1))


def test_smoothing_by_hand_on_a_linear_model():
    """Input × gradient of logits W·x is Σ_c W_c x̃ for a copy x̃ = clamp(x + ε, 0, 1): its mean
    over the copies is Σ_c W_c mean(x̃), whatever the chunking of the copies."""
    w = torch.randn(5, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)

    class Linear(nn.Module):
        def forward(self, x):
            return x.flatten(1) @ w.flatten(1).t()

    x, target, ids = _images(3), torch.tensor([0, 2, 4]), torch.tensor([0, 1, 2])
    noise = smoothing_noise(0, ids, x, 6, 0.1)
    ixg = create_method("ixg", Linear())
    expected = (w[target] * (x[:, None] + noise).clamp(0, 1).mean(1)).sum(1)
    for chunk in (1, 5, 100):
        got = smoothed_maps(ixg, x, target, noise, chunk)
        assert torch.allclose(got, expected, atol=1e-12), chunk


def test_one_sample_top_down_is_mprt():
    """nr_samples=1 is the plain map (the last copy is noise-free); top-down cascading is then
    the randomisation test's cascading mode, row for row (tolerance 1e-12)."""
    model, x, y = _model(), _images(3), torch.tensor([1, 4, 7])
    ours = SmoothMPRT(nr_samples=1, order="top_down").evaluate(_context(model), x, y,
                                                               np.arange(3))
    mprt = Randomisation(modes="cascading").evaluate(_context(model), x, y, np.arange(3))
    key = ["key", "stat", "sample"]
    a, b = (r.sort_values(key).reset_index(drop=True) for r in (ours, mprt))
    assert (a[key] == b[key]).all().all() and (a["layer_index"] == b["layer_index"]).all()
    assert np.allclose(a["value"], b["value"], atol=1e-12, equal_nan=True)


def test_rows_bottom_up_and_batching():
    model, x, y = _model(), _images(3), torch.tensor([0, 1, 2])
    metric = SmoothMPRT(nr_samples=3)
    rows = metric.evaluate(_context(model, seed=1), x, y, np.arange(10, 13))
    first = rows.loc[rows.index[0], "key"]
    assert first == "0" and (rows["variant"] == "bottom_up").all()  # the input layer first
    assert set(rows["stat"]) == {"spearman", "spearman_abs", "ssim"}
    parts = pd.concat([metric.evaluate(_context(model, seed=1), x[s], y[s], np.arange(10, 13)[s])
                       for s in (slice(0, 1), slice(1, 3))])
    key = ["key", "stat", "sample"]
    a, b = (r.sort_values(key).reset_index(drop=True) for r in (rows, parts))
    assert np.allclose(a["value"], b["value"], atol=1e-12)
    assert SmoothMPRT(nr_samples=2, layers=1).evaluate(
        _context(model), x, y, np.arange(3))["key"].unique().tolist() == ["0"]


def test_settings_and_registration():
    assert "smprt" in list_metrics()
    metric = create_metric("smprt", nr_samples=3, noise_magnitude=0.2, order="top_down")
    assert metric.hparams["nr_samples"] == 3 and metric.hparams["order"] == "top_down"
    with pytest.raises(SettingError, match="order"):
        SmoothMPRT(order="sideways")
    with pytest.raises(SettingError, match="nr_samples"):
        SmoothMPRT(nr_samples=0)


# ----------------------------------------------------------------------------- Quantus

def test_agrees_with_quantus_smooth_mprt(monkeypatch):
    """Quantus 0.6 SmoothMPRT (its defaults: Spearman of |map|, normalised by the batch's second
    moment, bottom-up cascading, noise 0.1 of the image's range) with 5 copies, on the same model
    and 4 images; its smoothing calls ``quantus.explain`` (not the given explain_func) and draws
    ``np.random.randn``: both are handed ours (``grad``, our noise as clamped), so every layer's
    Spearman of |map| agrees within 1e-9."""
    quantus = pytest.importorskip("quantus")
    model, x, y, ids = _model(), _images(4, seed=3), torch.tensor([0, 3, 5, 9]), np.arange(4)
    n = 5
    noise = smoothing_noise(0, torch.as_tensor(ids), x, n, 0.1)
    # the noise that reaches the model: ours is clamped to [0, 1], Quantus's is not
    clamped = (x[:, None] + noise[:, :-1]).clamp(0, 1) - x[:, None]
    z = clamped / (0.1 * (x.flatten(1).amax(1) - x.flatten(1).amin(1))).view(-1, 1, 1, 1, 1)
    draws = iter(range(10_000))

    def randn(*shape):
        return z[:, next(draws) % (n - 1)].numpy().reshape(shape)

    def explain(model, inputs, targets, **_):
        maps = create_method("grad", model).attribute(torch.as_tensor(inputs),
                                                      torch.as_tensor(targets).long())
        return maps.detach().numpy()[:, None]

    monkeypatch.setattr(quantus, "explain", explain)
    monkeypatch.setattr(np.random, "randn", randn)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.SmoothMPRT(nr_samples=n, disable_warnings=True)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None,
                        explain_func=explain, device="cpu", batch_size=len(x))
    monkeypatch.undo()
    rows = SmoothMPRT(nr_samples=n).evaluate(_context(model), x, y, ids)
    spearman = rows[rows.stat == "spearman_abs"]
    layers = [k for k in scores if k != "original"]
    assert layers == list(dict.fromkeys(spearman["key"]))  # bottom-up, the same names
    assert np.allclose(scores["original"], 1.0)  # Quantus's own check: the same noise twice
    diff = max(np.abs(spearman.loc[spearman.key == k, "value"].to_numpy()
                      - np.asarray(scores[k])).max() for k in layers)
    assert diff <= 1e-9
    assert scipy.stats.tstd(spearman["value"]) > 0  # not degenerate
