"""Convolutional Dynamic Alignment Units (Böhle et al., CVPR 2021), in two exact formulations.

A DAU layer maps each input patch p ∈ R^d (d = C·k²) to one output per channel o:

    out_o(p) = g(A_o z + b_o)ᵀ p,   z = B p ∈ R^r,

with B a k×k convolution (C → r, no bias) shared by the layer, A_o ∈ R^{d×r}, b_o ∈ R^d, and g
a rescaling of the dynamic weight u = A_o z + b_o: ``"l2"``: u/‖u‖; ``"sq"`` (squashing):
u·‖u‖/(1+‖u‖²). Since g only rescales, out_o = (uᵀp)·s(‖u‖²) with s the scale of g.

``bilinear`` (the default, fast) never materialises u. It uses

    uᵀp   = zᵀ(A_oᵀ p) + b_oᵀ p                 (one convolution of x for all o at once),
    ‖u‖²  = zᵀ(A_oᵀA_o)z + 2(A_oᵀb_o)ᵀz + ‖b_o‖²   (r×r Gram matrices, computed once per call),

which needs out·r numbers per location instead of out·d. ``materialised`` computes u literally, as
the authors' code does, and is kept as the tested reference.

Parameter layout follows the authors' ``DAUWeights``: ``reduce`` is B, ``expand`` is the 1×1
convolution holding A and b, whose output channel ``i·out + o`` is coordinate i of u_o (i runs
over the patch in ``F.unfold`` order: channel, then kernel row, then kernel column).

Explanation mode detaches u and the scale: the layer becomes linear in its input, so a backward
pass of a logit through a stack of DAU layers yields the model's linear map W0→L(x).

Both formulations are twice differentiable. The bilinear one keeps its fast hand-written backward
for plain training steps and switches to a differentiable backward when a graph of the gradient
is requested (``create_graph=True``); in explanation mode that backward's input gradient, the
transposed linear map Wᵀg, stays differentiable in the layer's parameters and z. For a stack (the
paper's λ·mean|W0→L| regulariser) use :meth:`DAUConv2d.forward_with_transpose`: an explanation-mode
forward passes no gradient to the dynamic weights, so it would hold every layer's input fixed.
Under ``torch.autocast`` the bilinear layer runs its two convolutions in the autocast dtype and
the norms and the output in float32. Channels-last inputs are handled without a copy (bilinear),
give the same numbers as NCHW and give channels-last outputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["sq", "l2"]
Formulation = Literal["bilinear", "materialised"]

#: ‖u‖² is clamped at this value before the scale is taken, so that u = 0 gives a finite
#: output and a finite (zero) gradient through the scale instead of NaN. Exact whenever ‖u‖² > EPS.
EPS = 1e-12


def dau_scale(norm_sq: torch.Tensor, norm: Norm) -> torch.Tensor:
    """The factor s(‖u‖²) with g(u) = s·u: ‖u‖/(1+‖u‖²) for "sq", 1/‖u‖ for "l2". Shape kept.

    Plain autograd operations (twice differentiable); ‖u‖² is clamped at :data:`EPS` first, so
    the derivative is 0 where the clamp is active, as in the hand-written backward.
    """
    n2 = norm_sq.clamp_min(EPS)
    return n2.sqrt() / (1.0 + n2) if norm == "sq" else n2.rsqrt()


class DAUConv2d(nn.Module):
    """A convolutional DAU layer: (B, C, H, W) → (B, out_channels, H', W').

    Each output channel at each location is one DAU over its k×k input patch; ``rank`` is r.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        rank: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        norm: Norm = "sq",
        formulation: Formulation = "bilinear",
    ) -> None:
        super().__init__()
        if norm not in ("sq", "l2"):
            raise ValueError(f"norm must be 'sq' or 'l2', not {norm!r}")
        if formulation not in ("bilinear", "materialised"):
            raise ValueError(
                f"formulation must be 'bilinear' or 'materialised', not {formulation!r}"
            )
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        self.kernel_size, self.stride = kernel_size, stride
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self.norm: Norm = norm
        self.formulation: Formulation = formulation
        self.explanation_mode = False
        #: Keep A_oᵀp from the forward pass for the backward instead of recomputing it: faster
        #: training (one convolution less per step), about twice the activation memory.
        self.keep_projection = False
        patch = in_channels * kernel_size**2
        self.reduce = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=self.padding, bias=False
        )
        self.expand = nn.Conv2d(rank, patch * out_channels, kernel_size=1, bias=True)
        # The two Conv2d constructors above already drew the initialisation that
        # reset_parameters() draws (same order), so it is not called again here: a seeded
        # construction gives the same weights as before this method existed.

    def reset_parameters(self) -> None:
        """Re-draw B then A and b with PyTorch's Conv2d initialiser, as at construction."""
        self.reduce.reset_parameters()
        self.expand.reset_parameters()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, rank={self.rank}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"norm={self.norm}, formulation={self.formulation}"
        )

    def set_explanation_mode(self, on: bool = True) -> None:
        """Detach the dynamic weights and their scale in later forwards (B-cos-style toggle)."""
        self.explanation_mode = on

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.kernel_size**2

    def weight_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A as (out, d, r) and b as (out, d), read from ``expand`` in the authors' layout."""
        d, o, r = self.patch_dim, self.out_channels, self.rank
        a = self.expand.weight.view(d, o, r).transpose(0, 1)
        b = self.expand.bias.view(d, o).t()
        return a, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, out, H', W'), in NCHW or channels-last memory layout."""
        if self.formulation == "bilinear":
            return self._forward_bilinear(x)
        return self._forward_materialised(x.contiguous())

    def _filters(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(o·r + o, C, k, k): A_oᵀp (o·r channels) and b_oᵀp (o channels) are one convolution
        of x with these. ``a``: A (out, d, r), ``b``: b (out, d), as from :meth:`weight_factors`."""
        o, r, k = self.out_channels, self.rank, self.kernel_size
        proj = a.transpose(1, 2).reshape(o * r, self.in_channels, k, k)
        return torch.cat([proj, b.reshape(o, self.in_channels, k, k)])

    @staticmethod
    def _norm_terms(
        a: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """gram (o, r, r) = A_oᵀA_o, cross (o, r) = A_oᵀb_o, const (o,) = ‖b_o‖², so that
        ‖u_o‖² = zᵀG_o z + 2v_oᵀz + c_o (computed once per call, not per location)."""
        gram = torch.einsum("odr,ods->ors", a, a)
        cross = torch.einsum("odr,od->or", a, b)
        const = b.pow(2).sum(1)
        return gram, cross, const

    def _forward_bilinear(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            return self._forward_bilinear_autocast(x)
        a, b = self.weight_factors()
        filters = self._filters(a, b)
        gram, cross, const = self._norm_terms(a, b)
        z = self.reduce(x)  # (B, r, H', W')
        keep = self.keep_projection and not self.explanation_mode and torch.is_grad_enabled()
        return _BilinearDAU.apply(x, z, filters, gram, cross, const, self.norm, self.stride,
                                  self.padding, self.explanation_mode, keep)

    def _forward_bilinear_autocast(self, x: torch.Tensor) -> torch.Tensor:
        """The bilinear form under ``torch.autocast``, in plain autograd operations.

        The two convolutions of x (``reduce`` → z and x ⊛ filters → A_oᵀp, b_oᵀp) run in the
        autocast dtype (e.g. bfloat16); the Gram terms, ‖u‖², the scale and the output are
        computed with autocast off in float32 (the parameters' dtype if wider), from z and the
        convolution cast up. Output: (B, out, H', W') float32. In explanation mode z, the
        filters and the scale are detached, so the input gradient is the linear map.
        """
        explain = self.explanation_mode
        a, b = self.weight_factors()
        filters = self._filters(a, b)
        if explain:
            filters = filters.detach()
        z = self.reduce(x)
        y = F.conv2d(x, filters, stride=self.stride, padding=self.padding)
        with torch.autocast(x.device.type, enabled=False):
            dtype = torch.promote_types(a.dtype, torch.float32)
            gram, cross, const = self._norm_terms(a.to(dtype), b.to(dtype))
            z = z.to(dtype)
            if explain:
                z = z.detach()
            out = _combine(y, z, gram, cross, const, self.norm, detach_scale=explain)
        return _in_layout_of(out, x)

    def _forward_materialised(self, x: torch.Tensor) -> torch.Tensor:
        d, o = self.patch_dim, self.out_channels
        u = self.expand(self.reduce(x))
        n, _, h, w = u.shape
        u = u.unflatten(1, (d, o))
        length = torch.linalg.vector_norm(u, dim=1, keepdim=True)
        if self.norm == "sq":
            weights = u * (length / (1.0 + length.pow(2)))
        else:
            weights = u / length.clamp_min(EPS**0.5)
        if self.explanation_mode:
            weights = weights.detach()
        patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        return (weights * patches.view(n, d, 1, h, w)).sum(1)

    def materialised_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The dynamic weights g(u) at every location: (B, out, d, H', W'). For tests and plots."""
        d, o = self.patch_dim, self.out_channels
        u = self.expand(self.reduce(x))
        u = u.unflatten(1, (d, o)).transpose(1, 2)
        norm_sq = u.pow(2).sum(2, keepdim=True)
        return u * dau_scale(norm_sq, self.norm)

    def forward_with_transpose(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """``(out, transpose)``: the layer's output and g ↦ W(x)ᵀg, its transposed linear map.

        ``out`` (B, out, H', W') is the normal-mode forward (whatever the explanation-mode flag),
        so it depends on x and the parameters through the dynamic weights too. ``transpose``
        maps g (B, out, H', W') to W(x)ᵀg (B, C, H, W): the input gradient of ⟨out, g⟩ in
        explanation mode, but built from the dynamic weights kept attached to the parameters and
        to x, so it is differentiable in g, the parameters and x (through z = reduce(x)).
        Back-projecting through a stack with these gives the model's linear map W0→L(x) with
        its full dependence on the parameters — the paper's λ term. (Explanation mode with
        ``create_graph=True`` gives the same Wᵀg for one layer, but in a stack it holds every
        layer's input fixed: its forward passes no gradient to the dynamic weights.) Runs with
        autocast off, in the parameters' dtype.
        """
        if self.formulation == "materialised":
            w = self.materialised_weights(x).flatten(3)  # (B, o, d, L)
            h, wd = _output_size(x.shape[-2:], self.kernel_size, self.stride, self.padding)
            patches = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
            out = torch.einsum("bodl,bdl->bol", w, patches).unflatten(2, (h, wd))

            def transpose(g: torch.Tensor) -> torch.Tensor:
                cols = torch.einsum("bodl,bol->bdl", w, g.flatten(2))
                return F.fold(cols, x.shape[-2:], self.kernel_size, padding=self.padding,
                              stride=self.stride)

            return out, transpose
        with torch.autocast(x.device.type, enabled=False):  # the Function is not for autocast
            a, b = self.weight_factors()
            filters = self._filters(a, b)
            gram, cross, const = self._norm_terms(a, b)
            z = self.reduce(x)
            keep = self.keep_projection and torch.is_grad_enabled()
            out = _BilinearDAU.apply(x, z, filters, gram, cross, const, self.norm, self.stride,
                                     self.padding, False, keep)

        def transpose(g: torch.Tensor) -> torch.Tensor:
            with torch.autocast(g.device.type, enabled=False):
                return _explained_input_grad(x.shape, z, filters, gram, cross, const, g,
                                             self.norm, self.stride, self.padding)

        return out, transpose


def _output_size(size: Sequence[int], k: int, stride: int, padding: int) -> tuple[int, int]:
    """(H', W') of a k×k convolution with this stride and padding over (H, W)."""
    h, w = ((n + 2 * padding - k) // stride + 1 for n in size)
    return h, w


def _scale_and_slope(norm_sq: torch.Tensor, norm: Norm) -> tuple[torch.Tensor, torch.Tensor]:
    """s(‖u‖²) and ds/d‖u‖² (0 where the clamp at EPS is active, as autograd would give)."""
    n2 = norm_sq.clamp_min(EPS)
    active = norm_sq >= EPS
    if norm == "sq":
        root = n2.sqrt()
        scale = root / (1.0 + n2)
        slope = (1.0 - n2) / (2.0 * root * (1.0 + n2).pow(2))
    else:
        scale = n2.rsqrt()
        slope = -0.5 * scale / n2
    return scale, slope * active


def _in_layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``out`` in channels-last memory layout if ``x`` is channels-last (and not also NCHW,
    as with 1×1 maps), else unchanged: the reductions over r return NCHW, and a channels-last
    model should pass channels-last maps from layer to layer. Values are not changed."""
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return out
    return out.contiguous(memory_format=torch.channels_last)


def _norm_sq(z: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
             const: torch.Tensor) -> torch.Tensor:
    """‖u_o‖² = zᵀG_o z + 2v_oᵀz + c_o at every location, in autograd operations.

    z (B, r, H', W'), gram (o, r, r), cross (o, r), const (o,) → (B, o, H', W').
    """
    o, r = cross.shape
    g_z = F.conv2d(z, gram.reshape(o * r, r, 1, 1)).unflatten(1, (o, r))
    return ((g_z * z.unsqueeze(1)).sum(2) + 2.0 * F.conv2d(z, cross.reshape(o, r, 1, 1))
            + const.reshape(1, o, 1, 1))


def _combine(y: torch.Tensor, z: torch.Tensor, gram: torch.Tensor, cross: torch.Tensor,
             const: torch.Tensor, norm: Norm, detach_scale: bool = False) -> torch.Tensor:
    """out_o = (zᵀ(A_oᵀp) + b_oᵀp) · s(‖u_o‖²) from y = x ⊛ filters, in autograd operations.

    y (B, o·r + o, H', W'): the channels A_oᵀp (o·r, o-major) then b_oᵀp (o); z (B, r, H', W');
    gram, cross, const as in :func:`_norm_sq` → (B, o, H', W'). Layout-agnostic (no ``view``).
    """
    o, r = cross.shape
    dot = (y[:, : o * r].unflatten(1, (o, r)) * z.unsqueeze(1)).sum(2) + y[:, o * r :]
    scale = dau_scale(_norm_sq(z, gram, cross, const), norm)
    return dot * (scale.detach() if detach_scale else scale)


def _bilinear_autograd(x: torch.Tensor, z: torch.Tensor, filters: torch.Tensor,
                       gram: torch.Tensor, cross: torch.Tensor, const: torch.Tensor, norm: Norm,
                       stride: int, padding: int) -> torch.Tensor:
    """The same map as :class:`_BilinearDAU` (same arguments and shapes), in plain autograd
    operations: twice differentiable, but keeping the o·r-sized tensors for the backward."""
    y = F.conv2d(x, filters, stride=stride, padding=padding)
    return _combine(y, z, gram, cross, const, norm)


class _BilinearDAU(torch.autograd.Function):
    """out = (zᵀ(A_oᵀp) + b_oᵀp) · s(zᵀG_o z + 2v_oᵀz + c_o), with a hand-written backward.

    Autograd would keep two o·r-sized tensors per location (A_oᵀp and G_o z) from the forward to
    the backward pass of every layer. This function keeps only x, z and o-sized maps, and
    recomputes what the backward needs: it trades one more convolution for several times less
    memory. Shapes: x (B, C, H, W), z (B, r, H', W'), filters (o·r + o, C, k, k), gram (o, r, r),
    cross (o, r), const (o,) → (B, o, H', W'); any memory layout (NCHW or channels-last).

    The backward is the hand-written one unless a graph of the gradient is requested
    (``create_graph=True``, seen as grad mode being on inside ``backward``): then the gradients
    are computed from the saved inputs with differentiable operations (see
    :meth:`_backward_with_graph`), so the layer is twice differentiable.
    """

    @staticmethod
    def forward(ctx, x, z, filters, gram, cross, const, norm, stride, padding, explain, keep):
        o, r = cross.shape
        y = F.conv2d(x, filters, stride=stride, padding=padding)
        a_p = y[:, : o * r].unflatten(1, (o, r))
        if keep:
            dot = (a_p * z.unsqueeze(1)).sum(2).add_(y[:, o * r :])
            ctx.projection = a_p
        else:
            dot = a_p.mul_(z.unsqueeze(1)).sum(2).add_(y[:, o * r :])
        del y, a_p
        g_z = F.conv2d(z, gram.reshape(o * r, r, 1, 1)).unflatten(1, (o, r))
        norm_sq = g_z.mul_(z.unsqueeze(1)).sum(2)
        del g_z
        norm_sq += 2.0 * F.conv2d(z, cross.reshape(o, r, 1, 1)) + const.view(1, o, 1, 1)
        scale, _ = _scale_and_slope(norm_sq, norm)
        ctx.save_for_backward(x, z, filters, gram, cross, const, dot, norm_sq)
        ctx.config = (norm, stride, padding, explain)
        return _in_layout_of(dot * scale, x)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: the gradients must be differentiable
            return _BilinearDAU._backward_with_graph(ctx, grad_out)
        x, z, filters, gram, cross, _, dot, norm_sq = ctx.saved_tensors
        norm, stride, padding, explain = ctx.config
        o, r = cross.shape
        need_x, need_z, need_f, need_g, need_v, need_c = ctx.needs_input_grad[:6]
        need_f = need_f and not explain  # u and the scale are constants in explanation mode
        scale, slope = _scale_and_slope(norm_sq, norm)
        g_dot = grad_out * scale
        grads = [None] * 11
        if need_x or need_f:
            # ∂dot_o/∂p = A_o z + b_o: one transposed convolution of (g_dot ⊗ z, g_dot).
            outer = (g_dot.unsqueeze(2) * z.unsqueeze(1)).flatten(1, 2)
            coeff = torch.cat([outer, g_dot], 1)
            del outer
            if need_x:
                grads[0] = torch.nn.grad.conv2d_input(x.shape, filters, coeff, stride, padding)
            if need_f:
                grads[2] = torch.nn.grad.conv2d_weight(x, filters.shape, coeff, stride, padding)
            del coeff
        if explain:
            return tuple(grads)
        g_n2 = grad_out * dot * slope  # (B, o, H', W')
        if need_z:
            a_p = getattr(ctx, "projection", None)
            if a_p is None:
                a_p = F.conv2d(x, filters[: o * r], stride=stride, padding=padding)
                grad_z = a_p.unflatten(1, (o, r)).mul_(g_dot.unsqueeze(2)).sum(1)
            else:
                grad_z = (a_p * g_dot.unsqueeze(2)).sum(1)
            del a_p
            g_z = F.conv2d(z, gram.reshape(o * r, r, 1, 1)).unflatten(1, (o, r))
            grad_z += 2.0 * g_z.mul_(g_n2.unsqueeze(2)).sum(1)
            del g_z
            grad_z += 2.0 * F.conv2d(g_n2, cross.t().reshape(r, o, 1, 1))
            grads[1] = grad_z
        if need_g or need_v:
            zf = z.transpose(0, 1).reshape(r, -1)  # (r, N)
            gf = g_n2.transpose(0, 1).reshape(o, -1)  # (o, N)
            if need_g:
                grads[3] = torch.bmm(gf.unsqueeze(1) * zf.unsqueeze(0), zf.t().expand(o, -1, -1))
            if need_v:
                grads[4] = 2.0 * gf @ zf.t()
        if need_c:
            grads[5] = g_n2.sum(dim=(0, 2, 3))
        return tuple(grads)

    @staticmethod
    def _backward_with_graph(ctx, grad_out):
        """The backward as differentiable operations on the saved inputs (double backward).

        Normal mode: the forward is recomputed with :func:`_bilinear_autograd` and differentiated
        with ``autograd.grad(create_graph=True)``. Each saved input enters as a fresh view of
        itself, so that the gradient in it is the partial derivative of this Function (z =
        reduce(x) outside must not add its path to ∂/∂x) while the graph of the result still
        reaches the saved tensors. Explanation mode: only x gets a gradient, the transposed
        linear map Wᵀg = filtersᵀ ⊛ (g·s ⊗ [z, 1]) (one transposed convolution), which stays
        differentiable in z, filters, gram, cross, const and g. Autocast is off throughout: the
        Function only runs outside autocast (see :meth:`DAUConv2d._forward_bilinear`).
        """
        x, z, filters, gram, cross, const, _, _ = ctx.saved_tensors
        norm, stride, padding, explain = ctx.config
        grads = [None] * 11
        with torch.autocast(x.device.type, enabled=False):
            if explain:
                if ctx.needs_input_grad[0]:
                    grads[0] = _explained_input_grad(x.shape, z, filters, gram, cross, const,
                                                     grad_out, norm, stride, padding)
                return tuple(grads)
            wanted = [i for i, need in enumerate(ctx.needs_input_grad[:6]) if need]
            if not wanted:
                return tuple(grads)
            args = [t.view_as(t) for t in (x, z, filters, gram, cross, const)]
            out = _bilinear_autograd(*args, norm, stride, padding)
            got = torch.autograd.grad(out, [args[i] for i in wanted], grad_out,
                                      create_graph=True, allow_unused=True)
        for i, grad in zip(wanted, got, strict=True):
            grads[i] = grad
        return tuple(grads)


def _explained_input_grad(x_shape: torch.Size, z: torch.Tensor, filters: torch.Tensor,
                          gram: torch.Tensor, cross: torch.Tensor, const: torch.Tensor,
                          grad_out: torch.Tensor, norm: Norm, stride: int,
                          padding: int) -> torch.Tensor:
    """Wᵀg: the input gradient of a DAU layer in explanation mode, as differentiable operations.

    ∂out_o/∂p = s(‖u_o‖²)·(A_o z + b_o) with u and s held constant, so Wᵀg is the transposed
    convolution of (g·s ⊗ z, g·s) (B, o·r + o, H', W') with the filters → ``x_shape``
    (B, C, H, W). Differentiable in z, filters, gram, cross, const and grad_out (B, o, H', W').
    """
    k = filters.shape[-1]
    g_dot = grad_out * dau_scale(_norm_sq(z, gram, cross, const), norm)
    coeff = torch.cat([(g_dot.unsqueeze(2) * z.unsqueeze(1)).flatten(1, 2), g_dot], 1)
    h, w = coeff.shape[-2:]
    extra = [size - ((n - 1) * stride - 2 * padding + k)
             for size, n in zip(x_shape[-2:], (h, w), strict=True)]
    return F.conv_transpose2d(coeff, filters, stride=stride, padding=padding,
                              output_padding=tuple(extra))


def dau_layers(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` that has an explanation mode (found by duck typing)."""
    return [m for m in model.modules() if hasattr(m, "set_explanation_mode")]


@contextlib.contextmanager
def explanation_mode(model: nn.Module, on: bool = True) -> Iterator[nn.Module]:
    """Switch every dynamic layer of ``model`` into (or out of) explanation mode for the block.

    The previous state of each layer is restored on exit; exceptions propagate.
    """
    layers = dau_layers(model)
    before = [m.explanation_mode for m in layers]
    for m in layers:
        m.set_explanation_mode(on)
    try:
        yield model
    finally:
        for m, state in zip(layers, before, strict=True):
            m.set_explanation_mode(state)
