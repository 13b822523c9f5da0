"""Grid localisation (eq. 11) and its DiFull variant: scores against hand-computed values and a
per-grid numpy reference, the authors' grid sampling, and the disconnected-grid wrapper."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import AttribBenchError, MetricError, SettingError
from attrib_bench.core.hparams import hparams_of, resolve
from attrib_bench.core.registry import (
    METRICS,
    applicable_methods,
    create_method,
    create_metric,
    create_model,
)
from attrib_bench.data import ImageSet, load_cifar10
from attrib_bench.data.predict import predict_logits
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, SelectContext
from attrib_bench.metrics.grids import (
    _confident,
    cell_slices,
    class_pools,
    compose_grids,
    sample_grids,
)
from attrib_bench.metrics.localisation import (
    DisconnectedGrid,
    Localisation,
    LocalisationDiFull,
    cell_masses,
    localisation_scores,
    split_cells,
)
from attrib_bench.models import protocols
from attrib_bench.models.coda_net import build_coda
from attrib_bench.models.resnet_cifar import resnet56

CPU = torch.device("cpu")
SELECT = SelectContext(CPU)


def _context(explain, model: nn.Module | None = None) -> EvalContext:
    return EvalContext(model=model or nn.Identity(), explain=explain,
                       make_method=lambda m: None, device=CPU)


def _fixed(maps: torch.Tensor, calls: list | None = None):
    """An explainer that returns ``maps`` (M, nH, nW) and records each call's (inputs, targets)."""

    def explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert inputs.shape[0] == maps.shape[0] == targets.shape[0]
        if calls is not None:
            calls.append((inputs.clone(), targets.clone()))
        return maps

    return explain


def _evaluate(maps: torch.Tensor, n: int, grids: int, size: int = 4, **ctx_kw):
    """Score (grids·n², n·size, n·size) maps with the metric; returns (rows, scores (G, n²))."""
    metric = Localisation(n=n)
    inputs = torch.rand(grids, 3, n * size, n * size)
    targets = torch.arange(n * n).repeat(grids, 1)
    rows = metric.evaluate(_context(_fixed(maps), **ctx_kw), inputs, targets, np.arange(grids))
    return rows, rows["value"].to_numpy().reshape(grids, n * n)


def _reference(maps: np.ndarray, n: int) -> np.ndarray:
    """Eq. 11 written out per grid and cell: maps (G, n², nH, nW) → scores (G, n²)."""
    g, nn_, gh, gw = maps.shape
    scores = np.zeros((g, nn_))
    for i in range(g):
        for k in range(nn_):
            m = maps[i, k].astype(np.float64)
            if not np.isfinite(m).all():
                scores[i, k] = np.nan
                continue
            positive = np.where(m > 0, m, 0.0)
            rows, cols = cell_slices(k, n, gh // n, gw // n)
            total = positive.sum()
            scores[i, k] = positive[rows, cols].sum() / total if total > 0 else 0.0
    return scores


# ----------------------------------------------------------------------------- a synthetic set


class LabelReader(nn.Module):
    """A tiny 'classifier' that reads its answer from the image: the class from pixel (0, 0, 0)
    (class·20), the target logit from pixel (1, 0, 0) ((v − 128) / 16); other logits are −5.
    Declared sigmoid (one-vs-rest): confident means target logit > 0."""

    probability = "sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        code = (x[:, 0, 0, 0] * 255).round().long()
        logit = (x[:, 1, 0, 0] * 255 - 128) / 16
        out = torch.full((x.shape[0], 10), -5.0, dtype=x.dtype)
        return out.scatter(1, (code // 20)[:, None], logit[:, None])


def _synthetic(num: int = 300, size: int = 4, wrong: float = 0.1, seed: int = 0) -> ImageSet:
    """``num`` random (3, size, size) images of 10 classes; a fraction ``wrong`` misread by
    :class:`LabelReader`, a random fraction not confident (target logit < 0)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num)
    predicted = np.where(rng.random(num) < wrong, (labels + 1) % 10, labels)
    images = rng.integers(0, 256, (num, 3, size, size), dtype=np.uint8)
    images[:, 0, 0, 0] = predicted * 20
    images[:, 1, 0, 0] = rng.integers(100, 256, num)  # ~18 % not confident
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels).long(),
                    tuple(f"c{i}" for i in range(10)), "synthetic")


def _oracle(n: int):
    """An explainer that puts +1 on the cell whose image carries the target class, −1 elsewhere."""

    def explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h, w = inputs.shape[2] // n, inputs.shape[3] // n
        maps = -torch.ones(inputs.shape[0], inputs.shape[2], inputs.shape[3])
        for i in range(inputs.shape[0]):
            for k in range(n * n):
                rows, cols = cell_slices(k, n, h, w)
                if round(inputs[i, 0, rows, cols][0, 0].item() * 255) // 20 == targets[i]:
                    maps[i, rows, cols] = 1.0
        return maps

    return explain


# ----------------------------------------------------------------------------- scores


def test_oracle_scores_exactly_one_end_to_end():
    data, metric = _synthetic(), Localisation(n=3, num_grids=4)
    samples = metric.select(LabelReader(), data, None, SELECT)
    inputs, targets = samples.fetch(samples.ids)
    calls = []
    oracle = _oracle(3)

    def explain(x, t):
        calls.append(len(x))
        return oracle(x, t)

    rows = metric.evaluate(_context(explain), inputs, targets, samples.ids)
    assert calls == [4 * 9]  # one call for the whole batch
    assert list(rows.columns) == [*ROW_COLUMNS, "target"]
    assert (rows["value"] == 1.0).all() and len(rows) == 36
    assert rows["sample"].tolist() == np.repeat(samples.ids, 9).tolist()
    assert rows["key"].tolist() == [str(k) for k in range(9)] * 4
    assert rows["target"].tolist() == targets.reshape(-1).tolist()
    assert (rows["stat"] == "score").all() and (rows["variant"] == "").all()


def test_explainer_gets_each_grid_once_per_cell_with_the_cell_class():
    n, g = 2, 3
    inputs, targets = torch.rand(g, 3, 8, 8), torch.randint(0, 10, (g, 4))
    calls = []
    Localisation(n=n).evaluate(_context(_fixed(torch.ones(g * 4, 8, 8), calls)), inputs,
                               targets, np.arange(g))
    (seen, seen_targets), = calls
    assert torch.equal(seen, inputs.repeat_interleave(4, dim=0))
    assert torch.equal(seen_targets, targets.reshape(-1))


@pytest.mark.parametrize("n", [2, 3, 4])
def test_uniform_map_scores_one_over_n_squared(n):
    _, scores = _evaluate(torch.full((2 * n * n, 4 * n, 4 * n), 0.3), n, grids=2)
    np.testing.assert_allclose(scores, 1 / n**2, rtol=1e-12)


def test_all_negative_or_zero_map_scores_zero_without_warnings():
    maps = -torch.rand(2 * 9, 12, 12)
    maps[9:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows, scores = _evaluate(maps, 3, grids=2)
    assert (scores == 0.0).all() and np.isfinite(scores).all()


def test_hand_computed_fractions():
    # n = 2, cells of 2x2 px; cell 0: rows 0-1 cols 0-1, 1: rows 2-3 cols 0-1,
    # 2: rows 0-1 cols 2-3, 3: rows 2-3 cols 2-3.
    maps = torch.zeros(4, 4, 4)
    maps[0, 0, 0], maps[0, 3, 3], maps[0, 2, 0] = 3.0, 1.0, -5.0  # 3 / (3 + 1)
    maps[1, 2, 1], maps[1, 0, 3] = 2.0, 6.0  # cell 1: 2 / 8
    maps[2, 1, 3], maps[2, 1, 2], maps[2, 3, 0] = 1.5, 0.5, 2.0  # cell 2: 2 / 4
    maps[3, 0, 0] = 7.0  # cell 3 has nothing: 0
    _, scores = _evaluate(maps, 2, grids=1, size=2)
    np.testing.assert_allclose(scores, [[0.75, 0.25, 0.5, 0.0]], rtol=1e-15)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_map_gives_nan_for_that_cell_only(bad):
    maps = torch.rand(2 * 4, 8, 8)
    maps[5, 1, 1] = bad
    _, scores = _evaluate(maps, 2, grids=2)
    assert np.isnan(scores[1, 1]) and np.isnan(scores).sum() == 1


@pytest.mark.parametrize("n", [2, 3])
def test_agrees_with_per_grid_reference(n):
    g, size = 5, 3
    maps = torch.randn(g * n * n, n * size, n * size, dtype=torch.float64)
    maps[2] = -maps[2].abs()  # one map with no positive mass
    maps[3, 0, 0] = float("nan")
    _, scores = _evaluate(maps, n, grids=g, size=size)
    expected = _reference(maps.reshape(g, n * n, n * size, n * size).numpy(), n)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=0, equal_nan=True)
    torch.testing.assert_close(localisation_scores(maps.reshape(g, n * n, *maps.shape[1:]), n),
                               torch.from_numpy(expected), equal_nan=True)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_cell_layout_is_column_first(n):
    h, w = 3, 2
    for k in range(n * n):
        rows, cols = cell_slices(k, n, h, w)
        assert (rows.start // h, cols.start // w) == (k % n, k // n)
        maps = torch.zeros(1, n * h, n * w)
        maps[0, rows, cols] = 1.0
        assert cell_masses(maps, n)[0].argmax().item() == k
    cells = torch.rand(2, n * n, 3, h, w)
    grids = compose_grids(cells)
    split = split_cells(grids, n).reshape(2, n * n, 3, h, w)
    assert torch.equal(split, cells)
    for k in range(n * n):
        rows, cols = cell_slices(k, n, h, w)
        assert torch.equal(split[:, k], grids[:, :, rows, cols])


# ----------------------------------------------------------------------------- select


def test_select_returns_the_grids_sample_grids_draws():
    data = _synthetic()
    samples = Localisation(n=3, num_grids=500, seed=7).select(LabelReader(), data, 5, SELECT)
    indices, classes = sample_grids(predict_logits(LabelReader(), data, progress=False),
                                    data.labels, n=3, num_grids=5, seed=7)
    assert samples.ids.tolist() == list(range(5))
    assert samples.info["grids"] == 5 and samples.info["grid_size"] == 3
    inputs, targets = samples.fetch(np.array([3, 1]))
    assert torch.equal(targets, classes[[3, 1]])
    assert torch.equal(inputs, compose_grids(data.images[indices[[3, 1]]]).float() / 255)
    assert inputs.shape == (2, 3, 12, 12)


def test_grid_confidence_uses_the_models_declared_probability():
    """A positive target logit is confident for a sigmoid model, not for a softmax one whose
    other classes share the mass (softmax 0.25 here); the pool is ordered by that probability."""
    logits = torch.tensor([[1.0, 1.0, 1.0, 0.9], [3.0, 0.0, 0.0, 0.0], [2.0, -9.0, -9.0, -9.0]])
    labels = torch.tensor([0, 0, 0])
    assert _confident(logits, labels, "sigmoid").tolist() == [True, True, True]
    assert _confident(logits, labels, "softmax").tolist() == [False, True, True]
    assert class_pools(logits, labels, "sigmoid")[0].tolist() == [1, 2, 0]  # logit order
    assert class_pools(logits, labels, "softmax")[0].tolist() == [2, 1, 0]  # probability order


def test_too_few_grids_error_says_how_many_and_the_fix():
    data = _synthetic(num=60)
    logits = predict_logits(LabelReader(), data, progress=False)
    possible = len(sample_grids(logits, data.labels, n=3, num_grids=500)[0])
    target = logits.gather(1, data.labels[:, None])[:, 0]
    pool = int(((logits.argmax(1) == data.labels) & (target.sigmoid() > 0.5)).sum())
    assert 0 < possible < 500
    with pytest.raises(MetricError) as info:
        Localisation().select(LabelReader(), data, None, SELECT)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, AttribBenchError)
    assert f"only {possible} 3x3 grids" in message and f"({pool} correctly classified" in message
    assert f"--n-samples {possible}" in message and "500 requested" in message
    assert len(Localisation().select(LabelReader(), data, possible, SELECT)) == possible


def test_hparams_are_checked_and_registered():
    assert isinstance(create_metric("localisation", n=2), Localisation)
    assert isinstance(create_metric("localisation-difull"), LocalisationDiFull)
    for name in ("localisation", "localisation-difull"):
        entry = METRICS.get(name)
        assert "hparams" not in entry.metadata
        specs = hparams_of(entry.factory)
        assert {k: s.default for k, s in specs.items()} == {"n": 3, "num_grids": 500, "seed": 42}
        assert specs["n"].type_name == "2 | 3 | 4"
    with pytest.raises(SettingError, match=re.escape("n must be 2 | 3 | 4, got 5")):
        Localisation(n=5)
    with pytest.raises(SettingError, match=re.escape("n must be 2 | 3 | 4, got True")):
        Localisation(n=True)
    with pytest.raises(SettingError, match="has no hyper-parameter 'grid': did you mean num_grids"):
        resolve("metric 'localisation-difull'", LocalisationDiFull, {"grid": 3})
    with pytest.raises(MetricError, match="num_grids"):
        Localisation(num_grids=-1)
    with pytest.raises(TypeError, match="batch_size"):  # gone: the pool pass has its own batch
        Localisation(batch_size=0)
    metric = LocalisationDiFull(n=np.int64(2), num_grids=np.int32(7), seed=np.int64(1))
    assert metric.hparams == {"n": 2, "num_grids": 7, "seed": 1}
    assert (metric.n, metric.num_grids, metric.seed) == (2, 7, 1)
    assert all(type(v) is int for v in (metric.n, metric.num_grids, metric.seed))
    with pytest.raises(MetricError, match="needs more than 16 classes"):
        Localisation(n=4).select(LabelReader(), _synthetic(num=20), 1, SELECT)


# ----------------------------------------------------------------------------- DiFull


def _tiny_coda() -> nn.Module:
    return build_coda("xs", temperature=10, out_channels=(6, 8, 10), ranks=(4, 4, 4),
                      kernels=(3, 3, 1), strides=(1, 2, 1), paddings=(1, 1, 0),
                      image_size=8).double().eval()


def _resnet() -> nn.Module:
    return resnet56().double().eval()


@pytest.mark.parametrize("build", [_tiny_coda, _resnet])
def test_head_of_features_is_forward(build):
    model = build()
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x),
                                   rtol=0, atol=0)
        wrapper = DisconnectedGrid(model, 2)  # the wrapper offers the same split
        grids = torch.rand(2, 3, 16, 16, dtype=torch.float64)
        assert protocols.has(wrapper, "features_head")
        torch.testing.assert_close(wrapper.forward_head(wrapper.forward_features(grids)),
                                   wrapper(grids), rtol=0, atol=0)


def test_wrapper_declares_the_models_probability_and_temperature():
    coda, resnet = DisconnectedGrid(_tiny_coda(), 2), DisconnectedGrid(_resnet(), 2)
    assert protocols.probability(coda) == "sigmoid" and coda.temperature == 10.0
    assert protocols.has(coda, "temperature")
    assert protocols.probability(resnet) == "softmax" and not protocols.has(resnet, "temperature")

    class Undeclared(nn.Module):  # a split but no declarations: the wrapper declares none
        def forward_features(self, x):
            return x

        def forward_head(self, f):
            return f.mean(dim=(2, 3))

    bare = DisconnectedGrid(Undeclared(), 2)
    assert bare.probability is None and not protocols.has(bare, "probability")
    assert protocols.probability(bare) == "softmax"
    model = _tiny_coda()
    wrapper = DisconnectedGrid(model, 2)
    model.temperature = 20.0  # read from the model, not copied at construction
    assert wrapper.temperature == 20.0


def test_difull_logit_is_sum_of_cell_evidence_plus_bias():
    model, n = _tiny_coda(), 3
    grids = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    wrapper = LocalisationDiFull(n=n).prepare_model(model)
    with torch.no_grad():
        expected = sum(model.evidence_encoded(model.encode(grids[:, :, rows, cols]))
                       for rows, cols in (cell_slices(k, n, 8, 8) for k in range(n * n)))
        torch.testing.assert_close(wrapper(grids), expected + model.logit_bias, rtol=1e-12,
                                   atol=1e-12)
        assert not torch.allclose(model(grids), wrapper(grids))  # the grid differs from the view


def test_difull_contributions_are_complete():
    model = _tiny_coda()
    wrapper = DisconnectedGrid(model, 2)
    grids, target = torch.rand(3, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 4, 9])
    maps = wrapper.contributions(grids, target)
    assert maps.shape == (3, 6, 16, 16)
    with torch.no_grad():
        logit = wrapper(grids).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), logit - model.logit_bias, rtol=1e-10,
                               atol=1e-13)


def test_contributions_only_on_models_that_have_them():
    coda, resnet = DisconnectedGrid(_tiny_coda(), 2), DisconnectedGrid(_resnet(), 2)
    assert hasattr(coda, "contributions") and not hasattr(resnet, "contributions")
    assert isinstance(coda, DisconnectedGrid) and isinstance(resnet, DisconnectedGrid)
    assert "inherent" in applicable_methods(coda) and "inherent" not in applicable_methods(resnet)
    assert "gradcam" in applicable_methods(resnet)


def test_model_without_features_and_head_gets_one_line_error():
    with pytest.raises(MetricError) as info:
        LocalisationDiFull().prepare_model(LabelReader())
    message = str(info.value)
    assert "\n" not in message and "forward_features() or forward_head()" in message
    assert "forward_head(forward_features(x))" in message

    class OldNames(LabelReader):  # the pre-timm names do not count
        def features(self, x):
            return x

        def head(self, f):
            return f.mean(dim=(2, 3))

    with pytest.raises(MetricError, match="forward_features"):
        DisconnectedGrid(OldNames(), 2)


@pytest.mark.parametrize(("build", "method"), [(_tiny_coda, "grad"), (_tiny_coda, "inherent"),
                                                (_resnet, "grad")])
def test_difull_attribution_of_a_cell_ignores_the_other_cells(build, method):
    n, size, changed = 2, 8, 1
    model = build()
    wrapper = DisconnectedGrid(model, n)
    grids = torch.rand(2, 3, n * size, n * size, dtype=torch.float64)
    other = grids.clone()
    rows, cols = cell_slices(changed, n, size, size)
    other[:, :, rows, cols] = torch.rand_like(other[:, :, rows, cols])
    target = torch.tensor([2, 7])
    outside = torch.ones(n * size, n * size, dtype=torch.bool)
    outside[rows, cols] = False

    explain = create_method(method, wrapper).attribute
    before, after = explain(grids, target), explain(other, target)
    torch.testing.assert_close(after[:, outside], before[:, outside], rtol=1e-12, atol=1e-15)
    assert not torch.allclose(after[:, ~outside], before[:, ~outside])
    if method == "grad":  # the plain model mixes the cells: the check can fail
        plain = create_method(method, model).attribute
        assert not torch.allclose(plain(grids, target)[:, outside],
                                  plain(other, target)[:, outside])


def test_gradcam_sees_the_reassembled_feature_map():
    n = 2
    wrapper = DisconnectedGrid(_tiny_coda(), n)
    shapes = []
    handle = wrapper.gradcam_layer.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        maps = create_method("gradcam", wrapper).attribute(
            torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1, 3]))
    finally:
        handle.remove()
    assert shapes[-1] == (2, 10, 2 * 4, 2 * 4) and maps.shape == (2, 16, 16)  # [0]: a K probe


def test_difull_metric_end_to_end_with_inherent():
    data = _synthetic(num=200, size=8)
    metric = LocalisationDiFull(n=2)
    samples = metric.select(LabelReader(), data, 3, SELECT)
    view = metric.prepare_model(_tiny_coda().float())
    explain = create_method("inherent", view).attribute
    inputs, targets = samples.fetch(samples.ids)
    rows = metric.evaluate(_context(explain, view), inputs, targets, samples.ids)
    assert len(rows) == 12 and rows["value"].between(0, 1).all()
    assert metric.model_view == "difull" and Localisation.model_view == ""


# ----------------------------------------------------------------------------- real data


@pytest.mark.real
def test_real_cifar10_grids_are_correct_confident_and_distinct(data_root, weights_root):
    data = load_cifar10("test", root=data_root).subset(100)
    model = create_model("resnet56", pretrained=True, weights_root=weights_root)
    samples = Localisation().select(model, data, 2, SELECT)
    inputs, targets = samples.fetch(samples.ids)
    assert inputs.shape == (2, 3, 96, 96)
    with torch.inference_mode():
        logits = model(split_cells(inputs, 3))
    assert torch.equal(logits.argmax(1), targets.reshape(-1))
    assert (logits.gather(1, targets.reshape(-1, 1)).sigmoid() > 0.5).all()
    assert all(len(set(t.tolist())) == 9 for t in targets)
