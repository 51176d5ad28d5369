"""Speed benchmark: statistics math, interleaving, report structure. No timing value is asserted."""

from __future__ import annotations

import time

import numpy as np
import pytest
from _fake_runners import DeviceRunner, RecordingRunner
from _trained import export_legacy, trained_lenet

from gdws_export.errors import InvalidInputError
from gdws_export.harness.machine import MachineInfo
from gdws_export.harness.speed import STEADY_WINDOW, benchmark, is_steady
from gdws_export.harness.speed_report import BatchResult, BenchSettings, LatencyStats, SpeedReport
from gdws_export.runtimes import OrtRunner

MACHINE = MachineInfo(os="test", python="3", cpu_model="cpu", cpu_threads=2, usable_threads=2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_latency_stats_match_numpy(seed):
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=0.0, sigma=0.5, size=137)  # skewed, like real latencies
    stats = LatencyStats.from_samples(samples)
    assert stats.count == 137
    for q in (50, 90, 95, 99):
        assert getattr(stats, f"p{q}_ms") == pytest.approx(np.percentile(samples, q))
    assert stats.median_ms == pytest.approx(np.median(samples))
    assert stats.mean_ms == pytest.approx(samples.mean())
    assert stats.std_ms == pytest.approx(samples.std())
    assert (stats.min_ms, stats.max_ms) == (samples.min(), samples.max())
    assert stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms


def test_latency_stats_of_known_samples():
    stats = LatencyStats.from_samples(list(range(1, 101)))  # 1..100 ms
    assert stats.p50_ms == pytest.approx(50.5)
    assert stats.p90_ms == pytest.approx(90.1)
    assert stats.p99_ms == pytest.approx(99.01)


def test_latency_stats_refuse_empty_samples():
    with pytest.raises(InvalidInputError):
        LatencyStats.from_samples([])


def test_runners_are_interleaved_in_rotating_order():
    log: list = []
    runners = {name: RecordingRunner(name, log) for name in ("a", "b", "c")}
    report = benchmark(
        runners, batch_sizes=[1, 4], duration_s=None, iterations=12, warmup_s=0, rounds=3,
        machine=MACHINE,
    )  # fmt: skip
    for batch in (1, 4):
        calls = [entry for entry in log if entry[2] == batch]
        # 3 rounds of 4 runs each; each round starts with a different runner.
        assert [c[0] for c in calls] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
        assert all(c[3] == 4 for c in calls)
    assert [(r.runner, r.batch_size, r.iterations) for r in report.results] == [
        ("a", 1, 12), ("b", 1, 12), ("c", 1, 12), ("a", 4, 12), ("b", 4, 12), ("c", 4, 12),
    ]  # fmt: skip
    assert all(r.meets_minimum and r.compute is None for r in report.results)
    assert not any(runner.active for runner in runners.values())  # deactivated at the end


def test_exact_iteration_count_with_uneven_rounds():
    log: list = []
    report = benchmark(
        {"a": RecordingRunner("a", log)}, batch_sizes=[2], duration_s=None, iterations=10,
        warmup_s=0, rounds=4, machine=MACHINE,
    )  # fmt: skip
    assert [entry[3] for entry in log] == [3, 3, 3, 1]
    assert report.results[0].iterations == 10


def test_device_runner_reports_compute_separately():
    log: list = []
    report = benchmark(
        {"host": RecordingRunner("host", log), "gpu": DeviceRunner("gpu", log)},
        batch_sizes=[8], duration_s=None, iterations=6, warmup_s=0, rounds=2, machine=MACHINE,
    )  # fmt: skip
    gpu, host = report.result("gpu", 8), report.result("host", 8)
    assert host.compute is None and host.compute_images_per_s is None
    assert gpu.compute.count == 6 and gpu.compute.mean_ms == pytest.approx(0.5)
    assert gpu.compute_images_per_s == pytest.approx(8 * 1e3 / 0.5)
    assert ("gpu", "compute", 8, 3) in log and not any(e[:2] == ("host", "compute") for e in log)


def test_duration_mode_reaches_both_minimums():
    log: list = []
    report = benchmark(
        {"a": RecordingRunner("a", log)}, batch_sizes=[1], duration_s=0.02, iterations=50,
        warmup_s=0.0, machine=MACHINE,
    )  # fmt: skip
    result = report.results[0]
    assert result.iterations >= 50 and result.timed_s >= 0.02 and result.meets_minimum


def _report(medians: dict[str, dict[int, float]], reference="orig") -> SpeedReport:
    results = []
    for name, by_batch in medians.items():
        for batch, median in by_batch.items():
            stats = LatencyStats.from_samples([median] * 3)
            results.append(BatchResult(name, batch, 3, 3 * median / 1e3, stats,
                                       batch * 1e3 / median, True))  # fmt: skip
    settings = BenchSettings(batch_sizes=[1, 32], input_shape=[1, 28, 28], reference=reference)
    return SpeedReport(settings, MACHINE, {n: {"runtime": "fake"} for n in medians}, results)


def test_speedup_single_stream_and_offline():
    report = _report({"orig": {1: 2.0, 32: 40.0}, "gdws": {1: 1.0, 32: 10.0}})
    assert report.speedup("gdws", 1) == pytest.approx(2.0)
    assert report.speedup("gdws", 32) == pytest.approx(4.0)
    assert report.speedup("orig", 32) == pytest.approx(1.0)
    assert report.single_stream("gdws").batch_size == 1
    assert report.offline("gdws").images_per_s == pytest.approx(3200.0)
    assert _report({"a": {1: 1.0, 32: 2.0}}, reference=None).speedup("a", 1) is None
    with pytest.raises(InvalidInputError, match="no speed result"):
        report.result("gdws", 7)


def test_markdown_has_one_row_per_runner_and_batch():
    text = _report({"orig": {1: 2.0, 32: 40.0}, "gdws": {1: 1.0, 32: 10.0}}).to_markdown()
    assert "| runner | batch |" in text
    assert "| gdws | 32 |" in text and "4.00x |" in text
    assert sum(line.startswith("| orig |") for line in text.splitlines()) == 2


def test_onnx_runtime_benchmark_structure(tmp_path):
    model, _, _ = trained_lenet()
    path = export_legacy(model, tmp_path / "lenet.onnx")
    report = benchmark(
        {"original": OrtRunner(path, threads=1), "copy": OrtRunner(path, threads=1)},
        batch_sizes=[1, 4], duration_s=None, iterations=5, warmup_s=0, reference="original",
    )  # fmt: skip
    assert report.settings.input_shape == [1, 28, 28]
    assert report.runners["copy"] == {
        "runtime": "onnxruntime", "model": str(path), "threads": 1,
        "providers": ["CPUExecutionProvider"], "optimization_level": "all",
        "spin_between_runs": False,
    }  # fmt: skip
    assert report.machine.cpu_threads >= 1 and "onnxruntime" in report.machine.packages
    for result in report.results:
        assert result.iterations == 5 and result.latency.min_ms > 0
        assert result.images_per_s == pytest.approx(
            result.batch_size * 1e3 / result.latency.mean_ms
        )
    assert report.speedup("copy", 4) > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_sizes": []}, "batch_sizes"),
        ({"batch_sizes": [0, 1]}, "batch_sizes"),
        ({"duration_s": None, "iterations": None}, "duration_s, iterations"),
        ({"duration_s": -1.0}, "duration_s"),
        ({"iterations": 0}, "iterations"),
        ({"warmup_s": -0.1}, "warmup_s"),
        ({"rounds": 0}, "rounds"),
        ({"reference": "missing"}, "reference"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        benchmark({"a": RecordingRunner("a", [])}, **kwargs)
    assert "\n" not in str(info.value)


def test_shape_mismatch_between_runners_is_an_error():
    runners = {
        "a": RecordingRunner("a", []),
        "b": RecordingRunner("b", [], input_shape=("batch", 3, 32, 32)),
    }
    with pytest.raises(InvalidInputError, match="runner 'b' takes inputs") as info:
        benchmark(runners, iterations=1, duration_s=None, machine=MACHINE)
    assert "\n" not in str(info.value)


def test_fixed_batch_runner_refuses_other_batch_sizes():
    fixed = RecordingRunner("a", [], input_shape=(1, 1, 28, 28))
    with pytest.raises(InvalidInputError, match="takes batch 1 only"):
        benchmark({"a": fixed}, batch_sizes=[1, 8], iterations=1, duration_s=None)
    report = benchmark(
        {"a": fixed}, batch_sizes=[1], iterations=2, duration_s=None, warmup_s=0, machine=MACHINE
    )
    assert report.results[0].iterations == 2


def test_dynamic_image_sizes_need_input_shape():
    dynamic = RecordingRunner("a", [], input_shape=("n", 1, "h", "w"))
    with pytest.raises(InvalidInputError, match="pass input_shape"):
        benchmark({"a": dynamic}, iterations=1, duration_s=None, machine=MACHINE)
    report = benchmark(
        {"a": dynamic}, batch_sizes=[2], iterations=1, duration_s=None, warmup_s=0,
        input_shape=(1, 8, 8), machine=MACHINE,
    )  # fmt: skip
    assert report.settings.input_shape == [1, 8, 8]


@pytest.mark.parametrize(
    ("times", "steady"),
    [
        ([1.0] * 10, True),
        ([1000.0] * 5 + [1.0] * 5, False),  # the first calls were slow: not settled yet
        ([1000.0] * 3 + [1.0] * 10, True),
        ([1.0] * 9, False),  # too few runs to tell
        ([1.0, 1.05] * 5, True),  # noise within the tolerance
    ],
)
def test_is_steady(times, steady):
    assert is_steady(times) is steady


class SlowStartRunner(RecordingRunner):
    """Its first `slow` calls take 20 ms, later ones about nothing (like a program's first
    calls): the warm-up must outlast them, whatever warmup_s."""

    def __init__(self, label, log, slow: int = 3) -> None:
        super().__init__(label, log)
        self.calls, self.slow = 0, slow

    def infer(self, feed):
        self.calls += 1
        if self.calls <= self.slow:
            time.sleep(0.02)
        return super().infer(feed)


def test_warm_up_runs_until_the_run_time_is_steady():
    runner = SlowStartRunner("program", [])
    benchmark({"program": runner}, batch_sizes=(1,), duration_s=None, iterations=3,
              warmup_s=0.001, machine=MachineInfo())  # fmt: skip
    # 3 slow calls, then two windows of STEADY_WINDOW fast ones before the timed runs.
    assert runner.calls >= runner.slow + 2 * STEADY_WINDOW
