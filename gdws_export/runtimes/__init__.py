"""Runtimes: run an ONNX graph (or a built engine) behind one small interface.

`fake_quant_twin` / `twin_of_engine` give an INT8 Q/DQ graph's function as a differentiable
PyTorch module (fake_quant.py), so white-box attacks reach INT8 engines.

Runtimes know nothing about GDWS: they take ONNX files and engines (the torch target: any
`nn.Module`, or its torch.export program). Lowering (parity checks, auto lowering) and the
harness (benchmarks, accuracy) are written once against `Runner`.
Nothing here imports onnx, onnxruntime or tensorrt at import time.

`gdws_export.runtimes.build.build` is the one entry point from an ONNX file to an engine; it is
not re-exported here, where it would shadow its own module's name.
"""

from gdws_export.runtimes.base import Runner, TensorSpec
from gdws_export.runtimes.build import (
    BuildResult,
    OrtBuildOptions,
    TorchBuildOptions,
    TrtBuildOptions,
    open_runner,
)
from gdws_export.runtimes.fake_quant import FakeQuantTwin, fake_quant_twin, twin_of_engine
from gdws_export.runtimes.int8_settings import Int8Settings, host_ort_int8_settings
from gdws_export.runtimes.onnxruntime import OrtRunner, OrtSettings
from gdws_export.runtimes.precision import QuantizedGraph, convert_to_fp16, quantize_int8
from gdws_export.runtimes.tensorrt import EngineInfo, build_engine
from gdws_export.runtimes.tensorrt_runner import TrtRunner
from gdws_export.runtimes.torch_program import TorchSettings, export_program
from gdws_export.runtimes.torch_runner import TorchRunner
from gdws_export.runtimes.trt_support import check_trt_support

__all__ = [
    "BuildResult",
    "EngineInfo",
    "FakeQuantTwin",
    "Int8Settings",
    "OrtBuildOptions",
    "OrtRunner",
    "OrtSettings",
    "QuantizedGraph",
    "Runner",
    "TensorSpec",
    "TorchBuildOptions",
    "TorchRunner",
    "TorchSettings",
    "TrtBuildOptions",
    "TrtRunner",
    "build_engine",
    "check_trt_support",
    "convert_to_fp16",
    "export_program",
    "fake_quant_twin",
    "host_ort_int8_settings",
    "open_runner",
    "quantize_int8",
    "twin_of_engine",
]
