"""Run a serialized TensorRT engine, with torch CUDA tensors as device buffers.

torch (already a dependency) allocates the buffers, copies between host and device and owns
the CUDA stream and events, so neither pycuda nor cuda-python is needed. Inference uses the
name-based I/O API (`set_input_shape`, `set_tensor_address`, `execute_async_v3`), the same in
TensorRT 10 and 11.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gdws_export.errors import InvalidInputError, MissingDependencyError
from gdws_export.runtimes.base import Runner, TensorSpec, check_timing_counts, time_cuda_ms
from gdws_export.runtimes.tensorrt import import_tensorrt, make_trt_logger, sidecar_path


class TrtRunner(Runner):
    """Runs a TensorRT engine on the current CUDA device.

    Args:
        engine: path to a serialized engine (from `build_engine`), or its bytes.

    Example:
        >>> with TrtRunner("model.fp16.engine") as runner:  # doctest: +SKIP
        ...     logits = runner.predict(images)
        ...     gpu_ms = runner.time_compute({"input": images}, iterations=200)
    """

    name = "tensorrt"

    @property
    def times_device_separately(self) -> bool:
        return True

    def __init__(self, engine: str | os.PathLike | bytes) -> None:
        self.engine_source = engine if isinstance(engine, bytes) else os.fspath(engine)
        self.engine = None
        self.context = None

    def activate(self) -> None:
        trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError(
                "TrtRunner needs a CUDA GPU and a CUDA build of torch "
                "(torch.cuda.is_available() is False); see pytorch.org for the CUDA wheels"
            )
        self._trt, self._torch = trt, torch
        self._logger = make_trt_logger(trt)  # TensorRT keeps a pointer: keep the logger alive
        self._runtime = trt.Runtime(self._logger)
        if isinstance(self.engine_source, bytes):
            data, where = self.engine_source, "the given engine bytes"
        else:
            path = Path(self.engine_source)
            if not path.is_file():
                raise InvalidInputError(f"TensorRT engine {path} does not exist; build it first")
            data, where = path.read_bytes(), str(path)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            hint = "" if isinstance(self.engine_source, bytes) else f" (see {sidecar_path(where)})"
            raise InvalidInputError(
                f"TensorRT {trt.__version__} could not load {where}: "
                + ("; ".join(self._logger.errors[-2:]) or "no error logged")
                + "; an engine loads only on the TensorRT version and GPU model that built it"
                + hint
            )
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self._bound = None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._input_names = [n for n in names if is_input[n]]
        self._output_names = [n for n in names if not is_input[n]]

    def deactivate(self) -> None:
        self._bound = None
        self.context = None
        self.engine = None
        self._runtime = None

    def _spec(self, name: str) -> TensorSpec:
        shape = tuple(None if d < 0 else int(d) for d in self.engine.get_tensor_shape(name))
        return TensorSpec(
            name, shape, np.dtype(self._trt.nptype(self.engine.get_tensor_dtype(name)))
        )

    def inputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._input_names]

    def outputs(self) -> list[TensorSpec]:
        return [self._spec(n) for n in self._output_names]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.cuda.stream(self.stream):
            device_outputs = self.infer_device(self._to_device(feed))
            host = {name: t.to("cpu", non_blocking=False) for name, t in device_outputs.items()}
        self.stream.synchronize()
        return {name: t.numpy() for name, t in host.items()}

    def infer_device(self, feed: dict) -> dict:
        """Run on device tensors (torch CUDA tensors, name -> tensor) and return device tensors.

        The work is queued on `self.stream`, after the caller's current stream (where the
        inputs were made); synchronize it, or use the outputs on it.
        """
        self.stream.wait_stream(self._torch.cuda.current_stream())
        outputs = self._bind(feed)
        self._execute()
        return outputs

    def time_compute(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """GPU milliseconds per inference (trtexec's "GPU compute time"), from CUDA events.

        Inputs are copied to the GPU once; each timed run is one `execute_async_v3`, queued
        back to back as trtexec does.
        """
        check_timing_counts(iterations, warmup)
        torch = self._torch
        with torch.cuda.stream(self.stream):
            self._bind(self._to_device(feed))
            return time_cuda_ms(self._execute, iterations, warmup, self.stream)

    def time_latency(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """Milliseconds per inference from pinned host input to pinned host output.

        trtexec's "host latency": host-to-device copy + GPU compute + device-to-host copy, timed
        with CUDA events on the runner's stream.
        """
        check_timing_counts(iterations, warmup)
        torch = self._torch
        with torch.cuda.stream(self.stream):
            host_in = {
                n: torch.from_numpy(self._host_array(feed, n)).pin_memory()
                for n in self._input_names
            }
            device_in = {n: t.to("cuda", non_blocking=True) for n, t in host_in.items()}
            device_out = self._bind(device_in)
            host_out = {
                n: torch.empty_like(t, device="cpu").pin_memory() for n, t in device_out.items()
            }

            def run() -> None:
                for name, tensor in host_in.items():
                    device_in[name].copy_(tensor, non_blocking=True)
                self._execute()
                for name, tensor in device_out.items():
                    host_out[name].copy_(tensor, non_blocking=True)

            return time_cuda_ms(run, iterations, warmup, self.stream)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise InvalidInputError(
                "TensorRT execute_async_v3 failed: " + "; ".join(self._logger.errors[-2:])
            )

    def _host_array(self, feed: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in feed:
            raise InvalidInputError(
                f"feed lacks input {name!r}; the engine takes {self._input_names}"
            )
        spec = self._spec(name)
        array = np.asarray(feed[name])
        if array.dtype != spec.dtype:
            raise InvalidInputError(
                f"input {name!r} is {array.dtype}, the engine takes {spec.dtype} "
                "(predict() casts; infer() does not)"
            )
        return np.ascontiguousarray(array)

    def _to_device(self, feed: dict[str, np.ndarray]) -> dict:
        torch = self._torch
        return {
            n: torch.from_numpy(self._host_array(feed, n)).to("cuda", non_blocking=False)
            for n in self._input_names
        }

    def _bind(self, feed: dict) -> dict:
        """Set input shapes and addresses, allocate outputs; returns the output tensors.

        The bound tensors stay referenced (`self._bound`) until the next bind, so their memory
        outlives the work queued on them.
        """
        torch = self._torch
        inputs = {}
        for name in self._input_names:
            if name not in feed:
                raise InvalidInputError(
                    f"feed lacks input {name!r}; the engine takes {self._input_names}"
                )
            tensor = inputs[name] = feed[name].contiguous()
            want = self._torch_dtype(name)
            if tensor.dtype != want or not tensor.is_cuda:
                raise InvalidInputError(
                    f"input {name!r} must be a CUDA tensor of {want}, got {tensor.dtype} on "
                    f"{tensor.device}"
                )
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise InvalidInputError(
                    f"input {name!r} shape {tuple(tensor.shape)} is outside the engine's "
                    f"optimization profile {self._profile(name)}"
                )
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self._output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        self._bound = (inputs, outputs)
        return outputs

    def _torch_dtype(self, name: str):
        return self._torch.from_numpy(np.empty(0, dtype=self._spec(name).dtype)).dtype

    def _profile(self, name: str) -> str:
        shapes = self.engine.get_tensor_profile_shape(name, 0)
        return "min/opt/max " + " / ".join(str(tuple(s)) for s in shapes)
