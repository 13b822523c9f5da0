"""DAU layers: the bilinear formulation equals the materialised one; explanation mode is linear."""

from __future__ import annotations

import copy
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


# ---- Second derivatives: the graph-building backward of the bilinear layer -------------------


def _functional(layer: DAUConv2d):
    """``f(x, *parameters)`` calling ``layer`` with the given parameters (for gradcheck)."""
    names = [name for name, _ in layer.named_parameters()]

    def f(inp, *weights):
        return torch.func.functional_call(layer, dict(zip(names, weights, strict=True)), (inp,))

    return f


@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_bilinear_layer_passes_gradgradcheck(norm, stride, explain):
    """Second derivatives in the input and every parameter against finite differences of the
    first (float64, gradcheck's fast mode: random projections of the full Jacobian). In
    explanation mode the first derivative is Wᵀg (input only), differentiable in everything."""
    layer = DAUConv2d(3, 4, 3, 3, stride, norm=norm).double()
    layer.explanation_mode = explain
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    params = [p.detach().requires_grad_() for p in layer.parameters()]
    assert torch.autograd.gradgradcheck(_functional(layer), (x, *params), fast_mode=True)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("explain", [False, True])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_graph_building_backward_equals_the_hand_written_one(norm, explain, keep):
    """create_graph=True switches to the differentiable backward; its first derivatives are the
    fast path's. (z = reduce(x) is an input of the Function: its path must not be counted
    twice in ∂/∂x.) In explanation mode only x gets a gradient, but it requires grad."""
    layer = DAUConv2d(3, 4, 5, 3, 2, norm=norm).double()
    layer.keep_projection, layer.explanation_mode = keep, explain
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    inputs = [x, *layer.parameters()]
    fast = torch.autograd.grad((out * cot).sum(), inputs, retain_graph=True, allow_unused=True)
    graph = torch.autograd.grad((out * cot).sum(), inputs, create_graph=True, allow_unused=True)
    if explain:  # u and the scale are constants: no parameter gradient, on either path
        assert all(g is None for g in (*fast[1:], *graph[1:]))
        fast, graph = fast[:1], graph[:1]
    for g_fast, g_graph in zip(fast, graph, strict=True):
        assert g_graph.requires_grad
        torch.testing.assert_close(g_graph, g_fast, rtol=1e-12, atol=1e-13)


def _double_backward(layer: DAUConv2d, x: torch.Tensor) -> list[torch.Tensor]:
    """Gradients in x and the parameters of |∂(out·cot)/∂x|.sum() + (first gradients)·v: a
    second-derivative functional and a Hessian-vector product of out·cot."""
    x = x.clone().requires_grad_(True)
    inputs = [x, *layer.parameters()]
    out = layer(x)
    gen = torch.Generator().manual_seed(3)
    cot = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    first = torch.autograd.grad((out * cot).sum(), inputs, create_graph=True)
    vs = [torch.randn(g.shape, generator=gen, dtype=g.dtype) for g in first]
    total = first[0].abs().sum() + sum((g * v).sum() for g, v in zip(first, vs, strict=True))
    return list(torch.autograd.grad(total, inputs))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_double_backward_agrees_with_materialised(norm, stride):
    fast, slow = _pair(norm, 3, stride, torch.float64, in_ch=3, out_ch=4, rank=3)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    for got, ref in zip(_double_backward(fast, x), _double_backward(slow, x), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


def _transposed_map_attached(layer: DAUConv2d, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Reference Wᵀg (B, C, H, W): the materialised dynamic weights g(u) (B, o, d, H', W'),
    kept attached to the parameters and to x, contracted with g (B, o, H', W') and folded back
    onto the input (``F.fold`` is the adjoint of the patch extraction ``F.unfold``)."""
    w = layer.materialised_weights(x).flatten(3)  # (B, o, d, L)
    cols = torch.einsum("bodl,bol->bdl", w, g.flatten(2))
    return torch.nn.functional.fold(cols, x.shape[-2:], layer.kernel_size,
                                    padding=layer.padding, stride=layer.stride)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_explanation_mode_double_backward_is_the_attached_linear_map(norm, stride):
    """In explanation mode with create_graph=True, the input gradient Wᵀg equals the linear map
    built from the materialised weights, and so do the gradients of |Wᵀg| (in the parameters
    and in x, through the dynamic weights): the paper's λ term, layer by layer."""
    fast, slow = _pair(norm, 3, stride, torch.float64, in_ch=3, out_ch=4, rank=3)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    g = torch.randn(fast(x).shape, generator=torch.Generator().manual_seed(4), dtype=x.dtype)

    def penalty_grads(wt_g: torch.Tensor, x_in: torch.Tensor, layer: DAUConv2d) -> list:
        return list(torch.autograd.grad(wt_g.abs().sum(), [x_in, *layer.parameters()]))

    x_fast = x.clone().requires_grad_(True)
    with explanation_mode(fast):
        (wt_g,) = torch.autograd.grad(fast(x_fast), x_fast, g, create_graph=True)
    x_slow = x.clone().requires_grad_(True)
    reference = _transposed_map_attached(slow, x_slow, g)
    torch.testing.assert_close(wt_g, reference, rtol=1e-10, atol=1e-12)
    got, ref = penalty_grads(wt_g, x_fast, fast), penalty_grads(reference, x_slow, slow)
    for name, a, b in zip(["x", *dict(fast.named_parameters())], got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_forward_with_transpose_agrees_across_formulations(norm, stride):
    """out is the normal forward and transpose(g) the explanation-mode input gradient Wᵀg;
    the gradients of a function of both (in x and the parameters: the dynamic weights stay
    attached) agree between the two formulations (float64). The flag is ignored."""
    fast, slow = _pair(norm, 3, stride, torch.float64, in_ch=3, out_ch=4, rank=3)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    gen = torch.Generator().manual_seed(6)
    g = torch.randn(fast(x).shape, generator=gen, dtype=x.dtype)
    c = torch.randn(g.shape, generator=gen, dtype=x.dtype)
    results = []
    for layer in (fast, slow):
        x_in = x.clone().requires_grad_(True)
        with explanation_mode(layer):
            out, transpose = layer.forward_with_transpose(x_in)
            (expected,) = torch.autograd.grad(layer(x_in), x_in, g)
        wt_g = transpose(g)
        torch.testing.assert_close(out, layer(x), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(wt_g, expected, rtol=1e-10, atol=1e-13)
        total = wt_g.abs().sum() + (out * c).sum()
        results.append(torch.autograd.grad(total, [x_in, *layer.parameters()]))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9 * ref.abs().max().item())


# ---- Memory layout and autocast --------------------------------------------------------------


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_channels_last_model_gives_the_nchw_numbers(norm, keep):
    """A stack converted to channels_last, fed channels_last input: same output, input and
    parameter gradients as NCHW (float64), without copying the input to NCHW."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(DAUConv2d(4, 5, 6, 3, 1, norm=norm),
                                DAUConv2d(5, 6, 4, 3, 2, norm=norm),
                                DAUConv2d(6, 3, 5, 1, 1, norm=norm)).double()
    for layer in model:
        layer.keep_projection = keep
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    results = []
    for net, inp in ((model, x), (cl, x.to(memory_format=torch.channels_last))):
        out, grad = _out_and_grad(net, inp)
        results.append((out, grad, torch.autograd.grad(net(inp).pow(2).sum(), net.parameters())))
    (out, grad, params), (out_cl, grad_cl, params_cl) = results
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_cl, grad, rtol=1e-10, atol=1e-12)
    for p_cl, p in zip(params_cl, params, strict=True):
        torch.testing.assert_close(p_cl, p, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", ["sq", "l2"])
def test_autocast_layer_is_bf16_convolutions_and_float32_norms(norm):
    """Under CPU autocast the output is float32, close to float64 (bf16 has 8 significant bits)
    but not equal to float32 (the convolutions did run in bf16); in explanation mode the input
    gradient is the linear map (close to float64's) and the parameters get no gradient."""
    layer = DAUConv2d(5, 7, 6, 3, 1, norm=norm)
    ref_layer = copy.deepcopy(layer).double()
    x = torch.rand(2, 5, 9, 9)
    with torch.no_grad():
        ref, plain = ref_layer(x.double()), layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
    assert out.dtype == torch.float32
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert 1e-5 < err < 2e-2
    assert (plain.double() - ref).abs().max() / ref.abs().max() < 1e-5
    x_ref = x.double().requires_grad_(True)
    with explanation_mode(ref_layer):
        (grad_ref,) = torch.autograd.grad(ref_layer(x_ref)[0, 2].sum(), x_ref)
    x32 = x.clone().requires_grad_(True)
    with explanation_mode(layer), torch.autocast("cpu", dtype=torch.bfloat16):
        evidence = layer(x32)[0, 2].sum()
    grads = torch.autograd.grad(evidence, [x32, *layer.parameters()], allow_unused=True)
    assert grads[0].dtype == torch.float32 and all(g is None for g in grads[1:])
    assert (grads[0].double() - grad_ref).abs().max() / grad_ref.abs().max() < 2e-2
