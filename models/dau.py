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
    n2 = norm_sq.clamp_min(EPS)
    if norm == "sq":
        return n2.sqrt() / (1.0 + n2)
    return n2.rsqrt()


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
        patch = in_channels * kernel_size**2
        self.reduce = nn.Conv2d(
            in_channels, rank, kernel_size, stride=stride, padding=self.padding, bias=False
        )
        self.expand = nn.Conv2d(rank, patch * out_channels, kernel_size=1, bias=True)

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
        if self.formulation == "bilinear":
            return self._forward_bilinear(x)
        return self._forward_materialised(x)

    def _forward_bilinear(self, x: torch.Tensor) -> torch.Tensor:
        o, r, k = self.out_channels, self.rank, self.kernel_size
        a, b = self.weight_factors()
        z = self.reduce(x)  # (B, r, H', W')
        n, _, h, w = z.shape
        # One convolution gives A_oᵀp (o·r channels) and b_oᵀp (o channels) at every location.
        proj = a.transpose(1, 2).reshape(o * r, self.in_channels, k, k)
        bias_filter = b.reshape(o, self.in_channels, k, k)
        y = F.conv2d(x, torch.cat([proj, bias_filter]), stride=self.stride, padding=self.padding)
        a_p = y[:, : o * r].view(n, o, r, h, w)
        b_p = y[:, o * r :]
        # ‖u‖² from the Gram form: quadratic, linear and constant terms in z.
        gram = torch.einsum("odr,ods->ors", a, a).reshape(o * r, r, 1, 1)
        cross = torch.einsum("odr,od->or", a, b).reshape(o, r, 1, 1)
        g_z = F.conv2d(z, gram).view(n, o, r, h, w)
        norm_sq = (
            (z.unsqueeze(1) * g_z).sum(2)
            + 2.0 * F.conv2d(z, cross)
            + b.pow(2).sum(1).view(1, o, 1, 1)
        )
        scale = dau_scale(norm_sq, self.norm)
        z_w = z
        if self.explanation_mode:
            z_w, scale = z.detach(), scale.detach()
        dot = (z_w.unsqueeze(1) * a_p).sum(2) + b_p
        return dot * scale

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
