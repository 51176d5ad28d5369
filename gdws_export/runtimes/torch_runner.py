"""PyTorch runner: the model itself on the CPU or a CUDA GPU, eager, compiled or CUDA-graphed.

The `--target torch` path for machines without TensorRT: GPU speed-ups of GDWS can be measured
wherever PyTorch runs, by the same harness, behind the same `Runner` interface.

- `compile`: `torch.compile` with the inductor backend (True) or a named backend. Inductor needs
  a C++ compiler on the CPU and Triton on the GPU (no Triton on Jetson: use CUDA graphs alone).
- `cuda_graphs`: each input shape is captured once into a CUDA graph and replayed, which removes
  the per-kernel launch cost that dominates small CNNs at batch 1.
- `precision="fp16"`: weights and activations in float16 on the GPU; inputs and outputs stay
  float32, as with the other runtimes' FP16 builds.

The runner never changes the model it is given: it works on a copy.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil

import numpy as np

from gdws_export.errors import InvalidInputError, MissingDependencyError, UnsupportedModelError
from gdws_export.runtimes.base import Runner, TensorSpec, check_timing_counts, time_cuda_ms
from gdws_export.runtimes.torch_program import (
    TorchSettings,
    check_torch_settings,
    load_program,
)

# The same names the ONNX export gives its graph, so a feed works on every runtime.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
FLOAT32 = np.dtype(np.float32)


class TorchRunner(Runner):
    """Runs a PyTorch model (an `nn.Module` or a `.pt2` torch.export program) with PyTorch.

    Args:
        model: the module, or the path of a program saved by `export_program`.
        device: "cpu" or "cuda".
        compile: False (eager), True (torch.compile, inductor) or a torch.compile backend name.
        cuda_graphs: replay CUDA graphs, one per input shape (device="cuda" only).
        precision: "fp32", or "fp16" (device="cuda" only).
        threads: CPU intra-op threads while active; None leaves PyTorch's setting.

    Example:
        >>> runner = TorchRunner("vgg16.pt2", device="cuda", cuda_graphs=True)  # doctest: +SKIP
        >>> with runner:  # doctest: +SKIP
        ...     logits = runner.predict(images)
        ...     gpu_ms = runner.time_compute({"input": images}, iterations=200)
    """

    name = "torch"

    @property
    def times_device_separately(self) -> bool:
        return self.device == "cuda"

    def __init__(
        self,
        model,
        *,
        device: str = "cpu",
        compile: bool | str = False,
        cuda_graphs: bool = False,
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        self.compile_backend = check_torch_settings(
            device=device, precision=precision, compile=compile, cuda_graphs=cuda_graphs,
            threads=threads,
        )  # fmt: skip
        in_memory = hasattr(model, "forward")
        self._source = model if in_memory else os.fspath(model)
        # JSON-able, for reports: the program's path, or what was given in memory.
        self.model = f"{type(model).__name__} (in memory)" if in_memory else self._source
        self.device = device
        self.cuda_graphs = cuda_graphs
        self.precision = precision
        self.threads = threads
        self._fn = None

    @classmethod
    def from_settings(cls, settings: TorchSettings | str | os.PathLike) -> TorchRunner:
        """A runner with the settings a build saved (`<name>.<precision>.torch.json`).

        Example:
            >>> runner = TorchRunner.from_settings("vgg16.fp16.torch.json")  # doctest: +SKIP
        """
        settings = TorchSettings.loaded(settings)
        settings.checked_file(settings.program_sha256, "program")
        return cls(
            settings.program,
            device=settings.device,
            compile=settings.compile or False,
            cuda_graphs=settings.cuda_graphs,
            precision=settings.precision,
            threads=settings.threads,
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def activate(self) -> None:
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError(
                "device='cuda' needs a CUDA GPU and a CUDA build of torch "
                "(torch.cuda.is_available() is False); use device='cpu', or in Docker run with "
                "--gpus all (x86) or --runtime nvidia (Jetson)"
            )
        self._check_compiler()
        self._torch = torch
        self._dtype = torch.float16 if self.precision == "fp16" else torch.float32
        if isinstance(self._source, str):
            program = load_program(self._source)
            module = program.module()  # exported in eval mode; its module refuses .eval()
            self._specs = _program_specs(program)
        else:
            module = copy.deepcopy(self._source).eval()
            shape = getattr(self._source, "input_shape", None)
            chw = tuple(shape) if shape is not None else (None, None, None)
            self._specs = (
                TensorSpec(INPUT_NAME, (None, *chw), FLOAT32),
                TensorSpec(OUTPUT_NAME, (None, None), FLOAT32),
            )
        module = module.to(device=self.device, dtype=self._dtype)
        self._fn = module
        if self.compile_backend is not None:
            self._fn = torch.compile(module, backend=self.compile_backend)
        self._graphs = {}
        self._saved_threads = None
        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def deactivate(self) -> None:
        if getattr(self, "_saved_threads", None) is not None:
            self._torch.set_num_threads(self._saved_threads)
            self._saved_threads = None
        self._graphs = {}
        self._fn = None

    def _check_compiler(self) -> None:
        """Say up front what inductor lacks, instead of failing mid-benchmark."""
        if self.compile_backend != "inductor":
            return
        if self.device == "cpu":
            compiler = os.environ.get("CXX") or "c++"
            if shutil.which(compiler) is None and shutil.which("g++") is None:
                raise MissingDependencyError(
                    "torch.compile (inductor) on the CPU needs a C++ compiler and none was found "
                    "(c++, g++ or $CXX); install one (apt-get install g++) or use compile=False"
                )
        elif importlib.util.find_spec("triton") is None:
            raise MissingDependencyError(
                "torch.compile (inductor) on the GPU needs Triton (pip install triton); where "
                "there is none (Jetson), use cuda_graphs=True with compile=False"
            )

    # -- Runner interface ----------------------------------------------------------------------

    def inputs(self) -> list[TensorSpec]:
        return [self._specs[0]]

    def outputs(self) -> list[TensorSpec]:
        return [self._specs[1]]

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        array = self._host_input(feed)
        torch = self._torch
        x = torch.from_numpy(array).to(self.device)
        with torch.inference_mode():
            y = self._run(x.to(self._dtype))
            host = y.float().cpu()  # waits for the GPU
        return {OUTPUT_NAME: host.numpy()}

    def time_compute(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """Milliseconds of model compute per run: CUDA events on the GPU, wall clock on the CPU.

        On the GPU the input is copied once; each timed run is one forward (or graph replay),
        queued back to back.
        """
        if self.device == "cpu":
            return super().time_compute(feed, iterations=iterations, warmup=warmup)
        check_timing_counts(iterations, warmup)
        torch = self._torch
        x = torch.from_numpy(self._host_input(feed)).to("cuda").to(self._dtype)
        with torch.inference_mode():
            return time_cuda_ms(lambda: self._run(x), iterations, warmup)

    def time_latency(
        self, feed: dict[str, np.ndarray], *, iterations: int = 100, warmup: int = 10
    ) -> list[float]:
        """Milliseconds from pinned host input to pinned host output (copies + compute).

        Same as `time_compute` on the CPU.
        """
        if self.device == "cpu":
            return super().time_latency(feed, iterations=iterations, warmup=warmup)
        check_timing_counts(iterations, warmup)
        torch = self._torch
        host_in = torch.from_numpy(self._host_input(feed)).pin_memory()
        device_in = torch.empty_like(host_in, device="cuda")
        with torch.inference_mode():
            out = self._run(device_in.to(self._dtype))
            host_out = torch.empty(out.shape, dtype=torch.float32).pin_memory()

            def run() -> None:
                device_in.copy_(host_in, non_blocking=True)
                # .float() is a no-op for fp32; for fp16 it converts on the GPU, before the copy
                host_out.copy_(self._run(device_in.to(self._dtype)).float(), non_blocking=True)

            return time_cuda_ms(run, iterations, warmup)

    # -- internals -----------------------------------------------------------------------------

    def _host_input(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        if self._fn is None:
            raise InvalidInputError("TorchRunner is not active: use it in a `with` block")
        if INPUT_NAME not in feed or len(feed) != 1:
            raise InvalidInputError(
                f"the torch runner takes one input named {INPUT_NAME!r}, got {sorted(feed)}"
            )
        array = np.asarray(feed[INPUT_NAME])
        if array.dtype != FLOAT32:
            raise InvalidInputError(
                f"input {INPUT_NAME!r} is {array.dtype}, the runner takes float32 "
                "(predict() casts; infer() does not)"
            )
        return np.ascontiguousarray(array)

    def _run(self, x):
        """One forward of a device tensor; the output lives until the next run."""
        if not self.cuda_graphs:
            out = self._fn(x)
        else:
            graph, static_in, static_out = self._graph_for(x)
            static_in.copy_(x)
            graph.replay()
            out = static_out
        if not isinstance(out, self._torch.Tensor):
            raise UnsupportedModelError(
                f"the model returns {type(out).__name__}; the torch runner expects one logits "
                "tensor"
            )
        return out

    def _graph_for(self, x):
        """The CUDA graph for `x`'s shape, captured on first use after a few warm-up runs."""
        torch = self._torch
        key = tuple(x.shape)
        if key not in self._graphs:
            static_in = x.clone()
            # Warm up on a side stream (the capture rule): compiles, picks cuDNN algorithms and
            # allocates outside the graph.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._fn(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._fn(static_in)
            self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]


def _program_specs(program) -> tuple[TensorSpec, TensorSpec]:
    """Input and output specs from a program's graph: symbolic sizes become None."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = [n for n in placeholders if n.name in user_inputs]
    output_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = output_node.args[0]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"the program has {len(inputs)} inputs and {len(outputs)} outputs; the torch runner "
            "runs classifiers (one image batch in, one logits tensor out)"
        )
    return (
        TensorSpec(INPUT_NAME, _static_shape(inputs[0]), FLOAT32),
        TensorSpec(OUTPUT_NAME, _static_shape(outputs[0]), FLOAT32),
    )


def _static_shape(node) -> tuple[int | None, ...]:
    value = node.meta.get("val")
    if value is None:
        return ()
    return tuple(d if isinstance(d, int) else None for d in value.shape)
