"""ONNX Runtime runner, and the session settings file that makes its benchmarks reproducible."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from gdws_export.errors import InvalidInputError
from gdws_export.runtimes.base import Runner, SettingsFile, TensorSpec

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

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
        spin_between_runs: let the intra-op threads busy-wait after a run returns (ONNX
            Runtime's default). Off by default: a spinning idle session takes the cores from
            whatever runs next: on 2 cores, six interleaved sessions of one VGG ran at half
            the speed of one session alone with it on, at the same speed with it off. It
            costs one session alone about 20 % at batch 1 and nothing at batch 32. Threads
            still spin between the ops of one run.
    """

    name = "onnxruntime"

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        *,
        threads: int | None = None,
        providers: list[str] | None = None,
        optimization_level: str = "all",
        spin_between_runs: bool = False,
    ) -> None:
        if optimization_level not in OPTIMIZATION_LEVELS:
            raise InvalidInputError(
                f"unknown ONNX Runtime optimization level {optimization_level!r}; choose one of "
                f"{OPTIMIZATION_LEVELS}"
            )
        self.model = model if isinstance(model, bytes) else os.fspath(model)
        self.threads = threads
        self.providers = providers or ["CPUExecutionProvider"]
        self.optimization_level = optimization_level
        self.spin_between_runs = spin_between_runs
        self.session = None

    @classmethod
    def from_settings(cls, settings: OrtSettings | str | os.PathLike) -> OrtRunner:
        """A runner with the session settings a build saved (`<name>.ort.json`).

        Example:
            >>> runner = OrtRunner.from_settings("model.fp16.ort.json")  # doctest: +SKIP
        """
        settings = OrtSettings.loaded(settings)
        return cls(
            settings.checked_file(settings.model_sha256, "model file"),
            threads=settings.threads,
            providers=list(settings.providers),
            optimization_level=settings.optimization_level,
            spin_between_runs=settings.spin_between_runs,
        )

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
        if not self.spin_between_runs:
            options.add_session_config_entry("session.force_spinning_stop", "1")
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


@dataclass
class OrtSettings(SettingsFile):
    """Everything that fixes an ONNX Runtime benchmark: the model file and session settings.

    Saved as JSON beside the model; `model` is stored relative to the JSON file so the pair
    can be moved together.
    """

    path_field: ClassVar[str] = "model"
    file_kind: ClassVar[str] = "ONNX Runtime settings file"

    model: str
    threads: int | None = None
    optimization_level: str = "all"  # applied when the session loads the model
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    precision: str = "fp32"
    spin_between_runs: bool = False  # see OrtRunner
    file_optimization_level: str = "basic"  # what the saved model file already had applied
    model_sha256: str = ""
    source_onnx: str = ""
    source_onnx_sha256: str = ""
    onnxruntime_version: str = ""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
