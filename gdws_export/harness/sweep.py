"""Sweeps: approximate -> export -> build -> bench -> attack for each GDWS setting, one report.

`sweep` approximates the model at every setting (a beta or a MAC ratio), exports and builds each
GDWS model and the original, times them all in one interleaved benchmark (the original is the
reference), evaluates clean / robust accuracy of each on PyTorch and on its engine, and returns
a SweepReport: one table row per setting, the Pareto-optimal settings (robust accuracy against
images/s), and the speed and accuracy reports behind the table.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from gdws_export.attacks import AttackConfig
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.approximate import approximate
from gdws_export.harness.accuracy import (
    DEFAULT_BATCH_SIZE,
    AccuracyReport,
    SquareConfig,
    evaluate_accuracy,
)
from gdws_export.harness.speed import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_DURATION_S,
    DEFAULT_WARMUP_S,
    SpeedReport,
    benchmark,
    check_bench_settings,
)
from gdws_export.runtimes.base import Runner

ORIGINAL = "original"
TARGETS = ("ort", "trt")
PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_SAMPLES = 256  # images of the evaluation data that calibrate INT8 builds


@dataclass(frozen=True)
class SweepSetting:
    """One GDWS setting: exactly one of beta (per-layer error bound) or mac_ratio (MAC budget)."""

    beta: float | None = None
    mac_ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.beta is None) == (self.mac_ratio is None):
            raise InvalidInputError("a sweep setting takes exactly one of beta or mac_ratio")
        value = self.beta if self.beta is not None else self.mac_ratio
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InvalidInputError(f"sweep setting {self.label}: not a finite number")

    @property
    def label(self) -> str:
        """'beta=0.01' or 'mac_ratio=0.5': the setting's name in tables and file names."""
        if self.beta is not None:
            return f"beta={self.beta:g}"
        return f"mac_ratio={self.mac_ratio:g}"

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.label.replace("=", "_"))


@dataclass(frozen=True)
class SweepConfig:
    """What a sweep runs and how it measures. None fields take the documented defaults.

    Attributes:
        settings: the GDWS settings to try.
        target, precision, threads: passed to `runtimes.build` ("ort" or "trt"; "fp32",
            "fp16" or "int8"; ONNX Runtime threads).
        lowering: the ONNX lowering ("auto" times the forms per layer).
        attacks: white-box attacks on PyTorch, replayed on the engines; the first is the one
            the table's robust accuracy (and the plot) uses.
        square: the query-only Square Attack through each engine, or None.
        batch_sizes, duration_s, iterations, warmup_s: passed to `benchmark`.
        eval_batch_size: batch size of attacks and engine inference.
    """

    settings: tuple[SweepSetting, ...]
    target: str = "ort"
    precision: str = "fp32"
    threads: int | None = None
    lowering: str = "auto"
    attacks: tuple[AttackConfig, ...] = (AttackConfig(),)
    square: SquareConfig | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    duration_s: float | None = DEFAULT_DURATION_S
    iterations: int | None = None
    warmup_s: float = DEFAULT_WARMUP_S
    eval_batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        if not self.settings:
            raise InvalidInputError("sweep: give at least one setting (--betas or --mac-ratios)")
        labels = [s.label for s in self.settings]
        if len(set(labels)) != len(labels):
            raise InvalidInputError(f"sweep: settings repeat: {labels}")
        if not self.attacks and self.square is None:
            raise InvalidInputError("sweep: give at least one attack (white-box or square)")
        if self.target not in TARGETS:
            raise InvalidInputError(f"sweep: target must be one of {TARGETS}, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise InvalidInputError(
                f"sweep: precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        # The benchmark's own checks, run now so that bad settings fail before any export.
        check_bench_settings(
            self.batch_sizes, self.duration_s, self.iterations, self.warmup_s,
            where="sweep",
        )  # fmt: skip
        for label, value in (("threads", self.threads), ("eval_batch_size", self.eval_batch_size)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidInputError(f"sweep: {label} must be an integer >= 1, got {value!r}")

    def to_dict(self) -> dict:
        data = asdict(self)  # JSON types: lists, not tuples
        data["settings"] = [asdict(setting) for setting in self.settings]
        data["batch_sizes"] = list(self.batch_sizes)
        data["attacks"] = [a.to_dict() for a in self.attacks]
        data["square"] = self.square.to_dict() if self.square is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        data = dict(data)
        data["settings"] = tuple(SweepSetting(**s) for s in data["settings"])
        data["attacks"] = tuple(AttackConfig.from_dict(a) for a in data["attacks"])
        data["square"] = SquareConfig(**data["square"]) if data["square"] is not None else None
        data["batch_sizes"] = tuple(data["batch_sizes"])
        return cls(**data)


@dataclass
class SweepRow:
    """One line of the sweep table (the original model is a row too, setting "original").

    `macs` and `params` are of the whole model per image; `fps` is images/s at the largest
    batch size (Offline), `fps_ratio` over the original's, `p90_latency_ms` at the smallest
    (SingleStream); accuracies are fractions; `robust_accuracy` is the first attack's on
    PyTorch, `engine_robust_accuracy` the same adversarial inputs replayed on the engine.
    """

    setting: str
    beta: float | None
    mac_ratio: float | None
    macs: int
    params: int
    fps: float
    fps_ratio: float
    p90_latency_ms: float
    clean_accuracy: float
    robust_accuracy: float
    engine_clean_accuracy: float | None
    engine_robust_accuracy: float | None
    pareto: bool = False
    conv_mac_ratio: float = 1.0
    onnx_path: str = ""
    engine_path: str = ""


@dataclass
class SweepReport:
    """`sweep`'s result: the table rows, the reports behind them, and how they were made."""

    model: dict
    data: str
    config: SweepConfig
    robust_attack: str
    rows: list[SweepRow]
    speed: SpeedReport
    accuracy: AccuracyReport
    approximations: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self, setting: str) -> SweepRow:
        for row in self.rows:
            if row.setting == setting:
                return row
        raise InvalidInputError(f"no sweep row {setting!r}; rows: {[r.setting for r in self.rows]}")

    @property
    def pareto_settings(self) -> list[str]:
        """Settings on the Pareto front of (images/s, robust accuracy), fastest first."""
        front = [row for row in self.rows if row.pareto]
        return [row.setting for row in sorted(front, key=lambda r: -r.fps)]

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "config": self.config.to_dict(),
            "robust_attack": self.robust_attack,
            "rows": [asdict(row) for row in self.rows],
            "pareto_settings": self.pareto_settings,
            "speed": self.speed.to_dict(),
            "accuracy": self.accuracy.to_dict(),
            "approximations": self.approximations,
            "notes": list(self.notes),
            "seconds": self.seconds,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SweepReport:
        return cls(
            model=dict(data["model"]),
            data=data["data"],
            config=SweepConfig.from_dict(data["config"]),
            robust_attack=data["robust_attack"],
            rows=[SweepRow(**row) for row in data["rows"]],
            speed=SpeedReport.from_dict(data["speed"]),
            accuracy=AccuracyReport.from_dict(data["accuracy"]),
            approximations=dict(data["approximations"]),
            notes=list(data["notes"]),
            seconds=data["seconds"],
        )

    def table(self) -> str:
        """The Markdown table: setting, MACs, params, FPS ratio, p90 latency, accuracies."""
        batch_1, batch_n = min(self.config.batch_sizes), max(self.config.batch_sizes)
        lines = [
            f"| setting | MACs | params | images/s (batch {batch_n}) | FPS ratio "
            f"| p90 latency ms (batch {batch_1}) | clean % | robust % | engine robust % "
            "| Pareto |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            engine = _pct(r.engine_robust_accuracy)
            lines.append(
                f"| {r.setting} | {r.macs:,} | {r.params:,} | {r.fps:.1f} | {r.fps_ratio:.2f}x "
                f"| {r.p90_latency_ms:.3f} | {_pct(r.clean_accuracy)} "
                f"| {_pct(r.robust_accuracy)} | {engine} | {'yes' if r.pareto else ''} |"
            )
        return "\n".join(lines)

    def to_markdown(self, plot: str | None = None) -> str:
        """The whole report as Markdown; `plot` is the PNG's path relative to the .md file."""
        name = self.model.get("name", "model")
        lines = [
            f"## Sweep of {name}",
            "",
            f"Target {self.config.target} ({self.config.precision}), lowering "
            f"{self.config.lowering}; data {self.data or 'given tensors'}; robust accuracy "
            f"under {self.robust_attack}.",
            "",
            self.table(),
            "",
            "Pareto-optimal (no other setting is both faster and more robust): "
            + (", ".join(self.pareto_settings) or "none"),
            "",
        ]
        if plot:
            lines += [f"![robust accuracy against images/s]({plot})", ""]
        if self.notes:
            lines += [*(f"Note: {note}" for note in self.notes), ""]
        sections = ["\n".join(lines), self.speed.to_markdown(), self.accuracy.to_markdown()]
        return "\n".join(sections)


def parse_settings(
    betas: Sequence[float] | None = None, mac_ratios: Sequence[float] | None = None
) -> tuple[SweepSetting, ...]:
    """Settings from lists of betas and/or MAC ratios, in the order given."""
    settings = [SweepSetting(beta=float(b)) for b in betas or ()]
    settings += [SweepSetting(mac_ratio=float(r)) for r in mac_ratios or ()]
    return tuple(settings)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (speed, accuracy) points no other point dominates (>= in both, > in one)."""
    flags = []
    for i, (speed, acc) in enumerate(points):
        dominated = any(
            s >= speed and a >= acc and (s > speed or a > acc)
            for j, (s, a) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one image through the model's convs and linear layers."""
    total = 0

    def conv_hook(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        per_pixel = module.out_channels * (module.in_channels // module.groups) * kh * kw
        total += per_pixel * int(output.shape[-2] * output.shape[-1])

    def linear_hook(module: nn.Linear, _inputs, _output) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return total


def sweep(
    model: nn.Module,
    config: SweepConfig,
    data: tuple[torch.Tensor, torch.Tensor],
    *,
    work_dir: str | os.PathLike,
    alphas: dict[str, torch.Tensor] | None = None,
    data_name: str = "",
) -> SweepReport:
    """Approximate, export, build, benchmark and attack the model at every setting.

    Args:
        model: the original PyTorch model (taking [0, 1] images); it is not modified.
        config: the settings and how to measure them.
        data: (x, y) evaluation images and labels (from `load_dataset`).
        work_dir: where the ONNX files and engines go (`original.onnx`, `beta_0.01.onnx`...).
        alphas: per-layer sensitivities for `approximate` (None: unweighted).
        data_name: description of the data for the report.

    Returns:
        A SweepReport; write it with `gdws_export.harness.report.write_sweep`.

    Example:
        >>> config = SweepConfig(parse_settings(betas=[0.001, 0.01, 0.1]))
        >>> report = sweep(model, config, (x, y), work_dir="out")  # doctest: +SKIP
        >>> report.pareto_settings  # doctest: +SKIP
        ['beta=0.1', 'beta=0.01', 'original']
    """
    start = time.perf_counter()
    x, y = data
    input_shape = _input_shape(model, x)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, nn.Module] = {ORIGINAL: model}
    approximations: dict[str, dict] = {}
    for setting in config.settings:
        gdws_model, approximation = approximate(
            model, beta=setting.beta, mac_ratio=setting.mac_ratio, alphas=alphas,
            input_shape=input_shape,
        )  # fmt: skip
        models[setting.label] = gdws_model.eval()
        approximations[setting.label] = json.loads(approximation.to_json())  # JSON types
    notes: list[str] = []
    files = {
        name: _export_and_build(
            m, model, work_dir / f"{_stem(name, config)}.onnx", input_shape, x, config, notes
        )
        for name, m in models.items()
    }
    speed = benchmark(
        {name: _runner(files[name][1], config) for name in models},
        batch_sizes=config.batch_sizes,
        duration_s=config.duration_s,
        iterations=config.iterations,
        warmup_s=config.warmup_s,
        reference=ORIGINAL,
        input_shape=input_shape,
    )
    accuracy = evaluate_accuracy(
        models,
        x,
        y,
        attacks=config.attacks,
        engines={name: _runner(files[name][1], config) for name in models},
        square=config.square,
        batch_size=config.eval_batch_size,
        data=data_name,
    )
    rows = _rows(models, config, speed, accuracy, approximations, files, input_shape)
    first = config.attacks[0].describe() if config.attacks else config.square.describe()
    return SweepReport(
        model={
            "name": getattr(model, "arch_name", type(model).__name__),
            "arch_kwargs": getattr(model, "arch_kwargs", None),
            "input_shape": list(input_shape),
        },
        data=data_name,
        config=config,
        robust_attack=first,
        rows=rows,
        speed=speed,
        accuracy=accuracy,
        approximations=approximations,
        notes=notes,
        seconds=round(time.perf_counter() - start, 3),
    )


def _rows(models, config, speed, accuracy, approximations, files, input_shape) -> list[SweepRow]:
    settings = {s.label: s for s in config.settings}
    reference_fps = speed.offline(ORIGINAL).images_per_s
    rows = []
    for name, module in models.items():
        model_accuracy = accuracy.model(name)
        first = model_accuracy.attacks[0]
        offline = speed.offline(name)
        setting = settings.get(name)
        rows.append(
            SweepRow(
                setting=name,
                beta=setting.beta if setting else None,
                mac_ratio=setting.mac_ratio if setting else None,
                macs=count_macs(module, input_shape),
                params=sum(p.numel() for p in module.parameters()),
                fps=offline.images_per_s,
                fps_ratio=offline.images_per_s / reference_fps,
                p90_latency_ms=speed.single_stream(name).latency.p90_ms,
                clean_accuracy=model_accuracy.clean_accuracy,
                robust_accuracy=first.robust_accuracy,
                engine_clean_accuracy=model_accuracy.engine_clean_accuracy,
                engine_robust_accuracy=(
                    first.engine_accuracy if first.target == "pytorch" else first.robust_accuracy
                ),
                conv_mac_ratio=approximations[name]["achieved_mac_ratio"] if setting else 1.0,
                onnx_path=os.fspath(files[name][0]),
                engine_path=os.fspath(files[name][1].engine_path),
            )
        )
    for row, on_front in zip(
        rows, pareto_front([(r.fps, r.robust_accuracy) for r in rows]), strict=True
    ):
        row.pareto = on_front
    return rows


def _stem(name: str, config: SweepConfig) -> str:
    if name == ORIGINAL:
        return ORIGINAL
    return next(s.file_stem for s in config.settings if s.label == name)


def _export_and_build(module, original, path, input_shape, x, config, notes):
    """Export one model to ONNX and build its engine; returns (onnx path, BuildResult)."""
    from gdws_export.runtimes.build import build

    _export(module, original, path, input_shape, x, config.lowering, notes)
    threads = config.threads if config.target == "ort" else None
    calibration = x[:CALIBRATION_SAMPLES].numpy() if config.precision == "int8" else None
    result = build(
        path, target=config.target, precision=config.precision, threads=threads,
        calibration=calibration,
    )  # fmt: skip
    notes.extend(f"{path.name}: {warning}" for warning in result.warnings if warning not in notes)
    return path, result


def _export(module, original, path, input_shape, x, lowering, notes) -> None:
    try:
        from gdws_export.lowering import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        export_onnx(
            module, input_shape=tuple(input_shape), path=path, lowering=lowering,
            original=original, parity_inputs=x[:16],
        )  # fmt: skip
        return
    # Until gdws_export.lowering is installed, export the modules as they are (GDWS convs as
    # Gather + depthwise + 1x1, the "gather" form) with torch's exporter.
    note = "gdws_export.lowering is unavailable: models exported as is (gather form), unchecked"
    if note not in notes:
        notes.append(note)
    from gdws_export.runtimes._files import atomic_write_bytes

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the legacy exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (torch.zeros(2, *input_shape),), buffer, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17, dynamo=False,
        )  # fmt: skip
    atomic_write_bytes(path, buffer.getvalue())


def _runner(result, config: SweepConfig) -> Runner:
    if config.target == "trt":
        from gdws_export.runtimes.tensorrt_runner import TrtRunner

        return TrtRunner(result.engine_path)
    from gdws_export.runtimes.onnxruntime import OrtRunner

    return OrtRunner.from_settings(result.settings_path)


def _input_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[0] == 0:
        raise InvalidInputError("sweep: the dataset is empty or not (N, C, H, W) images")
    shape = tuple(int(d) for d in x.shape[1:])
    declared = getattr(model, "input_shape", None)
    if declared is not None and tuple(declared) != shape:
        raise InvalidInputError(
            f"sweep: the data are images {shape} but the model takes {tuple(declared)} (C, H, W)"
        )
    return shape


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"
