"""`build`: one call from an ONNX file to a runnable ONNX Runtime model or TensorRT engine.

ONNX Runtime target: `<stem>.<precision>.ort.onnx` plus `<stem>.<precision>.ort.json`, the
session settings (threads, optimization level, providers) that `OrtRunner.from_settings`
reloads, so a benchmark can be repeated exactly. The saved file has ONNX Runtime's *basic*
optimizations only (constant folding, redundant-node removal, Conv+BN/Add fusions), which keep
standard ONNX ops: it runs on any machine and still parses in TensorRT. The "extended" level
would save contrib ops (com.microsoft FusedConv) and "all" NCHWc layouts that ONNX Runtime
itself warns are hardware-specific; those are applied in memory when the session loads
(`optimization_level`, "all" by default). FP16 graphs are saved as converted: whatever graph
ONNX Runtime saves has its CPU provider's float32 Casts baked in.

TensorRT target: `<stem>.<precision>.engine` plus its `<engine>.json` (see `build_engine`).

PyTorch target ("torch", for machines without TensorRT): built from a torch.export program
(`<stem>.pt2`, see `torch_program.export_program`) instead of ONNX; writes
`<stem>.<precision>.torch.json`, the `TorchSettings` (device, torch.compile, CUDA graphs) that
`TorchRunner.from_settings` reloads. `source_onnx` then names the `.pt2` program.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gdws_export._files import JsonRecord, atomic_output, file_sha256
from gdws_export._options import Options
from gdws_export.errors import InvalidInputError, UnsupportedModelError
from gdws_export.runtimes.base import Runner
from gdws_export.runtimes.int8_settings import host_ort_int8_settings
from gdws_export.runtimes.onnx_files import load_onnx, save_onnx
from gdws_export.runtimes.onnxruntime import OPTIMIZATION_LEVELS, OrtRunner, OrtSettings
from gdws_export.runtimes.precision import (
    CalibrationData,
    check_precision,
    convert_to_fp16,
    quantize_int8,
    require_calibration,
)
from gdws_export.runtimes.tensorrt import (
    DEFAULT_BATCH,
    build_engine,
    import_tensorrt,
    sidecar_path,
)
from gdws_export.runtimes.tensorrt_runner import TrtRunner
from gdws_export.runtimes.torch_program import build_torch
from gdws_export.runtimes.torch_runner import TorchRunner

TARGETS = ("ort", "trt", "torch")
ORT_FILE_OPTIMIZATION_LEVEL = "basic"  # portable: standard ONNX ops only (see module doc)


@dataclass(frozen=True)
class OrtBuildOptions(Options):
    """Options of `build(target="ort")`.

    Attributes:
        threads: intra-op threads. None: the cores this process may use (`available_cores`).
        providers: execution providers. None: ["CPUExecutionProvider"].
        optimization_level: the level applied when the session loads ("all" by default).
    """

    threads: int | None = None
    providers: list[str] | None = None
    optimization_level: str = "all"

    def __post_init__(self) -> None:
        if self.optimization_level not in OPTIMIZATION_LEVELS:
            raise InvalidInputError(
                f"unknown optimization_level {self.optimization_level!r}; "
                f"choose one of {OPTIMIZATION_LEVELS}"
            )
        if self.threads is not None and self.threads < 1:
            raise InvalidInputError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class TrtBuildOptions(Options):
    """Options of `build(target="trt")` (checked by `build_engine`).

    Attributes:
        batch: (min, opt, max) batch of the optimization profile. None: DEFAULT_BATCH,
            (1, 1, 64).
        workspace_mib: workspace cap; None lets TensorRT decide.
        timing_cache: a timing cache file to reuse and extend.
        hardware_compatibility: "ampere_plus" or "same_compute_capability", or None.
    """

    batch: tuple[int, int, int] | None = None
    workspace_mib: int | None = None
    timing_cache: str | os.PathLike | None = None
    hardware_compatibility: str | None = None

    def engine_settings(self) -> dict[str, Any]:
        """The keywords of `build_engine` these options set, the batch default filled in."""
        return {
            "batch": self.batch or DEFAULT_BATCH,
            "workspace_mib": self.workspace_mib,
            "timing_cache": self.timing_cache,
            "hardware_compatibility": self.hardware_compatibility,
        }


@dataclass(frozen=True)
class TorchBuildOptions(Options):
    """Options of `build(target="torch")` (checked by `torch_program.check_torch_settings`).

    Attributes:
        threads: CPU intra-op threads. None: PyTorch's own setting.
        device: "cpu" or "cuda". None: "cuda" when a GPU is visible.
        compile: torch.compile the model (True: inductor, or a backend name). None: False.
        cuda_graphs: replay CUDA graphs (device "cuda"). None: False.
    """

    threads: int | None = None
    device: str | None = None
    compile: bool | str | None = None
    cuda_graphs: bool | None = None


BuildOptions = OrtBuildOptions | TrtBuildOptions | TorchBuildOptions
_OPTIONS = {"ort": OrtBuildOptions, "trt": TrtBuildOptions, "torch": TorchBuildOptions}


@dataclass
class BuildResult(JsonRecord):
    """What `build` wrote, from what, with which runtime versions.

    `engine_path` is what a runner loads (the .ort.onnx model, the .engine, or the .pt2
    program); `settings_path` is its JSON beside it (ONNX Runtime session settings, the
    TensorRT EngineInfo, or the TorchSettings). For target "torch", `source_onnx` is the .pt2.
    `quantization` (INT8 only) is `QuantizedGraph.to_dict()`: the data types, weight range and
    format, the CPU flags and reason they were chosen for, calibration and pre-processing.
    """

    target: str
    precision: str
    engine_path: str
    settings_path: str
    source_onnx: str
    source_onnx_sha256: str
    versions: dict[str, str]
    build_seconds: float
    warnings: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None

    def runner(self) -> Runner:
        """A runner (not yet activated) for what this build wrote."""
        return open_runner(self.target, self.engine_path, self.settings_path)


def open_runner(
    target: str, engine_path: str | os.PathLike, settings_path: str | os.PathLike
) -> Runner:
    """A runner (not yet activated) for a built model: ONNX Runtime and PyTorch load their
    settings file, TensorRT its engine (TensorRT itself is imported when it activates)."""
    if target == "ort":
        return OrtRunner.from_settings(settings_path)
    if target == "torch":
        return TorchRunner.from_settings(settings_path)
    if target == "trt":
        return TrtRunner(engine_path)
    raise InvalidInputError(f"unknown target {target!r}; choose one of {TARGETS}")


def build(
    onnx_path: str | os.PathLike,
    *,
    target: str = "ort",
    precision: str = "fp32",
    output_dir: str | os.PathLike | None = None,
    calibration: CalibrationData | None = None,
    keep_io_types: bool = True,
    options: BuildOptions | None = None,
    **settings: Any,
) -> BuildResult:
    """Build an ONNX Runtime model or a TensorRT engine from an FP32 ONNX file.

    Args:
        onnx_path: the FP32 ONNX graph (from gdws_export.lowering); for target "torch", the
            torch.export program (.pt2) instead.
        target: "ort" (ONNX Runtime), "trt" (TensorRT) or "torch" (PyTorch).
        precision: "fp32", "fp16" or "int8" (Q/DQ graph calibrated on `calibration`); the torch
            target offers "fp32" and, on "cuda", "fp16".
        output_dir: where to write; defaults to the ONNX file's folder.
        calibration: representative inputs, needed for "int8" (array, {input: array}, .npy/.npz;
            not for "torch").
        keep_io_types: keep float32 inputs/outputs for "fp16" (False: float16 I/O).
        options: the target's options: `OrtBuildOptions`, `TrtBuildOptions` or
            `TorchBuildOptions`. None: their defaults.
        **settings: any field of the target's options (threads=2, batch=(1, 8, 32), ...),
            overriding `options`'. A field of another target's options is an error unless None.

    Returns:
        A BuildResult naming the files written.

    Example:
        >>> result = build("vgg16.onnx", target="trt", precision="fp16")  # doctest: +SKIP
        >>> result.engine_path  # doctest: +SKIP
        'vgg16.fp16.engine'
    """
    options = _target_options(target, options, calibration, settings)
    if target != "torch":
        _check_onnx_build(target, precision, calibration)
    source = Path(onnx_path)
    onnx_model = None if target == "torch" else load_onnx(source)
    out_dir = Path(output_dir) if output_dir is not None else source.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{source.stem}.{precision}"
    start = time.perf_counter()
    warnings: list[str] = []
    quantization = None  # INT8: how the graph was quantized
    if isinstance(options, TorchBuildOptions):
        engine, settings_path, versions = _build_torch_target(source, out_dir, precision, options)
    elif isinstance(options, TrtBuildOptions):
        versions, engine = _versions(), Path(f"{stem}.engine")
        info = build_engine(source, engine, precision=precision, calibration=calibration,
                            keep_io_types=keep_io_types, **options.engine_settings())  # fmt: skip
        versions["tensorrt"], settings_path = info.tensorrt_version, sidecar_path(engine)
        warnings, quantization = info.warnings, info.quantization
    else:
        versions = _versions()
        engine, settings_path, warnings, quantization = _build_ort(
            onnx_model, source, stem, versions, precision=precision, calibration=calibration,
            keep_io_types=keep_io_types, options=options,
        )  # fmt: skip
    return BuildResult(
        target=target,
        precision=precision,
        engine_path=os.fspath(engine),
        settings_path=os.fspath(settings_path),
        source_onnx=os.fspath(source),
        source_onnx_sha256=file_sha256(source),
        versions=versions,
        build_seconds=round(time.perf_counter() - start, 3),
        warnings=warnings,
        quantization=quantization,
    )


def _target_options(
    target: str, options: BuildOptions | None, calibration: object, settings: dict[str, Any]
) -> BuildOptions:
    """The target's options: `options` with `settings` applied, after checking that no
    setting (but None) belongs to another target."""
    if target not in TARGETS:
        raise InvalidInputError(f"unknown target {target!r}; choose one of {TARGETS}")
    kind = _OPTIONS[target]
    known = {name for cls in _OPTIONS.values() for name in cls.field_names()}
    unknown = [name for name in settings if name not in known]
    if unknown:
        raise TypeError(f"build() got an unexpected keyword argument {unknown[0]!r}")
    given = {"calibration": calibration, **settings} if target == "torch" else settings
    wrong = [k for k, v in given.items() if v is not None and k not in kind.field_names()]
    if wrong:
        raise InvalidInputError(f"{', '.join(wrong)} do(es) not apply to target {target!r}")
    if options is not None and not isinstance(options, kind):
        raise InvalidInputError(
            f"target {target!r} takes {kind.__name__} options, got {type(options).__name__}"
        )
    return kind.resolve(options, **{k: v for k, v in settings.items() if k in kind.field_names()})


def _check_onnx_build(target: str, precision: str, calibration: CalibrationData | None) -> None:
    """The checks of an ONNX Runtime or TensorRT build, before any work."""
    check_precision(precision)
    if precision == "int8":
        require_calibration(calibration)
    if target == "trt":
        import_tensorrt()  # MissingDependencyError says what to install


def _build_torch_target(
    source: Path, out_dir: Path, precision: str, options: TorchBuildOptions
) -> tuple[Path, Path, dict[str, str]]:
    """build(target="torch"): settings for a .pt2 program (see torch_program.build_torch)."""
    import torch

    program, settings, versions = build_torch(
        source,
        out_dir,
        precision=precision,
        device=options.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        compile=options.compile or False,
        cuda_graphs=bool(options.cuda_graphs),
        threads=options.threads,
    )
    _check_loads(TorchRunner, settings, written=[settings])
    return program, settings, versions


def _check_loads(
    runner: type[OrtRunner | TorchRunner], settings: Path, written: list[Path]
) -> None:
    """Open a runner on the saved settings once: the pair must load as saved. When it does
    not, the files just `written` are removed and the error goes up."""
    try:
        with runner.from_settings(settings):
            pass
    except Exception:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _build_ort(
    source,
    onnx_path: Path,
    stem: Path,
    versions: dict[str, str],
    *,
    precision: str,
    calibration: CalibrationData | None,
    keep_io_types: bool,
    options: OrtBuildOptions,
) -> tuple[Path, Path, list[str], dict[str, Any] | None]:
    """build(target="ort"): write `<stem>.ort.onnx` and its settings `<stem>.ort.json`;
    returns them, warnings for the user and, for INT8, how the graph was quantized."""
    engine = Path(f"{stem}.ort.onnx")
    settings = Path(f"{stem}.ort.json")
    providers = list(options.providers or ["CPUExecutionProvider"])
    warnings, quantization = [], None
    file_level = ORT_FILE_OPTIMIZATION_LEVEL
    if precision == "fp16":
        source = convert_to_fp16(source, keep_io_types=keep_io_types)
        # Any graph ONNX Runtime saves has the CPU provider's float32 Casts baked in (it has
        # no x86 float16 kernels for most ops), so the FP16 graph is saved as converted.
        file_level = "disable"
        if providers == ["CPUExecutionProvider"]:
            warnings.append(
                "ONNX Runtime's CPU provider runs most float16 ops in float32 (it inserts Casts "
                "at load): FP16 saves memory here, not time; use TensorRT or a GPU provider"
            )
    elif precision == "int8":
        quantized = quantize_int8(source, calibration, settings=host_ort_int8_settings())
        source, quantization = quantized.model, quantized.to_dict()
        warnings += _int8_warnings(quantized.settings, quantized.preprocess_error)
    _write_ort_model(source, engine, file_level)
    OrtSettings(
        model=os.fspath(engine),
        threads=options.threads or available_cores(),
        optimization_level=options.optimization_level,
        providers=providers,
        precision=precision,
        file_optimization_level=file_level,
        model_sha256=file_sha256(engine),
        source_onnx=os.fspath(onnx_path),
        source_onnx_sha256=file_sha256(onnx_path),
        onnxruntime_version=versions["onnxruntime"],
    ).save(settings)
    _check_loads(OrtRunner, settings, written=[engine, settings])
    return engine, settings, warnings, quantization


def _int8_warnings(settings, preprocess_error: str) -> list[str]:
    """What the user should know about an ONNX Runtime INT8 model: its settings fit this CPU."""
    if settings.reduce_range:
        lines = [f"ONNX Runtime INT8 uses 7-bit weights (reduce_range): {settings.reason}"]
    elif settings.machine.lower() in ("x86_64", "amd64", "x64"):
        lines = [
            "ONNX Runtime INT8 has full 8-bit weights for this CPU's VNNI; on x86 CPUs without "
            "VNNI its U8S8 kernels can saturate: build there for 7-bit weights"
        ]
    else:
        lines = []
    if preprocess_error:
        lines.append(f"ONNX Runtime's quant_pre_process failed ({preprocess_error}); the graph "
                     "was quantized without it")  # fmt: skip
    return lines


def _write_ort_model(model, path: Path, level: str) -> None:
    """Save `model` after ONNX Runtime's `level` optimizations, via a temporary file."""
    import onnxruntime as ort

    if level == "disable":
        save_onnx(model, path)
        return
    data = model.SerializeToString()
    options = OrtRunner(data, optimization_level=level).session_options()
    try:
        with atomic_output(path) as tmp:
            options.optimized_model_filepath = os.fspath(tmp)
            # CPU only: basic optimizations are provider-independent, other providers could
            # add their own nodes (memory copies) to the saved graph.
            ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"ONNX Runtime could not load the graph for {path}: {first}"
        ) from exc


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
