"""B-cos networks beside the CoDA-Nets, through the authors' ``bcos`` package (B-cos v2).

B-cos networks (Böhle, Singh, Fritz, Schiele: "B-cos Networks: Alignment is All We Need for
Interpretability", CVPR 2022; "B-cos Alignment for Inherently Interpretable CNNs and Vision
Transformers", TPAMI 2024) are dynamic-linear like the CoDA-Nets: in the package's explanation
mode (each B-cos layer's dynamic scale and each norm's statistics detached) the logit is
W(x)·x + the logit bias, so W(x) ⊙ x is a model-inherent contribution map.

The network is the package's own (``pip install 'attrib-bench[bcos]'``; imported only when a
B-cos model is built): its CIFAR-10 ResNet-20 in the configuration
``resnet_20_bnu-linear-nomaxout`` of its ``CIFAR10/norm_ablations_final`` experiment (B-cos
convolutions with b = 2 and no max-out, uncentred batch norm without bias, so that the map stays
complete; logit bias −log 9; 272 112 parameters). No max-out and uncentred batch norm without
bias are the choices of the package's final ImageNet models (``bcos_final``); max-out 2 doubles
every convolution and made a training step 5–8× slower on this 2-core CPU (batch 64: 1.5–1.7 s
against 7–16 s, measured side by side). The package leaves the [r, g, b, 1−r, 1−g, 1−b]
encoding to the data pipeline; :class:`BcosNet` applies it inside (the package's
``AddInverse``), so the toolkit's RGB [0, 1] input contract holds. The package's CIFAR-10
training recipe (its experiment parameters): Adam, lr 1e-3, batch 64, 100 epochs, cosine to 0,
BCE on one-hot targets, random crop 32 (padding 4) and horizontal flip; ``attrib-bench train``
runs the same loss and augmentation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attrib_bench.core.backward import target_gradients
from attrib_bench.core.checks import check_images
from attrib_bench.core.errors import AttribBenchError, MethodError

#: The package's experiment and configuration of the registered B-cos model.
BCOS_EXPERIMENT = ("CIFAR10", "norm_ablations_final")
BCOS_CONFIGS = {"bcos-resnet20": "resnet_20_bnu-linear-nomaxout"}
INSTALL_HINT = ("install the B-cos extra: pip install 'attrib-bench[bcos]' (the authors' bcos "
                "package)")


def build_bcos_network(config: str) -> nn.Module:
    """The ``bcos`` package's network for experiment configuration ``config`` (random weights).

    A missing package is one :class:`AttribBenchError` line naming the install command.
    """
    try:
        from bcos.experiments.utils import Experiment
    except ImportError:
        raise AttribBenchError(f"B-cos models need the bcos package: {INSTALL_HINT}") from None
    return Experiment(*BCOS_EXPERIMENT, config).get_model()


class BcosNet(nn.Module):
    """A B-cos network with the toolkit's interface: RGB [0, 1] (B, 3, H, W) → logits (B, K).

    ``net``: a network of the ``bcos`` package that takes the six-channel encoded input.
    Capabilities (:mod:`attrib_bench.models.protocols`): ``encode``/``forward_encoded`` (the
    package's ``AddInverse``), ``contributions`` (W(x) ⊙ x_enc from the package's explanation
    mode), ``gradcam_layer`` (``net.layer3``, the last stage, 64 × H/4 × W/4),
    ``forward_features``/``forward_head`` (the package's own features; its head is the 1×1
    B-cos classifier at every position, the average pool and the logit bias), ``probability``
    "sigmoid" (trained with BCE, as the package's recipe).
    """

    probability = "sigmoid"
    #: The head averages the per-position evidence (DiFull grids divide each cell's map by n²).
    head_pooling = "mean"

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        from bcos.data.transforms import AddInverse

        self.net = net
        self.encoder = AddInverse()

    @property
    def gradcam_layer(self) -> nn.Module:
        """The last stage, ``net.layer3`` (a property, not a second registration of the module:
        its parameters appear once in the state dict)."""
        return self.net.layer3

    @property
    def logit_bias(self) -> float:
        """The constant the package's logit layer adds (−log(K − 1)); 0.0 if it has none."""
        bias = getattr(self.net.logit_layer, "logit_bias", None)
        return 0.0 if bias is None else float(bias)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → (B, 6, H, W) = [r, g, b, 1−r, 1−g, 1−b]."""
        check_images(x)
        return self.encoder(x)

    def forward_encoded(self, z: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of an encoded input (B, 6, H, W)."""
        return self.net(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.encode(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the last stage's map (B, 64, H/4, W/4) (the package's features)."""
        return self.net.forward_features(self.encode(x))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Feature map (B, 64, h, w) → logits (B, K): 1×1 B-cos classifier at every position,
        average pool, logit bias (the package's order: classify, then pool)."""
        return self.net.logit_layer(self.net.avgpool(self.net.fc(f)).flatten(1))

    def contributions(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """W(x)_target ⊙ x_enc (B, 6, H, W): the package's explanation mode, one backward.

        In explanation mode the logit is exactly W(x)·x_enc + :attr:`logit_bias`, so the map sums
        to the target logit minus the bias. Samples are independent in eval mode (batch norm
        uses its running statistics), so one backward of the summed target logits gives every
        sample's own W(x). Raises :class:`MethodError` in training mode (batch statistics would
        couple the samples).
        """
        if self.training:
            raise MethodError("B-cos contributions need the model in eval mode: call "
                              "model.eval() first")
        target = torch.as_tensor(target, device=x.device).long().reshape(-1)
        z = self.encode(x).detach()
        with torch.enable_grad(), self.net.explanation_mode():
            # one forward per distinct input: a grid explained for its n² cells runs once
            weights = target_gradients(self.net, z, target)
        return weights * z


def bcos_model(name: str, **kwargs: Any) -> BcosNet:
    """The registered B-cos model ``name`` with random weights (``kwargs``: none accepted)."""
    if kwargs:
        raise TypeError(f"{name} takes no model options, got {sorted(kwargs)}")
    return BcosNet(build_bcos_network(BCOS_CONFIGS[name]))


__all__ = ["BCOS_CONFIGS", "BcosNet", "bcos_model", "build_bcos_network"]
