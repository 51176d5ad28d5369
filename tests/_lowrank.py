"""Shared pieces of the low-rank tests: real images and an ONNX Runtime round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _trained import fashion_slice
from torch import nn

from gdws_export.lowering.export import export_model
from gdws_export.runtimes import OrtRunner


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the SVDs here are tiny, and on a shared CPU a multi-threaded
    LAPACK call on an 80 x 80 matrix takes 0.3 s instead of 1 ms (threads wait for each
    other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(n: int = 8, channels: int = 1, size: int = 28) -> torch.Tensor:
    """`n` Fashion-MNIST test images in [0, 1], tiled to `channels` and resized to `size`."""
    x = fashion_slice()[0][:n].float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.repeat(1, channels, 1, 1)


def onnx_roundtrip(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, set[str]]:
    """(ONNX Runtime's output of `module` exported with the legacy exporter, the graph's op
    types)."""
    module = module.eval()
    proto = export_model(module, x, exporter="legacy")
    with OrtRunner(proto.SerializeToString()) as runner:
        got = runner.predict(x.numpy())
    return torch.from_numpy(got), {node.op_type for node in proto.graph.node}


def relative_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want|."""
    return float((got - want).abs().max() / want.abs().max())
