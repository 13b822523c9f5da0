"""CIFAR ResNets (He et al. 2016) with option-A (parameter-free) shortcuts, as in the
checkpoint the CoDA-Nets authors compare against (akamaster/pytorch_resnet_cifar10).

The input normalisation (ImageNet mean/std, the one that checkpoint was trained with) lives inside
the model, so it takes RGB in [0, 1], shape (B, 3, H, W). Every ReLU is its own module, used once,
so that captum's DeepLift and layer hooks see each non-linearity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attrib_bench.core.checks import check_images

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus a shortcut, then ReLU. Option A: subsample by 2 and zero-pad
    the new channels (half before, half after) when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 images: RGB (B, 3, H, W) in [0, 1] → logits (B, num_classes)."""

    #: How the logits become probabilities (:mod:`attrib_bench.models.protocols`): trained with
    #: (multi-class) cross-entropy, so the class probabilities are the softmax of the logits.
    probability = "softmax"

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    @property
    def gradcam_layer(self) -> nn.Module:
        """The layer GradCAM uses: the last stage (64 channels at 8×8 for 32 px inputs)."""
        return self.layer3

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last-stage map: RGB (B, 3, H, W) → normalise, conv1-bn-relu, stages → (B, 64, h, w).

        With :meth:`forward_head`, ``forward_head(forward_features(x)) == forward(x)`` (timm's
        names); the split lets a wrapper run the stages on separate images and pool their maps
        together (DiFull grid localisation).
        """
        check_images(x)
        x = (x - self.mean) / self.std
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from a last-stage map (B, 64, h, w): global average pool, then linear."""
        return self.linear(self.pool(f).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_images(x)
        x = (x - self.mean) / self.std
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.pool(x).flatten(1))


def resnet56(num_classes: int = 10) -> CifarResNet:
    """The CIFAR ResNet-56 (9 blocks per stage, 853,018 parameters for 10 classes)."""
    return CifarResNet(9, num_classes)
