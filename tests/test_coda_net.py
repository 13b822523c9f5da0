"""CoDA-Nets: configs, encoding, and the completeness of the inherent contribution maps."""

from __future__ import annotations

import pytest
import torch

from attrib_bench.errors import InputShapeError
from attrib_bench.models.coda_net import CONFIGS, DEFAULT_LOGIT_BIAS, PAPER_PARAMS_M, build_coda
from attrib_bench.registry import create_model

# Input sizes for the tests: native for the CIFAR models, reduced for L (240 px native) and XL
# (64 px) to keep the suite fast; completeness does not depend on the size.
TEST_SIZE = {"xs": 32, "s": 32, "m": 32, "l": 48, "xl": 32}


def _images(size: int, batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, dtype=dtype)


@pytest.mark.parametrize("size", sorted(CONFIGS))
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_completeness(size, dtype, rtol):
    """Σ over channels and pixels of W0→L ⊙ x_enc equals logit_target − b0 (1/T included)."""
    model = build_coda(size).to(dtype).eval()
    x = _images(TEST_SIZE[size], dtype=dtype)
    target = torch.tensor([0, CONFIGS[size].num_classes - 1])
    contributions = model.contributions(x, target)
    assert contributions.shape == (2, 6, *x.shape[-2:])
    with torch.no_grad():
        logits = model(x)
        evidence = model.evidence_encoded(model.encode(x))
    rows = torch.arange(2)
    total = contributions.sum(dim=(1, 2, 3))
    # Summing many terms of both signs: the rounding error scales with Σ|terms|, not the sum
    # (an untrained model's evidence nearly cancels; seen at 2e-4 relative with 1 thread, M).
    cancellation = 64 * torch.finfo(dtype).eps * contributions.abs().sum(dim=(1, 2, 3)).max()
    torch.testing.assert_close(total, evidence[rows, target], rtol=rtol, atol=cancellation.item())
    # logit − b0 is the same number up to the rounding of adding b0 (≈ 2.2) in this dtype.
    bias_rounding = 4 * torch.finfo(dtype).eps * abs(model.logit_bias)
    torch.testing.assert_close(total, logits[rows, target] - model.logit_bias,
                               rtol=rtol, atol=bias_rounding + cancellation.item())


@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_contributions_agree_across_formulations(norm):
    fast = build_coda("xs", norm=norm).double()
    slow = build_coda("xs", norm=norm, formulation="materialised").double()
    slow.load_state_dict(fast.state_dict())
    x, target = _images(32, dtype=torch.float64), torch.tensor([3, 7])
    torch.testing.assert_close(fast(x), slow(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.contributions(x, target), slow.contributions(x, target),
                               rtol=1e-10, atol=1e-14)


def test_contributions_are_one_backward_of_the_detached_linear_map():
    """Each class's map is the gradient in explanation mode times the encoded input; the maps
    of different classes differ, and the model's parameters receive no gradient."""
    model = build_coda("xs", temperature=10).double()
    x = _images(32, 1, torch.float64)
    maps = torch.cat([model.contributions(x, torch.tensor([c])) for c in range(3)])
    assert not torch.allclose(maps[0], maps[1])
    assert all(p.grad is None for p in model.parameters())
    assert all(not m.explanation_mode for m in model.layers)


def test_encoding_and_logit_bias():
    model = build_coda("xs")
    x = torch.rand(1, 3, 4, 4)
    enc = model.encode(x)
    torch.testing.assert_close(enc[:, 3:], 1 - x)
    torch.testing.assert_close(enc[:, :3], x)
    # An all-zero encoded input gives exactly b0 for every class (no bias path in a DAU output).
    logits = model.forward_encoded(torch.zeros(1, 6, 32, 32))
    torch.testing.assert_close(logits, torch.full((1, 10), DEFAULT_LOGIT_BIAS))
    assert model.gradcam_layer is model.layers[-1]


def test_temperature_scales_logits():
    model = build_coda("xs", temperature=10)
    hotter = build_coda("xs", temperature=1000)
    hotter.load_state_dict(model.state_dict())
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close((model(x) - model.logit_bias) / 100,
                                   hotter(x) - hotter.logit_bias)


@pytest.mark.parametrize("size", ["s", "m", "l", "xl"])
def test_parameter_counts_match_the_paper(size):
    """S and L are the authors' exact configs; M and XL are sized to within 3 % of the paper."""
    with torch.device("meta"):
        params = sum(p.numel() for p in build_coda(size).parameters())
    exact = {"s": 7_782_816, "l": 47_517_408}
    if size in exact:
        assert params == exact[size]
    assert abs(params / 1e6 - PAPER_PARAMS_M[size]) / PAPER_PARAMS_M[size] < 0.03


def test_s_config_is_the_authors():
    cfg = CONFIGS["s"]
    assert cfg.kernels == (3, 3, 3, 3, 3, 3, 3, 3, 1)
    assert cfg.strides == (1, 1, 2, 1, 1, 2, 1, 1, 1)
    assert cfg.out_channels == (16, 16, 32, 32, 32, 64, 64, 64, 10)
    assert cfg.ranks == (32, 32, 64, 64, 64, 64, 64, 64, 64)
    assert cfg.norm == "sq" and cfg.exact


@pytest.mark.parametrize("bad", [torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32),
                                 torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)])
def test_bad_input_gives_one_line(bad):
    model = create_model("xs-coda")
    with pytest.raises(InputShapeError) as info:
        model(bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith("inputs must")
