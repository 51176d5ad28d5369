"""`gdws-export bench`: ONNX files, ONNX Runtime settings and engines, compared interleaved."""

from __future__ import annotations

import shutil

import pytest
from _cli import run_command
from _trained import export_legacy, trained_lenet
from torch import nn

from gdws_export.cli import bench as bench_command
from gdws_export.errors import InvalidInputError
from gdws_export.harness.report import read_json
from gdws_export.harness.runners import load_runner
from gdws_export.harness.speed_report import SpeedReport
from gdws_export.runtimes.build import build

FAST = ["--iterations", 5, "--warmup", 0, "--batch-sizes", 1, 4, "--threads", 1]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """Two ONNX files of the trained LeNet (a 'reference' and a 'model')."""
    folder = tmp_path_factory.mktemp("bench")
    model, _, _ = trained_lenet()
    reference = export_legacy(model, folder / "original.onnx")
    candidate = folder / "gdws.onnx"
    shutil.copy(reference, candidate)
    return reference, candidate


def test_bench_compares_two_models_and_writes_both_reports(onnx_files, tmp_path, capsys):
    reference, candidate = onnx_files
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    argv = [candidate, "--reference", reference, *FAST, "--output", out_json, "--markdown", out_md]
    assert run_command(bench_command, argv) == 0
    report = read_json(out_json)
    assert isinstance(report, SpeedReport)
    assert list(report.runners) == ["original.onnx", "gdws.onnx"]
    assert report.settings.reference == "original.onnx"
    assert report.settings.duration_s is None and report.settings.iterations == 5
    assert [(r.runner, r.batch_size, r.iterations) for r in report.results] == [
        ("original.onnx", 1, 5), ("gdws.onnx", 1, 5), ("original.onnx", 4, 5), ("gdws.onnx", 4, 5),
    ]  # fmt: skip
    assert report.runners["gdws.onnx"]["threads"] == 1
    printed = capsys.readouterr().out
    assert "| gdws.onnx | 4 | 5 |" in printed
    assert out_md.read_text() == printed


def test_bench_reads_onnx_runtime_settings(onnx_files, tmp_path):
    _, candidate = onnx_files
    built = build(candidate, output_dir=tmp_path, threads=1)
    argv = [built.settings_path, "--iterations", 3, "--warmup", 0, "--batch-sizes", 2]
    argv += ["--output", tmp_path / "r.json"]
    assert run_command(bench_command, argv) == 0
    runner = read_json(tmp_path / "r.json").runners["gdws.fp32.ort.json"]
    assert runner["model"].endswith("gdws.fp32.ort.onnx") and runner["threads"] == 1


def test_load_runner_picks_the_runtime_by_file(onnx_files, tmp_path):
    _, candidate = onnx_files
    assert load_runner(candidate, threads=2).threads == 2
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    assert load_runner(engine).name == "tensorrt"  # loading happens on activate, not here


@pytest.mark.parametrize(
    ("name", "extra", "message"),
    [
        ("missing.onnx", [], "does not exist"),
        ("model.txt", [], "unknown model file type"),
        ("model.engine.json", [], "describes a TensorRT engine"),
        ("model.engine", ["--threads", 2], "ONNX Runtime only"),
        ("settings.json", [], "not an ONNX Runtime settings file"),
    ],
)
def test_bad_model_files_are_one_line_errors(tmp_path, name, extra, message):
    if name != "missing.onnx":
        (tmp_path / name).write_text("[1, 2]")
    with pytest.raises(InvalidInputError, match=message) as info:
        run_command(bench_command, [tmp_path / name, "--iterations", 1, *extra])
    assert "\n" not in str(info.value)


def test_models_of_different_input_shapes_are_refused(onnx_files, tmp_path):
    reference, _ = onnx_files
    rgb = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    other = export_legacy(rgb, tmp_path / "rgb.onnx", input_shape=(3, 16, 16))
    with pytest.raises(InvalidInputError, match="takes inputs") as info:
        run_command(bench_command, [other, "--reference", reference, "--iterations", 1])
    assert "\n" not in str(info.value)


@pytest.mark.trt
@pytest.mark.gpu
def test_bench_tensorrt_engine_reports_gpu_compute(onnx_files, tmp_path):
    _, candidate = onnx_files
    built = build(candidate, target="trt", precision="fp16", output_dir=tmp_path)
    argv = [built.engine_path, "--iterations", 20, "--warmup", 0.05, "--batch-sizes", 1, 32]
    argv += ["--output", tmp_path / "trt.json"]
    assert run_command(bench_command, argv) == 0
    report = read_json(tmp_path / "trt.json")
    assert report.machine.gpus and report.machine.gpus[0].name
    assert report.machine.packages.get("tensorrt")
    for result in report.results:
        assert result.compute is not None and result.compute.count == 20
        assert result.compute_images_per_s > 0


def test_bench_times_every_model_at_the_threads_a_settings_file_records(onnx_files, tmp_path,
                                                                        capsys):  # fmt: skip
    """An export's settings record one thread; a bare reference .onnx must not get every core
    (that made a 2.46x speed-up read 4.49x)."""
    reference, candidate = onnx_files
    settings = build(candidate, target="ort", precision="fp32", output_dir=tmp_path, threads=1)
    argv = [settings.settings_path, "--reference", reference, "--iterations", 2, "--warmup", 0,
            "--batch-sizes", 1, "--output", tmp_path / "bench.json"]  # fmt: skip
    assert run_command(bench_command, argv) == 0
    report = read_json(tmp_path / "bench.json")
    assert [info["threads"] for info in report.runners.values()] == [1, 1]
    assert "CPU threads: original.onnx 1, " in capsys.readouterr().out


def test_bench_refuses_settings_files_of_different_threads(onnx_files, tmp_path):
    _, candidate = onnx_files
    one = build(candidate, target="ort", precision="fp32", output_dir=tmp_path / "a", threads=1)
    two = build(candidate, target="ort", precision="fp32", output_dir=tmp_path / "b", threads=2)
    argv = [one.settings_path, "--reference", two.settings_path, "--iterations", 1]
    with pytest.raises(InvalidInputError, match=r"different thread counts.*--threads"):
        run_command(bench_command, argv)
    assert run_command(bench_command, [*argv, "--threads", 1, "--warmup", 0]) == 0
