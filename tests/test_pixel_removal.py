"""Pixel removal: agreement with Quantus, known answers on linear models, the probability each
model declares, the CoDA-Net's removed pixel and each model's default baseline, every baseline
against a reference, chunking, NaN maps, hyper-parameters, the AUC."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import AttribBenchError, MetricError, SettingError
from attrib_bench.core.hparams import hparams_of, resolve
from attrib_bench.core.registry import METRICS, create_metric
from attrib_bench.data import ImageSet
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext, SelectContext
from attrib_bench.metrics.pixel_removal import (
    BASELINES,
    CIFAR10_MEAN,
    FILLS,
    ROAD_KERNEL,
    PixelRemoval,
    constant_fill,
    gaussian_blur,
    hashed_normal,
    pixels_per_step,
    removal_curves,
    removal_ranks,
    road_impute,
)
from attrib_bench.models.coda_net import CoDAConfig, CoDANet
from attrib_bench.models.resnet_cifar import CifarResNet, resnet56

CPU = torch.device("cpu")
#: What the runner gives :meth:`PixelRemoval.select` (it needs none of it).
SELECT = SelectContext(CPU)


class Linear(nn.Module):
    """logits_k = Σ_{c,h,w} W_k ⊙ x + b_k on (B, C, H, W); records its inputs if asked."""

    def __init__(self, channels: int = 3, size: int = 8, classes: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(classes, channels, size, size, generator=g))
        self.bias = nn.Parameter(torch.randn(classes, generator=g))
        self.seen: list[torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seen is not None:
            self.seen.append(x.clone())
        return torch.einsum("bchw,kchw->bk", x, self.weight) + self.bias


def context(model: nn.Module, maps: torch.Tensor | None = None, seed: int = 0) -> EvalContext:
    """An EvalContext whose explainer returns ``maps`` (default: random) for the batch."""

    def explain(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if maps is not None:
            return maps
        g = torch.Generator().manual_seed(len(inputs))
        return torch.randn(inputs.shape[0], *inputs.shape[2:], generator=g)

    return EvalContext(model=model, explain=explain, make_method=lambda m: None, device=CPU,
                       seed=seed)


def images(n: int = 4, size: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, 4, (n,), generator=g)


def curve(rows: pd.DataFrame, sample: int, variant: str, stat: str) -> np.ndarray:
    sel = rows[(rows["sample"] == sample) & (rows["variant"] == variant) & (rows["stat"] == stat)]
    return sel.sort_values("key", key=lambda k: k.astype(int))["value"].to_numpy()


# ----------------------------------------------------------------------------- Quantus


@pytest.mark.parametrize("softmax", [True, False])
def test_agrees_with_quantus_pixel_flipping(softmax: bool) -> None:
    """Most-important-first, black, 4 pixels per step, on a 1-channel CNN: Quantus 0.6's
    PixelFlipping curve (one point per step, the unperturbed point excluded) is ours from step 1.
    Quantus's "black" is each image's minimum, so every image holds an exact 0 (min = 0 = ours)."""
    quantus = pytest.importorskip("quantus", reason="quantus (test extra) is not installed")
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(5, 1, 8, 8)
    x[:, 0, 0, 0] = 0.0
    y = torch.tensor([0, 1, 2, 1, 0])
    a = torch.randn(5, 1, 8, 8)  # distinct values: no ties, so the rankings agree
    metric = quantus.PixelFlipping(features_in_step=4, abs=False, normalise=False,
                                   perturb_baseline="black", disable_warnings=True)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                               a_batch=a.numpy(), channel_first=True, softmax=softmax,
                               device="cpu", batch_size=5))
    logits, probs = removal_curves(model, x, a[:, 0], y, steps=16, pixels=4,
                                   orders=("most-first",), score="softmax", max_batch=7)
    ours = (probs if softmax else logits)[0, :, 1:].numpy()
    assert theirs.shape == ours.shape == (5, 16)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- known answers


def test_linear_model_oracle_ranking_known_answer() -> None:
    """logit = Σ w·x + b, map = Σ_c w·x (the exact contributions), black baseline: least-first
    never lowers the logit while it removes negative contributions; most-first drops the logit
    by exactly the largest contributions, in order."""
    model = Linear(size=8)
    model.probability = "sigmoid"
    x, y = images(3)
    contrib = (model.weight[y] * x).sum(1).detach()  # (B, H, W)
    metric = PixelRemoval(order="both", fraction=1.0, steps=64, num_images=3)
    rows = metric.evaluate(context(model, contrib), x, y, np.arange(3))
    for i in range(3):
        c = contrib[i].flatten().double().numpy()
        least = curve(rows, i, "least-first", "logit")
        negative = int((c < 0).sum())
        assert 0 < negative < 64
        assert np.all(np.diff(least[:negative + 1]) >= -1e-5)
        np.testing.assert_allclose(least, least[0] - np.r_[0, np.cumsum(np.sort(c))], atol=1e-4)
        most = curve(rows, i, "most-first", "logit")
        np.testing.assert_allclose(most, most[0] - np.r_[0, np.cumsum(np.sort(c)[::-1])],
                                   atol=1e-4)
        assert most[0] - most[1] == pytest.approx(c.max(), abs=1e-5)
        prob = curve(rows, i, "least-first", "prob")
        np.testing.assert_allclose(prob, 1 / (1 + np.exp(-least)), atol=1e-12)


# ----------------------------------------------------------------------------- probability


def hand_probabilities(model: nn.Module, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor,
                       steps: int, kind: str) -> np.ndarray:
    """(B, steps + 1) target probabilities of 8x8 images, least-first, black, a quarter of the
    image in ``steps`` steps (16 / steps pixels each): each removed input built here, scored by
    the model, and turned into a probability in numpy float64."""
    k = 16 // steps
    order = np.argsort(maps.flatten(1).numpy(), axis=1, kind="stable")
    out = np.zeros((len(x), steps + 1))
    for i in range(len(x)):
        for s in range(steps + 1):
            image = x[i].clone().flatten(1)
            image[:, torch.from_numpy(order[i, :s * k])] = 0.0
            with torch.no_grad():
                logits = model(image.view(1, *x.shape[1:])).double().numpy()[0]
            if kind == "sigmoid":
                out[i, s] = 1 / (1 + np.exp(-logits[y[i]]))
            else:
                e = np.exp(logits - logits.max())
                out[i, s] = e[y[i]] / e.sum()
    return out


@pytest.mark.parametrize(("declared", "score", "expected"), [
    (None, None, "softmax"), ("softmax", None, "softmax"), ("sigmoid", None, "sigmoid"),
    ("softmax", "sigmoid", "sigmoid"), ("sigmoid", "softmax", "softmax")])
def test_prob_rows_are_the_declared_probability_unless_score_is_set(declared, score, expected):
    """A model's declared ``probability`` (none: softmax) scores the prob rows; ``score``
    overrides it; select's info records the effective one; the rows agree with a hand
    computation of each removed image's probability."""
    model = Linear(size=8, seed=2)
    if declared is not None:
        model.probability = declared
    x, y = images(2, seed=4)
    maps = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(6))
    metric = PixelRemoval(order="least-first", steps=4, score=score)
    rows = metric.evaluate(context(model, maps), x, y, np.arange(2))
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    assert metric.select(model, data, None, SELECT).info["probability"] == expected
    hand = hand_probabilities(model, x, y, maps, 4, expected)
    for i in range(2):
        np.testing.assert_allclose(curve(rows, i, "least-first", "prob"), hand[i], rtol=1e-5,
                                   atol=1e-7)
    other = hand_probabilities(model, x, y, maps, 4,
                               "sigmoid" if expected == "softmax" else "softmax")
    assert not np.allclose(curve(rows, 0, "least-first", "prob"), other[0], atol=1e-3)


def test_resnet_gets_softmax_and_coda_net_sigmoid():
    """The built-in models' declarations reach the rows: a CIFAR ResNet (cross-entropy) is
    scored by its softmax (its sigmoid would be another curve), a CoDA-Net (BCE) by its sigmoid."""
    assert PixelRemoval().effective_probability(resnet56()) == "softmax"
    assert PixelRemoval().effective_probability(tiny_coda()) == "sigmoid"
    torch.manual_seed(0)
    resnet = CifarResNet(1).eval()  # ResNet-8: cheap, same class and declaration as ResNet-56
    x, y = images(2, seed=3)
    maps = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(2))
    rows = PixelRemoval(order="least-first", steps=4).evaluate(context(resnet, maps), x, y,
                                                               np.arange(2))
    hand = hand_probabilities(resnet, x, y, maps, 4, "softmax")
    np.testing.assert_allclose(curve(rows, 1, "least-first", "prob"), hand[1], rtol=1e-5,
                               atol=1e-7)
    logit = curve(rows, 1, "least-first", "logit")
    assert not np.allclose(curve(rows, 1, "least-first", "prob"), 1 / (1 + np.exp(-logit)),
                           atol=1e-3)
    coda = tiny_coda()
    rows = PixelRemoval(order="most-first", steps=4).evaluate(context(coda, maps), x, y,
                                                              np.arange(2))
    for i in range(2):
        logit = curve(rows, i, "most-first", "logit")
        np.testing.assert_allclose(curve(rows, i, "most-first", "prob"),
                                   1 / (1 + np.exp(-logit)), rtol=1e-12)
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    assert PixelRemoval(steps=4).select(coda, data, None, SELECT).info["probability"] == "sigmoid"
    assert PixelRemoval(steps=4).select(resnet, data, None, SELECT).info["probability"] == "softmax"


def test_removal_curves_scores_through_the_one_helper_and_refuses_others():
    model = Linear(size=8)
    x, y = images(2)
    maps = torch.randn(2, 8, 8)
    logits, probs = removal_curves(model, x, maps, y, steps=2, pixels=3, score="logit")
    assert torch.equal(logits, probs)
    _, soft = removal_curves(model, x, maps, y, steps=2, pixels=3, score="softmax")
    with torch.no_grad():
        full = model(x).double().softmax(dim=1).gather(1, y[:, None])[:, 0]
    torch.testing.assert_close(soft[0, :, 0], full)
    with pytest.raises(MetricError, match="score must be one of softmax, sigmoid, logit, got"):
        removal_curves(model, x, maps, y, steps=2, pixels=3, score="prob")
    with pytest.raises(MetricError, match="^removal_curves: score must be"):  # no model to ask
        removal_curves(model, x, maps, y, steps=2, pixels=3, score=None)


# ----------------------------------------------------------------------------- CoDA-Net


def tiny_coda() -> CoDANet:
    config = CoDAConfig(out_channels=(4, 4), ranks=(4, 4), kernels=(3, 1), strides=(1, 1),
                        paddings=(1, 0), num_classes=4, image_size=8, dataset="toy",
                        temperature=10.0)
    return CoDANet(config).eval()


def test_coda_removed_pixels_are_zero_in_all_six_encoded_channels() -> None:
    """The default baseline (None) on a CoDA-Net is encoded-zero: the encoded input, with every
    removed pixel 0 in all six channels, goes through forward_encoded."""
    model = tiny_coda()
    seen: list[torch.Tensor] = []
    original = model.forward_encoded

    def spy(x_enc: torch.Tensor) -> torch.Tensor:
        seen.append(x_enc.clone())
        return original(x_enc)

    model.forward_encoded = spy
    x, y = images(2)
    maps = torch.randn(2, 8, 8)
    metric = PixelRemoval(order="least-first", steps=4, max_batch=3)
    rows = metric.evaluate(context(model, maps), x, y, np.array([10, 11]))
    got = torch.cat(seen)  # (2 images × 5 steps, 6, H, W), image-major
    assert got.shape == (10, 6, 8, 8)
    removed = removal_ranks(maps, "least-first")[:, None, :] < (torch.arange(5) * 4)[None, :, None]
    removed = removed.view(10, 1, 8, 8)
    expected = model.encode(x).repeat_interleave(5, dim=0) * ~removed
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert (got.masked_select(removed.expand_as(got)) == 0).all()  # not [0, 0, 0, 1, 1, 1]
    assert int(removed.sum()) == 2 * (4 + 8 + 12 + 16)
    with torch.no_grad():
        full = original(model.encode(x))
    np.testing.assert_allclose(curve(rows, 10, "least-first", "logit")[0], full[0, y[0]],
                               rtol=1e-6)
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    info = metric.select(model, data, None, SELECT).info
    assert info["effective_baseline"] == "encoded-zero"
    plain = PixelRemoval(steps=4).select(Linear(), data, None, SELECT).info
    assert plain["effective_baseline"] == "black"


def test_explicit_black_on_a_coda_net_is_rgb_black_through_its_forward() -> None:
    """A set baseline is honoured on a CoDA-Net: "black" zeroes removed pixels in RGB and the
    model's own forward encodes them as [0, 0, 0, 1, 1, 1], so the curve is the hand-made
    RGB-black one, another than encoded-zero's (which never calls the forward)."""
    model = tiny_coda()
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    x, y = images(2, seed=3)
    x = x * 0.5 + 0.25  # no exact zeros in the input
    maps = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(4))
    black = PixelRemoval(order="least-first", steps=4, baseline="black")
    rows = black.evaluate(context(model, maps), x, y, np.arange(2))
    got = torch.cat(seen)
    assert got.shape == (2 * 5, 3, 8, 8)  # RGB inputs, through forward
    removed = removal_ranks(maps, "least-first")[:, None, :] < (torch.arange(5) * 4)[None, :, None]
    torch.testing.assert_close(got, x.repeat_interleave(5, dim=0) * ~removed.view(10, 1, 8, 8),
                               rtol=0, atol=0)
    hand = hand_probabilities(model, x, y, maps, 4, "sigmoid")
    seen.clear()
    encoded = PixelRemoval(order="least-first", steps=4, baseline="encoded-zero")
    zero_rows = encoded.evaluate(context(model, maps), x, y, np.arange(2))
    assert not seen  # encoded-zero scores through forward_encoded
    for i in range(2):
        prob = curve(rows, i, "least-first", "prob")
        np.testing.assert_allclose(prob, hand[i], rtol=1e-5, atol=1e-7)
        zero = curve(zero_rows, i, "least-first", "prob")
        assert prob[0] == pytest.approx(zero[0], rel=1e-6)  # nothing removed yet: the same
        assert not np.allclose(prob[1:], zero[1:], rtol=1e-4, atol=0)
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    assert black.select(model, data, None, SELECT).info["effective_baseline"] == "black"


def test_encoded_zero_on_a_model_without_an_encoded_input_fails_at_select() -> None:
    """One MetricError line naming the fix, from select before anything runs (and from evaluate
    when there was no select)."""
    model = Linear(size=8)
    model.seen = []
    x, y = images(2)
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    metric = PixelRemoval(steps=4, baseline="encoded-zero")
    with pytest.raises(MetricError) as info:
        metric.select(model, data, None, SELECT)
    message = str(info.value)
    assert "\n" not in message and message.startswith("metric 'pixel-removal': baseline "
                                                       "encoded-zero needs")
    assert "Linear" in message and "use baseline black, mean, blur or road, or None" in message
    with pytest.raises(MetricError, match="use baseline black, mean, blur or road"):
        metric.evaluate(context(model), x, y, np.arange(2))
    assert model.seen == []  # no forward


def test_baseline_none_resolves_per_model_and_a_set_one_is_honoured_everywhere() -> None:
    """None: encoded-zero for a model with the encoded_input capability (CoDA-Nets), black for
    others; every RGB baseline is used as set on both kinds; the table covers every name."""
    coda, plain = tiny_coda(), Linear(size=8)
    assert PixelRemoval().effective_baseline(coda) == "encoded-zero"
    assert PixelRemoval().effective_baseline(plain) == "black"
    assert PixelRemoval().effective_baseline(resnet56()) == "black"
    assert PixelRemoval(baseline="encoded-zero").effective_baseline(coda) == "encoded-zero"
    for baseline in ("black", "mean", "blur", "road"):
        metric = PixelRemoval(baseline=baseline)
        assert metric.effective_baseline(coda) == metric.effective_baseline(plain) == baseline
    assert list(FILLS) == list(BASELINES)
    assert [name for name, spec in FILLS.items() if spec.encoded] == ["encoded-zero"]
    x, y = images(2)
    data = ImageSet((x * 255).to(torch.uint8), y, tuple("abcd"), "toy")
    info = PixelRemoval(steps=4, baseline="mean").select(coda, data, None, SELECT).info
    assert info["effective_baseline"] == "mean" and len(info["mean"]) == 3


def test_default_rows_equal_the_models_own_baseline_set_explicitly() -> None:
    """The default (None) gives exactly the rows of encoded-zero on a CoDA-Net and of black on
    another model: results for the default settings are those of the explicit protocol."""
    x, y = images(2, seed=5)
    maps = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(7))
    for model, own in ((tiny_coda(), "encoded-zero"), (Linear(size=8), "black")):
        default = PixelRemoval(steps=4).evaluate(context(model, maps), x, y, np.arange(2))
        explicit = PixelRemoval(steps=4, baseline=own).evaluate(context(model, maps), x, y,
                                                                 np.arange(2))
        pd.testing.assert_frame_equal(default, explicit, check_exact=True)


# ----------------------------------------------------------------------------- steps, chunks


def test_steps_and_pixels_per_step() -> None:
    assert pixels_per_step(32, 32, 0.25, 128) == 2
    assert pixels_per_step(10, 10, 0.25, 8) == 3  # 3.125 → 3: the last point has 24 removed
    assert pixels_per_step(10, 10, 0.25, 10) == 3  # 2.5 rounds half up
    assert pixels_per_step(8, 8, 0.01, 4) == 1  # at least one pixel per step
    with pytest.raises(AttribBenchError, match="exceed"):
        pixels_per_step(4, 4, 1.0, 32)
    model = Linear(size=32)
    x, y = images(1, size=32)
    rows = PixelRemoval().evaluate(context(model), x, y, np.array([7]))
    assert list(rows.columns) == [*ROW_COLUMNS, "removed", "probability"]
    assert len(rows) == 2 * 129 * 2  # orders × points × stats
    assert sorted(rows["key"].astype(int).unique()) == list(range(129))
    assert set(rows["variant"]) == {"least-first", "most-first"}
    assert set(rows["stat"]) == {"prob", "logit"}
    np.testing.assert_array_equal(rows["removed"], rows["key"].astype(int) * 2)
    assert rows["removed"].dtype == np.int64 and rows["removed"].max() == 256


def test_ranking_order_and_ties_in_raster_order() -> None:
    maps = torch.tensor([[[0.0, 2.0, 0.0], [-1.0, 0.0, 2.0]]])  # pixels 0..5, raster order
    least = removal_ranks(maps, "least-first")[0]
    most = removal_ranks(maps, "most-first")[0]
    # least-first: -1 (pixel 3), then the zeros 0, 2, 4, then the twos 1, 5
    assert least.argsort().tolist() == [3, 0, 2, 4, 1, 5]
    assert most.argsort().tolist() == [1, 5, 0, 2, 4, 3]


@pytest.mark.parametrize("baseline", ["black", "road"])
def test_results_do_not_depend_on_chunking_or_batch(baseline: str) -> None:
    model = Linear(size=8)
    x, y = images(4)
    maps = torch.randn(4, 8, 8)
    ids = np.array([3, 5, 8, 13])

    def run(max_batch: int, index: slice = slice(None)) -> pd.DataFrame:
        metric = PixelRemoval(steps=8, baseline=baseline, max_batch=max_batch)
        return metric.evaluate(context(model, maps[index]), x[index], y[index], ids[index])

    reference = run(10_000)
    for max_batch in (1, 7):
        np.testing.assert_allclose(run(max_batch)["value"], reference["value"], atol=1e-5)
    singles = pd.concat([run(9, slice(i, i + 1)) for i in range(4)])
    merged = reference.merge(singles, on=["sample", "key", "variant", "stat"])
    assert len(merged) == len(reference)
    np.testing.assert_allclose(merged["value_x"], merged["value_y"], atol=1e-5)


# ----------------------------------------------------------------------------- baselines


def removed_inputs(baseline: str, x: torch.Tensor, maps: torch.Tensor, *, metric=None,
                   seed: int = 0, ids: np.ndarray | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(model inputs (B, steps + 1, 3, H, W), removed (B, steps + 1, H, W)), least-first."""
    model = Linear(size=x.shape[-1])
    model.seen = []
    metric = metric or PixelRemoval(order="least-first", steps=4, baseline=baseline,
                                    road_noise=0.0)
    ids = np.arange(len(x)) if ids is None else ids
    metric.evaluate(context(model, maps, seed), x, torch.zeros(len(x), dtype=torch.long), ids)
    k = x.shape[-1] ** 2 // 16
    seen = torch.cat(model.seen).view(len(x), 5, *x.shape[1:])
    ranks = removal_ranks(maps, "least-first")
    removed = ranks[:, None, :] < (torch.arange(5) * k)[None, :, None]
    return seen, removed.view(len(x), 5, *x.shape[2:])


def check_kept(seen: torch.Tensor, removed: torch.Tensor, x: torch.Tensor) -> None:
    kept = ~removed[:, :, None].expand_as(seen)
    original = x[:, None].expand_as(seen)
    assert torch.equal(seen[kept], original[kept])


def test_black_baseline_zeroes_every_channel() -> None:
    x, _ = images(2)
    x = x * 0.5 + 0.25  # no exact zeros in the input
    maps = torch.randn(2, 8, 8)
    seen, removed = removed_inputs("black", x, maps)
    check_kept(seen, removed, x)
    values = seen.permute(0, 1, 3, 4, 2)[removed]  # (pixels, 3)
    assert len(values) == 2 * (4 + 8 + 12 + 16)
    assert (values == 0).all()


def test_mean_baseline_uses_the_dataset_mean() -> None:
    g = torch.Generator().manual_seed(5)
    data = ImageSet(torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.zeros(6, dtype=torch.long), tuple("abcd"), "toy")
    expected = data.images.double().mean(dim=(0, 2, 3)) / 255
    x = data.float_images(slice(0, 2))
    maps = torch.randn(2, 8, 8)
    metric = PixelRemoval(order="least-first", steps=4, baseline="mean", num_images=2)
    info = metric.select(Linear(), data, None, SELECT).info
    np.testing.assert_allclose(info["mean"], expected.numpy(), rtol=1e-12)
    seen, removed = removed_inputs("mean", x, maps, metric=metric)
    check_kept(seen, removed, x)
    values = seen.permute(0, 1, 3, 4, 2)[removed]
    torch.testing.assert_close(values, expected.float().expand_as(values), rtol=0, atol=1e-7)
    seen, removed = removed_inputs("mean", x, maps)  # no select: CIFAR-10's mean
    values = seen.permute(0, 1, 3, 4, 2)[removed]
    torch.testing.assert_close(values, torch.tensor(CIFAR10_MEAN).expand_as(values))


def test_blur_baseline_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    x, _ = images(2, size=12)
    maps = torch.randn(2, 12, 12)
    metric = PixelRemoval(order="least-first", steps=4, baseline="blur", sigma=1.5)
    seen, removed = removed_inputs("blur", x, maps, metric=metric)
    check_kept(seen, removed, x)
    blurred = np.stack([[ndimage.gaussian_filter(x[b, c].double().numpy(), 1.5, mode="nearest")
                         for c in range(3)] for b in range(2)])
    torch.testing.assert_close(gaussian_blur(x, 1.5), torch.from_numpy(blurred).float(),
                               rtol=0, atol=1e-6)
    expected = torch.from_numpy(blurred).float()[:, None].expand_as(seen)
    mask = removed[:, :, None].expand_as(seen)
    torch.testing.assert_close(seen[mask], expected[mask], rtol=0, atol=1e-6)


def road_reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation of (C, H, W) ``image`` at bool (H, W) ``removed``: scipy spsolve
    of the sparse system built pixel by pixel (the slow, obviously correct reference)."""
    sparse = pytest.importorskip("scipy.sparse")
    from scipy.sparse.linalg import spsolve

    h, w = removed.shape
    unknown = np.argwhere(removed)
    number = {tuple(p): n for n, p in enumerate(unknown)}
    a = sparse.lil_matrix((len(unknown), len(unknown)))
    b = np.zeros((len(unknown), image.shape[0]))
    for n, (i, j) in enumerate(unknown):
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                weight = ROAD_KERNEL[di + 1][dj + 1]
                ni, nj = i + di, j + dj
                if weight == 0 or not (0 <= ni < h and 0 <= nj < w):
                    continue
                a[n, n] += weight
                if removed[ni, nj]:
                    a[n, number[(ni, nj)]] -= weight
                else:
                    b[n] += weight * image[:, ni, nj]
    out = image.copy()
    out[:, unknown[:, 0], unknown[:, 1]] = spsolve(a.tocsc(), b).T
    return out


def test_road_matches_a_sparse_solve_and_is_seeded() -> None:
    x, _ = images(2, size=8)
    maps = torch.randn(2, 8, 8)
    seen, removed = removed_inputs("road", x, maps)
    check_kept(seen, removed, x)
    for b in range(2):
        for s in range(1, 5):
            expected = road_reference(x[b].double().numpy(), removed[b, s].numpy())
            np.testing.assert_allclose(seen[b, s].numpy(), expected, atol=1e-4, rtol=0)
    # a removed blob (most-first on a smooth map): neighbours of removed pixels are unknowns
    blob = torch.zeros(8, 8, dtype=torch.bool)
    blob[2:7, 1:6] = True
    expected = road_reference(x[0].double().numpy(), blob.numpy())
    np.testing.assert_allclose(road_impute(x[:1], blob[None])[0].numpy(), expected, atol=1e-4)
    everything = road_impute(x[:1], torch.ones(1, 8, 8, dtype=torch.bool))  # no kept pixel
    assert torch.equal(everything, torch.zeros_like(everything))

    def noisy(seed: int) -> torch.Tensor:
        metric = PixelRemoval(order="least-first", steps=4, baseline="road", road_noise=0.01)
        return removed_inputs("road", x, maps, metric=metric, seed=seed)[0]

    first, again, other = noisy(1), noisy(1), noisy(2)
    assert torch.equal(first, again)
    mask = removed[:, :, None].expand_as(seen)
    assert not torch.equal(first[mask], other[mask])
    noise = (first - seen)[mask]
    assert 0.007 < float(noise.std()) < 0.013 and abs(float(noise.mean())) < 0.003
    z = hashed_normal(0, torch.arange(50), (3, 32, 32)).double()
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


def test_road_reads_convergence_every_k_iterations_with_the_same_result() -> None:
    """A GPU reads the convergence test every ROAD_CHECK_EVERY iterations (no host sync per
    iteration) and stops updating at the first converged one: bitwise the per-iteration result."""
    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(5, 3, 16, 16, generator=g, dtype=dtype)
        removed = torch.rand(5, 16, 16, generator=g) < 0.35
        every = road_impute(x, removed)
        for k in (2, 7, 16, 10_000):
            assert torch.equal(road_impute(x, removed, check_every=k), every)
        for cap in (1, 3, 17):  # max_iter still bounds the updates
            assert torch.equal(road_impute(x, removed, max_iter=cap, check_every=16),
                               road_impute(x, removed, max_iter=cap))


def test_constant_fill_keeps_the_value_exact_in_every_dtype() -> None:
    for value in (0.1, 0, torch.tensor([0.1, 0.2, 0.3])):
        fill = constant_fill(value)
        for dtype in (torch.float32, torch.float64):
            x = torch.zeros(2, 3, 4, 4, dtype=dtype)
            expected = torch.as_tensor(value, dtype=dtype)
            expected = expected.reshape(1, -1, 1, 1) if expected.dim() else expected
            assert torch.equal(fill(x, None, None), expected.expand_as(x))


# ----------------------------------------------------------------------------- NaN, hparams


def test_nan_map_gives_nan_rows_without_raising() -> None:
    model = Linear(size=8)
    model.seen = []
    x, y = images(3)
    maps = torch.randn(3, 8, 8)
    maps[1, 2, 3] = float("nan")
    metric = PixelRemoval(steps=4)
    rows = metric.evaluate(context(model, maps), x, y, np.array([0, 1, 2]))
    assert rows.loc[rows["sample"] == 1, "value"].isna().all()
    assert np.isfinite(rows.loc[rows["sample"] != 1, "value"]).all()
    assert sum(len(t) for t in model.seen) == 2 * 2 * 5  # no forward for the NaN map
    summary = metric.summarise(rows[list(ROW_COLUMNS)])
    assert summary.loc[summary["sample"] == 1, "value"].isna().all()
    assert np.isfinite(summary.loc[summary["sample"] != 1, "value"]).all()


@pytest.mark.parametrize(("hparams", "error"), [
    ({"order": "random"}, SettingError), ({"fraction": 0}, MetricError),
    ({"fraction": 1.5}, MetricError), ({"steps": 0}, MetricError), ({"steps": 2.5}, SettingError),
    ({"num_images": -1}, MetricError), ({"baseline": "white"}, SettingError),
    ({"sigma": 0}, MetricError), ({"road_noise": -0.1}, MetricError),
    ({"mean": "grey"}, SettingError), ({"mean": []}, MetricError),
    ({"score": "logit"}, SettingError),
    ({"max_batch": True}, SettingError), ({"seed": "x"}, SettingError),
])
def test_bad_hyper_parameters_raise_one_line(hparams: dict, error: type) -> None:
    with pytest.raises(error) as info:
        create_metric("pixel-removal", **hparams)
    message = str(info.value)
    assert "pixel-removal" in message and "\n" not in message
    assert next(iter(hparams)) in message


def test_hyper_parameters_come_typed_from_the_signature() -> None:
    """Defaults and types are the constructor's (no hand-written copy in the registry); text from
    ``--set`` parses by them; numpy ints and tuples are plain values in ``hparams``."""
    entry = METRICS.get("pixel-removal")
    assert "hparams" not in entry.metadata
    specs = hparams_of(entry.factory)
    defaults = {k: s.default for k, s in specs.items()}
    assert defaults == {"order": "both", "fraction": 0.25, "steps": 128, "num_images": 1024,
                        "baseline": None, "sigma": 2.0, "road_noise": 0.01, "mean": None,
                        "score": None, "max_batch": 256, "seed": None}
    assert PixelRemoval().hparams == defaults
    assert specs["score"].type_name == "'sigmoid' | 'softmax' | None"
    assert specs["order"].type_name == "'least-first' | 'most-first' | 'both'"
    assert "any" not in " ".join(s.type_name for s in specs.values())
    config = resolve("metric 'pixel-removal'", entry.factory,
                     {"steps": "8", "mean": "0.5,0.25,0", "score": "softmax", "seed": "none"},
                     from_text=True)
    metric = PixelRemoval(**config)
    assert metric.hparams["steps"] == 8 and metric.hparams["mean"] == [0.5, 0.25, 0.0]
    assert metric.hparams["score"] == "softmax" and metric.hparams["seed"] is None
    metric = PixelRemoval(steps=np.int64(8), max_batch=np.int32(5), seed=np.int64(3),
                          fraction=np.float32(0.5), mean=(np.float64(0.1), 1, 0.5))
    assert metric.hparams["steps"] == 8 and type(metric.hparams["steps"]) is int
    assert type(metric.hparams["max_batch"]) is int and type(metric.hparams["seed"]) is int
    assert metric.hparams["fraction"] == 0.5 and metric.hparams["mean"] == [0.1, 1.0, 0.5]
    with pytest.raises(SettingError, match="did you mean fraction"):
        resolve("metric 'pixel-removal'", entry.factory, {"fractoin": 0.2})


def test_too_many_steps_for_the_image_is_one_clear_error() -> None:
    x, y = images(1, size=4)
    with pytest.raises(AttribBenchError, match="exceed"):
        PixelRemoval(steps=20, fraction=1.0).evaluate(context(Linear(size=4)), x, y, np.zeros(1))


# ----------------------------------------------------------------------------- AUC, directions


def test_auc_of_hand_made_curves_and_directions() -> None:
    values = {0: [0.0, 1.0, 1.0, 0.0], 1: [0.5] * 4, 2: [1.0, np.nan, 0.0, 0.0],
              4: [1.0, 0.5, 0.0, 0.0]}
    rows = pd.concat([
        pd.DataFrame({"sample": s, "key": [str(i) for i in range(4)], "variant": "least-first",
                      "stat": "prob", "value": v}) for s, v in values.items()
    ] + [pd.DataFrame({"sample": 3, "key": ["0", "1", "3"], "variant": "most-first",
                       "stat": "logit", "value": [1.0, 1.0, 1.0]})])  # step 2 missing
    summary = PixelRemoval(steps=3).summarise(rows).set_index("sample")
    assert summary.loc[0, "value"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert summary.loc[1, "value"] == pytest.approx(0.5)  # a flat curve: its value
    assert summary.loc[4, "value"] == pytest.approx((0.5 + 0.5 * (1.0 + 0.0)) / 3)
    assert np.isnan(summary.loc[2, "value"]) and np.isnan(summary.loc[3, "value"])
    assert list(summary["stat"]) == ["prob-auc"] * 3 + ["logit-auc", "prob-auc"]
    metric = PixelRemoval()
    assert metric.direction("least-first", "prob-auc") == "higher"
    assert metric.direction("least-first", "logit-auc") == "higher"
    assert metric.direction("most-first", "prob-auc") == "lower"
    assert metric.direction("most-first", "logit-auc") == "lower"
    assert metric.direction("least-first", "prob") == ""
    assert "pixel-removal" in METRICS


def test_rows_name_the_probability_they_hold():
    """The "prob" rows say which probability they are (softmax for an undeclared model)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    ctx = EvalContext(model=model, explain=lambda i, tt: i.sum(1), make_method=None,
                      device=torch.device("cpu"))
    rows = PixelRemoval(steps=4).evaluate(ctx, x, t, np.arange(2))
    assert set(rows.loc[rows["stat"] == "prob", "probability"]) == {"softmax"}
    assert set(rows.loc[rows["stat"] == "logit", "probability"]) == {""}
    model.probability = "sigmoid"
    rows = PixelRemoval(steps=4).evaluate(ctx, x, t, np.arange(2))
    assert set(rows.loc[rows["stat"] == "prob", "probability"]) == {"sigmoid"}


def test_a_model_that_returns_probabilities_is_refused_not_scored():
    """A final softmax would make the 'logit' rows probabilities: one line, not a curve."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.Softmax(dim=1)).eval()
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    ctx = EvalContext(model=model, explain=lambda i, tt: i.sum(1), make_method=None,
                      device=torch.device("cpu"))
    with pytest.raises(AttribBenchError, match="returns probabilities"):
        PixelRemoval(steps=4).evaluate(ctx, x, t, np.arange(2))
