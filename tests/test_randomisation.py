"""The model-parameter randomisation test: similarities against scipy / scikit-image, which layers
each step randomises, determinism, no NaN, and that it tells a model-blind method from ``grad``.

Tiny float64 models at 16 px keep it fast: the 5-layer CoDA-Net of test_methods and a CIFAR
ResNet-8 with random batch-norm statistics (so that resetting a BN layer changes it).
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

from attrib_bench.core.errors import AttribBenchError, MetricError, SettingError
from attrib_bench.core.hparams import hparams_of, resolve
from attrib_bench.core.registry import METRICS, create_method
from attrib_bench.data import ImageSet
from attrib_bench.methods.base import function_method
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, SelectContext
from attrib_bench.metrics.randomisation import (
    STATS,
    Randomisation,
    minmax_normalise,
    randomisation_layers,
    randomised_models,
    spearman,
    ssim,
)
from attrib_bench.models.coda_net import build_coda
from attrib_bench.models.dau import DAUConv2d
from attrib_bench.models.resnet_cifar import CifarResNet, resnet56

TINY_CODA = {"out_channels": (8, 8, 16, 16, 10), "ranks": (8, 8, 16, 16, 16),
             "kernels": (3, 3, 3, 3, 1), "strides": (1, 2, 1, 2, 1), "paddings": (1, 1, 1, 1, 0)}


def _coda(norm: str = "sq") -> nn.Module:
    torch.manual_seed(1)
    return build_coda("xs", norm=norm, temperature=10, **TINY_CODA).double().eval()


def _resnet() -> nn.Module:
    torch.manual_seed(2)
    model = CifarResNet(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.double().eval()


def _images(n: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g, dtype=torch.float64),
            torch.arange(n, dtype=torch.long) % 10)


def _context(model: nn.Module, method: str | type = "grad") -> EvalContext:
    def make(m: nn.Module):
        return create_method(method, m) if isinstance(method, str) else method(m)

    return EvalContext(model, make(model).attribute, make, torch.device("cpu"))


def _sobel(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A model-blind "method": the gradient magnitude of the grey image (an edge detector)."""
    grey = inputs.mean(1, keepdim=True)
    k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=inputs.dtype)
    gx = F.conv2d(grey, k.view(1, 1, 3, 3), padding=1)
    gy = F.conv2d(grey, k.t().reshape(1, 1, 3, 3), padding=1)
    return (gx.pow(2) + gy.pow(2)).sqrt()[:, 0]


Edges = function_method(_sobel, "edges")


def _changed(model: nn.Module, reference: dict[str, torch.Tensor], layers: list[str]) -> set[str]:
    """Which of ``layers`` differ (any parameter or buffer) from the ``reference`` state dict."""
    state = model.state_dict()
    return {name for name in layers
            if any(not torch.equal(state[k], reference[k]) for k in reference
                   if k.startswith(name + "."))}


# ----------------------------------------------------------------------------- similarities


def test_spearman_equals_scipy_with_ties_and_abs():
    g = torch.Generator().manual_seed(0)
    hand = torch.tensor([[[0.0, 1.0, 1.0], [2.0, -2.0, 1.0], [0.0, 3.0, -1.0]]])
    other = torch.tensor([[[1.0, 1.0, 0.5], [0.5, 2.0, -3.0], [3.0, 3.0, 3.0]]])
    a = torch.cat([hand, torch.randint(-3, 4, (5, 3, 3), generator=g).double()])
    b = torch.cat([other, torch.randint(-3, 4, (5, 3, 3), generator=g).double()])
    for x, y in ((a, b), (a.abs(), b.abs())):
        ours = spearman(x, y).numpy()
        ref = [scipy.stats.spearmanr(x[i].ravel(), y[i].ravel()).statistic for i in range(len(x))]
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    cont = torch.randn(4, 16, 16, generator=g, dtype=torch.float64)
    cont2 = cont + 0.5 * torch.randn(4, 16, 16, generator=g, dtype=torch.float64)
    ref = [scipy.stats.spearmanr(cont[i].ravel(), cont2[i].ravel()).statistic for i in range(4)]
    np.testing.assert_allclose(spearman(cont, cont2).numpy(), ref, rtol=0, atol=1e-12)


def test_ssim_equals_skimage_on_normalised_maps():
    g = torch.Generator().manual_seed(1)
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    blob = torch.exp(-((yy - 5) ** 2 + (xx - 4) ** 2) / 8).double()
    a = torch.stack([blob, torch.randn(12, 10, generator=g, dtype=torch.float64), blob * 3 - 1])
    b = torch.stack([blob.flip(1),
                     torch.randn(12, 10, generator=g, dtype=torch.float64),
                     blob + 0.1 * torch.randn(12, 10, generator=g, dtype=torch.float64)])
    na, nb = minmax_normalise(a), minmax_normalise(b)
    assert na.min() == 0 and na.max() == 1
    ours = ssim(na, nb).numpy()
    ref = [structural_similarity(na[i].numpy(), nb[i].numpy(), data_range=1.0) for i in range(3)]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_identical_maps_score_one_and_constant_maps_nan_quietly():
    maps = torch.randn(3, 8, 8, dtype=torch.float64)
    np.testing.assert_allclose(spearman(maps, maps).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(ssim(minmax_normalise(maps), minmax_normalise(maps)).numpy(), 1.0,
                               atol=1e-12)
    broken = maps.clone()
    broken[0] = 0.0  # constant: Spearman undefined
    broken[1, 2, 3] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rho = spearman(broken, maps)
    assert torch.isnan(rho[:2]).all() and rho[2].item() == pytest.approx(1.0)
    assert torch.equal(minmax_normalise(broken[:1]), torch.zeros(1, 8, 8, dtype=torch.float64))


# ----------------------------------------------------------------------------- layers


def test_layer_order_is_top_first():
    x = torch.rand(1, 3, 16, 16)
    coda = randomisation_layers(build_coda("xs"), x)
    assert coda == [f"layers.{i}" for i in range(8, -1, -1)]
    names = randomisation_layers(resnet56().eval(), x)
    assert names[0] == "linear" and names[-1] == "conv1" and len(names) == 56 + 55
    assert names[1:3] == ["layer3.8.bn2", "layer3.8.conv2"]


def test_dau_reset_parameters_redraws_the_construction():
    torch.manual_seed(5)
    built = DAUConv2d(6, 4, 3)
    other = DAUConv2d(6, 4, 3)  # different values
    assert not torch.equal(built.expand.weight, other.expand.weight)
    torch.manual_seed(5)
    other.reset_parameters()
    for p, q in zip(built.parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("make", [_coda, _resnet], ids=["coda", "resnet8"])
def test_steps_randomise_exactly_the_right_layers(make):
    model = make()
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    layers = randomisation_layers(model, _images(1)[0])
    for i, (name, step) in enumerate(randomised_models(model, layers, "cascading", seed=0)):
        assert name == layers[i] and _changed(step, reference, layers) == set(layers[: i + 1])
    for i, (name, step) in enumerate(randomised_models(model, layers, "independent", seed=0)):
        assert name == layers[i] and _changed(step, reference, layers) == {layers[i]}
    assert _changed(model, reference, layers) == set()


def test_randomisation_is_seeded_by_seed_and_layer_name():
    model = _coda()
    layers = ["layers.4", "layers.3"]
    before = torch.random.get_rng_state()

    def params(mode: str, seed: int) -> list[torch.Tensor]:
        return [p.clone() for _, m in randomised_models(model, layers, mode, seed)
                for p in m.parameters()]

    first, again, other = params("cascading", 3), params("cascading", 3), params("cascading", 4)
    assert all(torch.equal(p, q) for p, q in zip(first, again, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(first, other, strict=True))
    assert torch.equal(torch.random.get_rng_state(), before)  # global RNG untouched
    # a layer gets the same new values in both modes
    _, indep = next(randomised_models(model, ["layers.3"], "independent", 3))  # before restore
    casc = list(randomised_models(model, layers, "cascading", 3))[-1][1]
    assert torch.equal(indep.layers[3].expand.weight, casc.layers[3].expand.weight)


def test_randomisation_never_reseeds_the_cuda_generators(monkeypatch):
    """The draws seed the CPU generator only: ``torch.manual_seed`` would also reseed every CUDA
    generator, which ``fork_rng(devices=[])`` does not restore."""
    model, calls = _coda(), []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: calls.append(seed))
    list(randomised_models(model, ["layers.4", "layers.3"], "cascading", 3))
    assert calls == []


@pytest.mark.parametrize("make", [lambda: _coda("sq"), lambda: _coda("l2"), lambda: resnet56()],
                         ids=["coda-sq", "coda-l2", "resnet56"])
def test_randomised_models_never_give_nan(make):
    model = make().eval()
    x = _images(2)[0].to(next(model.parameters()).dtype)
    layers = randomisation_layers(model, x[:1])
    for mode in ("independent", "cascading"):
        for _, step in randomised_models(model, layers, mode, seed=0):
            with torch.no_grad():
                assert torch.isfinite(step(x)).all()
    # after the last cascading step every layer is randomised: its maps are finite too
    maps = create_method("grad", step).attribute(x, torch.tensor([0, 1]))
    assert torch.isfinite(maps).all()


# ----------------------------------------------------------------------------- the metric


def test_rows_columns_and_original_untouched():
    model = _coda()
    x, t = _images(3)
    ctx = _context(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    maps_before = ctx.explain(x, t)
    rows = Randomisation(layers=2).evaluate(ctx, x, t, np.array([7, 8, 9]))
    assert list(rows.columns) == [*ROW_COLUMNS, "layer_index"]
    assert len(rows) == 3 * 2 * 2 * len(STATS)
    assert rows["layer_index"].dtype == np.int64 and rows["sample"].dtype == np.int64
    assert set(rows["sample"]) == {7, 8, 9} and set(rows["stat"]) == set(STATS)
    assert set(rows["variant"]) == {"cascading", "independent"}
    keys = rows.drop_duplicates("key").set_index("key")["layer_index"].to_dict()
    assert keys == {"layers.4": 0, "layers.3": 1}
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(ctx.explain(x, t), maps_before)
    summary = Randomisation().summarise(rows)
    assert len(summary) == 3 * 2 * len(STATS)


def test_model_blind_method_fails_and_grad_passes():
    model = _coda()
    x, t = _images(3)
    metric = Randomisation(modes="both")
    blind = metric.evaluate(_context(model, Edges), x, t, np.arange(3))
    np.testing.assert_allclose(blind["value"], 1.0, atol=1e-12)
    grad = metric.evaluate(_context(model, "grad"), x, t, np.arange(3))
    assert len(grad) == len(blind) == 3 * 5 * 2 * 3
    assert (grad["value"] < 0.99).all()


def test_layer_selection_by_name_runs_top_first():
    model = _resnet()
    x, t = _images(2)
    rows = Randomisation(modes="independent", layers=["conv1", "linear"]).evaluate(
        _context(model), x, t, np.arange(2))
    assert list(rows["key"].unique()) == ["linear", "conv1"]
    assert rows.groupby("key")["layer_index"].first().to_dict() == {"linear": 0, "conv1": 14}


def test_select_first_images_with_ground_truth():
    images = torch.arange(5 * 3 * 8 * 8, dtype=torch.int64).remainder(256).to(torch.uint8)
    data = ImageSet(images.view(5, 3, 8, 8), torch.tensor([4, 3, 2, 1, 0]), tuple("abcde"), "t")
    samples = Randomisation(num_images=3).select(None, data, None, SelectContext())
    assert samples.ids.tolist() == [0, 1, 2]
    x, t = samples.fetch(np.array([1, 2]))
    assert t.tolist() == [3, 2] and torch.equal(x, data.float_images(torch.tensor([1, 2])))
    assert len(Randomisation().select(None, data, None, SelectContext())) == 5  # default: all
    with pytest.raises(MetricError, match="t has only 5 images, 10 requested: pass --n-samples 5"):
        Randomisation().select(None, data, 10, SelectContext())  # an asked-for count is kept


def test_registered_with_typed_hparams_from_the_signature():
    entry = METRICS.get("randomisation")
    assert entry.factory is Randomisation and "hparams" not in entry.metadata
    specs = hparams_of(entry.factory)
    assert {k: s.default for k, s in specs.items()} == {"modes": "both", "num_images": 100,
                                                        "layers": None, "seed": None}
    assert specs["modes"].type_name == "'cascading' | 'independent' | 'both'"
    assert specs["layers"].type_name == "int | list[str] | None"
    assert Randomisation().hparams == {k: s.default for k, s in specs.items()}
    assert Randomisation.directions == {"spearman": "lower", "spearman_abs": "lower",
                                        "ssim": "lower"}
    # --set text parsed by the declared types, then built
    config = resolve("metric 'randomisation'", entry.factory,
                     {"layers": "conv1,linear", "num_images": "3", "modes": "independent"},
                     from_text=True)
    assert Randomisation(**config).hparams == {"modes": "independent", "num_images": 3,
                                               "layers": ["conv1", "linear"], "seed": None}
    assert resolve("metric 'randomisation'", entry.factory, {"layers": "2"},
                   from_text=True)["layers"] == 2


def test_numpy_ints_and_tuples_are_accepted_as_plain_values():
    metric = Randomisation(num_images=np.int64(3), layers=np.int32(2), seed=np.int64(7))
    assert metric.hparams == {"modes": "both", "num_images": 3, "layers": 2, "seed": 7}
    assert all(type(metric.hparams[k]) is int for k in ("num_images", "layers", "seed"))
    assert Randomisation(layers=("conv1", "linear")).hparams["layers"] == ["conv1", "linear"]


@pytest.mark.parametrize(("hparams", "error"), [
    ({"modes": "random"}, SettingError), ({"num_images": 0}, MetricError),
    ({"layers": 0}, MetricError), ({"layers": []}, MetricError),
    ({"layers": ["a", "a"]}, MetricError), ({"layers": "layers.8"}, SettingError),
    ({"seed": 1.5}, SettingError), ({"num_images": True}, SettingError)])
def test_bad_hparams_raise_one_line(hparams, error):
    with pytest.raises(error) as info:
        Randomisation(**hparams)
    message = str(info.value)
    assert "\n" not in message and "randomisation" in message and next(iter(hparams)) in message


def test_unknown_hparam_is_refused_with_close_matches():
    with pytest.raises(SettingError) as info:
        resolve("metric 'randomisation'", Randomisation, {"nmu_images": 3})
    assert "\n" not in str(info.value) and "did you mean num_images" in str(info.value)


@pytest.mark.parametrize("layers", [6, ["layers.9"]])
def test_bad_layers_for_the_model_raise_one_line(layers):
    x, t = _images(1)
    with pytest.raises(AttribBenchError) as info:
        Randomisation(layers=layers).evaluate(_context(_coda()), x, t, np.arange(1))
    assert "\n" not in str(info.value)


def test_rows_are_a_dataframe_for_an_empty_batch():
    x, t = _images(1)
    rows = Randomisation(layers=1).evaluate(_context(_coda()), x[:0], t[:0], np.arange(0))
    assert isinstance(rows, pd.DataFrame) and len(rows) == 0


def test_an_undefined_layer_makes_the_sample_non_finite_in_the_summary():
    """A Spearman correlation undefined at one layer (a constant map) makes that sample's mean
    over layers NaN, so the summary counts it as non-finite, instead of averaging the others."""
    from attrib_bench.runners.benchmark import summarise

    metric = Randomisation()
    rows = pd.DataFrame({"model": "m", "method": "x", "metric": "randomisation",
                         "sample": [0, 0, 1, 1], "key": ["a", "b", "a", "b"],
                         "variant": "cascading", "stat": "spearman",
                         "value": [0.5, np.nan, 0.25, 0.75], "target": 0, "flag": ""})
    summary = summarise(rows, {"randomisation": metric})
    assert summary[["mean", "n", "n_nonfinite"]].values.tolist() == [[0.5, 1, 1]]


# ----------------------------------------------------------------------------- shared tensors


class _Tied(nn.Module):
    """The round-3 case: two convolutions that share one weight Parameter, and a head."""

    def __init__(self, view: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        if view:  # two Parameters over one storage: the same sharing, not the same object
            self.b.weight = nn.Parameter(self.a.weight.data.view_as(self.a.weight))
        else:
            self.b.weight = self.a.weight
        self.head = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b(self.a(x)).flatten(1))


@pytest.mark.parametrize("view", [False, True])
def test_layers_that_share_a_parameter_are_one_layer(view):
    """Randomising ``a`` changes ``b`` too: they are randomised, scored and reported as one
    layer ``b+a`` (top first), in both modes; the original stays untouched."""
    net = _Tied(view).eval()  # float32: .double() would give a view its own storage
    x, t = _images(2)
    x = x.float()
    assert randomisation_layers(net, x[:1]) == ["head", "b+a"]
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    for mode in ("cascading", "independent"):
        steps = [(name, _changed(model, reference, ["a", "b", "head"]))
                 for name, model in randomised_models(net, ["head", "b+a"], mode, 0)]
        assert steps == [("head", {"head"}),
                         ("b+a", {"a", "b", "head"} if mode == "cascading" else {"a", "b"})]
    assert all(torch.equal(v, reference[k]) for k, v in net.state_dict().items())
    rows = Randomisation(modes="independent").evaluate(_context(net), x, t, np.arange(2))
    assert rows.drop_duplicates("key").set_index("key")["layer_index"].to_dict() == {
        "head": 0, "b+a": 1}


def test_shared_layers_are_named_in_the_samples_info_and_refused_alone(one_line):
    net = _Tied().eval()
    data = ImageSet(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([1, 2]),
                    tuple("0123456789"), "t")
    info = Randomisation().select(net, data, None, SelectContext()).info
    assert info["layer_groups"] == {"b+a": ["b.weight = a.weight"]}
    assert "layer_groups" not in Randomisation().select(_resnet(), data, None,
                                                        SelectContext()).info
    with pytest.raises(MetricError) as error:
        Randomisation(layers=["a"]).select(net, data, None, SelectContext())
    one_line(error, "'a' shares a parameter with 'b+a'", "name the group 'b+a'")
