"""Speed benchmarks: latency percentiles and throughput of runners, measured interleaved.

`benchmark` times every runner at every batch size in rounds: round r runs a slice of each
runner's iterations, the runners in a rotated order, so a machine that slows down (thermal
throttling, a neighbour's job) slows every runner alike and the ratios hold.

Conventions (MLPerf Inference, trtexec):
- SingleStream: latency percentiles at batch 1 (p90 is MLPerf's metric).
- Offline: throughput, images/s, at the largest batch.
- `latency` is host latency: host input to host output. For runtimes that compute on a device
  (TensorRT), `compute` is the device time alone, from CUDA events (trtexec's "GPU compute
  time"); for host runtimes (ONNX Runtime on CPU) the two are the same and `compute` is None.
- Percentiles interpolate linearly between samples (numpy's default), as Olive does.
- The timed part ends once both minimums are met: `duration_s` of timed runs and
  `iterations` runs. MLPerf's own minimums (600 s, 1024 queries for SingleStream) are far
  longer; the report records what was used, so a result can be judged by it.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from gdws_export.errors import InvalidInputError
from gdws_export.harness.machine import MachineInfo, machine_info
from gdws_export.harness.speed_report import (
    DEFAULT_BATCH_SIZES,
    BatchResult,
    BenchOptions,
    BenchSettings,
    LatencyStats,
    SpeedReport,
    check_batch_sizes,
    check_bench_settings,  # noqa: F401 (imported from here by sweeps)
)
from gdws_export.limits import check_input_dims, check_memory, input_bytes
from gdws_export.runtimes.base import Runner, image_input


def benchmark(
    runners: Mapping[str, Runner],
    *,
    options: BenchOptions | None = None,
    input_shape: Sequence[int] | None = None,
    machine: MachineInfo | None = None,
    **settings: Any,
) -> SpeedReport:
    """Time runners on the same random inputs, interleaved, at each batch size.

    The runners are activated here and deactivated at the end.

    Args:
        runners: name -> runner (e.g. {"original": OrtRunner(a), "gdws": OrtRunner(b)}); each
            takes one image batch and returns logits.
        options: batch sizes, minimum time and runs, warm-up, rounds, reference and seed
            (`BenchOptions`). None: its defaults.
        input_shape: (C, H, W) of one image; needed only when a runner's input has dynamic
            sizes besides the batch.
        machine: machine facts to record; None collects them (`machine_info()`).
        **settings: any `BenchOptions` field (batch_sizes, duration_s, iterations, warmup_s,
            warmup_iterations, rounds, reference, seed), overriding `options`'.

    Returns:
        A SpeedReport.

    Example:
        >>> report = benchmark({"original": OrtRunner("a.onnx", threads=2),
        ...                     "gdws": OrtRunner("b.onnx", threads=2)},
        ...                    batch_sizes=(1, 64), reference="original")  # doctest: +SKIP
        >>> report.speedup("gdws", 64)  # doctest: +SKIP
        1.8
    """
    options = BenchOptions.resolve(options, **settings)
    names = list(runners)
    results: list[BatchResult] = []
    with contextlib.ExitStack() as stack:
        for runner in runners.values():
            stack.enter_context(runner)  # active runners say what their inputs take
        bench = _check_settings(runners, options)
        shape = resolve_input_shape(runners, input_shape, bench.batch_sizes)
        bench.input_shape = list(shape)
        check_input_dims("benchmark: input shape", shape)
        largest = max(bench.batch_sizes)
        # float64 images, then one float32 copy per runner's feed
        needed = input_bytes(shape, largest) * (2 + len(runners))
        images = "x".join(map(str, shape))
        check_memory(f"benchmark batch {largest} of {images} inputs", needed)
        images = np.random.default_rng(bench.seed).random((largest, *shape))
        for batch in bench.batch_sizes:
            feeds = {name: _feed(runners[name], images[:batch]) for name in names}
            results += _time_batch(runners, feeds, batch, bench)
    return SpeedReport(
        settings=bench,
        machine=machine if machine is not None else machine_info(),
        runners={name: describe_runner(runner) for name, runner in runners.items()},
        results=results,
    )


def _check_settings(runners: Mapping[str, Runner], options: BenchOptions) -> BenchSettings:
    """The settings `benchmark` measures with: `options`, the batch sizes chosen (`None`:
    `default_batch_sizes`) and checked, after checking the runners and the reference."""
    where = "benchmark"
    if not isinstance(runners, Mapping) or not runners:
        raise InvalidInputError(f"{where}: runners must be a non-empty dict of name -> Runner")
    for name, runner in runners.items():
        if not isinstance(runner, Runner):
            raise InvalidInputError(
                f"{where}: runner {name!r} is a {type(runner).__name__}, not a Runner"
            )
    sizes = options.batch_sizes
    sizes = check_batch_sizes(default_batch_sizes(runners) if sizes is None else sizes, where)
    if options.reference is not None and options.reference not in runners:
        raise InvalidInputError(
            f"{where}: reference {options.reference!r} is not one of the runners {list(runners)}"
        )
    duration = None if options.duration_s is None else float(options.duration_s)
    return BenchSettings(**{**asdict(options), "batch_sizes": sizes, "duration_s": duration,
                            "warmup_s": float(options.warmup_s)})  # fmt: skip


def default_batch_sizes(runners: Mapping[str, Runner]) -> tuple[int, ...]:
    """`DEFAULT_BATCH_SIZES`, or (b,) when every runner's graph fixes its batch to the same b:
    a model exported with a static batch is timed at the batch it takes, not refused."""
    fixed = {_fixed_batch(runner.inputs()[0].shape) for runner in runners.values()
             if len(runner.inputs()) == 1}  # fmt: skip
    if len(fixed) == 1 and None not in fixed:
        return (fixed.pop(),)
    return DEFAULT_BATCH_SIZES


def _fixed_batch(dims: Sequence) -> int | None:
    """The batch size an input's shape fixes, None when it is dynamic."""
    return dims[0] if isinstance(dims[0], int) and dims[0] > 0 else None


def resolve_input_shape(
    runners: Mapping[str, Runner], input_shape: Sequence[int] | None, batch_sizes: Sequence[int]
) -> tuple[int, ...]:
    """The one image shape (C, H, W) every (active) runner takes; checks the batch sizes fit.

    Raises:
        InvalidInputError: a runner takes several inputs, shapes disagree with each other or
            with `input_shape`, or a fixed batch size excludes a requested one.
    """
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    for name, runner in runners.items():
        dims = image_input(runner, f"runner {name!r}").shape
        fixed_batch = _fixed_batch(dims)
        if fixed_batch is not None and any(b != fixed_batch for b in batch_sizes):
            raise InvalidInputError(
                f"runner {name!r} takes batch {fixed_batch} only (input shape {dims}); "
                f"use batch sizes [{fixed_batch}] or export with a dynamic batch"
            )
        image = dims[1:]
        fixed = all(isinstance(d, int) and d > 0 for d in image)
        if shape is None:
            if not fixed:
                raise InvalidInputError(
                    f"runner {name!r} has dynamic image sizes {dims}; pass input_shape (C, H, W)"
                )
            shape = tuple(image)
        elif len(image) != len(shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(image, shape, strict=False)
        ):
            raise InvalidInputError(
                f"runner {name!r} takes inputs {dims}, other runners or input_shape take "
                f"(N, {', '.join(map(str, shape))}); compare models of the same input size"
            )
    return shape


def describe_runner(runner: Runner) -> dict:
    """JSON-able facts of a runner: runtime, model/engine file, threads, providers, level,
    spinning."""
    info: dict = {"runtime": runner.name}
    for attribute, key in (
        ("model", "model"),
        ("engine_source", "engine"),
        ("threads", "threads"),
        ("providers", "providers"),
        ("optimization_level", "optimization_level"),
        ("spin_between_runs", "spin_between_runs"),
    ):
        value = getattr(runner, attribute, None)
        if value is not None and not isinstance(value, bytes):
            info[key] = list(value) if isinstance(value, (list, tuple)) else value
    return info


def measures_compute_separately(runner: Runner) -> bool:
    """True for runtimes whose compute time differs from host latency (GPU runtimes)."""
    return runner.times_device_separately


def _time_batch(
    runners: Mapping[str, Runner],
    feeds: dict[str, dict[str, np.ndarray]],
    batch: int,
    settings: BenchSettings,
) -> list[BatchResult]:
    names = list(runners)
    chunks = {name: _warm_up(runners[name], feeds[name], settings) for name in names}
    latency: dict[str, list[float]] = {name: [] for name in names}
    compute: dict[str, list[float]] = {name: [] for name in names}
    separate = {name: measures_compute_separately(runners[name]) for name in names}
    round_index = 0
    while not all(_done(latency[name], settings) for name in names):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # rotated: no runner always goes first
            if _done(latency[name], settings):
                continue
            count = chunks[name]
            if settings.duration_s is None:  # an exact count: the last round may be short
                count = min(count, settings.iterations - len(latency[name]))
            runner, feed = runners[name], feeds[name]
            latency[name] += runner.time_latency(feed, iterations=count, warmup=0)
            if separate[name]:
                compute[name] += runner.time_compute(feed, iterations=count, warmup=0)
            if settings.duration_s is not None:  # re-size rounds from what was measured
                chunks[name] = _runs_per_round(float(np.median(latency[name])), settings)
        round_index += 1
    results = []
    for name in names:
        stats = LatencyStats.from_samples(latency[name])
        compute_stats = LatencyStats.from_samples(compute[name]) if separate[name] else None
        results.append(
            BatchResult(
                runner=name,
                batch_size=batch,
                iterations=stats.count,
                timed_s=round(sum(latency[name]) / 1e3, 6),
                latency=stats,
                images_per_s=batch * 1e3 / stats.mean_ms,
                meets_minimum=_done(latency[name], settings),
                compute=compute_stats,
                compute_images_per_s=(
                    batch * 1e3 / compute_stats.mean_ms if compute_stats is not None else None
                ),
            )
        )
    return results


# Warm-up goes on past warmup_s until the run time is steady: the median of the last
# STEADY_WINDOW runs within STEADY_TOLERANCE of the window before (a torch.export program's
# first calls take about a second each, far past trtexec's 0.2 s), for at most STEADY_CAP_S.
STEADY_WINDOW = 5
STEADY_TOLERANCE = 0.1
STEADY_CAP_S = 10.0


def _warm_up(runner: Runner, feed: dict[str, np.ndarray], settings: BenchSettings) -> int:
    """Run untimed for warmup_s / warmup_iterations, then until steady (`is_steady`);
    returns the timed runs per round."""
    start = time.perf_counter()
    times_ms: list[float] = []
    # At least one run, whatever the settings: its time sizes the first round.
    while (
        len(times_ms) < max(settings.warmup_iterations, 1)
        or time.perf_counter() - start < settings.warmup_s
        or (settings.warmup_s > 0 and not is_steady(times_ms)
            and time.perf_counter() - start < STEADY_CAP_S)
    ):  # fmt: skip
        tick = time.perf_counter()
        runner.infer(feed)
        times_ms.append((time.perf_counter() - tick) * 1e3)
    times_ms = times_ms[-STEADY_WINDOW:]  # size the rounds from the settled runs
    if settings.duration_s is None:
        return math.ceil(settings.iterations / settings.rounds)
    return _runs_per_round(float(np.median(times_ms)), settings)


def is_steady(times_ms: Sequence[float]) -> bool:
    """Whether the last STEADY_WINDOW run times have settled: their median is within
    STEADY_TOLERANCE of the median of the window before."""
    if len(times_ms) < 2 * STEADY_WINDOW:
        return False
    last = float(np.median(times_ms[-STEADY_WINDOW:]))
    before = float(np.median(times_ms[-2 * STEADY_WINDOW : -STEADY_WINDOW]))
    return abs(last - before) <= STEADY_TOLERANCE * before


def _runs_per_round(typical_ms: float, settings: BenchSettings) -> int:
    """Runs per round so that duration_s takes about `rounds` rounds."""
    per_round_ms = settings.duration_s * 1e3 / settings.rounds
    return max(1, int(per_round_ms / max(typical_ms, 1e-3)))


def _done(samples: list[float], settings: BenchSettings) -> bool:
    if settings.iterations is not None and len(samples) < settings.iterations:
        return False
    return settings.duration_s is None or sum(samples) >= settings.duration_s * 1e3


def _feed(runner: Runner, images: np.ndarray) -> dict[str, np.ndarray]:
    (spec,) = runner.inputs()
    return {spec.name: np.ascontiguousarray(images, dtype=spec.dtype)}
