"""CIFAR-size ResNet-18 and PreActResNet-18 (3x3 stem, no max-pool, four stages).

Module names follow the CIFAR repositories these nets are usually trained with (kuangliu's
pytorch-cifar for ResNet-18; the robust-training repositories derived from Madry et al., such
as Rice et al.'s robust_overfitting, for PreActResNet-18, which adds a final BN-ReLU), so their
checkpoints load as they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.models.layers import Normalize
from gdws_export.models.registry import ModelArgs, ModelConfig, register_model


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (He et al. 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus shortcut (He et al. 2016, identity mappings).

    When the shape changes, the shortcut is a 1x1 conv applied to the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def _stage(block: type[nn.Module], in_planes: int, planes: int, blocks: int, stride: int):
    layers = [block(in_planes, planes, stride)]
    layers += [block(planes, planes, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(nn.Module):
    """ResNet for small images: 3x3 stem, four stages of widths w, 2w, 4w, 8w.

    `preact=True` gives the pre-activation variant: no BN-ReLU after the stem, and one BN-ReLU
    before the global pooling. The pooling is adaptive, so any input size runs
    (`args.input_size` is not used).
    """

    def __init__(self, blocks_per_stage: Sequence[int], args: ModelArgs, *, preact: bool) -> None:
        super().__init__()
        block = PreActBlock if preact else BasicBlock
        width = args.width
        widths = [width * 2**i for i in range(len(blocks_per_stage))]
        self.normalize = Normalize(args.mean, args.std)
        self.conv1 = _conv3x3(args.in_channels, width)
        # Post-activation nets normalize the stem; pre-activation nets do it in the first block.
        self.bn1 = None if preact else nn.BatchNorm2d(width)
        in_planes = width
        for index, (planes, blocks) in enumerate(zip(widths, blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            self.add_module(f"layer{index + 1}", _stage(block, in_planes, planes, blocks, stride))
            in_planes = planes
        self.stages = len(widths)
        self.bn = nn.BatchNorm2d(in_planes) if preact else None
        self.linear = nn.Linear(in_planes, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        if self.bn1 is not None:
            out = F.relu(self.bn1(out))
        for index in range(self.stages):
            out = getattr(self, f"layer{index + 1}")(out)
        if self.bn is not None:
            out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


# The ModelConfig descriptions: one line each, for listings.
_PREACT_RESNET18_DESCRIPTION = (
    "PreActResNet-18 for 32x32 images, as in robust-training repositories (11.2M params)"
)
_RESNET18_DESCRIPTION = "ResNet-18 for 32x32 images (3x3 stem, no max-pool; 11.2M params)"


@register_model(ModelConfig("preact_resnet18", _PREACT_RESNET18_DESCRIPTION, default_width=64))
def preact_resnet18(args: ModelArgs) -> nn.Module:
    return ResNet([2, 2, 2, 2], args, preact=True)


@register_model(ModelConfig("resnet18", _RESNET18_DESCRIPTION, default_width=64))
def resnet18(args: ModelArgs) -> nn.Module:
    return ResNet([2, 2, 2, 2], args, preact=False)
