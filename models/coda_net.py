"""CoDA-Nets: stacks of convolutional DAU layers with a sum-pooling head (no ReLU, BN or skips).

logits = (Σ over positions of the last layer's output) / T + b0, so every logit is exactly
W0→L(x)·x_enc + b0 on the encoded input x_enc = [r, g, b, 1−r, 1−g, 1−b]. The model takes RGB in
[0, 1], shape (B, 3, H, W); the encoding lives inside it.

The linear map itself, W0→L(x)_target, is :meth:`CoDANet.linear_map`; :func:`lambda_penalty`
is the paper's regulariser mean|W0→L|, differentiable in the parameters.

Configs ``s``, ``l``: the authors' code, exactly. ``m``, ``xl``: only described in the paper's
supplement by their parameter counts (~28 M, ~62 M); the layer plans below are our approximations,
sized to those counts. ``xs``: a small model trainable on a 2-core CPU (ours).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from attrib_bench.core.backward import target_gradients
from attrib_bench.core.checks import check_images
from attrib_bench.models.dau import DAUConv2d, Formulation, Norm, explanation_mode

#: The authors' logit bias: log(0.1 / 0.9), i.e. sigmoid(b0) = 0.1 for an all-zero input.
DEFAULT_LOGIT_BIAS = math.log(0.1 / 0.9)


@dataclass(frozen=True)
class CoDAConfig:
    """A CoDA-Net layer plan: one entry per DAU layer in each tuple."""

    out_channels: tuple[int, ...]
    ranks: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    paddings: tuple[int, ...]
    num_classes: int
    image_size: int
    dataset: str
    norm: Norm = "sq"
    temperature: float = 1000.0
    logit_bias: float = DEFAULT_LOGIT_BIAS
    in_channels: int = 6
    exact: bool = True  # False: a size-matched approximation of a config the paper only describes

    def __post_init__(self) -> None:
        lengths = {len(self.out_channels), len(self.ranks), len(self.kernels), len(self.strides),
                   len(self.paddings)}
        if len(lengths) != 1:
            raise ValueError("out_channels, ranks, kernels, strides and paddings differ in length")
        if self.out_channels[-1] != self.num_classes:
            raise ValueError("the last layer must have num_classes output channels")


CONFIGS: dict[str, CoDAConfig] = {
    "s": CoDAConfig(
        out_channels=(16, 16, 32, 32, 32, 64, 64, 64, 10),
        ranks=(32, 32, 64, 64, 64, 64, 64, 64, 64),
        kernels=(3,) * 8 + (1,),
        strides=(1, 1, 2, 1, 1, 2, 1, 1, 1),
        paddings=(1,) * 8 + (0,),
        num_classes=10, image_size=32, dataset="cifar10", temperature=1000.0,
    ),
    "m": CoDAConfig(  # approximation: S at double width, last-block ranks 56; ~27.7 M
        out_channels=(32, 32, 64, 64, 64, 128, 128, 128, 10),
        ranks=(32, 32, 64, 64, 64, 56, 56, 56, 64),
        kernels=(3,) * 8 + (1,),
        strides=(1, 1, 2, 1, 1, 2, 1, 1, 1),
        paddings=(1,) * 8 + (0,),
        num_classes=10, image_size=32, dataset="cifar10", temperature=1000.0, exact=False,
    ),
    "l": CoDAConfig(
        out_channels=(16, 32, 32, 64, 64, 64, 64, 64, 100),
        ranks=(64,) * 3 + (128,) * 3 + (256,) * 3,
        kernels=(7,) + (3,) * 8,
        strides=(3, 1, 1, 2, 1, 1, 2, 1, 1),
        paddings=(3,) + (1,) * 8,
        num_classes=100, image_size=240, dataset="imagenet100", temperature=1e5,
    ),
    # XL: the paper's XL-CoDA-SQ on TinyImageNet (Table 1: T = 6400; 54.4 % top-1, 58.4 % with
    # augmentation). T, the class count, the 64 px input and SQ are the paper's; the layer plan
    # (widths, ranks, kernels, strides) is our approximation sized to the supplement's ~62 M.
    "xl": CoDAConfig(  # approximation: M-like plan with L's wider ranks, for 64 px; ~62.9 M
        out_channels=(32, 32, 64, 64, 64, 128, 128, 128, 200),
        ranks=(64,) * 3 + (128,) * 3 + (128,) * 3,
        kernels=(3,) * 8 + (1,),
        strides=(1, 1, 2, 1, 1, 2, 1, 1, 1),
        paddings=(1,) * 8 + (0,),
        num_classes=200, image_size=64, dataset="tinyimagenet", temperature=6400.0, exact=False,
    ),
    "xs": CoDAConfig(  # ours: half width, half rank of S; trains on a 2-core CPU
        out_channels=(8, 8, 16, 16, 16, 32, 32, 32, 10),
        ranks=(16, 16, 32, 32, 32, 32, 32, 32, 32),
        kernels=(3,) * 8 + (1,),
        strides=(1, 1, 2, 1, 1, 2, 1, 1, 1),
        paddings=(1,) * 8 + (0,),
        num_classes=10, image_size=32, dataset="cifar10", temperature=1000.0, exact=False,
    ),
}

#: The paper's parameter counts (main text and supplement), in millions.
PAPER_PARAMS_M = {"s": 7.8, "m": 28.0, "l": 48.0, "xl": 62.0}


class CoDANet(nn.Module):
    """A CoDA-Net: RGB (B, 3, H, W) in [0, 1] → logits (B, K)."""

    #: How the logits become probabilities (:mod:`attrib_bench.models.protocols`): CoDA-Nets are
    #: trained with binary cross-entropy, one-vs-rest, so each class's probability is its sigmoid.
    probability = "sigmoid"

    def __init__(self, config: CoDAConfig, formulation: Formulation = "bilinear") -> None:
        super().__init__()
        self.config = config
        layers = []
        channels = config.in_channels
        for out, rank, k, s, p in zip(config.out_channels, config.ranks, config.kernels,
                                      config.strides, config.paddings, strict=True):
            layers.append(DAUConv2d(channels, out, rank, k, s, p, config.norm, formulation))
            channels = out
        self.layers = nn.Sequential(*layers)
        self.temperature = float(config.temperature)
        self.logit_bias = float(config.logit_bias)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The layer GradCAM uses: the last DAU layer (its output is the class evidence map)."""
        return self.layers[-1]

    @staticmethod
    def encode(x: torch.Tensor) -> torch.Tensor:
        """[r, g, b] → [r, g, b, 1−r, 1−g, 1−b]: (B, 3, H, W) → (B, 6, H, W)."""
        return torch.cat([x, 1.0 - x], dim=1)

    def evidence_encoded(self, x_enc: torch.Tensor) -> torch.Tensor:
        """The logits before the bias, Σ over positions / T: (B, 6, H, W) → (B, K).

        This is what the contribution maps sum to; it is computed without adding b0, which
        in float32 would round away digits of the small evidence of an untrained, high-T model.
        """
        return self.layers(x_enc).sum(dim=(2, 3)) / self.temperature

    def forward_encoded(self, x_enc: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of an already encoded input (B, 6, H, W), e.g. with pixels set to 0."""
        return self.evidence_encoded(x_enc) + self.logit_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        return self.forward_encoded(self.encode(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The class evidence map: RGB (B, 3, H, W) → encode → every DAU layer → (B, K, h, w).

        With :meth:`forward_head`, ``forward_head(forward_features(x)) == forward(x)`` (timm's
        names); the split lets a wrapper run the layers on separate images and pool their maps
        together (DiFull grid localisation).
        """
        check_images(x)
        return self.layers(self.encode(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from an evidence map (B, K, h, w): Σ over positions / T + b0."""
        return f.sum(dim=(2, 3)) / self.temperature + self.logit_bias

    def linear_map(self, x: torch.Tensor, target: torch.Tensor,
                   create_graph: bool = False) -> torch.Tensor:
        """The rows W0→L(x)_target of the model's linear map on the encoded input: (B, 6, H, W).

        ``x``: RGB (B, 3, H, W) in [0, 1]; ``target``: LongTensor (B,). The gradient of the
        target's evidence (logit − b0, 1/T included) with respect to the encoded input x_enc in
        explanation mode, so that ``x_enc * linear_map(x, target)`` is the contribution map and
        sums to logit_target − b0. Computed with autocast off, in the parameters' dtype.

        ``create_graph=False``: backward passes in explanation mode, one forward per distinct
        input (:func:`~attrib_bench.core.backward.target_gradients`); the result is detached.
        ``create_graph=True``: differentiable in the parameters. The map is back-projected from
        the evidence through each layer's transposed map W_l(x_l)ᵀ, with the dynamic weights
        taken from a normal-mode forward and kept attached to the parameters (as the authors
        compute the paper's λ·mean|W0→L| term), so that the dependence of every W_l on the
        parameters of the layers below it, through x_l, is part of the derivative
        (see :meth:`DAUConv2d.forward_with_transpose`); it costs a forward pass, and its
        derivative a backward pass through it (:meth:`forward_with_linear_map` shares them with
        the logits').
        """
        if create_graph:
            return self.forward_with_linear_map(x, target)[1]
        check_images(x)
        return self._linear_map_encoded(self.encode(x).detach(), target)

    def _linear_map_encoded(self, x_enc: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """:meth:`linear_map` of an encoded input (B, 6, H, W), in explanation mode."""
        with (torch.enable_grad(), torch.autocast(x_enc.device.type, enabled=False),
              explanation_mode(self)):
            # one forward per distinct input: a grid explained for its n² cells runs once
            return target_gradients(self.evidence_encoded, x_enc, target.view(-1))

    def forward_with_linear_map(self, x: torch.Tensor,
                                target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, linear_map)`` from one forward pass: (B, K) and (B, 6, H, W).

        ``logits`` equals ``self(x)``; ``linear_map`` equals ``linear_map(x, target,
        create_graph=True)``. Both are attached to the parameters, so a training step with the
        λ term, ``bce(logits) + λ·linear_map.abs().mean()``, shares the forward pass and its
        backward between the two terms instead of running them twice (as ``self(x)`` plus
        :func:`lambda_penalty` does). Autocast is off inside (float32 for float32 parameters).
        ``x``: RGB (B, 3, H, W) in [0, 1]; ``target``: LongTensor (B,).
        """
        check_images(x)
        x_enc = self.encode(x).detach()
        with torch.enable_grad(), torch.autocast(x_enc.device.type, enabled=False):
            h, transposes = x_enc, []
            for layer in self.layers:
                h, transpose = layer.forward_with_transpose(h)
                transposes.append(transpose)
            logits = self.forward_head(h)
            # ∂evidence_t/∂(last map) = 1/T at every position of channel t, 0 elsewhere.
            onehot = nn.functional.one_hot(target.to(h.device), h.shape[1]).to(h.dtype)
            g = (onehot / self.temperature)[:, :, None, None].expand(h.shape)
            for transpose in reversed(transposes):
                g = transpose(g)
        return logits, g

    def contributions(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The model-inherent contribution map W0→L(x)_target ⊙ x_enc: (B, 6, H, W).

        Backward passes in explanation mode (:meth:`linear_map`). Summed over channels and
        pixels it equals logit_target − b0 (the 1/T scaling is included). ``target``:
        LongTensor (B,).
        """
        check_images(x)
        x_enc = self.encode(x).detach()
        return x_enc * self._linear_map_encoded(x_enc, target)

    def describe(self) -> dict[str, Any]:
        """The config as a plain dict (for manifests and sidecars)."""
        return asdict(self.config)


def build_coda(size: str, norm: Norm = "sq", temperature: float | None = None,
               formulation: Formulation = "bilinear", **overrides: Any) -> CoDANet:
    """A fresh CoDA-Net of config ``size`` ("xs", "s", "m", "l", "xl") with optional overrides."""
    config = CONFIGS[size]
    changes: dict[str, Any] = {"norm": norm, **overrides}
    if temperature is not None:
        changes["temperature"] = float(temperature)
    return CoDANet(replace(config, **changes), formulation=formulation)


def lambda_penalty(model: CoDANet, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's regulariser of the linear map: mean |W0→L(x)_target| (a scalar tensor).

    Böhle et al. (CVPR 2021) train with BCE + λ·mean|W0→L| (design.md, "The CoDA-Net, from the
    paper"). The mean runs over the batch, the 6 encoded channels and the pixels of
    :meth:`CoDANet.linear_map` (units: evidence per unit of encoded input, 1/T included); it is
    differentiable in the parameters (double backward through every DAU layer). Computed with
    autocast off, in the parameters' dtype, also when called under ``torch.autocast``.
    ``x``: RGB (B, 3, H, W) in [0, 1]; ``target``: LongTensor (B,).
    """
    return model.linear_map(x, target, create_graph=True).abs().mean()

