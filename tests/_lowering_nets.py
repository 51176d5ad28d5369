"""Small CIFAR-style nets for the lowering tests, and a stand-in GDWS approximation.

The slow tests take full-size nets from the registry (`gdws_export.create_model`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.gdws.conv import GDWSConv2d


class VGG(nn.Module):
    """conv-bn-relu stacks with max pools ("M"), global average pool, linear."""

    def __init__(self, cfg=(16, 16, "M", 32, 32), classes: int = 10) -> None:
        super().__init__()
        layers, channels = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v)]
                layers.append(nn.ReLU(inplace=True))
                channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        return self.conv2(F.relu(self.bn2(out))) + shortcut


class ResNet(nn.Module):
    """CIFAR ResNet (stem conv-bn-relu) or PreActResNet (bare stem conv, bn-relu at the end)."""

    def __init__(self, widths=(16, 32), blocks=(1, 1), preact=False, classes=10) -> None:
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0] if not preact else widths[-1])
        block, layers, cin = (PreActBlock if preact else BasicBlock), [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(block(cin, width, 2 if (i > 0 and j == 0) else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.linear = nn.Linear(cin, classes)

    def forward(self, x):
        out = self.conv1(x)
        if self.preact:
            out = F.relu(self.bn1(self.layers(out)))
        else:
            out = self.layers(F.relu(self.bn1(out)))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def tiny_nets() -> dict[str, nn.Module]:
    return {
        "vgg": VGG(),
        "resnet": ResNet(),
        "preact": ResNet(preact=True),
    }


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


@torch.no_grad()
def gdwsify(model: nn.Module, beta: float | None = None, mac_ratio: float | None = None):
    """A copy of `model` with every KxK conv but the first replaced by a GDWS conv.

    `beta` is relative: each layer's LEGO bound is beta times its weight's squared norm.
    `mac_ratio` gives each layer the MEGO budget of that fraction of its MACs. (Stand-ins for
    `gdws_export.gdws.approximate`, which works on the whole network.)
    """
    model = copy.deepcopy(model)
    convs = [(n, m) for n, m in model.named_modules()
             if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]  # fmt: skip
    for name, conv in convs[1:]:
        if mac_ratio is not None:
            k, m = conv.kernel_size[0] * conv.kernel_size[1], conv.out_channels
            budget = max(1, int(mac_ratio * m * conv.in_channels * k / (k + m)))
            gdws = GDWSConv2d.from_conv(conv, max_kernels=budget)
        else:
            gdws = GDWSConv2d.from_conv(conv, beta=beta * float(conv.weight.pow(2).sum()))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, gdws)
    return model.eval()


def real_images(n: int, size: int = 32, channels: int = 3) -> np.ndarray:
    """n Fashion-MNIST test images in [0, 1], zero-padded to size x size, gray repeated over
    `channels` channels: real image statistics for CIFAR-size parity checks."""
    data = np.load(Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz")
    x = data["x"][:n].astype(np.float32) / 255.0
    pad = size - x.shape[1]
    x = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2)))
    return np.ascontiguousarray(np.repeat(x[:, None], channels, axis=1))
