"""Insertion and deletion: the authors' code ported (per image, per step), Quantus 0.6
PixelFlipping for deletion, the blur kernel, a hand-made answer, invariants, chunking, NaN maps,
hyper-parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from attrib_bench.core.errors import MetricError, SettingError
from attrib_bench.core.registry import create_metric
from attrib_bench.metrics.base import ROW_COLUMNS, EvalContext
from attrib_bench.metrics.insertion_deletion import (
    InsertionDeletion,
    rise_blur,
    rise_kernel,
    step_pixels,
)

CPU = torch.device("cpu")


def context(model: nn.Module, maps: torch.Tensor) -> EvalContext:
    return EvalContext(model=model, explain=lambda i, t: maps, make_method=lambda m: None,
                       device=CPU)


def cnn(size: int, seed: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * size * size, 3), nn.Flatten()).eval()


def authors_single_run(model: nn.Module, image: torch.Tensor, explanation: np.ndarray,
                       target: int, mode: str, step: int) -> tuple[np.ndarray, float]:
    """eclique/RISE ``CausalMetric.single_run`` for one (1, 3, H, W) image, ported line by line
    (softmax model, a class given instead of the top one, numpy pixel writes), and its ``auc``."""
    hw = image.shape[-1] * image.shape[-2]
    klen, ksig = 11, 5
    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1
    k = gaussian_filter(impulse, ksig)
    kern = np.zeros((3, 3, klen, klen), "float32")
    kern[0, 0] = k
    kern[1, 1] = k
    kern[2, 2] = k
    blur = lambda x: nn.functional.conv2d(x, torch.from_numpy(kern), padding=klen // 2)  # noqa: E731
    substrate = torch.zeros_like if mode == "del" else blur
    n_steps = (hw + step - 1) // step
    if mode == "del":
        start, finish = image.clone(), substrate(image)
    else:
        start, finish = substrate(image), image.clone()
    scores = np.empty(n_steps + 1)
    salient_order = np.flip(np.argsort(explanation.reshape(-1, hw), axis=1), axis=-1)
    with torch.no_grad():
        for i in range(n_steps + 1):
            scores[i] = torch.softmax(model(start), 1)[0, target].item()
            if i < n_steps:
                coords = salient_order[:, step * i:step * (i + 1)]
                start.numpy().reshape(1, 3, hw)[0, :, coords] = \
                    finish.numpy().reshape(1, 3, hw)[0, :, coords]
    return scores, (scores.sum() - scores[0] / 2 - scores[-1] / 2) / (scores.shape[0] - 1)


def test_agrees_with_the_authors_code_for_insertion_and_deletion() -> None:
    """Our curves and AUCs equal the authors' per-image loop (their kernel, zero substrate,
    their step) to 1e-6 on 2 images × 2 variants, at 12 px (steps=72: k = 2, 73 points)."""
    model = cnn(12)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 12, 12, generator=g)
    y = torch.tensor([2, 0])
    maps = torch.randn(2, 12, 12, generator=g)
    metric = InsertionDeletion(steps=72, max_batch=50)
    rows = metric.evaluate(context(model, maps), x, y, np.arange(2))
    summary = metric.summarise(rows[list(ROW_COLUMNS)])
    k, n = step_pixels(12, 12, 72)
    assert (k, n) == (2, 72)
    for b in range(2):
        for variant, mode in (("deletion", "del"), ("insertion", "ins")):
            scores, auc = authors_single_run(model, x[b:b + 1].clone(), maps[b].numpy(),
                                             int(y[b]), mode, k)
            ours = rows[(rows["sample"] == b) & (rows["variant"] == variant)]
            np.testing.assert_allclose(ours.sort_values("removed")["value"], scores, atol=1e-6)
            got = summary[(summary["sample"] == b) & (summary["variant"] == variant)]["value"]
            assert abs(float(got.iloc[0]) - auc) <= 1e-6


def test_deletion_agrees_with_quantus_pixel_flipping() -> None:
    """Quantus 0.6 PixelFlipping, baseline 0.0, on 12 px images: it flips single (channel, pixel)
    features and checks the step against H·W alone, so it gets the map repeated over the 3
    channels and 3·k features per step (each pixel's 3 tied copies are adjacent in its order, so a
    step is k whole pixels). Its curve is ours without the unperturbed point: ≤ 1e-6."""
    quantus = pytest.importorskip("quantus", reason="quantus (test extra) is not installed")
    model = cnn(12)
    g = torch.Generator().manual_seed(8)
    x = torch.rand(3, 3, 12, 12, generator=g)
    y = torch.tensor([0, 1, 2])
    a = torch.randn(3, 12, 12, generator=g)
    metric = InsertionDeletion(steps=72)
    scores, k = metric.curves(model, x, a, y)
    assert k == 2
    peer = quantus.PixelFlipping(features_in_step=3 * k, abs=False, normalise=False,
                                 perturb_baseline=0.0, disable_warnings=True,
                                 return_aggregate=False)
    theirs = np.asarray(peer(model=model, x_batch=x.numpy(), y_batch=y.numpy(),
                             a_batch=a[:, None].repeat(1, 3, 1, 1).numpy(), channel_first=True,
                             softmax=True, device="cpu", batch_size=3))
    assert theirs.shape == (3, 72)
    np.testing.assert_allclose(scores[0, :, 1:].numpy(), theirs, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- known answers


def test_blur_is_the_authors_kernel_with_zero_padding() -> None:
    kernel = rise_kernel()
    assert kernel.shape == (11, 11) and abs(float(kernel.sum()) - 1.0) < 1e-12
    torch.testing.assert_close(kernel, kernel.T)
    assert float(kernel[5, 5]) > float(kernel[0, 0]) > 0
    ones = torch.ones(1, 3, 31, 31, dtype=torch.float64)
    blurred = rise_blur(ones)
    assert abs(float(blurred[0, 0, 15, 15]) - 1.0) < 1e-12  # the full kernel is inside
    assert float(blurred[0, 0, 0, 0]) < 0.5  # zero padding darkens the corners


class Linear2(nn.Module):
    """logit_0 = Σ W ⊙ x, logit_1 = 0: p_0 = sigmoid(Σ W ⊙ x) under softmax."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, size, size,
                                               generator=torch.Generator().manual_seed(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bchw,chw->b", x, self.weight)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_two_by_two_image_by_hand() -> None:
    """2×2 image, steps=4 (k = 1): deletion zeroes the pixels in map order; insertion writes
    them into the blurred image; each point is sigmoid(Σ W ⊙ x) written out, the AUC is the
    trapezoid over 4 intervals."""
    model = Linear2(2).double()
    x = torch.rand(1, 3, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    maps = torch.tensor([[[0.1, 0.9], [0.5, -1.0]]])  # order: (0,1), (1,0), (0,0), (1,1)
    order = [(0, 1), (1, 0), (0, 0), (1, 1)]
    metric = InsertionDeletion(steps=4)
    scores, k = metric.curves(model, x, maps, torch.tensor([0]))
    assert k == 1
    w = model.weight.detach()
    blurred = rise_blur(x)[0]
    for v, (start, finish) in enumerate(((x[0], torch.zeros_like(x[0])), (blurred, x[0]))):
        image, expected = start.clone(), []
        for s in range(5):
            expected.append(torch.sigmoid((w * image).sum()).item())
            if s < 4:
                image[:, order[s][0], order[s][1]] = finish[:, order[s][0], order[s][1]]
        np.testing.assert_allclose(scores[v, 0].numpy(), expected, atol=1e-12)
    rows = metric.evaluate(context(model, maps), x, torch.tensor([0]), np.array([0]))
    summary = metric.summarise(rows[list(ROW_COLUMNS)])
    curve = scores[0, 0].numpy()
    assert abs(summary["value"][0] - (curve.sum() - curve[0] / 2 - curve[-1] / 2) / 4) < 1e-12


def test_step_pixels_scale_the_authors_224_steps() -> None:
    assert step_pixels(224, 224, 224) == (224, 224)
    assert step_pixels(32, 32, 224) == (5, 205)  # the last step holds 4 pixels
    assert step_pixels(2, 2, 224) == (1, 4)


# ----------------------------------------------------------------------------- invariants


def test_end_points_do_not_depend_on_the_map_and_chunking_changes_nothing() -> None:
    model = cnn(16)
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 16, 16, generator=g)
    y = torch.tensor([1, 2])
    one, _ = InsertionDeletion(max_batch=1).curves(model, x, torch.randn(2, 16, 16), y)
    other, _ = InsertionDeletion(max_batch=10_000).curves(model, x, torch.randn(2, 16, 16), y)
    np.testing.assert_allclose(one[:, :, [0, -1]], other[:, :, [0, -1]], atol=1e-6)
    with torch.no_grad():
        p = torch.softmax(model(torch.cat([x, torch.zeros_like(x), rise_blur(x)])), 1)
    p = p[torch.arange(6), y.repeat(3)].view(3, 2).double()
    np.testing.assert_allclose(one[0, :, 0], p[0], atol=1e-6)   # deletion starts at x
    np.testing.assert_allclose(one[0, :, -1], p[1], atol=1e-6)  # and ends black
    np.testing.assert_allclose(one[1, :, 0], p[2], atol=1e-6)   # insertion starts blurred
    np.testing.assert_allclose(one[1, :, -1], p[0], atol=1e-6)  # and ends at x
    maps = torch.randn(2, 16, 16)
    a, _ = InsertionDeletion(max_batch=7).curves(model, x, maps, y)
    b, _ = InsertionDeletion(max_batch=1000).curves(model, x, maps, y)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_a_faithful_map_beats_its_negation_on_a_linear_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2])
    w = model[1].weight.detach().view(3, 3, 16, 16)
    metric = InsertionDeletion()
    good = metric.summarise(metric.evaluate(context(model, (x * w[y]).sum(1)), x, y,
                                            np.arange(3))[list(ROW_COLUMNS)])
    bad = metric.summarise(metric.evaluate(context(model, -(x * w[y]).sum(1)), x, y,
                                           np.arange(3))[list(ROW_COLUMNS)])
    dele = good["variant"] == "deletion"
    assert (good["value"][dele].to_numpy() < bad["value"][dele].to_numpy()).all()
    assert metric.direction("deletion", "prob-auc") == "lower"
    assert metric.direction("insertion", "prob-auc") == "higher"


def test_nan_map_gives_nan_rows_and_an_empty_batch_gives_none() -> None:
    model = cnn(16)
    x = torch.rand(2, 3, 16, 16)
    maps = torch.randn(2, 16, 16)
    maps[0, 3, 3] = float("nan")
    metric = create_metric("insertion-deletion")
    rows = metric.evaluate(context(model, maps), x, torch.tensor([0, 1]), np.array([5, 6]))
    assert rows.loc[rows["sample"] == 5, "value"].isna().all()
    assert np.isfinite(rows.loc[rows["sample"] == 6, "value"]).all()
    summary = metric.summarise(rows[list(ROW_COLUMNS)])
    assert summary.loc[summary["sample"] == 5, "value"].isna().all()
    empty = metric.evaluate(context(model, maps[:0]), x[:0], torch.zeros(0, dtype=torch.long),
                            np.zeros(0, dtype=np.int64))
    assert empty.empty and metric.summarise(empty).empty


@pytest.mark.parametrize(("hparams", "error"), [
    ({"steps": 0}, MetricError), ({"blur_size": 10}, MetricError),
    ({"blur_sigma": 0}, MetricError), ({"num_images": 0}, MetricError),
    ({"score": "logit"}, SettingError), ({"max_batch": 1.5}, SettingError),
])
def test_bad_hyper_parameters_raise_one_line(hparams: dict, error: type) -> None:
    with pytest.raises(error) as info:
        create_metric("insertion-deletion", **hparams)
    message = str(info.value)
    assert "insertion-deletion" in message and "\n" not in message
    assert next(iter(hparams)) in message
