"""DAU layers: the bilinear formulation equals the materialised one; explanation mode is linear."""

from __future__ import annotations

import itertools

import pytest
import torch

from attrib_bench.models.dau import DAUConv2d, dau_layers, explanation_mode

CASES = list(itertools.product(["sq", "l2"], [1, 3, 7], [1, 2]))


def _pair(norm: str, k: int, stride: int, dtype: torch.dtype, in_ch: int = 5, out_ch: int = 7,
          rank: int = 6) -> tuple[DAUConv2d, DAUConv2d]:
    fast = DAUConv2d(in_ch, out_ch, rank, k, stride, norm=norm).to(dtype)
    slow = DAUConv2d(in_ch, out_ch, rank, k, stride, norm=norm, formulation="materialised")
    slow.load_state_dict(fast.state_dict())
    return fast, slow.to(dtype)


def _out_and_grad(layer: DAUConv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = layer(x)
    # A fixed random cotangent checks the whole Jacobian-vector product, not only its sum.
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    (grad,) = torch.autograd.grad((out * cot).sum(), x)
    return out.detach(), grad


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize(("norm", "k", "stride"), CASES)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_bilinear_equals_materialised(norm, k, stride, dtype, rtol, keep):
    fast, slow = _pair(norm, k, stride, dtype)
    fast.keep_projection = keep
    x = torch.randn(3, 5, 13, 11, dtype=dtype)
    out_f, grad_f = _out_and_grad(fast, x)
    out_s, grad_s = _out_and_grad(slow, x)
    assert out_f.shape == out_s.shape == (3, 7, (13 + 2 * ((k - 1) // 2) - k) // stride + 1,
                                          (11 + 2 * ((k - 1) // 2) - k) // stride + 1)
    torch.testing.assert_close(out_f, out_s, rtol=rtol, atol=rtol * out_s.abs().max().item())
    torch.testing.assert_close(grad_f, grad_s, rtol=rtol, atol=rtol * grad_s.abs().max().item())


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_parameter_gradients_agree(norm, keep):
    fast, slow = _pair(norm, 3, 1, torch.float64)
    fast.keep_projection = keep
    x = torch.randn(2, 5, 8, 8, dtype=torch.float64)
    fast(x).pow(2).sum().backward()
    slow(x).pow(2).sum().backward()
    for (name, p_fast), p_slow in zip(fast.named_parameters(), slow.parameters(), strict=True):
        torch.testing.assert_close(p_fast.grad, p_slow.grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_weights_are_bounded_and_match_definition(norm):
    """g(u) has norm ≤ 1 (SQ) or = 1 (L2); output = g(u)ᵀp computed by hand at one location."""
    layer = DAUConv2d(4, 3, 5, 3, 1, norm=norm).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    w = layer.materialised_weights(x)  # (1, out, d, H, W)
    lengths = w.norm(dim=2)
    if norm == "l2":
        torch.testing.assert_close(lengths, torch.ones_like(lengths))
    else:
        assert (lengths < 1).all()
    a, b = layer.weight_factors()
    patch = torch.nn.functional.pad(x, (1, 1, 1, 1))[0, :, 1:4, 2:5].reshape(-1)  # location (1, 2)
    z = layer.reduce.weight.reshape(5, -1) @ patch
    u = a @ z + b  # (out, d)
    n = u.norm(dim=1, keepdim=True)
    g = u * n / (1 + n**2) if norm == "sq" else u / n
    torch.testing.assert_close(layer(x)[0, :, 1, 2], g @ patch)


@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_hand_written_backward_passes_gradcheck(norm):
    """The bilinear layer's custom backward against finite differences (float64). (Explanation
    mode is checked against the materialised weights below: by design it is not the derivative.)"""
    layer = DAUConv2d(2, 3, 2, 3, 2, norm=norm).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    params = tuple(layer.parameters())

    def f(inp, *weights):
        state = dict(zip(dict(layer.named_parameters()), weights, strict=True))
        return torch.func.functional_call(layer, state, (inp,))

    assert torch.autograd.gradcheck(f, (x, *[p.detach().requires_grad_() for p in params]))


@pytest.mark.parametrize("formulation", ["bilinear", "materialised"])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_zero_input_is_finite(norm, formulation):
    layer = DAUConv2d(3, 4, 5, 3, 1, norm=norm, formulation=formulation)
    torch.nn.init.zeros_(layer.expand.bias)  # u = 0 exactly: the worst case for the scale
    x = torch.zeros(2, 3, 6, 6, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and (out == 0).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("formulation", ["bilinear", "materialised"])
def test_explanation_mode_is_linear_with_the_dynamic_weights(formulation):
    """In explanation mode the input gradient is the (detached) dynamic weight map itself."""
    layer = DAUConv2d(2, 3, 4, 3, 1, norm="sq", formulation=formulation).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    with explanation_mode(layer):
        out = layer(x)
        (grad,) = torch.autograd.grad(out[0, 1, 2, 3], x)
    w = layer.materialised_weights(x.detach())[0, 1, :, 2, 3].view(2, 3, 3)
    expected = torch.zeros_like(x[0])
    expected[:, 1:4, 2:5] = w  # the patch around (2, 3) with padding 1
    torch.testing.assert_close(grad[0], expected)
    assert torch.allclose((grad * x).sum(), out[0, 1, 2, 3])
    assert layer.explanation_mode is False  # restored on exit


def test_explanation_mode_restores_on_error_and_finds_layers():
    model = torch.nn.Sequential(DAUConv2d(2, 3, 4), torch.nn.Identity(), DAUConv2d(3, 2, 4))
    assert len(dau_layers(model)) == 2
    with pytest.raises(RuntimeError, match="boom"), explanation_mode(model):
        assert all(m.explanation_mode for m in dau_layers(model))
        raise RuntimeError("boom")
    assert not any(m.explanation_mode for m in dau_layers(model))


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="norm"):
        DAUConv2d(2, 3, 4, norm="l1")
    with pytest.raises(ValueError, match="formulation"):
        DAUConv2d(2, 3, 4, formulation="fast")


def test_channels_last_input_gives_the_same_result():
    layer = DAUConv2d(4, 3, 5, 3, 2)
    x = torch.randn(2, 4, 9, 9)
    out, grad = _out_and_grad(layer, x)
    out_cl, grad_cl = _out_and_grad(layer, x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, out)
    torch.testing.assert_close(grad_cl, grad)
