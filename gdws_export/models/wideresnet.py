"""WideResNet-28-k for 32x32 images (Zagoruyko & Komodakis 2016), pre-activation blocks.

Module names follow the WideResNet used by TRADES and RobustBench (`block1.layer.0.bn1`,
`convShortcut`, `fc`), so their WRN-28-10 checkpoints load as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.models.layers import Normalize
from gdws_export.models.registry import ModelArgs, ModelConfig, register_model

STEM_WIDTH = 16  # the stem is not widened in WRN-d-k


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus shortcut.

    When the shape changes, the shortcut is a 1x1 conv on the pre-activated input.
    """

    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.dropout = dropout
        self.convShortcut: nn.Conv2d | None = None  # the usual checkpoints' name
        if stride != 1 or in_planes != planes:
            self.convShortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = x if self.convShortcut is None else self.convShortcut(out)
        out = F.relu(self.bn2(self.conv1(out)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        return self.conv2(out) + shortcut


class WideStage(nn.Module):
    """`blocks` wide blocks, kept under `.layer` for the checkpoints' key names."""

    def __init__(
        self, in_planes: int, planes: int, blocks: int, stride: int, dropout: float
    ) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            WideBasicBlock(in_planes, planes, stride, dropout),
            *(WideBasicBlock(planes, planes, 1, dropout) for _ in range(blocks - 1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-k: a 16-channel stem, three stages of widths w, 2w, 4w (w = 16k), BN-ReLU.

    The pooling is adaptive, so any input size runs (`args.input_size` is not used).
    """

    def __init__(self, depth: int, args: ModelArgs, *, dropout: float) -> None:
        super().__init__()
        blocks, width = (depth - 4) // 6, args.width
        self.normalize = Normalize(args.mean, args.std)
        self.conv1 = nn.Conv2d(args.in_channels, STEM_WIDTH, 3, padding=1, bias=False)
        self.block1 = WideStage(STEM_WIDTH, width, blocks, 1, dropout)
        self.block2 = WideStage(width, 2 * width, blocks, 2, dropout)
        self.block3 = WideStage(2 * width, 4 * width, blocks, 2, dropout)
        self.bn1 = nn.BatchNorm2d(4 * width)
        self.fc = nn.Linear(4 * width, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))
        out = self.block3(self.block2(self.block1(out)))
        out = F.relu(self.bn1(out))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _wrn28(args: ModelArgs, dropout: float) -> nn.Module:
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise InvalidInputError(f"wrn28: dropout must be in [0, 1), got {dropout}")
    return WideResNet(28, args, dropout=dropout)


# The ModelConfig descriptions: one line each, for listings.
_WRN28_4_DESCRIPTION = "WideResNet-28-4 for 32x32 images, pre-activation blocks (5.8M params)"
_WRN28_10_DESCRIPTION = "WideResNet-28-10 for 32x32 images, pre-activation blocks (36.5M params)"


@register_model(ModelConfig("wrn28_4", _WRN28_4_DESCRIPTION, default_width=4 * STEM_WIDTH))
def wrn28_4(args: ModelArgs, dropout: float = 0.0) -> nn.Module:
    return _wrn28(args, dropout)


@register_model(ModelConfig("wrn28_10", _WRN28_10_DESCRIPTION, default_width=10 * STEM_WIDTH))
def wrn28_10(args: ModelArgs, dropout: float = 0.0) -> nn.Module:
    return _wrn28(args, dropout)
