"""Tiny CNNs and a synthetic image task for the runtime tests (shared by tests/test_runtimes_*).

The task: 16x16 RGB images of stripes in one of four orientations, plus noise. A small
conv net learns it in a few dozen steps, so its logits are confident and INT8/FP16 agreement
can be judged on accuracy, as it would be on real data.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGE_SHAPE = (3, 16, 16)
NUM_CLASSES = 4


class SmallConvNet(nn.Module):
    """Conv-BN-ReLU, a depthwise + pointwise pair (a GDWS-like form), pooling and a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.pointwise = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.pointwise(self.depthwise(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))


def stripes(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` images (float32, [0, 1]) of stripes in 4 orientations, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count)
    yy, xx = np.mgrid[0:16, 0:16]
    directions = [yy, xx, yy + xx, yy - xx]
    images = np.empty((count, *IMAGE_SHAPE), dtype=np.float32)
    for i, label in enumerate(labels):
        period = rng.uniform(3.0, 6.0)
        phase = rng.uniform(0, 2 * np.pi)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * directions[label] / period + phase)
        color = rng.uniform(0.4, 1.0, size=(3, 1, 1))
        noise = rng.normal(0, 0.15, size=IMAGE_SHAPE)
        images[i] = np.clip(color * pattern + noise, 0, 1)
    return images, labels


@functools.cache
def trained_net() -> SmallConvNet:
    """SmallConvNet trained on `stripes` for a few seconds of CPU, in eval mode."""
    torch.manual_seed(0)
    images, labels = stripes(512, seed=1)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    model = SmallConvNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's 2 cores are shared: one thread is faster
    try:
        with torch.enable_grad():
            for step in range(30):
                batch = slice((step * 32) % 512, (step * 32) % 512 + 32)
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def export_onnx(model: nn.Module, path: Path, *, dynamic_batch: bool = True) -> Path:
    """Export with the legacy exporter (fine for fixtures), input "input", output "logits"."""
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    torch.onnx.export(
        model,
        (torch.zeros(2, *IMAGE_SHAPE),),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    return path


def torch_logits(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute difference over the largest reference magnitude."""
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def mean_relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Mean absolute difference over the mean reference magnitude (for INT8, where a few
    logits land a quantization step away)."""
    return float(np.abs(actual - expected).mean() / np.abs(expected).mean())
