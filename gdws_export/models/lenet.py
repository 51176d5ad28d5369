"""A small LeNet-style CNN (two 5x5 convs, two linear layers) for fast tests and MNIST-size data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.models.layers import Normalize
from gdws_export.models.registry import ModelConfig, register_model


class LeNet(nn.Module):
    """conv5x5(w)-ReLU-pool, conv5x5(2w)-ReLU-pool, linear(8w)-ReLU, linear(classes).

    The first linear layer is sized for `input_size` (each pool halves the map, rounding down)
    rather than fed by an adaptive pool, so the graph stays plain for export.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        width: int,
        input_size: int,
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
    ) -> None:
        super().__init__()
        side = input_size // 4
        if side < 1:
            raise InvalidInputError(f"lenet: input_size must be at least 4, got {input_size}")
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 8 * width),
            nn.ReLU(inplace=True),
            nn.Linear(8 * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


@register_model(
    ModelConfig(
        "lenet",
        "LeNet-style CNN, two 5x5 convs (16, 32 channels) and two linear layers",
        default_width=16,
    )
)
def lenet(
    *,
    num_classes: int,
    in_channels: int,
    width: int,
    input_size: int,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> nn.Module:
    return LeNet(
        num_classes=num_classes,
        in_channels=in_channels,
        width=width,
        input_size=input_size,
        mean=mean,
        std=std,
    )
