"""The speed report: latency statistics, per-batch results and how they were measured.

See `gdws_export.harness.speed` for the conventions (SingleStream, Offline, host latency vs
device compute, percentiles) and docs/report-schema.md for the JSON form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from gdws_export._options import Options
from gdws_export.errors import InvalidInputError
from gdws_export.harness.machine import MachineInfo
from gdws_export.limits import check_batch

PERCENTILES = (50, 90, 95, 99)
DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_DURATION_S = 3.0  # trtexec's default
DEFAULT_WARMUP_S = 0.2  # trtexec's default
DEFAULT_ROUNDS = 10


@dataclass
class LatencyStats:
    """Summary of latency samples, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    median_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
        """Statistics of `samples_ms`; percentiles interpolate linearly (numpy's default)."""
        samples = np.asarray(samples_ms, dtype=np.float64).ravel()
        if samples.size == 0 or not np.isfinite(samples).all():
            raise InvalidInputError(
                f"latency statistics need finite samples, got {samples.size} samples"
            )
        p50, p90, p95, p99 = (float(v) for v in np.percentile(samples, PERCENTILES))
        return cls(
            count=int(samples.size),
            mean_ms=float(samples.mean()),
            std_ms=float(samples.std()),
            min_ms=float(samples.min()),
            max_ms=float(samples.max()),
            median_ms=float(np.median(samples)),
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
        )


@dataclass
class BatchResult:
    """One runner at one batch size.

    `images_per_s` is batch_size / mean host latency; `compute_images_per_s` the same from the
    device compute time (TensorRT only), the number NVIDIA's jetson_benchmarks report.
    `meets_minimum` says whether both minimums (duration and iterations) were reached.
    """

    runner: str
    batch_size: int
    iterations: int
    timed_s: float
    latency: LatencyStats
    images_per_s: float
    meets_minimum: bool
    compute: LatencyStats | None = None
    compute_images_per_s: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> BatchResult:
        data = dict(data)
        data["latency"] = LatencyStats(**data["latency"])
        if data.get("compute") is not None:
            data["compute"] = LatencyStats(**data["compute"])
        return cls(**data)


@dataclass
class BenchOptions(Options):
    """How `benchmark` times its runners (None for duration_s or iterations: "no minimum").

    Attributes:
        batch_sizes: batch sizes to time; batch 1 gives SingleStream latency, the largest
            Offline throughput. None: `DEFAULT_BATCH_SIZES`, or the one batch that runners
            with a fixed batch size all take.
        duration_s: minimum timed seconds per runner and batch size.
        iterations: minimum timed runs per runner and batch size; with duration_s None, exactly
            this many. At least one of duration_s and iterations must be given.
        warmup_s: untimed seconds per runner and batch size before timing.
        warmup_iterations: minimum untimed runs, whatever warmup_s.
        rounds: the timed runs are split into about this many interleaved rounds.
        reference: the runner speed-ups are measured against (e.g. "original").
        seed: seed of the random input images.
    """

    batch_sizes: list[int] | None = None
    duration_s: float | None = DEFAULT_DURATION_S
    iterations: int | None = None
    warmup_s: float = DEFAULT_WARMUP_S
    warmup_iterations: int = 1
    rounds: int = DEFAULT_ROUNDS
    reference: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_sizes is not None:
            check_batch_sizes(self.batch_sizes, "benchmark")
        check_timing(self.duration_s, self.iterations, self.warmup_s, self.warmup_iterations,
                     self.rounds, self.seed, "benchmark")  # fmt: skip


@dataclass
class BenchSettings(BenchOptions):
    """How `benchmark` measured: its options, with the batch sizes it chose and the image
    shape (C, H, W) it timed."""

    input_shape: list[int] = field(default_factory=list)


def check_bench_settings(
    batch_sizes: Sequence[int],
    duration_s: float | None,
    iterations: int | None,
    warmup_s: float,
    *,
    warmup_iterations: int = 1,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 0,
    where: str = "benchmark",
) -> list[int]:
    """Validate benchmark settings (see `BenchOptions`); returns the sorted, distinct batch
    sizes.

    Raises:
        InvalidInputError: a one-line message naming the bad setting.
    """
    sizes = check_batch_sizes(batch_sizes, where)
    check_timing(duration_s, iterations, warmup_s, warmup_iterations, rounds, seed, where)
    return sizes


def check_batch_sizes(batch_sizes: Sequence[int], where: str) -> list[int]:
    """The sorted, distinct batch sizes, after checking they are integers >= 1 in limits."""
    sizes = list(batch_sizes) if isinstance(batch_sizes, Sequence) else []
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise InvalidInputError(
            f"{where}: batch_sizes must be a non-empty list of integers >= 1, got {batch_sizes!r}"
        )
    for size in sizes:
        check_batch(f"{where}: batch size", size)
    return sorted(set(sizes))


def check_timing(
    duration_s, iterations, warmup_s, warmup_iterations, rounds, seed, where: str
) -> None:
    """Check the timing settings of `BenchOptions` (`where` starts the message)."""
    if duration_s is None and iterations is None:
        raise InvalidInputError(f"{where}: give duration_s, iterations or both")
    if duration_s is not None and not (_is_number(duration_s) and duration_s > 0):
        raise InvalidInputError(f"{where}: duration_s must be > 0 or None, got {duration_s!r}")
    counts = [("rounds", rounds, 1), ("warmup_iterations", warmup_iterations, 0), ("seed", seed, 0)]
    if iterations is not None:
        counts.append(("iterations", iterations, 1))
    for label, value, low in counts:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidInputError(f"{where}: {label} must be an integer >= {low}, got {value!r}")
    if not (_is_number(warmup_s) and warmup_s >= 0):
        raise InvalidInputError(f"{where}: warmup_s must be >= 0, got {warmup_s!r}")


def _is_number(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(float(value))
    )


@dataclass
class SpeedReport:
    """Results of `benchmark`: settings, machine, runners and one BatchResult per pair."""

    settings: BenchSettings
    machine: MachineInfo
    runners: dict[str, dict] = field(default_factory=dict)
    results: list[BatchResult] = field(default_factory=list)

    def result(self, runner: str, batch_size: int) -> BatchResult:
        """The result of `runner` at `batch_size`."""
        for result in self.results:
            if result.runner == runner and result.batch_size == batch_size:
                return result
        raise InvalidInputError(
            f"no speed result for runner {runner!r} at batch {batch_size}; runners "
            f"{list(self.runners)}, batch sizes {self.settings.batch_sizes}"
        )

    def speedup(self, runner: str, batch_size: int) -> float | None:
        """Reference median latency / this runner's, at one batch size; None without reference.

        Medians, not means: one stall in either runner does not move the ratio.
        """
        reference = self.settings.reference
        if reference is None:
            return None
        ref = self.result(reference, batch_size).latency.median_ms
        return ref / self.result(runner, batch_size).latency.median_ms

    def single_stream(self, runner: str) -> BatchResult:
        """SingleStream-style result: the smallest batch size (batch 1 unless it was left out)."""
        return self.result(runner, min(self.settings.batch_sizes))

    def offline(self, runner: str) -> BatchResult:
        """Offline-style result: the largest batch size."""
        return self.result(runner, max(self.settings.batch_sizes))

    def to_dict(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "machine": self.machine.to_dict(),
            "runners": self.runners,
            "results": [asdict(result) for result in self.results],
        }

    @classmethod
    def from_dict(cls, data: dict) -> SpeedReport:
        return cls(
            settings=BenchSettings(**data["settings"]),
            machine=MachineInfo.from_dict(data["machine"]),
            runners=dict(data["runners"]),
            results=[BatchResult.from_dict(r) for r in data["results"]],
        )

    def _threads_lines(self) -> list[str]:
        """ "CPU threads: a 1, b 1." for the runners that run on the CPU (none for TensorRT)."""
        cpu = {n: i for n, i in self.runners.items() if i.get("runtime") != "tensorrt"}
        if not cpu:
            return []
        counts = ", ".join(f"{n} {i.get('threads', 'runtime default')}" for n, i in cpu.items())
        return [f"CPU threads: {counts}.", ""]

    def to_markdown(self) -> str:
        """A Markdown section: settings, machine and one table row per runner and batch."""
        s = self.settings
        timed = " and ".join(
            part
            for part in (
                f"at least {s.duration_s:g} s" if s.duration_s is not None else "",
                f"at least {s.iterations} runs" if s.iterations is not None else "",
            )
            if part
        )
        lines = [
            "## Speed",
            "",
            f"Machine: {self.machine.summary()}",
            "",
            f"Input {tuple(s.input_shape)}; warm-up {s.warmup_s:g} s (at least "
            f"{s.warmup_iterations} runs), then until the run time is steady; timed {timed} "
            f"per runner and batch, interleaved in {s.rounds}+ rounds; seed {s.seed}.",
            "",
            *self._threads_lines(),
            "| runner | batch | runs | mean ms | p50 ms | p90 ms | p95 ms | p99 ms | images/s "
            "| GPU compute ms | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            speedup = self.speedup(r.runner, r.batch_size)
            lat = r.latency
            lines.append(
                f"| {r.runner} | {r.batch_size} | {r.iterations} | {lat.mean_ms:.3f} "
                f"| {lat.p50_ms:.3f} | {lat.p90_ms:.3f} | {lat.p95_ms:.3f} | {lat.p99_ms:.3f} "
                f"| {r.images_per_s:.1f} "
                f"| {f'{r.compute.mean_ms:.3f}' if r.compute is not None else ''} "
                f"| {f'{speedup:.2f}x' if speedup is not None else ''} |"
            )
        if s.reference is not None:
            lines += ["", f"Speed-up: median latency of {s.reference} / median latency."]
        return "\n".join(lines) + "\n"
