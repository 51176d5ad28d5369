"""A 3-setting sweep of a small LeNet through `gdws-export sweep`, its report files, and bad input.

Small samples (100 images, PGD-5, 30 timed runs) keep the whole sweep to a few seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _cli import run_command
from _trained import trained_lenet

from gdws_export.attacks import AttackConfig
from gdws_export.cli import sweep as sweep_command
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.selection import count_macs
from gdws_export.harness.report import read_json
from gdws_export.harness.sweep_report import (
    SweepConfig,
    SweepReport,
    SweepSetting,
    pareto_front,
    parse_settings,
)
from gdws_export.models import save_checkpoint
from gdws_export.pipeline import ExportConfig
from gdws_export.pipeline.outputs import read_marker
from gdws_export.studies import sweep

MAC_RATIOS = (0.3, 0.5, 0.8)


@pytest.fixture(scope="module")
def checkpoint_and_data(tmp_path_factory):
    """A saved LeNet checkpoint and an .npz of 100 held-out images."""
    model, x, y = trained_lenet()
    folder = tmp_path_factory.mktemp("sweep_inputs")
    checkpoint = save_checkpoint(model, folder / "lenet.pt")
    data = folder / "heldout.npz"
    np.savez(data, x=x[:100].numpy(), y=y[:100].numpy())
    return checkpoint, data


@pytest.fixture(scope="module")
def swept(checkpoint_and_data, tmp_path_factory):
    """Run the sweep once through the CLI; yields (output folder, SweepReport read back)."""
    checkpoint, data = checkpoint_and_data
    out = tmp_path_factory.mktemp("sweep_out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = run_command(
            sweep_command,
            [
                checkpoint, "--mac-ratios", *MAC_RATIOS, "--data", data, "--output-dir", out,
                "--threads", 1, "--lowering", "gather", "--exporter", "legacy", "--eps", "0.05",
                "--steps", 5,
                "--square-queries", 20, "--batch-sizes", 1, 16, "--iterations", 30,
                "--warmup", 0, "--eval-batch-size", 50,
            ],
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out, read_json(out / "sweep.json")


def test_sweep_writes_json_markdown_and_png_and_nothing_else(swept):
    out, report = swept
    assert isinstance(report, SweepReport)
    assert sorted(p.name for p in out.iterdir()) == [
        "models",
        "sweep.json",
        "sweep.md",
        "sweep.png",
    ]
    assert not [p for p in (out / "models").iterdir() if p.name.startswith(".")]  # no temp files
    png = (out / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_sweep_table_rows(swept):
    _, report = swept
    assert [row.setting for row in report.rows] == ["original"] + [
        f"mac_ratio={r:g}" for r in MAC_RATIOS
    ]
    original = report.row("original")
    assert original.fps_ratio == pytest.approx(1.0) and original.conv_mac_ratio == 1.0
    for row, ratio in zip(report.rows[1:], MAC_RATIOS, strict=True):
        assert row.mac_ratio == ratio and row.beta is None
        assert row.conv_mac_ratio <= ratio + 1e-9
        assert row.macs < original.macs and row.params < original.params
        assert row.fps > 0 and row.p90_latency_ms > 0
        assert row.fps_ratio == pytest.approx(row.fps / original.fps)
    macs = [row.macs for row in report.rows[1:]]
    assert macs == sorted(macs)  # a larger MAC ratio keeps more MACs
    for row in report.rows:
        assert 0 <= row.robust_accuracy <= row.clean_accuracy <= 1
        # The transfer replay on ONNX Runtime keeps PyTorch's robust accuracy.
        assert abs(row.engine_robust_accuracy - row.robust_accuracy) <= 0.005 + 1e-9
        assert row.engine_path.endswith(".fp32.ort.onnx")


def test_sweep_pareto_flags_follow_the_table(swept):
    _, report = swept
    expected = pareto_front([(row.fps, row.robust_accuracy) for row in report.rows])
    assert [row.pareto for row in report.rows] == expected
    assert report.pareto_settings == [
        row.setting for row in sorted(report.rows, key=lambda r: -r.fps) if row.pareto
    ]
    assert report.pareto_settings  # a finite set always has a front


def test_sweep_measures_everything_in_one_interleaved_run(swept):
    _, report = swept
    names = [row.setting for row in report.rows]
    assert list(report.speed.runners) == names and report.speed.settings.reference == "original"
    assert {(r.runner, r.batch_size) for r in report.speed.results} == {
        (name, batch) for name in names for batch in (1, 16)
    }
    assert [m.name for m in report.accuracy.models] == names
    attacks = [a.attack for a in report.accuracy.model("mac_ratio=0.5").attacks]
    assert attacks == ["pgd", "square"]
    assert report.robust_attack.startswith("PGD-5 (L-inf, eps=0.05")
    assert set(report.approximations) == set(names[1:])


def test_sweep_markdown_holds_the_table_and_the_plot(swept):
    out, report = swept
    text = (out / "sweep.md").read_text()
    assert text.startswith("# gdws-export sweep report")
    assert report.table() in text
    assert "| setting | MACs | params |" in text and "| mac_ratio=0.3 |" in text
    assert "](sweep.png)" in text and "Pareto-optimal" in text
    assert "## Speed" in text and "## Accuracy" in text


def test_sweep_json_is_stable_across_a_round_trip(swept, tmp_path):
    from gdws_export.harness.report import write_json

    out, report = swept
    original = json.loads((out / "sweep.json").read_text())
    assert original["schema_version"] == 1 and original["kind"] == "sweep"
    again = json.loads(write_json(report, tmp_path / "again.json").read_text())
    original.pop("created"), again.pop("created")
    assert again == original


def test_pareto_front():
    points = [(100, 0.50), (200, 0.40), (150, 0.50), (300, 0.10), (120, 0.30), (300, 0.05)]
    assert pareto_front(points) == [False, True, True, True, False, False]
    assert pareto_front([(1, 1), (1, 1)]) == [True, True]  # equal points do not dominate


def test_count_macs_of_lenet():
    model, _, _ = trained_lenet()
    # conv 1->8 5x5 on 28x28, conv 8->16 5x5 on 14x14, linear 784->64, linear 64->10
    expected = 8 * 25 * 784 + 16 * 8 * 25 * 196 + 784 * 64 + 64 * 10
    assert count_macs(model, (1, 28, 28)) == expected


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SweepSetting(), "exactly one of beta, mac_ratio or time_ratio"),
        (lambda: SweepSetting(beta=0.1, mac_ratio=0.5), "exactly one"),
        (lambda: SweepSetting(mac_ratio=0.5, time_ratio=0.5), "exactly one"),
        (lambda: SweepSetting(time_ratio=0.0), r"time_ratio must be in \(0, 1\]"),
        (lambda: SweepSetting(beta=-1.0), "beta must be >= 0"),
        (lambda: SweepSetting(mac_ratio=1.5), r"mac_ratio must be in \(0, 1\]"),
        (lambda: SweepSetting(beta="x"), "finite number"),
        (lambda: SweepConfig(()), "at least one setting"),
        (lambda: SweepConfig(parse_settings([0.1, 0.1])), "repeat"),
        (lambda: SweepConfig(parse_settings([0.1]), attacks=()), "at least one attack"),
        (lambda: SweepConfig(parse_settings([0.1]), batch_sizes=(0,)), "batch_sizes"),
        (lambda: SweepConfig(parse_settings([0.1]), eval_batch_size=0), "eval_batch_size"),
        (lambda: SweepConfig(parse_settings([0.1]), attacks=(AttackConfig(steps=0),)), "steps"),
    ],
)
def test_bad_sweep_settings_are_one_line_errors(make, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def _cli_error(checkpoint, data, tmp_path, *extra):
    with pytest.raises(InvalidInputError) as info:
        run_command(
            sweep_command,
            [checkpoint, "--betas", 0.1, "--data", data, "--output-dir", tmp_path / "out",
             "--iterations", 1, *extra],
        )  # fmt: skip
    message = str(info.value)
    assert "\n" not in message
    assert not (tmp_path / "out").exists()  # failed before writing anything
    return message


def test_cli_refuses_bad_attack_settings(checkpoint_and_data, tmp_path):
    checkpoint, data = checkpoint_and_data
    assert "eps" in _cli_error(checkpoint, data, tmp_path, "--eps", "-0.1")
    assert "steps" in _cli_error(checkpoint, data, tmp_path, "--steps", 0)
    assert "--held-out-samples needs --calib" in _cli_error(
        checkpoint, data, tmp_path, "--held-out-samples", -1
    )
    assert "needs --calib" in _cli_error(checkpoint, data, tmp_path, "--calib-samples", 64)
    # every export's settings are checked as `export` checks them, before anything runs
    assert "--max-layer-error caps a budget" in _cli_error(
        checkpoint, data, tmp_path, "--max-layer-error", 0.5
    )
    assert "--target" in _cli_error(checkpoint, data, tmp_path, "--timing-cache", "x.cache")


def test_cli_refuses_an_unreadable_image(checkpoint_and_data, tmp_path):
    checkpoint, _ = checkpoint_and_data
    folder = tmp_path / "images" / "shirt"
    folder.mkdir(parents=True)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    assert "broken.png" in _cli_error(checkpoint, tmp_path / "images", tmp_path)


def test_cli_refuses_empty_data_out_of_range_labels_and_wrong_shapes(checkpoint_and_data, tmp_path):
    checkpoint, _ = checkpoint_and_data
    cases = {
        "empty": (np.zeros((0, 1, 28, 28), np.float32), np.zeros(0, np.int64), "empty"),
        "labels": (np.zeros((4, 1, 28, 28), np.float32), np.array([0, 1, 12, 3]), r"[0, 9]"),
        "shape": (np.zeros((4, 1, 32, 32), np.float32), np.zeros(4, np.int64), "(1, 28, 28)"),
    }
    for name, (x, y, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        assert expected in _cli_error(checkpoint, tmp_path / f"{name}.npz", tmp_path)


def _config(**kwargs) -> SweepConfig:
    """A quick measurement: 3 timed runs at batch 4, PGD-2."""
    return SweepConfig(
        attacks=(AttackConfig(eps=0.05, steps=2),), batch_sizes=(4,), duration_s=None,
        iterations=3, warmup_s=0.0, **kwargs,
    )  # fmt: skip


def _export(checkpoint, **kwargs) -> ExportConfig:
    return ExportConfig(str(checkpoint), threads=1, exporter="legacy", **kwargs)


def test_layers_shipped_as_original_convs_are_attacked_as_such(checkpoint_and_data, tmp_path):
    """With the "dense" lowering every GDWS layer ships its original conv: PyTorch must then
    attack the original layers too, so GDWS rows measure exactly what the original does."""
    from gdws_export.harness.data import load_dataset

    checkpoint, data = checkpoint_and_data
    x, y = load_dataset(data)
    config = _config(settings=parse_settings(mac_ratios=[0.5]))
    report = sweep(_export(checkpoint, lowering="dense"), config, (x[:60], y[:60]),
                   work_dir=tmp_path)  # fmt: skip
    original, gdws = report.rows[0], report.rows[1]
    assert original.setting == "original"
    assert gdws.robust_accuracy == original.robust_accuracy
    assert gdws.clean_accuracy == original.clean_accuracy
    assert gdws.macs == original.macs  # what ships: the original convs, counted as such


def test_time_budget_sweep_prices_layers_by_measured_time(checkpoint_and_data, tmp_path):
    from gdws_export.harness.data import load_dataset

    checkpoint, data = checkpoint_and_data
    x, y = load_dataset(data)
    config = _config(settings=parse_settings(time_ratios=[1.0]))
    report = sweep(_export(checkpoint, lowering="gather"), config, (x[:40], y[:40]),
                   work_dir=tmp_path)  # fmt: skip
    row = report.row("time_ratio=1")
    assert row.time_ratio == 1.0 and row.mac_ratio is None and row.beta is None
    layers = report.approximations["time_ratio=1"]["layers"]
    timed = [lay for lay in layers if lay["status"] != "skipped"]
    assert timed and all(lay["cost_before"] > 0 for lay in timed)
    assert report.approximations["time_ratio=1"]["predicted_time_ratio"] <= 1.0 + 1e-9


def test_torch_target_sweep_runs_on_the_cpu(checkpoint_and_data, tmp_path):
    from gdws_export.harness.data import load_dataset

    checkpoint, data = checkpoint_and_data
    x, y = load_dataset(data)
    config = _config(settings=parse_settings(mac_ratios=[0.5]))
    report = sweep(_export(checkpoint, target="torch"), config, (x[:40], y[:40]),
                   work_dir=tmp_path)  # fmt: skip
    assert [row.setting for row in report.rows][0] == "original" and len(report.rows) == 2
    assert all(row.engine_path.endswith(".pt2") for row in report.rows)
    for row in report.rows:  # the torch runner runs the same model PyTorch attacked
        assert row.engine_robust_accuracy == row.robust_accuracy


def test_the_sweep_and_the_cli_ship_the_same_engine(tmp_path):
    """One export algorithm: a sweep row and `gdws-export` at that row's budget, with the same
    flags (calibration data: alphas, the sensitivity choice and the 1x1 refit), ship graphs
    that compute the same function, and the same kernels per channel."""
    from gdws_export.cli import main
    from gdws_export.runtimes import OrtRunner

    model, x, y = trained_lenet()
    checkpoint = save_checkpoint(model, tmp_path / "lenet.pt")
    data, calib = tmp_path / "eval.npz", tmp_path / "calib.npz"
    np.savez(data, x=x[:30].numpy(), y=y[:30].numpy())
    np.savez(calib, x=x[30:230].numpy(), y=y[30:230].numpy())
    flags = ["--calib", calib, "--calib-samples", 64, "--threads", 1, "--lowering", "gather",
             "--exporter", "legacy"]  # fmt: skip
    assert run_command(sweep_command, [
        checkpoint, "--mac-ratios", 0.3, "--data", data, *flags, "--eps", "0.05", "--steps", 2,
        "--batch-sizes", 4, "--iterations", 3, "--warmup", 0, "--output-dir", tmp_path / "sweep",
    ]) == 0  # fmt: skip
    argv = [checkpoint, "--mac-ratio", 0.3, *flags, "--batch", 4, "-q", "-o", tmp_path / "cli"]
    assert main([str(a) for a in argv]) == 0
    swept = read_json(tmp_path / "sweep" / "sweep.json")
    by_sweep = json.loads((tmp_path / "sweep/models/mac_ratio_0.3/report.json").read_text())[
        "report"
    ]
    by_cli = json.loads((tmp_path / "cli" / "report.json").read_text())["report"]
    assert swept.approximations["mac_ratio=0.3"]["sensitivity_choice"]["held_out"] > 64
    for key in ("approximation", "sensitivity_choice", "refit", "macs"):
        assert _untimed(by_sweep[key]) == _untimed(by_cli[key]), key
    images = x[:16].numpy()
    outputs = []
    for folder in (tmp_path / "sweep/models/mac_ratio_0.3", tmp_path / "cli"):
        with OrtRunner(str(folder / "gdws.onnx"), threads=1) as runner:
            outputs.append(runner.predict(images))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def _untimed(value):
    """`value` without the seconds things took (they differ from run to run)."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def test_cli_sweep_without_a_sensitivity_choice_ships_one_measure(tmp_path, capsys):
    """--sensitivity none, as `export` takes it; and too few held-out images for `auto` is
    the export's own warning, printed."""
    model, x, y = trained_lenet()
    checkpoint = save_checkpoint(model, tmp_path / "lenet.pt")
    data, calib = tmp_path / "eval.npz", tmp_path / "calib.npz"
    np.savez(data, x=x[:30].numpy(), y=y[:30].numpy())
    np.savez(calib, x=x[30:102].numpy(), y=y[30:102].numpy())  # 32 fit, 40 left: below 64
    common = [checkpoint, "--mac-ratios", 0.3, "--data", data, "--calib", calib,
              "--calib-samples", 32, "--threads", 1, "--lowering", "gather", "--exporter",
              "legacy", "--eps", "0.05", "--steps", 2, "--batch-sizes", 4, "--iterations", 3,
              "--warmup", 0]  # fmt: skip
    assert run_command(sweep_command, [*common, "--sensitivity", "none",
                                       "--output-dir", tmp_path / "none"]) == 0  # fmt: skip
    report = read_json(tmp_path / "none" / "sweep.json")
    built = report.approximations["mac_ratio=0.3"]
    assert built["sensitivity_choice"] is None and built["refit"]["inputs"] == 64  # 32 + PGD
    assert run_command(sweep_command, [*common, "--output-dir", tmp_path / "out"]) == 0
    assert "has 40 images after the first --calib-samples (32), too few" in capsys.readouterr().err
    report = read_json(tmp_path / "out" / "sweep.json")
    assert report.approximations["mac_ratio=0.3"]["sensitivity_choice"] is None
    # A folder the sweep created is marked as gdws-export's (the swept fixture's, which
    # existed before, is not).
    assert read_marker(tmp_path / "out")["written_by"] == "gdws-export sweep"


def test_sweep_times_the_auto_lowering_at_its_largest_batch(checkpoint_and_data, tmp_path):
    """The table ranks throughput at the largest batch size, so `auto` picks forms there:
    the export batch of every setting is the largest --batch-sizes."""
    checkpoint, data = checkpoint_and_data
    _, x, y = trained_lenet()
    out = tmp_path / "out"
    assert run_command(sweep_command, [
        checkpoint, "--mac-ratios", 0.5, "--data", data, "--limit", 8, "--threads", 1,
        "--exporter", "legacy", "--eps", "0.05", "--steps", 1, "--batch-sizes", 1, 4,
        "--iterations", 2, "--warmup", 0, "--output-dir", out,
    ]) == 0  # fmt: skip
    report = json.loads((out / "models" / "mac_ratio_0.5" / "report.json").read_text())["report"]
    assert report["settings"]["batch"] == 4 and report["settings"]["lowering"] == "auto"


def test_cli_sweep_loads_a_torch_export_program_as_export_does(tmp_path):
    """A user's `.pt2` (no gdws-export checkpoint, no registry architecture) sweeps, and the
    model options are the export command's, defined once."""
    import argparse

    from gdws_export.cli import export as export_command

    model, x, y = trained_lenet()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: batch},))
    path = tmp_path / "lenet.pt2"
    torch.export.save(program, path)
    data = tmp_path / "eval.npz"
    np.savez(data, x=x[:30].numpy(), y=y[:30].numpy())
    code = run_command(sweep_command, [
        path, "--trust-pickle", "--mac-ratios", 0.5, "--data", data, "--threads", 1,
        "--lowering", "gather", "--exporter", "legacy", "--eps", "0.05", "--steps", 2,
        "--batch-sizes", 4, "--iterations", 3, "--warmup", 0, "--output-dir", tmp_path / "out",
    ])  # fmt: skip
    assert code == 0
    report = read_json(tmp_path / "out" / "sweep.json")
    assert [row.setting for row in report.rows][-1] == "mac_ratio=0.5"
    assert all(0 <= row.clean_accuracy <= 1 for row in report.rows)

    def model_options(module) -> list[str]:
        parser = argparse.ArgumentParser()
        module.add_parser(parser.add_subparsers())
        sub = next(iter(parser._subparsers._group_actions[0].choices.values()))
        group = next(g for g in sub._action_groups if g.title == "model")
        return [a.dest for a in group._group_actions]

    assert model_options(sweep_command) == model_options(export_command)
    assert "trust_pickle" in model_options(sweep_command)


def test_cli_sweep_refuses_a_program_with_a_fixed_batch_in_one_line(tmp_path):
    from gdws_export.errors import UnsupportedModelError

    model, x, y = trained_lenet()
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(model, (x[:1],)), path)
    data = tmp_path / "eval.npz"
    np.savez(data, x=x[:8].numpy(), y=y[:8].numpy())
    with pytest.raises(UnsupportedModelError, match="fixes the batch size to 1; the sweep runs"):
        run_command(sweep_command, [path, "--trust-pickle", "--mac-ratios", 0.5, "--data", data,
                                    "--output-dir", tmp_path / "out"])  # fmt: skip
    assert not (tmp_path / "out").exists()
