"""Conformance suite: third-party-style CNNs, saved in every model-file format, through export.

torchvision and timm are not importable here (the only torchvision wheel offline is built
against CUDA torch and fails to import with the CPU build), so the architectures are
hand-written, small (widths 8-32, 32 x 32 inputs, random weights) versions of the families
people bring: ResNet, ResNeXt (grouped 3x3), RegNet (group width + squeeze-excite),
MobileNetV2/V3, EfficientNet (5x5 depthwise, SiLU), ConvNeXt (7x7 depthwise, LayerNorm,
Linear as 1x1), DenseNet (concatenation), SqueezeNet (fire modules, conv head), GoogLeNet /
Inception (1x7 and 7x1 kernels), dilated convs, BN after ReLU, no padding, several Linear
head shapes, VGG with its classifier-heavy head, ShuffleNetV2 (channel split and shuffle),
Xception (separable convs), Res2Net (multi-scale splits), AlexNet (7x7 and 5x5 kernels, no
BatchNorm, local response norm) and HRNet (two resolutions fused with upsampling): 20 in all.

Each model is written in each `FORMATS` entry and exported with `RUNS` settings through the
CLI's `main` (in process); `check_run` asserts what a run must give: exit 0, the ONNX graphs
and engine matching PyTorch, the original's MACs matching an independent count
(`torch.utils.flop_counter.FlopCounterMode` on the eager model), and for `--target torch`
the shipped `.pt2` matching `gdws.onnx`. tests/test_conformance.py runs a fast subset and
(GDWS_CONFORMANCE=all) the whole matrix; benchmarks/conformance.py writes a results table.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

SHAPE = (3, 32, 32)
CLASSES = 10


# --- architectures -----------------------------------------------------------------------


def conv_bn(cin, cout, k=3, stride=1, groups=1, act: type[nn.Module] | None = nn.ReLU, **kw):
    layers = [nn.Conv2d(cin, cout, k, stride, padding=kw.pop("padding", k // 2) if
                        isinstance(k, int) else kw.pop("padding"), groups=groups, bias=False,
                        **kw),
              nn.BatchNorm2d(cout)]  # fmt: skip
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet-18's block: two 3x3 convs, a 1x1 stride-2 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout, act=None)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = conv_bn(cin, cout, k=1, stride=stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return self.relu(self.conv2(self.conv1(x)) + skip)


class ResNet(nn.Module):
    """ResNet-18-style: stem, [2, 2] basic blocks, average pool, Linear."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = conv_bn(3, width)
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, CLASSES)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class Bottleneck(nn.Module):
    """ResNeXt / RegNet bottleneck: 1x1, grouped 3x3, 1x1, optional squeeze-excite."""

    def __init__(self, cin, cout, stride=1, groups=4, squeeze=False) -> None:
        super().__init__()
        mid = cout
        self.a = conv_bn(cin, mid, k=1)
        self.b = conv_bn(mid, mid, stride=stride, groups=groups)
        self.se = SqueezeExcite(mid, mid // 4) if squeeze else nn.Identity()
        self.c = conv_bn(mid, cout, k=1, act=None)
        self.down = (
            conv_bn(cin, cout, k=1, stride=stride, act=None) if stride != 1 or cin != cout else None
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return self.relu(self.c(self.se(self.b(self.a(x)))) + skip)


class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced, gate: type[nn.Module] = nn.Sigmoid, act=nn.ReLU):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = act()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class GroupedNet(nn.Module):
    """ResNeXt (groups=4, no SE) or RegNet-Y (group width 8, SE) at two stages."""

    def __init__(self, width=16, groups=4, squeeze=False) -> None:
        super().__init__()
        self.stem = conv_bn(3, width, stride=1)
        self.stage1 = Bottleneck(width, width, 1, groups, squeeze)
        self.stage2 = Bottleneck(width, 2 * width, 2, groups, squeeze)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, CLASSES)
        )

    def forward(self, x):
        return self.head(self.stage2(self.stage1(self.stem(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2 / V3 / EfficientNet block: 1x1 expand, depthwise KxK, (SE), 1x1 project."""

    def __init__(self, cin, cout, stride, expand, k=3, act=nn.ReLU6, squeeze=None) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = conv_bn(cin, mid, k=1, act=act) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, k=k, stride=stride, groups=mid, act=act)
        self.se = squeeze(mid) if squeeze is not None else nn.Identity()
        self.project = conv_bn(mid, cout, k=1, act=None)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNet(nn.Module):
    """MobileNetV2 ("v2"), V3 ("v3": hardswish, SE with hardsigmoid, 5x5) or EfficientNet-B0
    ("efficientnet": SiLU, SE, 5x5): a 3x3 stem, inverted residuals, a 3x3 conv before the
    head (so there are KxK dense convs to replace), dropout, Linear."""

    def __init__(self, kind: str = "v2", width: int = 8) -> None:
        super().__init__()
        act = {"v2": nn.ReLU6, "v3": nn.Hardswish, "efficientnet": nn.SiLU}[kind]
        squeeze = None
        if kind == "v3":
            squeeze = lambda c: SqueezeExcite(c, max(c // 4, 4), nn.Hardsigmoid)  # noqa: E731
        elif kind == "efficientnet":
            squeeze = lambda c: SqueezeExcite(c, max(c // 4, 4), nn.Sigmoid, nn.SiLU)  # noqa: E731
        k = 3 if kind == "v2" else 5
        self.stem = conv_bn(3, width, stride=2, act=act)
        self.blocks = nn.Sequential(
            InvertedResidual(width, width, 1, 1, 3, act, squeeze),
            InvertedResidual(width, 2 * width, 2, 4, k, act, squeeze),
            InvertedResidual(2 * width, 2 * width, 1, 4, k, act, squeeze),
        )
        self.last = conv_bn(2 * width, 4 * width, act=act)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(4 * width, CLASSES))  # fmt: skip

    def forward(self, x):
        return self.head(self.last(self.blocks(self.stem(x))))


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise, LayerNorm over channels (channels last), Linear 4x, GELU, Linear, scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 0.5))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """ConvNeXt-tiny-style: a 2x2 stride-2 patchify stem and a 2x2 downsample (KxK dense
    convs GDWS can replace), blocks, LayerNorm head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 2, stride=2)
        self.stage1 = ConvNeXtBlock(width)
        self.down = nn.Conv2d(width, 2 * width, 2, stride=2)
        self.stage2 = ConvNeXtBlock(2 * width)
        self.norm = nn.LayerNorm(2 * width)
        self.fc = nn.Linear(2 * width, CLASSES)

    def forward(self, x):
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(self.norm(x.mean((2, 3))))


class DenseNet(nn.Module):
    """DenseNet-style: BN-ReLU-conv (pre-activation) layers whose outputs are concatenated,
    a 1x1 transition with average pooling, BN-ReLU before the head."""

    def __init__(self, growth: int = 8, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.layers = nn.ModuleList()
        channels = width
        for _ in range(3):
            self.layers.append(nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                             nn.Conv2d(channels, growth, 3, padding=1, bias=False)))  # fmt: skip
            channels += growth
        self.transition = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                        nn.Conv2d(channels, width, 1, bias=False), nn.AvgPool2d(2))  # fmt: skip
        self.final = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(),
                                   nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())  # fmt: skip
        self.fc = nn.Linear(2 * width, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = self.final(self.transition(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Fire(nn.Module):
    def __init__(self, cin, squeeze, expand) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1x1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.expand3x3 = nn.Sequential(
            nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True)
        )

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1x1(x), self.expand3x3(x)], 1)


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1-style: unpadded stride-2 stem, ceil-mode max pools, fire modules, a 1x1
    conv classifier with global pooling (no Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 8, 16), Fire(32, 8, 16),
            nn.MaxPool2d(3, 2, ceil_mode=True), Fire(32, 12, 24),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(48, CLASSES, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))


class InceptionBlock(nn.Module):
    """Inception-v3 style branches: 1x1; 1x1 -> 1x7 -> 7x1; 1x1 -> 3x3 -> 3x3; pool -> 1x1."""

    def __init__(self, cin: int, c: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(cin, c, k=1)
        self.branch7 = nn.Sequential(conv_bn(cin, c, k=1), conv_bn(c, c, k=(1, 7), padding=(0, 3)),
                                     conv_bn(c, c, k=(7, 1), padding=(3, 0)))  # fmt: skip
        self.branch3 = nn.Sequential(conv_bn(cin, c, k=1), conv_bn(c, c), conv_bn(c, c))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), conv_bn(cin, c, k=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch7(x), self.branch3(x), self.pool(x)], 1)


class Inception(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 2 * width, stride=2), conv_bn(2 * width, 2 * width))
        self.mixed = InceptionBlock(2 * width, width)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, CLASSES)
        )

    def forward(self, x):
        return self.head(self.mixed(self.stem(x)))


class Plain(nn.Module):
    """Plain conv stacks for the odd cases: dilated convs ("dilated"), BatchNorm after the
    ReLU ("bn_after_relu"), no padding with a flattening Linear head ("no_padding"), and a
    two-Linear head with dropout ("mlp_head")."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        c = 16
        if kind == "dilated":
            self.features = nn.Sequential(
                conv_bn(3, c), conv_bn(c, c, dilation=2, padding=2),
                conv_bn(c, 2 * c, stride=2), conv_bn(2 * c, 2 * c, dilation=4, padding=4),
            )  # fmt: skip
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * c, CLASSES)
            )
        elif kind == "bn_after_relu":
            self.features = nn.Sequential(*[
                nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(b))
                for a, b in ((3, c), (c, c), (c, 2 * c), (2 * c, 2 * c))
            ], nn.MaxPool2d(4))  # fmt: skip
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 8 * 8, CLASSES))
        elif kind == "no_padding":
            self.features = nn.Sequential(
                nn.Conv2d(3, c, 3), nn.ReLU(), nn.Conv2d(c, c, 3), nn.ReLU(),
                nn.Conv2d(c, 2 * c, 3, stride=2), nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3), nn.ReLU(),
            )  # fmt: skip
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 11 * 11, CLASSES))
        elif kind == "mlp_head":
            self.features = nn.Sequential(conv_bn(3, c), conv_bn(c, 2 * c, stride=2),
                                          conv_bn(2 * c, 2 * c), nn.AdaptiveAvgPool2d(2))  # fmt: skip
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 4, 64), nn.ReLU(),
                                      nn.Dropout(0.5), nn.Linear(64, CLASSES))  # fmt: skip
        else:
            raise ValueError(kind)

    def forward(self, x):
        return self.head(self.features(x))


class VGG(nn.Module):
    """VGG-11-BN-style with its classifier-heavy head: 3x3 convs, max pools, flatten, two
    Linear layers with dropout (the shape a Kronecker-factored head would replace)."""

    def __init__(self) -> None:
        super().__init__()
        widths = [(3, 8), (8, 16), "M", (16, 32), (32, 32), "M", (32, 32), "M"]
        layers: list[nn.Module] = []
        for w in widths:
            layers += [nn.MaxPool2d(2)] if w == "M" else [conv_bn(*w)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, CLASSES),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (stride 1): split the channels, 1x1 -> 3x3 depthwise -> 1x1 on one
    half, concatenate, shuffle the channels (reshape and transpose)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        half = c // 2
        self.branch = nn.Sequential(conv_bn(half, half, k=1), conv_bn(half, half, groups=half,
                                    act=None), conv_bn(half, half, k=1))  # fmt: skip

    def forward(self, x):
        left, right = x.chunk(2, dim=1)
        out = torch.cat([left, self.branch(right)], dim=1)
        n, c, h, w = out.shape
        return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleNet(nn.Module):
    """ShuffleNetV2-style: a 3x3 stem (its one replaceable conv), shuffle units, 1x1 head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, stride=2), conv_bn(16, 32))
        self.units = nn.Sequential(ShuffleUnit(32), ShuffleUnit(32))
        self.head = nn.Sequential(conv_bn(32, 64, k=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(64, CLASSES))  # fmt: skip

    def forward(self, x):
        return self.head(self.units(self.stem(x)))


class Xception(nn.Module):
    """Xception-style entry flow: separable convs (depthwise 3x3 + pointwise) in a block whose
    shortcut is a strided 1x1 conv, around dense 3x3 stem convs."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, stride=2), conv_bn(16, 32))

        def separable(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False),
                                 conv_bn(cin, cout, k=1, act=None))  # fmt: skip

        self.block = nn.Sequential(separable(32, 64), nn.ReLU(), separable(64, 64),
                                   nn.MaxPool2d(3, 2, padding=1))  # fmt: skip
        self.shortcut = conv_bn(32, 64, k=1, stride=2, act=None)
        self.head = nn.Sequential(conv_bn(64, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(64, CLASSES))  # fmt: skip

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.block(x) + self.shortcut(x))


class Res2Block(nn.Module):
    """Res2Net block: 1x1, the channels split into 4 scales, each 3x3 conv fed the previous
    scale's output added to its own split, concatenated, 1x1, residual."""

    def __init__(self, c: int, scales: int = 4) -> None:
        super().__init__()
        self.reduce = conv_bn(c, c, k=1)
        width = c // scales
        self.convs = nn.ModuleList(conv_bn(width, width) for _ in range(scales - 1))
        self.expand = conv_bn(c, c, k=1, act=None)
        self.scales = scales

    def forward(self, x):
        splits = self.reduce(x).chunk(self.scales, dim=1)
        outs, previous = [splits[0]], None
        for split, conv in zip(splits[1:], self.convs, strict=True):
            previous = conv(split if previous is None else split + previous)
            outs.append(previous)
        return torch.relu(x + self.expand(torch.cat(outs, dim=1)))


class Res2Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 32, stride=2)
        self.blocks = nn.Sequential(Res2Block(32), Res2Block(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


class AlexNet(nn.Module):
    """AlexNet-style: large kernels (7x7, 5x5) with biases and no BatchNorm, overlapping max
    pools, local response normalization, a dropout MLP head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 7, stride=2, padding=3), nn.ReLU(), nn.LocalResponseNorm(5),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5),
                                        nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                        nn.Linear(64, CLASSES))  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))


class HRNet(nn.Module):
    """HRNet-style: a high- and a low-resolution branch, fused both ways (a strided 3x3 conv
    down, a 1x1 conv and nearest upsampling up), the branches' heads concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.high = conv_bn(16, 16)
        self.low = nn.Sequential(conv_bn(16, 32, stride=2), conv_bn(32, 32))
        self.down = conv_bn(16, 32, stride=2, act=None)
        self.up = nn.Sequential(conv_bn(32, 16, k=1, act=None), nn.Upsample(scale_factor=2))
        self.head = nn.Linear(16 + 32, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        high, low = self.high(x), self.low(x)
        high, low = torch.relu(high + self.up(low)), torch.relu(low + self.down(high))
        pooled = [t.mean(dim=(2, 3)) for t in (high, low)]
        return self.head(torch.cat(pooled, dim=1))


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "resnet18": ResNet,
    "resnext": lambda: GroupedNet(16, groups=4),
    "regnet": lambda: GroupedNet(16, groups=2, squeeze=True),
    "mobilenet_v2": lambda: MobileNet("v2"),
    "mobilenet_v3": lambda: MobileNet("v3"),
    "efficientnet": lambda: MobileNet("efficientnet"),
    "convnext": ConvNeXt,
    "densenet": DenseNet,
    "squeezenet": SqueezeNet,
    "inception": Inception,
    "dilated": lambda: Plain("dilated"),
    "bn_after_relu": lambda: Plain("bn_after_relu"),
    "no_padding": lambda: Plain("no_padding"),
    "mlp_head": lambda: Plain("mlp_head"),
    "vgg": VGG,
    "shufflenet": ShuffleNet,
    "xception": Xception,
    "res2net": Res2Net,
    "alexnet": AlexNet,
    "hrnet": HRNet,
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Architecture `name` with random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[name]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


# --- model files ---------------------------------------------------------------------------

FORMATS = ("pt2-static", "pt2-dynamic", "pt2-bounded", "torchscript", "pickle")


def save(model: nn.Module, fmt: str, folder: Path) -> tuple[Path, list[str]]:
    """Write `model` as `fmt`; returns the file and the CLI options it needs to load."""
    folder.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, *SHAPE)
    if fmt.startswith("pt2"):
        path = folder / f"{fmt}.pt2"
        dims = {"pt2-static": None, "pt2-dynamic": {0: torch.export.Dim("batch")},
                "pt2-bounded": {0: torch.export.Dim("batch", min=1, max=1024)}}[fmt]  # fmt: skip
        example = example[:1] if dims is None else example
        program = torch.export.export(model, (example,), dynamic_shapes=(dims,) if dims else None)
        torch.export.save(program, path)
        # No --trust-pickle: the loading gate reads the archive's payload configs, so raw
        # weights that start like a pickle header load without it (they once did not).
        return path, []
    if fmt == "torchscript":
        path = folder / "model.ts.pt"
        torch.jit.save(torch.jit.trace(model, example), path)
        return path, ["--input-shape", "x".join(map(str, SHAPE))]
    if fmt == "pickle":
        path = folder / "model.pt"
        torch.save(model, path)
        return path, ["--trust-pickle", "--input-shape", "x".join(map(str, SHAPE))]
    raise ValueError(fmt)


# --- runs ----------------------------------------------------------------------------------

# name -> CLI options; "default" is gdws-export's defaults (auto lowering, dynamo, target ort)
RUNS: dict[str, list[str]] = {
    "default": [],
    "gather": ["--lowering", "gather"],
    "uniform": ["--lowering", "uniform"],
    "slots": ["--lowering", "slots"],
    "fold": ["--lowering", "fold"],
    "dense": ["--lowering", "dense"],
    "torch": ["--target", "torch"],
    # --calib without a budget: the operating-point search, the refit and auto measure choice
    # (a small calibration file of random images: 32 fit, 64 judge)
    "calib": ["--calib", "{calib}", "--calib-samples", "32"],
    # other commands on the same model file: a one-setting sweep, bench on an export's engine
    "sweep": [],
    "bench": ["--lowering", "gather"],
}
CALIB_IMAGES = 96
# (format, run) -> (exit code, words of the message): refusals docs/cli.md documents
DOCUMENTED_REFUSALS = {
    ("pt2-static", "sweep"): (3, "fixes the batch size to 1; the sweep runs batches"),
}
COMMON = ["--threads", "1", "--force", "-q"]


@dataclass
class Outcome:
    """One export of the matrix and what it gave."""

    arch: str
    fmt: str
    run: str
    code: int
    seconds: float
    error: str = ""
    report: dict = field(default_factory=dict)
    out: Path | None = None
    flop_macs: int = 0

    @property
    def macs(self) -> dict:
        return self.report.get("macs", {})


def export(
    model: nn.Module, arch: str, fmt: str, run: str, folder: Path, extra: tuple[str, ...] = ()
) -> Outcome:
    """Save `model` as `fmt` and run `gdws-export` with `RUNS[run]` (and `extra` options) on
    it, in process."""
    from gdws_export.cli import main

    path, options = save(model, fmt, folder / arch / fmt)
    out = folder / arch / fmt / f"out-{run}"
    calib = calibration_file(folder)
    run_options = [option.format(calib=calib) for option in RUNS[run]]
    argv = [str(path), *options, *run_options, *COMMON, *extra, "-o", str(out)]
    if run == "sweep":  # the sweep's own options; its report stands in for the export's
        argv = ["sweep", str(path), *options, "--mac-ratios", "0.5", "--data", str(calib),
                "--limit", "16", "--steps", "2", "--iterations", "2", "--warmup", "0",
                "--batch-sizes", "1", "--threads", "1", *extra, "--output-dir", str(out)]  # fmt: skip
    stderr = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
        if code == 0 and run == "bench":  # the engine against the original graph
            # a static batch: bench's default, the one batch the graphs take
            sizes = [] if fmt == "pt2-static" else ["--batch-sizes", "1", "2"]
            code = main(["bench", str(out / "gdws.fp32.ort.json"), "--reference",
                         str(out / "original.onnx"), "--iterations", "2", "--warmup", "0",
                         *sizes, "--output", str(out / "bench.json")])  # fmt: skip
    seconds = time.perf_counter() - start
    report = {}
    if code == 0:
        name = "sweep.json" if run == "sweep" else "report.json"
        report = json.loads((out / name).read_text())["report"]
    error = stderr.getvalue().strip().splitlines()[-1] if code and stderr.getvalue().strip() else ""
    return Outcome(arch, fmt, run, code, seconds, error, report, out, flop_macs(model))


def calibration_file(folder: Path) -> Path:
    """A calibration `.npz` of random images of SHAPE with labels (made once per folder)."""
    path = folder / "calib.npz"
    if not path.exists():
        rng = np.random.default_rng(0)
        np.savez(path, x=rng.random((CALIB_IMAGES, *SHAPE), dtype=np.float32),
                 y=rng.integers(0, CLASSES, CALIB_IMAGES))  # fmt: skip
    return path


def flop_macs(model: nn.Module) -> int:
    """MACs of one image, counted by PyTorch's FlopCounterMode (FLOPs / 2) on the eager model."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, *SHAPE))
    return counter.get_total_flops() // 2


def program_matches_graph(out: Path, program_name: str, images: int = 16) -> dict:
    """Parity figures of the shipped program (the torch target's `gdws.pt2`, the other
    targets' twin `shipped.pt2`) against `gdws.onnx` on the same images."""
    from gdws_export.pipeline.engine import TOLERANCES, compare
    from gdws_export.runtimes import OrtRunner
    from gdws_export.runtimes.torch_program import load_program

    x = np.random.default_rng(0).random((images, *SHAPE), dtype=np.float32)
    program = load_program(out / program_name).module()
    one_by_one = [x[i : i + 1] for i in range(images)]  # a static batch of 1 takes no more
    with torch.no_grad():
        shipped = np.concatenate([program(torch.from_numpy(one)).numpy() for one in one_by_one])
    with OrtRunner(out / "gdws.onnx") as graph:
        expected = np.concatenate([graph.predict(one) for one in one_by_one])
    return compare(expected, shipped, tolerance=TOLERANCES["fp32"])


def check_run(outcome: Outcome) -> list[str]:
    """What is wrong with one run (empty: it conforms), MACs aside (see `macs_problem`)."""
    refusal = DOCUMENTED_REFUSALS.get((outcome.fmt, outcome.run))
    if refusal is not None:
        code, words = refusal
        if outcome.code == code and words in outcome.error:
            return []
        return [f"expected the documented refusal (exit {code}: ...{words}...), got exit "
                f"{outcome.code}: {outcome.error}"]  # fmt: skip
    if outcome.code != 0:
        return [f"exit {outcome.code}: {outcome.error}"]
    if outcome.run == "sweep":
        rows = outcome.report.get("rows", [])
        return [] if len(rows) == 2 else [f"the sweep reported {len(rows)} rows, not 2"]
    problems = []
    if outcome.run == "bench" and not (outcome.out / "bench.json").is_file():
        problems.append("bench wrote no report")
    parity = outcome.report["parity"]
    for key in ("onnx_original", "onnx_gdws", "engine"):
        if key in parity and not parity[key]["passed"]:
            problems.append(f"{key} parity failed: {parity[key]['relative_diff']:.2g}")
    if "engine" not in parity:
        problems.append("the engine was not checked")
    program = outcome.report["files"].get("shipped_program")
    if program is None:
        problems.append("no shipped program was written")
    elif (outcome.out / "gdws.onnx").is_file():  # the original ships alone otherwise
        figures = program_matches_graph(outcome.out, program)
        if not figures["passed"]:
            problems.append(f"{program} differs from gdws.onnx: {figures['relative_diff']:.2g}")
    if outcome.run == "calib" and outcome.report.get("search") is None:
        problems.append("--calib without a budget did not search")
    return problems


def macs_problem(outcome: Outcome) -> str:
    """'' when the report's original MACs equal FlopCounterMode's count, else the two."""
    if outcome.run == "sweep":
        return ""  # the sweep reports ratios, checked by its own tests
    reported = outcome.macs.get("original")
    if reported == outcome.flop_macs:
        return ""
    return f"report says {reported:,} MACs, FlopCounterMode {outcome.flop_macs:,}"
