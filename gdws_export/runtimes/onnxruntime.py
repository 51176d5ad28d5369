"""ONNX Runtime runner."""

from __future__ import annotations

import os

import numpy as np

from gdws_export.runtimes.base import Runner, TensorSpec

# ONNX type strings as onnxruntime reports them -> numpy dtypes
_ORT_TYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(bool)": np.dtype(np.bool_),
}


class OrtRunner(Runner):
    """Runs an ONNX model with ONNX Runtime.

    Args:
        model: path to an .onnx file, or the serialized model bytes.
        threads: intra-op threads; None lets ONNX Runtime decide. Set it for timings that
            reproduce.
        providers: execution providers, CPU by default.
        optimization_level: "disable", "basic", "extended" or "all" (default).
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimization_level: str = "all",
    ) -> None:
        self.model = model if isinstance(model, bytes) else os.fspath(model)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization_level = optimization_level
        self.session = None

    def session_options(self):
        """The SessionOptions this runner uses (also used to write an optimized model file)."""
        import onnxruntime as ort

        levels = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        options = ort.SessionOptions()
        options.graph_optimization_level = levels[self.optimization_level]
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        return options

    def activate(self) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(
            self.model, self.session_options(), providers=self.providers
        )

    def deactivate(self) -> None:
        self.session = None

    def _specs(self, args) -> list[TensorSpec]:
        return [TensorSpec(a.name, tuple(a.shape), _ORT_TYPES[a.type]) for a in args]

    def inputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_inputs())

    def outputs(self) -> list[TensorSpec]:
        return self._specs(self.session.get_outputs())

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, feed), strict=True))
