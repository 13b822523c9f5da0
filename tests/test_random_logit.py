"""The random-logit test (Sixt et al. 2020): known answers on a linear model, the seeded class draw
(never the label, uniform, per sample), and agreement with Quantus 0.6 ``RandomLogit`` on the same
model, images, maps and classes; Quantus's own SSIM (of the flattened map) differs from the
paper's image SSIM, shown below.

Tiny float64 models at 16 px keep the file well under a second or two.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity
from torch import nn

from attrib_bench.core.errors import SettingError
from attrib_bench.core.registry import create_method, create_metric, list_metrics
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext
from attrib_bench.metrics.random_logit import (
    RandomLogit,
    other_classes,
    random_logit_similarities,
)
from attrib_bench.metrics.randomisation import STATS, minmax_normalise

SIZE = 16


class Linear(nn.Module):
    """logits = W · x (flattened); ``weight`` (K, 3, H, W)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.weight.flatten(1).t()


def _ixg(model: Linear):
    """Input × gradient of a linear model, by hand: (W[target] · x) summed over channels."""
    def explain(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (model.weight[target] * inputs).sum(1).detach()
    return explain


def _images(n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64)


def _conv(classes: int = 10) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, classes)).double().eval()


def _context(model: nn.Module, explain, seed: int = 0) -> EvalContext:
    return EvalContext(model, explain, lambda m: None, torch.device("cpu"), seed=seed)


# ----------------------------------------------------------------------------- known answers

def test_two_classes_known_answers():
    """K = 2 leaves one other class: identical weights give identical maps (SSIM = Spearman = 1);
    negated weights give the negated map (Spearman −1, Spearman of |map| 1)."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    x, samples = _images(), np.arange(4)
    target = torch.tensor([0, 1, 0, 1])
    same = Linear(torch.cat([w, w]))
    rows = RandomLogit().evaluate(_context(same, _ixg(same)), x, target, samples)
    assert set(rows.columns) == {*ROW_COLUMNS, "other_class"}
    assert (rows["other_class"].to_numpy() == np.tile(1 - target.numpy(), 3)).all()
    for stat in STATS:
        assert np.allclose(rows.loc[rows.stat == stat, "value"], 1.0, atol=1e-12), stat
    flipped = Linear(torch.cat([w, -w]))
    rows = RandomLogit().evaluate(_context(flipped, _ixg(flipped)), x, target, samples)
    values = rows.groupby("stat")["value"].apply(np.asarray)
    assert np.allclose(values["spearman"], -1.0) and np.allclose(values["spearman_abs"], 1.0)
    expected = [structural_similarity(a, b, data_range=1.0) for a, b in zip(
        minmax_normalise(_ixg(flipped)(x, target)).numpy(),
        minmax_normalise(-_ixg(flipped)(x, target)).numpy(), strict=True)]
    assert np.allclose(values["ssim"], expected, atol=1e-10)
    assert (values["ssim"] < 0.5).all()  # a map and its negation are far apart


def test_independent_weights_match_scipy_spearman():
    """Spearman rows equal scipy.stats.spearmanr of the two hand-made maps (tolerance 1e-10)."""
    g = torch.Generator().manual_seed(2)
    model = Linear(torch.randn(5, 3, SIZE, SIZE, generator=g, dtype=torch.float64))
    x, target, samples = _images(), torch.tensor([0, 1, 2, 3]), np.arange(10, 14)
    rows = RandomLogit().evaluate(_context(model, _ixg(model), seed=7), x, target, samples)
    other = torch.as_tensor(rows.loc[rows.stat == "spearman", "other_class"].to_numpy().copy())
    assert (other != target).all()
    a, b = _ixg(model)(x, target), _ixg(model)(x, other)
    expected = [scipy.stats.spearmanr(u.ravel(), v.ravel())[0] for u, v in zip(
        a.numpy(), b.numpy(), strict=True)]
    assert np.allclose(rows.loc[rows.stat == "spearman", "value"], expected, atol=1e-10)


def test_model_blind_map_scores_one():
    """A map that ignores the class (an edge detector) is identical for every logit: SSIM 1."""
    def sobel(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=inputs.dtype)
        grey = inputs.mean(1, keepdim=True)
        return F.conv2d(grey, k.view(1, 1, 3, 3), padding=1)[:, 0].abs()

    model = _conv()
    x, target = _images(), torch.tensor([0, 3, 5, 9])
    blind = RandomLogit().evaluate(_context(model, sobel), x, target, np.arange(4))
    assert np.allclose(blind.loc[blind.stat == "ssim", "value"], 1.0)
    grad = create_method("grad", model)
    rows = RandomLogit().evaluate(_context(model, grad.attribute), x, target, np.arange(4))
    assert (rows.loc[rows.stat == "ssim", "value"] < 0.99).all()


# ----------------------------------------------------------------------------- the class draw

def test_other_classes_seeded_per_sample():
    """Never the label, within [0, K), a function of (seed, sample id) only (not the batch),
    another seed another draw, and uniform over the K − 1 others (chi-square, p > 1e-3)."""
    ids = torch.arange(20_000)
    target = ids % 10
    drawn = other_classes(5, ids, target, 10)
    assert ((drawn != target) & (drawn >= 0) & (drawn < 10)).all()
    assert torch.equal(drawn[7:9], other_classes(5, ids[7:9], target[7:9], 10))
    assert torch.equal(drawn, other_classes(5, ids, target, 10))
    assert (drawn != other_classes(6, ids, target, 10)).float().mean() > 0.8
    rank = drawn - (drawn > target).long()  # position among the 9 others
    counts = np.bincount(rank.numpy(), minlength=9)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    assert torch.equal(other_classes(0, ids[:5], torch.tensor([1, 0, 1, 0, 1]), 2),
                       torch.tensor([0, 1, 0, 1, 0]))


def test_rows_do_not_depend_on_the_batching():
    model = _conv()
    grad = create_method("grad", model)
    x, target, samples = _images(6), torch.tensor([0, 1, 2, 3, 4, 5]), np.arange(30, 36)
    metric = RandomLogit()
    whole = metric.evaluate(_context(model, grad.attribute, seed=3), x, target, samples)
    parts = [metric.evaluate(_context(model, grad.attribute, seed=3), x[s], target[s], samples[s])
             for s in (slice(0, 2), slice(2, 6))]
    both = pd.concat(parts).sort_values(["stat", "sample"]).reset_index(drop=True)
    whole = whole.sort_values(["stat", "sample"]).reset_index(drop=True)
    assert (both["other_class"].to_numpy() == whole["other_class"].to_numpy()).all()
    assert np.allclose(both["value"], whole["value"], atol=1e-10)


def test_settings_and_registration():
    assert "random-logit" in list_metrics()
    metric = create_metric("random-logit", num_images=3, num_classes=4, seed=1)
    assert metric.hparams == {"num_images": 3, "num_classes": 4, "seed": 1}
    assert set(RandomLogit.directions) == set(STATS)
    assert set(RandomLogit.directions.values()) == {"lower"}
    with pytest.raises(SettingError, match="num_classes"):
        RandomLogit(num_classes=1)
    with pytest.raises(SettingError, match="num_images"):
        RandomLogit(num_images=0)


# ----------------------------------------------------------------------------- Quantus

def _quantus_run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs):
    """Quantus RandomLogit with our ``grad`` as its explain_func; returns (scores, the classes
    Quantus drew, our maps for the labels)."""
    quantus = pytest.importorskip("quantus")
    grad = create_method("grad", model)
    asked: list[np.ndarray] = []

    def explain_func(model, inputs, targets, **_):
        asked.append(np.asarray(targets))
        maps = grad.attribute(torch.as_tensor(inputs), torch.as_tensor(targets).long())
        return maps.detach().numpy()[:, None]

    a_batch = grad.attribute(x, y).detach().numpy()[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.RandomLogit(num_classes=10, disable_warnings=True, **kwargs)
        scores = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a_batch,
                        explain_func=explain_func, device="cpu", batch_size=len(x))
    return np.asarray(scores), torch.as_tensor(asked[-1]).long(), grad


def _image_ssim(a: np.ndarray, b: np.ndarray, batched: bool = False, **_) -> list[float]:
    """The paper's SSIM handed to Quantus: each row back to (H, W), min-max scaled, skimage."""
    out = []
    for u, v in zip(a, b, strict=True):
        u, v = (minmax_normalise(torch.as_tensor(t.reshape(1, SIZE, SIZE)))[0].numpy()
                for t in (u, v))
        out.append(structural_similarity(u, v, data_range=1.0))
    return out


def test_agrees_with_quantus_given_the_same_classes():
    """Quantus 0.6 RandomLogit (normalise=False, similarity = skimage SSIM of the images) on the
    same conv model, 6 images, ``grad`` maps and the classes Quantus drew: |diff| ≤ 1e-8.
    Quantus's draw (np.random.seed(42), randint(0, K−1)) indexes the other classes as we do."""
    model = _conv()
    x, y = _images(6, seed=4), torch.tensor([0, 2, 4, 6, 8, 9])
    scores, other, grad = _quantus_run(model, x, y, similarity_func=_image_ssim, normalise=False)
    np.random.seed(42)
    u = torch.as_tensor(np.random.randint(0, 9, len(y)))
    assert torch.equal(other, u + (u >= y).long())
    ours = random_logit_similarities(grad.attribute, x, y, other)["ssim"].numpy()
    assert np.abs(ours - scores).max() <= 1e-8
    assert len(set(np.round(scores, 6))) > 1  # not a degenerate constant


def test_quantus_default_ssim_differs_from_the_papers():
    """Quantus's default flattens each map to one row (a 1-D SSIM window along the rows), on maps
    divided by the max |value| of the whole batch (normalise_by_max with no axes: a score that
    depends on the batch), data_range the pair's joint range; the paper compares images.
    We follow the paper: on the same classes the two differ (by > 0.01 on some image), and
    Quantus's value is the 1-D SSIM we rebuild here (tolerance 1e-8)."""
    model = _conv()
    x, y = _images(6, seed=4), torch.tensor([0, 2, 4, 6, 8, 9])
    scores, other, grad = _quantus_run(model, x, y)
    ours = random_logit_similarities(grad.attribute, x, y, other)["ssim"].numpy()
    assert np.abs(ours - scores).max() > 0.01
    rebuilt = []
    maps = grad.attribute(x, y).detach().numpy(), grad.attribute(x, other).detach().numpy()
    scale = [np.abs(m).max() for m in maps]  # normalise_by_max over the whole batch
    for a, b in zip(*maps, strict=True):
        a, b = a.ravel() / scale[0], b.ravel() / scale[1]
        joint = np.concatenate([a, b])
        rebuilt.append(structural_similarity(a, b, data_range=float(joint.max() - joint.min())))
    assert np.abs(np.asarray(rebuilt) - scores).max() <= 1e-8
