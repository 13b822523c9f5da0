"""IROF: agreement with Quantus 0.6 (and where its definition differs from the paper's), known
answers on hand-made segments and curves, invariants, chunking, NaN maps, hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from attrib_bench.core.errors import MetricError, SettingError
from attrib_bench.core.registry import METRICS, create_metric
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext
from attrib_bench.metrics.irof import IROF, aoc, irof_curves, segment_ranks, slic_segments

CPU = torch.device("cpu")


def context(model: nn.Module, maps: torch.Tensor) -> EvalContext:
    return EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: None,
                       device=CPU)


def cnn(seed: int = 3, size: int = 16) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * size * size, 3)).eval()


def quantus_score(b: int, r: np.ndarray, count: int) -> float:
    """What Quantus 0.6 returns from our relative curve r (0 … L) of one image: L − trapz of
    r_1 … r_L at unit spacing (no l = 0 point)."""
    return count - np.trapezoid(r[1:count + 1], dx=1.0)


def quantus_irof(quantus, baseline: np.ndarray | float):
    """Quantus 0.6 IROF, with its mask (B, 1, H, W) broadcast to the images' channels: as
    shipped, its ``baseline_replacement_by_mask`` asserts arr.shape == mask.shape, so it refuses
    every image with more than one channel."""
    from quantus.functions.perturb_func import baseline_replacement_by_mask

    def perturb(arr: np.ndarray, mask: np.ndarray, **kwargs) -> np.ndarray:
        return baseline_replacement_by_mask(arr, np.broadcast_to(mask, arr.shape), **kwargs)

    return quantus.IROF(abs=False, normalise=False, perturb_func=perturb, return_aggregate=False,
                        perturb_baseline=baseline, disable_warnings=True)


# ----------------------------------------------------------------------------- Quantus


def test_agrees_with_quantus_irof_and_shows_its_area_is_not_the_papers(monkeypatch) -> None:
    """Quantus 0.6 IROF on the same CNN, images, maps and SLIC segments (its call, the same
    defaults), fill = each image's per-channel mean (passed to Quantus as an array), softmax,
    one image per call (see the batch test below). Quantus returns Q = L − trapz(r_1 … r_L):
    our curves give the same Q to 1e-4 (≈ 40 float32 ratios summed), and our AOC (the paper's
    [0, 1] area) is (Q − (1 + r_1)/2) / L to 1e-6 — not Q itself (Quantus #113): a flat
    curve scores 1 there, 0 here."""
    quantus = pytest.importorskip("quantus", reason="quantus (test extra) is not installed")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # gone in NumPy 2.4
    model = cnn()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    a = torch.randn(4, 16, 16, generator=g)
    segments = slic_segments(x)
    curves, counts = irof_curves(model, x, a, y, segments, score="softmax", max_batch=19)
    ours = aoc(curves.numpy(), counts.numpy())
    for b in range(4):
        mean = x[b:b + 1].mean(dim=(2, 3), keepdim=True).expand(1, 3, 16, 16).numpy()
        metric = quantus_irof(quantus, mean.copy())
        theirs = metric(model=model, x_batch=x[b:b + 1].numpy(), y_batch=y[b:b + 1].numpy(),
                        a_batch=a[b:b + 1, None].numpy(), channel_first=True, softmax=True,
                        device="cpu", batch_size=1)[0]
        count = int(counts[b])
        r = curves[b, :count + 1].numpy() / curves[b, 0].item()
        assert abs(quantus_score(b, r, count) - theirs) <= 1e-4
        assert abs(ours[b] - (theirs - 0.5 * (1.0 + r[1])) / count) <= 1e-6
    # a model blind to its input: the curve is flat (r ≡ 1), the paper's AOC 0, Quantus's Q 1
    blind = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
    nn.init.zeros_(blind[1].weight)
    theirs = quantus_irof(quantus, 0.5)(model=blind, x_batch=x.numpy(), y_batch=y.numpy(),
                                         a_batch=a[:, None].numpy(), channel_first=True,
                                         softmax=True, device="cpu", batch_size=1)
    flat = aoc(*[t.numpy() for t in irof_curves(blind, x, a, y, segments, score="softmax")])
    np.testing.assert_allclose(theirs, 1.0, atol=1e-6)
    np.testing.assert_allclose(flat, 0.0, atol=1e-12)


def test_quantus_irof_score_depends_on_the_other_images_of_its_batch(monkeypatch) -> None:
    """Quantus 0.6 pads shorter curves with 0 and integrates the pad too: in a batch, an image
    with fewer segments than the batch's most loses 0.5·r_L more area than alone. Ours does not
    depend on the batch (the same AOC from one call per image and from one batch)."""
    quantus = pytest.importorskip("quantus", reason="quantus (test extra) is not installed")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # gone in NumPy 2.4
    model = cnn()
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2, 1])
    a = torch.randn(4, 16, 16, generator=g)
    segments = slic_segments(x)
    curves, counts = irof_curves(model, x, a, y, segments, score="softmax")
    assert len(set(counts.tolist())) > 1  # the shared inputs have unequal segment counts
    mean = x.mean(dim=(2, 3), keepdim=True).expand(4, 3, 16, 16).numpy().copy()
    metric = quantus_irof(quantus, mean)
    theirs = np.asarray(metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                               a_batch=a[:, None].numpy(), channel_first=True, softmax=True,
                               device="cpu", batch_size=4))
    for b in range(4):
        count = int(counts[b])
        r = curves[b, :count + 1].numpy() / curves[b, 0].item()
        short = 0.5 * r[count] if count < int(counts.max()) else 0.0
        assert abs(theirs[b] - (quantus_score(b, r, count) - short)) <= 1e-4
    alone = [aoc(*[t.numpy() for t in irof_curves(model, x[b:b + 1], a[b:b + 1], y[b:b + 1],
                                                  segments[b:b + 1], score="softmax")])[0]
             for b in range(4)]
    np.testing.assert_allclose(aoc(curves.numpy(), counts.numpy()), alone, atol=1e-12)


# ----------------------------------------------------------------------------- known answers


def test_aoc_of_hand_made_curves() -> None:
    curves = np.array([[0.8, 0.4, 0.0, np.nan],        # L = 2: r = 1, .5, 0
                       [0.5, 0.5, 0.5, 0.5],           # flat: AOC 0
                       [0.2, 0.4, np.nan, np.nan],     # L = 1, r rises to 2: AOC −0.5
                       [0.3, np.nan, 0.1, 0.1]])       # a NaN inside the curve
    got = aoc(curves, np.array([2, 3, 1, 3]))
    np.testing.assert_allclose(got[:3], [1 - (0.5 + 0.5 + 0) / 2, 0.0, -0.5], atol=1e-12)
    assert np.isnan(got[3])


class TwoHalves(nn.Module):
    """Two classes: logit_0 = Σ W ⊙ x, logit_1 = 0 (so p_0 = sigmoid(Σ W ⊙ x) under softmax)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(3, 4, 4, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bchw,chw->b", x, self.weight)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_two_segments_known_answer() -> None:
    """Left half segment 0, right half 1; the map ranks the right half first. Step 1 replaces
    the right half by the image's per-channel mean, step 2 the whole image; the probabilities
    and the AOC written out by hand."""
    model = TwoHalves()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 4, 4, generator=g).double()
    segments = torch.zeros(1, 4, 4, dtype=torch.long)
    segments[:, :, 2:] = 1
    maps = torch.zeros(1, 4, 4)
    maps[:, :, 2:] = 1.0
    curves, counts = irof_curves(model.double(), x, maps, torch.tensor([0]), segments,
                                 score="softmax")
    w = model.weight.detach().double()
    mean = x[0].mean(dim=(1, 2))[:, None, None]
    step1 = x[0].clone()
    step1[:, :, 2:] = mean
    p = [torch.sigmoid((w * im).sum()).item() for im in (x[0], step1, mean.expand(3, 4, 4))]
    assert counts.tolist() == [2]
    np.testing.assert_allclose(curves[0].numpy(), p, atol=1e-12)
    r = np.array(p) / p[0]
    np.testing.assert_allclose(aoc(curves.numpy(), counts.numpy()),
                               [1 - (0.5 * r[0] + r[1] + 0.5 * r[2]) / 2], atol=1e-12)


def test_segment_ranks_by_mean_most_relevant_first_ties_to_the_lower_label() -> None:
    segments = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]], [[1, 1, 0, 0], [0, 0, 0, 0]]])
    maps = torch.tensor([[[1.0, 3.0, 5.0, -1.0], [2.0, 2.0, 0.5, 0.5]],   # means 2, 2, 2, .5
                         [[9.0, 9.0, 0.0, 3.0], [0.0, 0.0, 3.0, 0.0]]])   # means 1, 9
    rank, counts = segment_ranks(maps, segments)
    assert counts.tolist() == [4, 2]
    assert rank.view(2, 2, 4).tolist() == [[[0, 0, 1, 1], [2, 2, 3, 3]],
                                           [[0, 0, 1, 1], [1, 1, 1, 1]]]


# ----------------------------------------------------------------------------- invariants


def test_a_faithful_map_beats_its_negation_and_scale_does_not_matter() -> None:
    """On a linear model the exact contributions (x ⊙ W_y, channel-summed) remove the
    supporting segments first: a higher AOC than the reversed map on every image; a positive
    rescaling of the map changes nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 3, 16, 16, generator=g)
    y = torch.tensor([0, 1, 2])
    w = model[1].weight.detach().view(3, 3, 16, 16)
    maps = (x * w[y]).sum(1)
    metric = IROF(max_batch=64)
    good = metric.evaluate(context(model, maps), x, y, np.arange(3))["value"].to_numpy()
    bad = metric.evaluate(context(model, -maps), x, y, np.arange(3))["value"].to_numpy()
    scaled = metric.evaluate(context(model, 7 * maps), x, y, np.arange(3))["value"].to_numpy()
    assert (good > bad).all()
    np.testing.assert_array_equal(good, scaled)


def test_results_do_not_depend_on_chunking_and_forwards_are_the_minimum() -> None:
    model = cnn()
    calls: list[int] = []
    model.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    g = torch.Generator().manual_seed(4)
    x, a = torch.rand(2, 3, 16, 16, generator=g), torch.randn(2, 16, 16, generator=g)
    y = torch.tensor([2, 0])
    segments = slic_segments(x)
    one, counts = irof_curves(model, x, a, y, segments, score="softmax", max_batch=1)
    assert sum(calls) == int((counts + 1).sum())  # one input per (image, step), no more
    calls.clear()
    many, _ = irof_curves(model, x, a, y, segments, score="softmax", max_batch=1000)
    assert calls == [int((counts + 1).sum())]
    np.testing.assert_allclose(one.numpy(), many.numpy(), atol=1e-6, equal_nan=True)


def test_nan_map_gives_a_nan_row_and_rows_have_the_contract_columns() -> None:
    model = cnn()
    g = torch.Generator().manual_seed(4)
    x, a = torch.rand(3, 3, 16, 16, generator=g), torch.randn(3, 16, 16, generator=g)
    a[1, 0, 0] = float("nan")
    metric = create_metric("irof")
    rows = metric.evaluate(context(model, a), x, torch.tensor([0, 1, 2]), np.array([7, 8, 9]))
    assert list(rows.columns) == list(ROW_COLUMNS) and (rows["stat"] == "aoc").all()
    assert rows["sample"].tolist() == [7, 8, 9]
    assert np.isnan(rows["value"][1]) and np.isfinite(rows["value"][[0, 2]]).all()
    summary = metric.summarise(rows)
    assert np.isnan(summary["value"][1])
    assert metric.direction("", "aoc") == "higher"
    assert METRICS.get("irof").metadata["family"] == "faithfulness"


def test_wrong_map_shape_is_one_line() -> None:
    model = cnn()
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(MetricError, match="irof.*maps") as info:
        IROF().evaluate(context(model, torch.zeros(2, 8, 8)), x, torch.tensor([0, 1]),
                        np.arange(2))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("hparams", "error"), [
    ({"n_segments": 0}, MetricError), ({"compactness": 0}, MetricError),
    ({"sigma": -1}, MetricError), ({"num_images": 0}, MetricError),
    ({"score": "logit"}, SettingError), ({"max_batch": True}, SettingError),
])
def test_bad_hyper_parameters_raise_one_line(hparams: dict, error: type) -> None:
    with pytest.raises(error) as info:
        create_metric("irof", **hparams)
    message = str(info.value)
    assert "irof" in message and "\n" not in message
    assert next(iter(hparams)) in message
