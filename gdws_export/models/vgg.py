"""VGG-16 with BatchNorm, CIFAR variant: 13 conv3x3-BN-ReLU with max-pools, one linear layer.

The layout (a `features` Sequential, a `classifier` Linear) follows kuangliu's pytorch-cifar,
the VGG-16 most CIFAR robust-training code uses, so its checkpoints load as they are. The
max-pools round up (`ceil_mode`), which changes nothing at 32x32 but keeps a 1x1 map after the
fifth pool at 28x28; a global average pool then feeds the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gdws_export.models.layers import Normalize
from gdws_export.models.registry import ModelArgs, ModelConfig, register_model

# Channel multiples of the base width per conv, "M" for a 2x2 max-pool.
VGG16_LAYOUT: tuple[int | str, ...] = (
    1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M",
)  # fmt: skip


class VGG(nn.Module):
    """VGG with BatchNorm for small images; `layout` as in `VGG16_LAYOUT`.

    Ceil-mode pools and a global pool: every input size runs (`args.input_size` is not used).
    """

    def __init__(self, layout: Sequence[int | str], args: ModelArgs) -> None:
        super().__init__()
        self.normalize = Normalize(args.mean, args.std)
        layers: list[nn.Module] = []
        channels = args.in_channels
        for item in layout:
            if item == "M":
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                continue
            out_channels = args.width * int(item)
            layers += [
                nn.Conv2d(channels, out_channels, 3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, args.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(self.normalize(x)))
        return self.classifier(out.flatten(1))


# The ModelConfig descriptions: one line each, for listings.
_VGG16_BN_DESCRIPTION = (
    "VGG-16 with BatchNorm for 32x32 images, one linear classifier (14.7M params)"
)


@register_model(ModelConfig("vgg16_bn", _VGG16_BN_DESCRIPTION, default_width=64))
def vgg16_bn(args: ModelArgs) -> nn.Module:
    return VGG(VGG16_LAYOUT, args)
