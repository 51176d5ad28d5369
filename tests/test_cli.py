"""The gdws-export command: every bad input gives one line, its exit code, and no outputs.

Runs `main([...])` in-process (fast); two subprocess runs check `python -m gdws_export`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from gdws_export.cli import COMMANDS, EXIT_CODES, main
from gdws_export.models import create_model, save_checkpoint
from tests import _model_files as files

FAST = ["--exporter", "legacy", "--lowering", "gather"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(files.checkpoint(tmp_path_factory.mktemp("model")))


def _fails(capsys, argv, code, *phrases, out=None):
    """Run main(argv); check the exit code, one stderr line naming the problem, no outputs."""
    assert main(argv) == code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("gdws-export: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in captured.err
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
    return lines[0]


# --- bad input, one test each (exit code 2 unless said) ----------------------------------


def test_missing_file(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(
        capsys, [str(tmp_path / "nope.pt"), "-o", str(out)], 2, "nope.pt does not exist", out=out
    )


def test_truncated_file(capsys, tmp_path, ckpt):
    cut = tmp_path / "cut.pt"
    data = open(ckpt, "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    _fails(capsys, [str(cut), "-o", str(out)], 2, "truncated or corrupt", out=out)


def test_corrupt_file(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    # Fixed bytes: random ones can start with a pickle opcode now and then (a flaky test).
    bad.write_bytes(b"\x00\x01\x02 not a model, just bytes \xff\xfe" * 3)
    out = tmp_path / "out"
    _fails(capsys, [str(bad), "-o", str(out)], 2, "not a PyTorch file", out=out)


def test_non_model_pickle(capsys, tmp_path):
    thing = tmp_path / "thing.pt"
    torch.save({"epochs": 3, "lr": 0.1}, thing)
    out = tmp_path / "out"
    _fails(capsys, [str(thing), "-o", str(out)], 2, "holds no state_dict", out=out)


def test_pickle_that_would_run_code(capsys, tmp_path):
    paths, marker = files.code_running_pickles(tmp_path)
    for path in paths:
        out = tmp_path / f"out_{path.suffix[1:]}"
        _fails(capsys, [str(path), "-o", str(out)], 2, "would run code", "--trust-pickle", out=out)
    assert not marker.exists()


def test_pickled_module_loads_with_trust(capsys, tmp_path):
    path = files.pickled_module_file(tmp_path)
    _fails(capsys, [str(path), "--dry-run"], 2, "--trust-pickle")
    assert main([str(path), "--dry-run", "--trust-pickle"]) == 0
    assert "features.3" in capsys.readouterr().out


def test_state_dict_that_does_not_match_arch(capsys, tmp_path):
    weights = files.state_dict_file(tmp_path)
    out = tmp_path / "out"
    line = _fails(capsys, [str(weights), "--arch", "vgg16_bn", "--input-shape", "1x1x16x16",
                           "-o", str(out)], 2, "missing key", "unexpected key", out=out)  # fmt: skip
    assert "features.0.weight" in line


def test_unknown_arch(capsys, tmp_path):
    weights = files.state_dict_file(tmp_path)
    _fails(capsys, [str(weights), "--arch", "resnet19"], 2, "unknown model 'resnet19'",
           "did you mean")  # fmt: skip


def test_malformed_input_shape(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, [ckpt, "--input-shape", "1x3xtwo", "-o", str(out)], 2,
           "--input-shape", "malformed", out=out)  # fmt: skip


def test_model_with_no_conv(capsys, tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    path = files.pickled_module_file(tmp_path, model)
    out = tmp_path / "out"
    _fails(capsys, [str(path), "--trust-pickle", "--input-shape", "1x1x16x16", "-o", str(out)],
           3, "no KxK conv", "--no-gdws", out=out)  # fmt: skip


def test_forward_fails_on_the_shape(capsys, ckpt, tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Conv2d(4, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 12 * 12, 10))  # fmt: skip
    path = files.pickled_module_file(tmp_path, model)
    out = tmp_path / "out"
    _fails(capsys, [str(path), "--trust-pickle", "--input-shape", "1x1x20x20", "-o", str(out)],
           3, "forward fails on input shape (2, 1, 20, 20)", out=out)  # fmt: skip


def test_nan_weights(capsys, tmp_path):
    model = files.lenet()
    with torch.no_grad():
        model.classifier[1].bias[3] = float("inf")
    from gdws_export.models import save_checkpoint

    path = save_checkpoint(model, tmp_path / "nan.pt")
    out = tmp_path / "out"
    _fails(capsys, [str(path), "-o", str(out)], 2, "classifier.1.bias", "NaN or Inf", out=out)


@pytest.mark.parametrize(
    ("option", "phrase"),
    [(["--beta", "-1"], "--beta must be a finite number >= 0"),
     (["--mac-ratio", "2"], "--mac-ratio must be in (0, 1]")],
)  # fmt: skip
def test_out_of_range_settings(capsys, ckpt, tmp_path, option, phrase):
    out = tmp_path / "out"
    _fails(capsys, [ckpt, *option, "-o", str(out)], 2, phrase, out=out)


def test_unwritable_output_directory(capsys, ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    _fails(capsys, [ckpt, "-o", str(blocker / "out"), *FAST], 2, "cannot write")
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_read_only_output_directory(capsys, ckpt, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    _fails(capsys, [ckpt, "-o", str(locked / "out"), *FAST], 2, "cannot write")


def test_trt_target_without_tensorrt(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "out"
    _fails(capsys, [ckpt, "--target", "trt", "--fp16", "-o", str(out)], 5,
           "tensorrt is not installed", "pip install", out=out)  # fmt: skip


def test_existing_output_directory(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _fails(capsys, [ckpt, "-o", str(out)], 2, "already exists", "--force")
    assert list(out.iterdir()) == []


def test_parity_failure(capsys, ckpt, tmp_path, monkeypatch):
    import gdws_export.pipeline.engine as engine

    monkeypatch.setattr(engine, "TOLERANCES", {**engine.TOLERANCES, "fp32": -1.0})
    out = tmp_path / "out"
    _fails(capsys, [ckpt, "-o", str(out), *FAST], 4, "differs from its ONNX graph", out=out)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--target", "tpu"], "invalid choice: 'tpu'"),
        (["--fp16", "--int8"], "not allowed with argument"),
        (["--beta", "1", "--mac-ratio", "0.5"], "not allowed with argument"),
        (["--arch-kwargs", "[1]"], "not a JSON object"),
        (["--alpha-eps", "8/0"], "not a number"),
        (["--calib-samples", "64"], "--calib-samples needs --calib"),
        (["--held-out-samples", "64"], "--held-out-samples needs --calib"),
        (["--calib", "x.npz", "--held-out-samples", "0"], "--held-out-samples must be a positive"),
        (["--calib", "x.npz", "--beta", "0.1", "--sensitivity", "auto"], "use --mac-ratio or"),
    ],
)
def test_usage_errors_are_one_line(capsys, ckpt, argv, phrase):
    _fails(capsys, [ckpt, *argv], 2, phrase)


def test_no_arguments(capsys):
    _fails(capsys, [], 2, "no model given")


def test_internal_errors_are_one_line_and_traceback_with_v(capsys, ckpt, monkeypatch):
    import gdws_export.pipeline.run as run

    def bug(*args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(run, "run_export", bug)
    _fails(capsys, [ckpt], 1, "internal error (ZeroDivisionError: oops)", "-v")
    assert main([ckpt, "-v"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_ctrl_c_is_130(capsys, ckpt, monkeypatch):
    import gdws_export.pipeline.run as run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_export", interrupted)
    _fails(capsys, [ckpt], 130, "interrupted")


# --- success -------------------------------------------------------------------------------


def test_export_prints_where_the_engine_and_report_are(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    assert main([ckpt, "--target", "ort", "-o", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert f"engine  {out}/gdws.fp32.ort.onnx" in captured.out
    assert f"report  {out}/report.md" in captured.out
    assert captured.err == ""  # not a terminal: no stage lines
    assert (out / "gdws.fp32.ort.onnx").is_file() and (out / "report.md").is_file()


def test_explicit_export_command_and_quiet(capsys, ckpt, tmp_path):
    assert main(["export", ckpt, "-o", str(tmp_path / "out"), "-q", *FAST]) == 0
    assert capsys.readouterr() == ("", "")


def test_verbose_shows_stage_lines(capsys, ckpt, tmp_path):
    assert main([ckpt, "-o", str(tmp_path / "out"), "-v", *FAST]) == 0
    err = capsys.readouterr().err
    assert "loading the model ... done" in err and "building the engine (ort, fp32)" in err


def test_dry_run_prints_the_plan(capsys, ckpt, tmp_path):
    assert main([ckpt, "--dry-run", "--mac-ratio", "0.3", "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "| features.3 | 8x4x5x5 | gdws |" in out and "dry run, nothing written" in out
    assert list(tmp_path.iterdir()) == []


def test_time_ratio_dry_run_times_every_layer(capsys, ckpt, tmp_path):
    # Ratio 1: on this tiny net GDWS layers are barely faster, so a lower ratio may not fit.
    args = ["--dry-run", "--time-ratio", "1", "--threads", "1", "-o", str(tmp_path / "out")]
    assert main([ckpt, *args]) == 0
    out = capsys.readouterr().out
    assert re.search(r"GDWS with time_ratio 1.0 \(predicted conv time [01]\.\d\d of the", out)
    assert "dry run, nothing written" in out
    assert list(tmp_path.iterdir()) == []


def test_max_layer_error_reaches_the_allocation(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    assert main([ckpt, "--mac-ratio", "0.3", "--max-layer-error", "0.2", "-o", str(out)]) == 0
    approximation = json.loads((out / "report.json").read_text())["report"]["approximation"]
    assert approximation["max_layer_error"] == 0.2
    capsys.readouterr()
    assert main([ckpt, "--beta", "0.1", "--max-layer-error", "0.2", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-layer-error caps a budget" in err[0]
    assert not (tmp_path / "b").exists()


def test_exclude_reaches_the_allocation(capsys, tmp_path):
    torch.manual_seed(0)
    vgg = create_model("vgg16_bn", num_classes=10, in_channels=1, width=4, input_size=16)
    path = str(save_checkpoint(vgg, tmp_path / "vgg.pt"))
    args = [path, "--mac-ratio", "0.3", "--exclude", "features.3", "--exclude", "features.1*"]
    assert main([*args, "--dry-run"]) == 0
    rows = {line.split(" | ")[0][2:]: line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| features.")}  # fmt: skip
    for name in ("features.3", "features.10", "features.17"):
        assert "| skipped (matched by exclude) |" in rows[name]
    assert "| gdws |" in rows["features.24"] or "| original |" in rows["features.24"]
    assert main([path, "--exclude", "classifier", "-o", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exclude pattern 'classifier' matches no conv" in err[0]
    assert not (tmp_path / "b").exists()


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: gdws-export [export] MODEL [options]")
    for option in ("--target", "--fp16", "--int8", "--calib", "--beta", "--mac-ratio", "--time-ratio",
                   "--alphas", "--max-layer-error", "--lowering", "--opset", "--static", "--batch", "--workspace",
                   "--timing-cache", "--output", "--force", "--no-gdws", "--dry-run", "--seed",
                   "--triton-repo", "--trust-pickle", "--input-shape", "--mean", "--exclude"):  # fmt: skip
        assert option in text
    assert EXIT_CODES in text
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("gdws-export 0.1.0 (torch ")


def test_commands_are_found_by_name():
    from gdws_export.cli import available_commands

    found = available_commands()
    assert "export" in found and set(found) <= set(COMMANDS)


@pytest.mark.slow
def test_defaults_as_a_user_runs_them(capsys, ckpt, tmp_path, monkeypatch):
    """Dynamo exporter, auto lowering, default output directory name."""
    monkeypatch.chdir(tmp_path)
    assert main([ckpt]) == 0
    assert (tmp_path / "lenet-ort-fp32" / "report.json").is_file()


# --- python -m gdws_export -----------------------------------------------------------------


def _module(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "gdws_export", *argv], capture_output=True,
                          text=True, cwd=cwd, timeout=300)  # fmt: skip


def test_module_entry_point_fails_cleanly(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = _module(str(tmp_path / "missing.pt"), cwd=repo)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"gdws-export: error: model file {tmp_path / 'missing.pt'} does not exist; check the path"
    ]


def test_module_entry_point_plans(tmp_path, ckpt):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = _module(ckpt, "--dry-run", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "features.3" in done.stdout and done.stderr == ""
