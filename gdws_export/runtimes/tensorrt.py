"""Build TensorRT engines from ONNX files, for TensorRT 10 and 11+.

The two differ in how precision is asked for (comments marked "TensorRT 10/11" say where):
- TensorRT 10 (JetPack 6.x ships 10.3) builds weakly typed networks: FP16 is a builder flag on
  the FP32 graph, INT8 the INT8 and FP16 flags on a Q/DQ graph (unquantized layers in FP16).
- TensorRT 11 builds strongly typed networks only; the FP16/INT8 flags are gone, so precision
  comes from the graph: an FP16 graph (converted here first) or a Q/DQ graph.
INT8 always goes through the same Q/DQ graph (`precision.quantize_int8`), so both versions
quantize the same tensors with the same scales; TensorRT 10's implicit calibrators are not used.

`import tensorrt` happens inside the functions, through `gdws_export._optional.require`.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

from gdws_export._files import JsonRecord, atomic_write_bytes, file_sha256
from gdws_export._optional import require
from gdws_export.errors import (
    InvalidInputError,
    MissingDependencyError,
    UnsupportedModelError,
    shown,
)
from gdws_export.runtimes.int8_settings import TENSORRT_INT8
from gdws_export.runtimes.onnx_files import load_onnx, save_onnx
from gdws_export.runtimes.precision import (
    CalibrationData,
    check_precision,
    convert_to_fp16,
    quantize_int8,
    require_calibration,
)
from gdws_export.runtimes.trt_support import check_trt_support

log = logging.getLogger(__name__)

# Batch sizes (min, opt, max) of the optimization profile; tactics are timed at `opt`.
DEFAULT_BATCH = (1, 1, 64)
HARDWARE_COMPATIBILITY = ("ampere_plus", "same_compute_capability")
MIN_TRT_MAJOR = 10


def import_tensorrt() -> ModuleType:
    """`import tensorrt`, or MissingDependencyError saying what to install."""
    trt = require("tensorrt")
    if trt_major(trt) < MIN_TRT_MAJOR:
        raise MissingDependencyError(
            f"TensorRT {trt.__version__} is too old; gdws-export needs TensorRT >= {MIN_TRT_MAJOR}"
        )
    return trt


def trt_major(trt: ModuleType) -> int:
    """TensorRT's major version, from `tensorrt.__version__`."""
    return int(trt.__version__.split(".")[0])


@dataclass
class EngineInfo(JsonRecord):
    """What an engine was built from and for; saved as `<engine>.json` beside the engine.

    An engine runs only on the TensorRT version and GPU model that built it (unless built with
    hardware compatibility), so these fields say where it can be loaded.
    """

    engine_path: str
    onnx_path: str  # the graph the engine was parsed from (converted for fp16/int8 on TRT 11)
    onnx_sha256: str
    source_onnx_path: str  # the graph build_engine was given
    source_onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    strongly_typed: bool
    builder_flags: list[str]
    tf32: bool  # off for "fp32", so FP32 engines match FP32 references to ~1e-5
    profile: dict[str, dict[str, list[int]]]  # input -> {"min", "opt", "max"} shapes
    io_dtypes: dict[str, str]
    workspace_mib: int | None = None
    hardware_compatibility: str | None = None
    timing_cache: str | None = None
    build_seconds: float = 0.0
    built_at: str = ""
    warnings: list[str] = field(default_factory=list)
    quantization: dict[str, Any] | None = None  # INT8: `QuantizedGraph.to_dict()`


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """Where the EngineInfo JSON of an engine lives: `<engine>.json`."""
    return Path(f"{os.fspath(engine_path)}.json")


def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    precision: str = "fp32",
    calibration: CalibrationData | None = None,
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_mib: int | None = None,
    timing_cache: str | os.PathLike | None = None,
    hardware_compatibility: str | None = None,
    keep_io_types: bool = True,
) -> EngineInfo:
    """Build a serialized TensorRT engine from an ONNX file, and its `<engine>.json` sidecar.

    Args:
        onnx_path: the FP32 ONNX graph (dynamic batch axis or fixed shapes).
        engine_path: where to write the engine (written to a temporary name, then renamed).
        precision: "fp32" (TF32 off, for parity), "fp16" or "int8".
        calibration: representative inputs for "int8" (see `precision.load_calibration`).
        batch: (min, opt, max) batch sizes of the optimization profile over axis 0.
        workspace_mib: cap on the builder's workspace memory pool; None lets TensorRT decide.
        timing_cache: a timing cache file to load (if it exists), extend and save; keep one
            per GPU model and TensorRT version.
        hardware_compatibility: None (this GPU model only), "ampere_plus" or
            "same_compute_capability".
        keep_io_types: keep float32 engine inputs/outputs for "fp16" (False: float16 I/O).
            INT8 engines keep float32 I/O.

    Returns:
        The EngineInfo also saved beside the engine.

    Example:
        >>> info = build_engine("m.onnx", "m.fp16.engine", precision="fp16")  # doctest: +SKIP
    """
    _check_engine_settings(precision, calibration, batch, hardware_compatibility)
    trt = import_tensorrt()
    major = trt_major(trt)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    source = load_onnx(onnx_path)
    start = time.perf_counter()
    graph_path, flags, quantization = _precision_graph(
        major, source, onnx_path, engine_path, precision, calibration, keep_io_types
    )
    logger = make_trt_logger(trt)
    builder, network, warnings = _parse_network(trt, logger, graph_path)
    tf32 = precision != "fp32"
    config = _builder_config(trt, builder, network, flags, tf32=tf32,
                             half_io=precision == "fp16" and major < 11 and not keep_io_types,
                             workspace_mib=workspace_mib,
                             hardware_compatibility=hardware_compatibility)  # fmt: skip
    profile = _add_batch_profile(builder, network, config, batch, graph_path)
    serialized = _serialize(builder, network, config, logger, graph_path, timing_cache)
    gpu_name, capability = gpu_info()
    info = EngineInfo(
        engine_path=os.fspath(engine_path),
        onnx_path=os.fspath(graph_path),
        onnx_sha256=file_sha256(graph_path),
        source_onnx_path=os.fspath(onnx_path),
        source_onnx_sha256=file_sha256(onnx_path),
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        strongly_typed=major >= 11,
        builder_flags=flags,
        tf32=tf32,
        profile=profile,
        io_dtypes={t.name: str(t.dtype) for t in _io_tensors(network)},
        workspace_mib=workspace_mib,
        hardware_compatibility=hardware_compatibility,
        timing_cache=os.fspath(timing_cache) if timing_cache is not None else None,
        build_seconds=round(time.perf_counter() - start, 3),
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        warnings=warnings,
        quantization=quantization,
    )
    atomic_write_bytes(engine_path, serialized)  # each file atomic; the sidecar last
    info.save(sidecar_path(engine_path))
    return info


def _check_engine_settings(
    precision: str,
    calibration: CalibrationData | None,
    batch: tuple[int, int, int],
    hardware_compatibility: str | None,
) -> None:
    """The checks of `build_engine`'s settings, before TensorRT is imported."""
    check_precision(precision)
    _check_batch(batch)
    if hardware_compatibility not in (None, *HARDWARE_COMPATIBILITY):
        raise InvalidInputError(
            f"unknown hardware_compatibility {hardware_compatibility!r}; choose None or one of "
            f"{HARDWARE_COMPATIBILITY}"
        )
    if precision == "int8":
        require_calibration(calibration)


def _precision_graph(
    major: int,
    source,
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    calibration: CalibrationData | None,
    keep_io_types: bool,
) -> tuple[Path, list[str], dict[str, Any] | None]:
    """(the graph TensorRT parses, builder flags, INT8: `QuantizedGraph.to_dict()`).

    TensorRT 11: strongly typed only, precision from the graph. TensorRT 10: builder flags.
    """
    if precision == "fp16" and major >= 11:
        fp16 = convert_to_fp16(source, keep_io_types=keep_io_types)
        return _save_converted(fp16, engine_path, onnx_path), [], None
    if precision == "fp16":
        return onnx_path, ["FP16"], None
    if precision == "int8":
        # Both versions: explicit Q/DQ, symmetric INT8, no calibrator (TensorRT 11 removed
        # implicit calibration; on 10 the Q/DQ graph makes the same engine without one).
        qdq = quantize_int8(source, calibration, settings=TENSORRT_INT8)
        graph_path = _save_converted(qdq.model, engine_path, onnx_path)
        # TensorRT 10: Q/DQ layers need the INT8 flag, and FP16 lets the layers the Q/DQ graph
        # leaves unquantized run in FP16 rather than FP32 (TensorRT's own guidance).
        return graph_path, [] if major >= 11 else ["INT8", "FP16"], qdq.to_dict()
    return onnx_path, [], None


def _parse_network(trt: ModuleType, logger, graph_path: Path) -> tuple[Any, Any, list[str]]:
    """(builder, network, warnings): the graph at `graph_path` parsed into the network, after
    the support check (`check_trt_support`), whose warnings are logged and returned."""
    warnings = check_trt_support(graph_path)
    for warning in warnings:
        log.warning("TensorRT support check: %s", warning)
    builder = trt.Builder(logger)
    if not builder:
        raise MissingDependencyError(
            "TensorRT could not start a builder (no usable CUDA GPU or driver?): "
            + "; ".join(logger.errors[-2:])
        )
    # TensorRT 10: flags 0 = weakly typed (explicit batch is always on; EXPLICIT_BATCH is a
    # deprecated no-op). TensorRT 11: every network is strongly typed (STRONGLY_TYPED is a
    # deprecated no-op), so the same call gives each version what it needs.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(graph_path)):
        raise UnsupportedModelError(_parser_message(parser, graph_path, warnings))
    return builder, network, warnings


def _serialize(builder, network, config, logger, graph_path: Path, timing_cache) -> Any:
    """The serialized engine, built with the timing cache loaded (if any) and saved after."""
    _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UnsupportedModelError(
            f"TensorRT could not build an engine from {graph_path}: "
            + ("; ".join(logger.errors[-3:]) or "no error was logged")
        )
    if timing_cache is not None:
        _save_timing_cache(config, Path(timing_cache))
    return serialized


def _builder_config(
    trt: ModuleType,
    builder,
    network,
    flags: list[str],
    *,
    tf32: bool,
    half_io: bool,
    workspace_mib: int | None,
    hardware_compatibility: str | None,
):
    """The builder config: precision flags (TF32 off for FP32 parity), float16 network I/O
    (`half_io`, TensorRT 10), workspace cap and hardware compatibility."""
    config = builder.create_builder_config()
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 convs drift ~1e-3 from FP32: no parity
    if half_io:
        _set_float_io_dtype(trt, network, trt.DataType.HALF)
    if workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if hardware_compatibility is not None:
        config.hardware_compatibility_level = getattr(
            trt.HardwareCompatibilityLevel, hardware_compatibility.upper()
        )
    return config


def gpu_info() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the current CUDA device.

    From torch when it has CUDA, else from nvidia-smi (shipped with the driver), else "unknown".
    """
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return torch.cuda.get_device_name(), f"{major}.{minor}"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.splitlines()[0]
            name, capability = (part.strip() for part in out.rsplit(",", 1))
            return name, capability
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            pass
    return "unknown", "unknown"


def _check_batch(batch: tuple[int, int, int]) -> None:
    if (
        len(batch) != 3
        or not all(isinstance(b, int) for b in batch)
        or not 1 <= batch[0] <= batch[1] <= batch[2]
    ):
        raise InvalidInputError(
            f"batch must be (min, opt, max) with 1 <= min <= opt <= max, got {batch}"
        )


def _save_converted(model, engine_path: Path, onnx_path: Path) -> Path:
    """Save the FP16 / Q/DQ graph TensorRT parses beside the engine: `<engine stem>.trt.onnx`."""
    path = engine_path.with_name(engine_path.stem + ".trt.onnx")
    if path.resolve() == onnx_path.resolve():
        raise InvalidInputError(
            f"the converted graph would overwrite {onnx_path}; rename the engine"
        )
    return save_onnx(model, path)


def _io_tensors(network) -> list:
    """The network's inputs, then its outputs."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    return inputs + [network.get_output(i) for i in range(network.num_outputs)]


def _set_float_io_dtype(trt: ModuleType, network, dtype) -> None:
    """TensorRT 10, weakly typed: make the float32 network inputs/outputs `dtype`."""
    for tensor in _io_tensors(network):
        if tensor.dtype == trt.DataType.FLOAT:
            tensor.dtype = dtype


def _add_batch_profile(
    builder, network, config, batch, graph_path
) -> dict[str, dict[str, list[int]]]:
    """One optimization profile over axis 0 of every input; fixed inputs keep their shape."""
    profile = builder.create_optimization_profile()
    shapes, dynamic = {}, False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = list(tensor.shape)
        free = [axis for axis, d in enumerate(dims) if d < 0]
        if not free:
            shapes[tensor.name] = {"min": dims, "opt": dims, "max": dims}
            continue
        if free != [0]:
            raise InvalidInputError(
                f"input {tensor.name} of {graph_path} is dynamic on axes {free}; only the batch "
                "axis may be dynamic: export with a fixed image size"
            )
        lo, opt, hi = ([b, *dims[1:]] for b in batch)
        profile.set_shape(tensor.name, lo, opt, hi)
        shapes[tensor.name] = {"min": lo, "opt": opt, "max": hi}
        dynamic = True
    if dynamic:
        config.add_optimization_profile(profile)
    return shapes


def _load_timing_cache(config, path: str | os.PathLike | None) -> None:
    """Attach the cache saved at `path` (or an empty one) to the builder config."""
    data = Path(path).read_bytes() if path is not None and Path(path).is_file() else b""
    try:
        cache = config.create_timing_cache(data) if data else None
        # A cache from another GPU or TensorRT version is refused, not silently mixed in.
        attached = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
    except Exception:  # a corrupt file: TensorRT may raise rather than return None
        attached = False
    if not attached:
        if data:
            log.warning("timing cache %s does not fit this GPU/TensorRT; starting anew", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config, path: Path) -> None:
    """Save the config's cache (now holding this build's timings) to `path`."""
    cache = config.get_timing_cache()
    # Another build may have saved to the same file meanwhile: merge its entries, then replace.
    if path.is_file():
        try:
            merged = cache.combine(config.create_timing_cache(path.read_bytes()), False)
        except Exception:
            merged = False
        if not merged:
            log.warning("could not merge timing cache %s; overwriting it", path)
    atomic_write_bytes(path, cache.serialize())


def _parser_message(parser, graph_path: Path, warnings: list[str]) -> str:
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        node = (
            f"node {error.node_name() or error.node()} ({error.node_operator()})"
            if error.node() >= 0
            else "graph"
        )
        errors.append(f"{node}: {error.desc()}")
    message = f"TensorRT's ONNX parser rejected {graph_path}: " + (
        "; ".join(errors) or "no error given"
    )
    if warnings:
        message += f" (check_trt_support found: {shown(warnings, 3, '; ')})"
    return message


def make_trt_logger(trt: ModuleType):
    """A TensorRT logger that forwards to Python logging and keeps the errors for messages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif int(severity) == int(trt.ILogger.Severity.WARNING):
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return _Logger()
