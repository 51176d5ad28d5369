"""The sweep's settings and report: SweepSetting, SweepConfig, SweepRow, SweepReport.

See `gdws_export.studies.sweep` for the procedure and docs/report-schema.md for the JSON form.
How each model is built and shipped is an `ExportConfig`'s business (the report keeps its
settings); SweepConfig says which budgets are swept and how they are measured.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from gdws_export.attacks import AttackConfig
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import DEFAULT_BATCH_SIZE, AccuracyReport, SquareConfig
from gdws_export.harness.speed import check_bench_settings
from gdws_export.harness.speed_report import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_DURATION_S,
    DEFAULT_WARMUP_S,
    SpeedReport,
)
from gdws_export.limits import check_batch

BUDGETS = ("beta", "mac_ratio", "time_ratio")


@dataclass(frozen=True)
class SweepSetting:
    """One GDWS setting: exactly one of beta (per-layer error bound), mac_ratio (MAC budget)
    or time_ratio (time budget, layer costs measured on ONNX Runtime)."""

    beta: float | None = None
    mac_ratio: float | None = None
    time_ratio: float | None = None

    def __post_init__(self) -> None:
        given = [(n, getattr(self, n)) for n in BUDGETS if getattr(self, n) is not None]
        if len(given) != 1:
            raise InvalidInputError(
                "a sweep setting takes exactly one of beta, mac_ratio or time_ratio"
            )
        ((name, value),) = given
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise InvalidInputError(f"sweep setting: {name} must be a finite number, got {value!r}")
        if name == "beta" and value < 0:
            raise InvalidInputError(f"sweep setting: beta must be >= 0, got {value!r}")
        if name != "beta" and not 0 < value <= 1:
            raise InvalidInputError(f"sweep setting: {name} must be in (0, 1], got {value!r}")

    @property
    def label(self) -> str:
        """'beta=0.01', 'mac_ratio=0.5' or 'time_ratio=0.5': the setting's name in tables and
        file names."""
        name = next(n for n in BUDGETS if getattr(self, n) is not None)
        return f"{name}={getattr(self, name):g}"

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.label.replace("=", "_"))


@dataclass(frozen=True)
class SweepConfig:
    """Which budgets a sweep exports and how it measures them. None fields take the documented
    defaults.

    Attributes:
        settings: the GDWS settings to try.
        attacks: white-box attacks on PyTorch, replayed on the engines; the first is the one
            the table's robust accuracy (and the plot) uses.
        square: the query-only Square Attack through each engine, or None.
        batch_sizes, duration_s, iterations, warmup_s: passed to `benchmark`.
        eval_batch_size: batch size of attacks and engine inference.
    """

    settings: tuple[SweepSetting, ...]
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
        # The benchmark's own checks, run now so that bad settings fail before any export.
        check_bench_settings(
            self.batch_sizes, self.duration_s, self.iterations, self.warmup_s,
            where="sweep",
        )  # fmt: skip
        value = self.eval_batch_size
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInputError(
                f"sweep: eval_batch_size must be an integer >= 1, got {value!r}"
            )
        check_batch("sweep: eval_batch_size", self.eval_batch_size)

    def to_dict(self) -> dict:
        data = asdict(self)  # JSON types: lists, not tuples
        data["settings"] = [asdict(setting) for setting in self.settings]
        data["batch_sizes"] = list(self.batch_sizes)
        data["attacks"] = [a.to_dict() for a in self.attacks]
        data["square"] = self.square.to_dict() if self.square is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> SweepConfig:
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
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
    time_ratio: float | None = None


@dataclass
class SweepReport:
    """`sweep`'s result: the table rows, the reports behind them, and how they were made
    (`export`: the ExportConfig settings every model was exported with, its budget aside)."""

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
    export: dict = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.export.get("target", "ort")

    @property
    def precision(self) -> str:
        return self.export.get("precision", "fp32")

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
            "export": dict(self.export),
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
            export=dict(data.get("export", {})),
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
            f"Target {self.target} ({self.precision}), lowering "
            f"{self.export.get('lowering', 'auto')}, exporter "
            f"{self.export.get('exporter', 'dynamo')}; every model exported as `gdws-export` "
            f"exports it; data {self.data or 'given tensors'}; robust accuracy under "
            f"{self.robust_attack}.",
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


def parse_settings(
    betas: Sequence[float] | None = None,
    mac_ratios: Sequence[float] | None = None,
    time_ratios: Sequence[float] | None = None,
) -> tuple[SweepSetting, ...]:
    """Settings from lists of betas, MAC ratios and/or time ratios, in the order given."""
    settings = [SweepSetting(beta=float(b)) for b in betas or ()]
    settings += [SweepSetting(mac_ratio=float(r)) for r in mac_ratios or ()]
    settings += [SweepSetting(time_ratio=float(r)) for r in time_ratios or ()]
    return tuple(settings)


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"
