"""Every method through the export (`run_export`, `gdws-export --method`): ONNX parity, the
report's MACs against the shipped model, ratio 1 reproducing the model, one-line refusals."""

from __future__ import annotations

import pytest
import torch

from gdws_export.cli import main
from gdws_export.loading import load_model_file
from gdws_export.models import create_model, save_checkpoint
from gdws_export.pipeline import ExportConfig, run_export
from gdws_export.pipeline.model import count_macs_params

FAST = {"exporter": "legacy", "lowering": "gather"}
METHODS = ("gdws", "dws", "l1-prune", "tucker2", "lowrank", "kronecker", "gdws,kronecker")


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A width-2 VGG-16 checkpoint on 1x16x16 images: 13 convs with BatchNorms (prunable), a
    Linear head (Kronecker)."""
    torch.manual_seed(0)
    model = create_model("vgg16_bn", in_channels=1, input_size=16, width=2)
    return str(save_checkpoint(model, tmp_path_factory.mktemp("model") / "vgg.pt"))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_exports_with_parity(vgg_file, tmp_path, method):
    report = run_export(ExportConfig(vgg_file, output=str(tmp_path / "out"), method=method,
                                     mac_ratio=0.5, **FAST))  # fmt: skip
    parity = report.parity["onnx_gdws"]
    assert parity["passed"] and parity["relative_diff"] <= 1e-4
    assert report.parity["engine"]["passed"]
    approximation = report.approximation
    assert approximation["method"] == method and report.settings["method"] == method
    shipped = load_model_file(str(report.path("shipped_program"))).module
    macs, params = count_macs_params(shipped, (1, 16, 16))
    expected = report.macs["original"] - approximation["macs_before"]
    assert macs == report.macs["gdws"] == report.macs["shipped"]
    assert macs == expected + approximation["macs_after"]
    assert params == report.params["gdws"] < report.params["original"]
    assert f"| {approximation['layers'][-1]['name']} |" in report.to_markdown()


@pytest.mark.parametrize("method", METHODS)
def test_ratio_one_reproduces_the_model(vgg_file, tmp_path, method):
    report = run_export(ExportConfig(vgg_file, output=str(tmp_path / "out"), method=method,
                                     mac_ratio=1.0, dry_run=True))  # fmt: skip
    assert report.parity["approximation"]["max_abs_diff"] == 0
    assert report.macs["gdws"] == report.macs["original"]


def _refused(capsys, tmp_path, args: list[str], message: str) -> None:
    """`gdws-export` exits 2 with one line naming `message`, and writes nothing."""
    out = tmp_path / "out"
    assert main([*args, "-o", str(out), *("--exporter", "legacy")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--method", "tuker2"], "did you mean 'tucker2'"),
        (["--method", "gdws,dws"], "gdws and dws both replace Conv2d layers"),
        (["--method", "tucker2", "--mac-ratio", "0.0001"], "out of reach"),
        (["--method", "kronecker", "--mac-ratio", "0.01"], "out of reach"),
        (["--method", "kronecker", "--beta", "0.1"], "--beta is GDWS's"),
        (["--method", "tucker2", "--time-ratio", "0.5"], "--time-ratio is GDWS's"),
        (["--method", "kronecker", "--sensitivity", "relative"], "uses no alphas"),
        (["--method", "tucker2", "--refit"], "--refit refits the 1x1 convs of GDWS layers"),
        (["--method", "lowrank", "--no-gdws"], "--no-gdws exports the original model"),
        (["--method", "kronecker", "--exclude", "features.3"], "matches no Linear layer"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(vgg_file, tmp_path, capsys, args, message):
    _refused(capsys, tmp_path, [vgg_file, *args], message)


def test_sweep_refuses_an_unknown_method(vgg_file, tmp_path, capsys):
    code = main(["sweep", vgg_file, "--method", "kron", "--mac-ratios", "0.5", "--data",
                 "x.npz", "--output-dir", str(tmp_path / "sweep")])  # fmt: skip
    assert code == 2 and "did you mean 'kronecker'" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()
