"""A small LeNet-style CNN (two 5x5 convs, two linear layers) for fast tests and MNIST-size data."""

from __future__ import annotations

import torch
from torch import nn

from gdws_export.errors import InvalidInputError
from gdws_export.models.layers import Normalize
from gdws_export.models.registry import ModelArgs, ModelConfig, register_model


class LeNet(nn.Module):
    """conv5x5(w)-ReLU-pool, conv5x5(2w)-ReLU-pool, linear(8w)-ReLU, linear(classes).

    The first linear layer is sized for `args.input_size` (each pool halves the map, rounding
    down) rather than fed by an adaptive pool, so the graph stays plain for export.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        width = args.width
        side = args.input_size // 4
        if side < 1:
            raise InvalidInputError(f"lenet: input_size must be at least 4, got {args.input_size}")
        self.normalize = Normalize(args.mean, args.std)
        self.features = nn.Sequential(
            nn.Conv2d(args.in_channels, width, 5, padding=2),
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
            nn.Linear(8 * width, args.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))


# The ModelConfig descriptions: one line each, for listings.
_LENET_DESCRIPTION = "LeNet-style CNN, two 5x5 convs (16, 32 channels) and two linear layers"


@register_model(ModelConfig("lenet", _LENET_DESCRIPTION, default_width=16))
def lenet(args: ModelArgs) -> nn.Module:
    return LeNet(args)
