"""Hostile inputs: absurd sizes, unsupported opsets, corrupt files and sidecars, odd models.

Each case is one plain line on stderr with its exit code (2 bad input, 3 unsupported model),
no traceback, no ANSI escapes, nothing written, and no memory spent first: the huge-size cases
run in a subprocess whose address space is capped at 3 GiB, so a check that came after the
allocation would fail there instead of refusing.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from gdws_export.cli import main
from gdws_export.errors import InvalidInputError, plain_line
from gdws_export.gdws.approximate import NOT_RUN, approximate
from gdws_export.limits import (
    MAX_BATCH,
    MEMORY_LIMIT_ENV,
    estimate_arch_memory,
    estimate_model_memory,
    memory_limit,
)
from gdws_export.lowering.export import default_opset, export_model, supported_opsets
from tests import _model_files as files

ROOT = Path(__file__).resolve().parents[1]
ADDRESS_SPACE = 3 * 2**30  # enough to import torch and onnxruntime, far below the sizes asked
FAST_SECONDS = 30  # a refusal before any work: generous for a 2-core machine under load
HUGE = str(10**9)


class Branchy(nn.Module):
    """A model whose forward reaches `rare` only on inputs with a large mean."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.body = nn.Conv2d(8, 8, 3, padding=1)
        self.rare = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        if x.mean() > 1000:  # never for images in [0, 1]
            x = self.rare(x)
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A checkpoint, a state_dict, a traced TorchScript file and an ONNX file of a tiny LeNet."""
    path = tmp_path_factory.mktemp("hostile")
    files.checkpoint(path)
    files.state_dict_file(path)
    files.torchscript_file(path, "trace")
    proto = export_model(files.lenet(), files.images(2), exporter="legacy")
    onnx.save(proto, path / "good.onnx")
    np_path = files.calib_npz(path)
    assert np_path.exists()
    return path


def _check_line(err: str, code: int, returned: int, phrases) -> str:
    assert returned == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gdws-export: error: "), lines[0]
    assert "Traceback" not in err and "\x1b" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def _fails(capsys, argv, code, *phrases, out: Path | None = None) -> str:
    """main(argv) in-process: one line, the code, nothing at `out`, fast."""
    start = time.perf_counter()
    returned = main([str(a) for a in argv])
    assert time.perf_counter() - start < FAST_SECONDS
    line = _check_line(capsys.readouterr().err, code, returned, phrases)
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
    return line


def _fails_capped(argv, code, *phrases, out: Path | None = None, env=None) -> str:
    """`python -m gdws_export` under a 3 GiB address space: refused before allocating."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    run = subprocess.run(
        [sys.executable, "-m", "gdws_export", *map(str, argv)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap_memory,
    )
    line = _check_line(run.stderr, code, run.returncode, phrases)
    if out is not None:
        assert not out.exists()
    return line


# --- sizes ----------------------------------------------------------------------------------


def test_input_shape_over_the_per_axis_cap(folder, tmp_path):
    out = tmp_path / "out"
    argv = [folder / "weights.pt", "--arch", "lenet", "--input-shape", "3x100000x100000"]
    _fails_capped([*argv, "-o", out], 2, "--input-shape 3x100000x100000", "65536", out=out)


def test_input_shape_over_the_memory_limit(folder, tmp_path):
    out = tmp_path / "out"
    argv = [folder / "weights.pt", "--arch", "lenet", "--input-shape", "1x30000x30000"]
    line = _fails_capped([*argv, "-o", out], 2, "memory limit", out=out)
    assert "GiB" in line and MEMORY_LIMIT_ENV in line


def test_zero_input_shape(capsys, folder, tmp_path):
    out = tmp_path / "out"
    argv = [folder / "lenet.pt", "--input-shape", "0x1x1", "-o", out]
    _fails(capsys, argv, 2, "--input-shape", "positive", out=out)


def test_huge_architecture_width(folder, tmp_path):
    out = tmp_path / "out"
    argv = [folder / "weights.pt", "--arch", "lenet", "--arch-kwargs", '{"width": 1000000}']
    line = _fails_capped([*argv, "-o", out], 2, "--arch lenet", "memory limit", out=out)
    assert "parameters" in line and "activations" in line


def test_huge_batch(folder, tmp_path):
    out = tmp_path / "out"
    argv = [folder / "lenet.pt", "--batch", HUGE, "-o", out]
    _fails_capped(argv, 2, f"--batch {HUGE}", str(MAX_BATCH), out=out)


def test_sweep_huge_batch_sizes(capsys, folder, tmp_path):
    out = tmp_path / "sweep"
    argv = ["sweep", folder / "lenet.pt", "--betas", "0.1", "--data", folder / "calib.npz"]
    argv += ["--output-dir", out, "--batch-sizes", "1", HUGE]
    _fails(capsys, argv, 2, HUGE, str(MAX_BATCH), out=out)


def test_bench_huge_batch_sizes(capsys, folder, tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", folder / "good.onnx", "--batch-sizes", HUGE, "--output", out]
    _fails(capsys, argv, 2, HUGE, str(MAX_BATCH), out=out)


def test_bench_inputs_over_the_memory_limit(capsys, folder, tmp_path, monkeypatch):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1M")
    out = tmp_path / "bench.json"
    argv = ["bench", folder / "good.onnx", "--batch-sizes", "4096", "--iterations", "1"]
    _fails(capsys, [*argv, "--output", out], 2, "memory limit", "1.0 MiB", out=out)


@pytest.mark.parametrize(
    ("shape", "phrase"), [("1 0 16", "positive sizes"), ("1 100000 100000", "65536")]
)
def test_bench_image_size_out_of_range(capsys, folder, tmp_path, shape, phrase):
    model = onnx.load(folder / "good.onnx")
    for axis, name in ((2, "height"), (3, "width")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(model, dynamic)
    out = tmp_path / "bench.json"
    argv = ["bench", dynamic, "--input-shape", *shape.split(), "--iterations", "1"]
    _fails(capsys, [*argv, "--output", out], 2, "input shape", phrase, out=out)


def test_memory_limit_from_the_environment(monkeypatch, capsys, folder, tmp_path):
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "2G")
    assert memory_limit()[0] == 2 * 2**30
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "lots")
    with pytest.raises(InvalidInputError, match=MEMORY_LIMIT_ENV):
        memory_limit()
    out = tmp_path / "out"
    _fails(capsys, [folder / "lenet.pt", "--dry-run", "-o", out], 2, MEMORY_LIMIT_ENV, out=out)


def test_memory_estimate_is_close_to_the_real_bytes():
    """Parameters + one forward's activations, against the real parameters and the tensors
    autograd keeps for a backward pass (what an attack holds)."""
    model = files.lenet().eval()
    batch = 8
    estimate = estimate_model_memory(model, files.SHAPE, batch)
    tensors = [*model.parameters(), *model.buffers()]
    real_parameters = sum(t.numel() * t.element_size() for t in tensors)
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, nn.Parameter):
            saved[tensor.data_ptr()] = tensor.numel() * tensor.element_size()
        return tensor

    x = files.images(batch).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum()
    real = real_parameters + sum(saved.values()) + x.numel() * x.element_size()
    assert estimate.parameters == real_parameters
    assert 0.5 <= estimate.total / real <= 2, (estimate, real)
    # built on the meta device from the architecture's name alone: the same figures
    kwargs = {"in_channels": 1, "input_size": 16, "width": 4}
    assert estimate_arch_memory("lenet", kwargs, files.SHAPE, batch) == estimate


# --- opset -------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", ["3", "99999"])
def test_unsupported_opset(capsys, folder, tmp_path, opset):
    out = tmp_path / "out"
    supported = supported_opsets("dynamo")
    line = _fails(capsys, [folder / "lenet.pt", "--opset", opset, "-o", out], 2, "--opset", out=out)
    assert f"{supported[0]} to {supported[-1]}" in line


def test_opset_not_a_number(capsys, folder, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, [folder / "lenet.pt", "--opset", "abc", "-o", out], 2, "--opset", out=out)


def test_report_records_the_opset_of_the_written_file(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [folder / "lenet.pt", "--no-gdws", "--exporter", "legacy", "--opset", "17", "-o", out]
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert default_opset(out / "original.onnx") == 17
    assert report["report"]["exports"]["original"]["opset"] == 17
    assert report["report"]["settings"]["opset"] == 17


# --- corrupt files -----------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
@pytest.mark.parametrize("role", ["model", "reference"])
def test_corrupt_onnx_to_bench(capsys, folder, tmp_path, damage, role):
    good = (folder / "good.onnx").read_bytes()
    content = {
        "truncated": good[: len(good) // 2],
        "random": bytes(range(256)) * 8,
        "empty": b"",
    }[damage]
    bad = tmp_path / f"{damage}.onnx"
    bad.write_bytes(content)
    model, reference = (
        (bad, folder / "good.onnx") if role == "model" else (folder / "good.onnx", bad)
    )
    out = tmp_path / "bench.json"
    argv = ["bench", model, "--reference", reference, "--iterations", "1", "--output", out]
    _fails(capsys, argv, 2, bad.name, out=out)


@pytest.mark.parametrize(
    ("name", "content", "phrase"),
    [
        ("model.ort.json", '{"model": 5}', "field 'model' must be a string, got 5"),
        ("model.ort.json", "not json {", "not JSON"),
        ("model.ort.json", "[1, 2]", "JSON list, not an object"),
        ("model.ort.json", "{}", "field 'model' is missing"),
        ("model.ort.json", '{"model": "m.onnx", "threads": "4"}', "field 'threads'"),
        ("model.torch.json", '{"program": ["x"]}', "field 'program' must be a string"),
    ],
)
def test_malformed_sidecar(capsys, tmp_path, name, content, phrase):
    sidecar = tmp_path / name
    sidecar.write_text(content)
    out = tmp_path / "bench.json"
    _fails(capsys, ["bench", sidecar, "--output", out], 2, name, phrase, out=out)


def test_malformed_engine_sidecar(tmp_path):
    from gdws_export.runtimes.tensorrt import EngineInfo

    sidecar = tmp_path / "gdws.fp16.engine.json"
    sidecar.write_text('{"engine_path": 5}')
    with pytest.raises(InvalidInputError, match=r"engine.json .*field 'engine_path' must be a"):
        EngineInfo.load(sidecar)
    sidecar.write_text('{"engine_path": "gdws.fp16.engine"}')
    with pytest.raises(InvalidInputError, match="field 'onnx_path' is missing"):
        EngineInfo.load(sidecar)


# --- odd models --------------------------------------------------------------------------


def test_conv_a_data_dependent_branch_skips_is_kept_exact(capsys, tmp_path):
    model_file = files.pickled_module_file(tmp_path, Branchy(), "branchy.pt")
    argv = [model_file, "--trust-pickle", "--input-shape", "1x8x8", "--dry-run"]
    assert main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    assert "| rare |" in captured.out and "did not run on the probe input" in captured.out
    warnings = captured.err.strip().splitlines()
    assert len(warnings) == 1 and "conv rare did not run" in warnings[0], captured.err
    _, report = approximate(Branchy(), mac_ratio=0.5, input_shape=(1, 8, 8))
    rare = next(layer for layer in report.layers if layer.name == "rare")
    assert (rare.status, rare.reason, rare.macs_before) == ("skipped", NOT_RUN, 0)


def test_torchscript_with_a_wrong_input_shape_prints_one_line(folder, tmp_path):
    """PyTorch logged ~20 lines (a fake-tensor traceback) before the error line."""
    out = tmp_path / "out"
    argv = [folder / "lenet_trace.pt", "--input-shape", "1x5x5", "-o", out]
    _fails_capped(argv, 3, "lenet_trace.pt", out=out)


# --- the error line ----------------------------------------------------------------------


def test_torch_load_advice_to_run_code_is_not_repeated(capsys, folder, tmp_path):
    """torch.load's refusal advises weights_only=False over several lines: one line is left."""
    from fractions import Fraction

    alphas = tmp_path / "alphas.pt"
    torch.save({"features.3": Fraction(1, 3)}, alphas)
    argv = [folder / "lenet.pt", "--alphas", alphas, "--beta", "0.1", "--dry-run"]
    line = _fails(capsys, argv, 2, "alphas.pt")
    assert "weights_only" not in line


def test_error_line_is_one_plain_line_without_code_running_advice():
    coloured = "export failed. \x1b[96mThis is step 1/3\x1b[0m of exporting\nNext steps: ..."
    assert plain_line(coloured) == "export failed. This is step 1/3 of exporting"
    advice = (
        "Weights only load failed. This file can still be loaded, to do so you have two "
        "options. Re-running torch.load with weights_only set to False will likely succeed. "
        "Use weights_only=False only for files you trust.\n\t(1) more advice"
    )
    assert plain_line(advice) == "Weights only load failed."
    assert plain_line("\n\n  tab\there\x07 bell \x1b]0;title\x07done \x1b[1mbold") == (
        "tab here bell done bold"
    )
