"""A small LeNet trained for a few seconds on the committed Fashion-MNIST slice, shared by the
harness tests (cached: trained once per test session).

The first TRAIN images train it, the rest evaluate it.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gdws_export.harness.data import load_dataset
from gdws_export.models import create_model

SLICE = Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz"
TRAIN = 800


def fashion_slice() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1000 images and labels of the committed slice."""
    return load_dataset(SLICE)


@functools.cache
def _train() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    x, y = fashion_slice()
    torch.manual_seed(0)
    model = create_model("lenet", in_channels=1, input_size=28, width=8)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    order = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: extra threads slow them on a shared CPU
    try:
        model.train()
        for _ in range(6):
            perm = torch.randperm(TRAIN, generator=order)
            for start in range(0, TRAIN, 64):
                batch = perm[start : start + 64]
                loss = F.cross_entropy(model(x[batch]), y[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    return model.eval(), x[TRAIN:], y[TRAIN:]


def trained_lenet() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """(LeNet width 8 in eval mode, 200 held-out images, their labels).

    The model is shared between tests: do not modify it (approximate() copies it).
    """
    return _train()


def export_legacy(model: nn.Module, path: Path, input_shape=(1, 28, 28)) -> Path:
    """Export with torch's legacy exporter, dynamic batch, input "input", output "logits"."""
    with warnings.catch_warnings():  # the legacy exporter's deprecation notices
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.zeros(2, *input_shape),),
            path,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path
