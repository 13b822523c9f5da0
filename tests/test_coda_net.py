"""CoDA-Nets: configs, encoding, and the completeness of the inherent contribution maps."""

from __future__ import annotations

import copy

import pytest
import torch

from attrib_bench.core.errors import InputShapeError
from attrib_bench.core.registry import create_model
from attrib_bench.models.coda_net import (
    CONFIGS,
    DEFAULT_LOGIT_BIAS,
    PAPER_PARAMS_M,
    build_coda,
    lambda_penalty,
)
from attrib_bench.runners.train import bce_one_hot

# Input sizes for the tests: native for the CIFAR models, reduced for L (240 px native) and XL
# (64 px) to keep the suite fast; completeness does not depend on the size.
TEST_SIZE = {"xs": 32, "s": 32, "m": 32, "l": 48, "xl": 32}


def _images(size: int, batch: int = 2, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, dtype=dtype)


# L and XL take 5-20 s each (their per-forward weight products dominate, not the input size)
@pytest.mark.parametrize("size", [pytest.param(size, marks=pytest.mark.slow)
                                  if size in ("l", "xl") else size for size in sorted(CONFIGS)])
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


# ---- The linear map and the λ regulariser -------------------------------------------------------


def test_linear_map_times_the_encoded_input_sums_to_the_evidence():
    """Σ W0→L(x)_target · x_enc = logit_target − b0 (float64), and contributions = x_enc ⊙ it."""
    model = build_coda("xs", temperature=10).double()
    x, target = _images(32, 3, torch.float64), torch.tensor([0, 4, 9])
    rows = torch.arange(3)
    w = model.linear_map(x, target)
    assert w.shape == (3, 6, 32, 32) and not w.requires_grad
    with torch.no_grad():
        logits = model(x)
        evidence = model.evidence_encoded(model.encode(x))[rows, target]
    total = (w * model.encode(x)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(total, evidence, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(total, logits[rows, target] - model.logit_bias, rtol=1e-9,
                               atol=1e-12)
    assert torch.equal(model.contributions(x, target), model.encode(x) * w)
    attached = model.linear_map(x, target, create_graph=True)
    assert attached.requires_grad
    torch.testing.assert_close(attached.detach(), w, rtol=1e-10, atol=1e-12 * w.abs().max().item())
    assert all(p.grad is None for p in model.parameters())


def _tiny_coda(dtype=torch.float64):
    """A 2-layer CoDA-Net (6 → 4 → 3 classes, stride 2) small enough for gradcheck."""
    return build_coda("xs", temperature=10, out_channels=(4, 3), ranks=(3, 3), kernels=(3, 1),
                      strides=(2, 1), paddings=(1, 0), num_classes=3).to(dtype)


def test_lambda_penalty_gradient_passes_gradcheck():
    """The penalty's gradient in every parameter (a double backward through both DAU layers)
    against finite differences, float64 (fast mode: random projections)."""
    model = _tiny_coda()
    x, target = _images(6, 2, torch.float64), torch.tensor([0, 2])
    names = [name for name, _ in model.named_parameters()]

    def penalty(*weights):
        state = dict(zip(names, weights, strict=True))
        with torch.nn.utils.stateless._reparametrize_module(model, state):
            return lambda_penalty(model, x, target)

    params = tuple(p.detach().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(penalty, params, fast_mode=True)


def test_lambda_penalty_gradient_matches_central_differences():
    """The same check, coordinate by coordinate, on a few parameters of the xs model."""
    model = build_coda("xs", temperature=10).double()
    x, target = _images(16, 2, torch.float64), torch.tensor([1, 8])
    value = lambda_penalty(model, x, target)
    grads = torch.autograd.grad(value, list(model.parameters()))
    params = dict(model.named_parameters())
    grads = dict(zip(params, grads, strict=True))
    gen = torch.Generator().manual_seed(5)
    h = 1e-6
    for name in ["layers.0.reduce.weight", "layers.4.expand.weight", "layers.8.expand.bias"]:
        p = params[name]
        for _ in range(2):
            i = int(torch.randint(p.numel(), (1,), generator=gen))
            with torch.no_grad():
                p.view(-1)[i] += h
                up = lambda_penalty(model, x, target)
                p.view(-1)[i] -= 2 * h
                down = lambda_penalty(model, x, target)
                p.view(-1)[i] += h
            numeric = (up - down) / (2 * h)
            analytic = grads[name].view(-1)[i]
            assert abs(numeric - analytic) <= 1e-5 * abs(analytic) + 1e-9 * value, (name, i)


@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_lambda_penalty_agrees_across_formulations(norm):
    """Value and parameter gradients of the penalty: bilinear (double backward of the custom
    Function) = materialised (plain autograd on the literal weights), float64."""
    fast = build_coda("xs", norm=norm, temperature=10).double()
    slow = build_coda("xs", norm=norm, temperature=10, formulation="materialised").double()
    slow.load_state_dict(fast.state_dict())
    x, target = _images(16, 2, torch.float64), torch.tensor([5, 0])
    results = []
    for model in (fast, slow):
        value = lambda_penalty(model, x, target)
        results.append((value, *torch.autograd.grad(value, list(model.parameters()))))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def test_forward_with_linear_map_shares_the_forward_and_gives_the_same_gradients():
    model = build_coda("xs", temperature=10).double()
    x, labels = _images(16, 2, torch.float64), torch.tensor([3, 6])
    logits, w = model.forward_with_linear_map(x, labels)
    torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(w, model.linear_map(x, labels), rtol=1e-10,
                               atol=1e-12 * w.abs().max().item())
    params = list(model.parameters())
    shared = torch.autograd.grad(bce_one_hot(logits, labels) + 0.1 * w.abs().mean(), params)
    separate = torch.autograd.grad(
        bce_one_hot(model(x), labels) + 0.1 * lambda_penalty(model, x, labels), params)
    for a, b in zip(shared, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12 * b.abs().max().item())


def test_two_adam_steps_lower_the_regularised_loss():
    torch.manual_seed(0)
    model = build_coda("xs")
    x, labels = _images(16, 8), torch.randint(0, 10, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def regularised() -> torch.Tensor:
        return bce_one_hot(model(x), labels) + 0.1 * lambda_penalty(model, x, labels)

    losses = []
    for _ in range(2):
        loss = regularised()
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():  # the penalty needs a backward pass: enable_grad is inside
        final = regularised().item()
    assert final < losses[0] and losses[1] < losses[0]


def test_lambda_penalty_and_contributions_ignore_autocast():
    """Under autocast the linear map is still computed in float32 (same value and gradients)."""
    model = build_coda("xs", temperature=10)
    x, target = _images(16, 2), torch.tensor([2, 3])
    plain = lambda_penalty(model, x, target)
    grads = torch.autograd.grad(plain, list(model.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = lambda_penalty(model, x, target)
        maps = model.contributions(x, target)
    assert cast.dtype == maps.dtype == torch.float32
    torch.testing.assert_close(maps, model.contributions(x, target), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(cast, plain, rtol=1e-6, atol=0.0)
    for g_cast, g in zip(torch.autograd.grad(cast, list(model.parameters())), grads,
                         strict=True):
        torch.testing.assert_close(g_cast, g, rtol=1e-5, atol=1e-6 * g.abs().max().item())


# ---- Autocast and memory layout --------------------------------------------------------------


def test_bf16_autocast_logits_are_close_to_float64():
    """bf16 convolutions (8 significant bits), float32 norms: the evidence (logits − b0) is
    within 3e-2 of float64's, relative to its largest value. Measured here (untrained xs,
    random images, batch 8, 20 seeds): median 0.95 %, largest 2.3 % — nine layers of bf16
    rounding, amplified by the near-cancelling sums of an untrained model's evidence; float32
    gives 1e-5. The same logits without autocast are float32-exact, so the gap is bf16's."""
    torch.manual_seed(0)
    model = build_coda("xs", temperature=10)
    reference = build_coda("xs", temperature=10).double()
    reference.load_state_dict(model.state_dict())
    x = _images(32, 8)
    with torch.no_grad():
        evidence = reference(x.double()) - reference.logit_bias
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
    assert logits.dtype == torch.float32
    error = (logits.double() - model.logit_bias - evidence).abs().max() / evidence.abs().max()
    assert 1e-4 < error < 3e-2


def test_bf16_autocast_training_step_gives_finite_float32_gradients():
    model = build_coda("xs", temperature=10)
    for layer in model.layers:
        layer.keep_projection = True
    x, labels = _images(32, 4), torch.tensor([0, 1, 2, 3])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = bce_one_hot(model(x), labels)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert p.grad.abs().sum() > 0


@pytest.mark.parametrize("keep", [False, True])
def test_channels_last_model_gives_the_nchw_numbers(keep):
    """model.to(memory_format=channels_last) on channels_last input: the same logits, input and
    parameter gradients as NCHW (float64)."""
    model = build_coda("xs", temperature=10).double()
    for layer in model.layers:
        layer.keep_projection = keep
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = _images(16, 2, torch.float64)
    results = []
    for net, inp in ((model, x), (channels_last, x.to(memory_format=torch.channels_last))):
        inp = inp.clone().requires_grad_(True)
        logits = net(inp)
        loss = bce_one_hot(logits, torch.tensor([1, 2]))
        results.append((logits, *torch.autograd.grad(loss, [inp, *net.parameters()])))
    for got, ref in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
