"""Runtimes: run an ONNX graph (or a built engine) behind one small interface.

Runtimes know nothing about GDWS: they take ONNX files and engines. Lowering (parity checks,
auto lowering) and the harness (benchmarks, accuracy) are written once against `Runner`.
"""

from gdws_export.runtimes.base import Runner, TensorSpec
from gdws_export.runtimes.onnxruntime import OrtRunner

__all__ = ["OrtRunner", "Runner", "TensorSpec"]
