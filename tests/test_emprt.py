"""eMPRT (Hedström et al. 2024): the histogram entropy against numpy + scipy, known answers made by
hand, the randomised model being the randomisation test's, and agreement with Quantus 0.6
``EfficientMPRT`` on the same model, images and maps (layers whose initialiser does not use the
global RNG, so that Quantus's randomisation and ours give the same model).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from attrib_bench.core.errors import SettingError
from attrib_bench.core.registry import create_method, create_metric, list_metrics
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext
from attrib_bench.metrics.emprt import (
    EfficientMPRT,
    fully_randomised,
    histogram_entropy,
    probability_entropy,
)
from attrib_bench.metrics.randomisation import randomisation_layers, randomised_models

SIZE = 12


class _Fixed:
    """reset_parameters draws from its own generator, seeded by the layer's shape: the same new
    values whatever the global RNG (Quantus reseeds it before each layer, we per layer name)."""

    def reset_parameters(self) -> None:
        g = torch.Generator().manual_seed(sum(self.weight.shape) * 131 + self.weight.dim())
        with torch.no_grad():
            self.weight.copy_(torch.randn(self.weight.shape, generator=g) * 0.5)
            self.bias.copy_(torch.randn(self.bias.shape, generator=g) * 0.1)


class FixedConv(_Fixed, nn.Conv2d):
    pass


class FixedLinear(_Fixed, nn.Linear):
    pass


def _model() -> nn.Module:
    model = nn.Sequential(FixedConv(3, 6, 3, padding=1), nn.ReLU(), FixedConv(6, 6, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), FixedLinear(24, 10))
    g = torch.Generator().manual_seed(5)  # "trained" weights: not the initialiser's
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.4)
    return model.eval()


def _images(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _grad_context(model: nn.Module, seed: int = 0) -> EvalContext:
    return EvalContext(model, create_method("grad", model).attribute,
                       lambda m: create_method("grad", m), torch.device("cpu"), seed=seed)


# ----------------------------------------------------------------------------- entropy

def test_histogram_entropy_is_numpy_and_scipy():
    """np.histogram (equal bins over min..max) then scipy.stats.entropy, within 1e-12: random
    maps, heavy ties, values on the bin edges, a constant map (0) and 7 bins."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(6, 9, 11, generator=g, dtype=torch.float64)
    maps[1] = maps[1].round()  # ties
    maps[2] = torch.linspace(0, 1, 99).reshape(9, 11)  # every value on an edge or a centre
    maps[3] = 0.25  # constant
    maps[4] = maps[4].exp()  # skewed
    for bins in (100, 7):
        ours = histogram_entropy(maps, bins).numpy()
        expected = [scipy.stats.entropy(np.histogram(m.numpy(), bins=bins)[0]) for m in maps]
        assert np.abs(ours - expected).max() <= 1e-12, bins
    assert histogram_entropy(maps)[3] == 0.0
    two = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert torch.isclose(histogram_entropy(two), torch.tensor(np.log(2.0), dtype=torch.float64))
    assert histogram_entropy(torch.tensor([[0.0, float("nan")]])).isnan().all()


def test_probability_entropy_is_scipy():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = [scipy.stats.entropy(p) for p in torch.softmax(logits, 1).numpy()]
    assert np.allclose(probability_entropy(logits).numpy(), expected, atol=1e-12)


# ----------------------------------------------------------------------------- known answers

class _Maps:
    def __init__(self, values: list[float]) -> None:
        self.values = torch.tensor(values, dtype=torch.float64)

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        reps = SIZE * SIZE // len(self.values)
        return self.values.repeat(reps).reshape(1, SIZE, SIZE).expand(len(inputs), -1, -1)


def test_known_answer_two_values_to_four():
    """A map of 2 equally frequent values on the trained model and of 4 on the randomised one:
    eMPRT = log 4 / log 2 − 1 = 1 (whatever the 100 bins, the values sit in distinct bins)."""
    model = _model()
    ctx = EvalContext(model, _Maps([0.0, 1.0]).attribute, lambda m: _Maps([0.0, 1, 2, 3]),
                      torch.device("cpu"))
    rows = EfficientMPRT().evaluate(ctx, _images(3), torch.tensor([0, 1, 2]), np.arange(3))
    assert set(ROW_COLUMNS) <= set(rows.columns)
    emprt = rows[rows.stat == "emprt"]
    assert np.allclose(emprt["value"], 1.0, atol=1e-12)
    assert np.allclose(emprt["complexity"], np.log(2)) and np.allclose(
        emprt["complexity_random"], np.log(4))


def test_model_blind_map_scores_zero_and_model_rise_is_scipy():
    """A map that ignores the model (the same on the randomised one) does not rise: eMPRT 0;
    ``model_rise`` is the rise of scipy's entropy of the two models' softmax outputs."""
    model = _model()
    x = _images(4)
    blind = _Maps([0.0, 1.0, 5.0])
    ctx = EvalContext(model, blind.attribute, lambda m: blind, torch.device("cpu"), seed=3)
    rows = EfficientMPRT().evaluate(ctx, x, torch.tensor([0, 1, 2, 3]), np.arange(4))
    assert (rows.loc[rows.stat == "emprt", "value"] == 0.0).all()
    randomised = fully_randomised(model, randomisation_layers(model, x[:1]), 3)
    with torch.no_grad():
        h0, h1 = (np.array([scipy.stats.entropy(p) for p in torch.softmax(m(x), 1).double()])
                  for m in (model, randomised))
    assert np.allclose(rows.loc[rows.stat == "model_rise", "value"], h1 / h0 - 1, atol=1e-6)


def test_randomised_model_is_the_randomisation_tests_last_step():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    layers = randomisation_layers(model, _images(1))
    ours = fully_randomised(model, layers, 7)
    last = list(randomised_models(model, layers, "cascading", 7))[-1][1]
    for (k, a), b in zip(ours.state_dict().items(), last.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
        assert not torch.equal(a, before[k]), k  # every layer changed
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_grad_rises_and_settings():
    model = _model()
    rows = EfficientMPRT().evaluate(_grad_context(model), _images(4), torch.tensor([0, 1, 2, 3]),
                                    np.arange(4))
    assert rows["value"].notna().all()
    assert "emprt" in list_metrics() and EfficientMPRT.directions == {"emprt": "higher"}
    assert create_metric("emprt", n_bins=7).hparams["n_bins"] == 7
    with pytest.raises(SettingError, match="n_bins"):
        EfficientMPRT(n_bins=0)


# ----------------------------------------------------------------------------- Quantus

def test_agrees_with_quantus_efficient_mprt():
    """Quantus 0.6 EfficientMPRT (its defaults: 100 bins, no abs, no normalisation, every layer
    randomised; softmax=True for its model entropies) with our ``grad`` as explain_func, on the
    same model (float32), 5 images and maps: eMPRT within 1e-9, the model's entropy ratio
    (its ``scores_fraction_model``, our model_rise + 1) within 1e-5 (float32 outputs)."""
    quantus = pytest.importorskip("quantus")
    model, x, y = _model(), _images(5, seed=2), torch.tensor([0, 3, 5, 7, 9])

    def explain_func(model, inputs, targets, **_):
        maps = create_method("grad", model).attribute(torch.as_tensor(inputs),
                                                      torch.as_tensor(targets).long())
        return maps.detach().numpy()[:, None]

    a_batch = explain_func(model, x.numpy(), y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.EfficientMPRT(compute_extra_scores=True, disable_warnings=True)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a_batch,
                        explain_func=explain_func, device="cpu", softmax=True,
                        batch_size=len(x))
    rows = EfficientMPRT().evaluate(_grad_context(model), x, y, np.arange(5))
    ours = rows.loc[rows.stat == "emprt", "value"].to_numpy()
    assert np.abs(ours - np.asarray(scores)).max() <= 1e-9
    fraction = np.asarray(metric.scores_extra["scores_fraction_model"])
    model_rise = rows.loc[rows.stat == "model_rise", "value"].to_numpy()
    assert np.abs(model_rise + 1 - fraction).max() <= 1e-5
    assert np.ptp(ours) > 0  # not a degenerate constant
