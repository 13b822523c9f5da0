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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    """The factor s(‖u‖²) with g(u) = s·u: ‖u‖/(1+‖u‖²) for "sq", 1/‖u‖ for "l2". Shape kept."""
    return _scale_and_slope(norm_sq, norm)[0]


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
        x = x.contiguous()  # the reshapes below assume NCHW (a channels_last input is copied)
        if self.formulation == "bilinear":
            return self._forward_bilinear(x)
        return self._forward_materialised(x)

    def _forward_bilinear(self, x: torch.Tensor) -> torch.Tensor:
        o, r, k = self.out_channels, self.rank, self.kernel_size
        a, b = self.weight_factors()
        z = self.reduce(x)  # (B, r, H', W')
        # A_oᵀp (o·r channels) and b_oᵀp (o channels) come from one convolution of x.
        proj = a.transpose(1, 2).reshape(o * r, self.in_channels, k, k)
        filters = torch.cat([proj, b.reshape(o, self.in_channels, k, k)])
        # ‖u‖² = zᵀ G_o z + 2 v_oᵀ z + c_o, with the Gram terms computed once per call.
        gram = torch.einsum("odr,ods->ors", a, a)
        cross = torch.einsum("odr,od->or", a, b)
        const = b.pow(2).sum(1)
        keep = self.keep_projection and not self.explanation_mode and torch.is_grad_enabled()
        return _BilinearDAU.apply(x, z, filters, gram, cross, const, self.norm, self.stride,
                                  self.padding, self.explanation_mode, keep)

    def _forward_materialised(self, x: torch.Tensor) -> torch.Tensor:
        d, o = self.patch_dim, self.out_channels
        u = self.expand(self.reduce(x))
        n, _, h, w = u.shape
        u = u.view(n, d, o, h, w)
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
        n, _, h, w = u.shape
        u = u.view(n, d, o, h, w).transpose(1, 2)
        norm_sq = u.pow(2).sum(2, keepdim=True)
        return u * dau_scale(norm_sq, self.norm)


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


class _BilinearDAU(torch.autograd.Function):
    """out = (zᵀ(A_oᵀp) + b_oᵀp) · s(zᵀG_o z + 2v_oᵀz + c_o), with a hand-written backward.

    Autograd would keep two o·r-sized tensors per location (A_oᵀp and G_o z) from the forward to
    the backward pass of every layer. This function keeps only x, z and o-sized maps, and
    recomputes what the backward needs: it trades one more convolution for several times less
    memory. Shapes: x (B, C, H, W), z (B, r, H', W'), filters (o·r + o, C, k, k), gram (o, r, r),
    cross (o, r), const (o,) → (B, o, H', W').
    """

    @staticmethod
    def forward(ctx, x, z, filters, gram, cross, const, norm, stride, padding, explain, keep):
        o, r = cross.shape
        n, _, h, w = z.shape
        y = F.conv2d(x, filters, stride=stride, padding=padding)
        a_p = y[:, : o * r].view(n, o, r, h, w)
        if keep:
            dot = (a_p * z.unsqueeze(1)).sum(2).add_(y[:, o * r :])
            ctx.projection = a_p
        else:
            dot = a_p.mul_(z.unsqueeze(1)).sum(2).add_(y[:, o * r :])
        del y, a_p
        g_z = F.conv2d(z, gram.reshape(o * r, r, 1, 1)).view(n, o, r, h, w)
        norm_sq = g_z.mul_(z.unsqueeze(1)).sum(2)
        del g_z
        norm_sq += 2.0 * F.conv2d(z, cross.view(o, r, 1, 1)) + const.view(1, o, 1, 1)
        scale, _ = _scale_and_slope(norm_sq, norm)
        ctx.save_for_backward(x, z, filters, gram, cross, dot, norm_sq)
        ctx.config = (norm, stride, padding, explain)
        return dot * scale

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, z, filters, gram, cross, dot, norm_sq = ctx.saved_tensors
        norm, stride, padding, explain = ctx.config
        o, r = cross.shape
        n, _, h, w = z.shape
        need_x, need_z, need_f, need_g, need_v, need_c = ctx.needs_input_grad[:6]
        scale, slope = _scale_and_slope(norm_sq, norm)
        g_dot = grad_out * scale
        grads = [None] * 11
        if need_x or need_f:
            # ∂dot_o/∂p = A_o z + b_o: one transposed convolution of (g_dot ⊗ z, g_dot).
            outer = (g_dot.unsqueeze(2) * z.unsqueeze(1)).view(n, o * r, h, w)
            coeff = torch.cat([outer, g_dot], 1)
            del outer
            if need_x:
                grads[0] = torch.nn.grad.conv2d_input(x.shape, filters, coeff, stride, padding)
            if need_f:
                grads[2] = torch.nn.grad.conv2d_weight(x, filters.shape, coeff, stride, padding)
            del coeff
        if explain:  # u and the scale are constants in explanation mode
            return tuple(grads)
        g_n2 = grad_out * dot * slope  # (B, o, H', W')
        if need_z:
            a_p = getattr(ctx, "projection", None)
            if a_p is None:
                a_p = F.conv2d(x, filters[: o * r], stride=stride, padding=padding)
                grad_z = a_p.view(n, o, r, h, w).mul_(g_dot.unsqueeze(2)).sum(1)
            else:
                grad_z = (a_p * g_dot.unsqueeze(2)).sum(1)
            del a_p
            g_z = F.conv2d(z, gram.reshape(o * r, r, 1, 1)).view(n, o, r, h, w)
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
