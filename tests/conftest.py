"""Shared fixtures and the auto-skips for optional hardware and runtimes."""

from __future__ import annotations

import importlib.util

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_cuda = torch.cuda.is_available()
    skip_trt = pytest.mark.skip(reason="TensorRT is not installed (`import tensorrt` fails)")
    skip_gpu = pytest.mark.skip(reason="no CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "trt" in item.keywords and not has_trt:
            item.add_marker(skip_trt)
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
