"""A 3-setting sweep of a small LeNet through `gdws-export sweep`, its report files, and bad input.

Small samples (100 images, PGD-5, 30 timed runs) keep the whole sweep to a few seconds.
"""

from __future__ import annotations

import dataclasses
import importlib
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
from gdws_export.harness.sweep import pareto_front
from gdws_export.harness.sweep_report import SweepConfig, SweepReport, SweepSetting, parse_settings
from gdws_export.models import save_checkpoint
from gdws_export.pipeline.outputs import read_marker

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
        (lambda: SweepConfig(parse_settings([0.1]), target="tvm"), "target"),
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
    assert "--held-out-samples must be >= 0" in _cli_error(
        checkpoint, data, tmp_path, "--held-out-samples", -1
    )
    assert "needs --calib" in _cli_error(checkpoint, data, tmp_path, "--calib-samples", 64)


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


def test_layers_shipped_as_original_convs_are_attacked_as_such(checkpoint_and_data, tmp_path):
    """With the "dense" lowering every GDWS layer ships its original conv: PyTorch must then
    attack the original layers too, so GDWS rows measure exactly what the original does."""
    from gdws_export import load_model
    from gdws_export.harness.data import load_dataset
    from gdws_export.harness.sweep import sweep
    from gdws_export.harness.sweep_report import SweepConfig, parse_settings

    checkpoint, data = checkpoint_and_data
    model = load_model(checkpoint)
    x, y = load_dataset(data)
    config = SweepConfig(
        parse_settings(mac_ratios=[0.5]), threads=1, lowering="dense", exporter="legacy",
        attacks=(AttackConfig(eps=0.05, steps=3),), batch_sizes=(4,), duration_s=None,
        iterations=3, warmup_s=0.0,
    )  # fmt: skip
    report = sweep(model, config, (x[:60], y[:60]), work_dir=tmp_path)
    original, gdws = report.rows[0], report.rows[1]
    assert original.setting == "original"
    assert gdws.robust_accuracy == original.robust_accuracy
    assert gdws.clean_accuracy == original.clean_accuracy
    assert any("keeps its original conv" in note for note in report.notes)


def test_time_budget_sweep_prices_layers_by_measured_time(checkpoint_and_data, tmp_path):
    from gdws_export import load_model
    from gdws_export.harness.data import load_dataset
    from gdws_export.harness.sweep import sweep
    from gdws_export.harness.sweep_report import SweepConfig, parse_settings

    checkpoint, data = checkpoint_and_data
    x, y = load_dataset(data)
    config = SweepConfig(
        parse_settings(time_ratios=[1.0]), threads=1, lowering="gather", exporter="legacy",
        attacks=(AttackConfig(eps=0.05, steps=2),), batch_sizes=(4,), duration_s=None,
        iterations=3, warmup_s=0.0,
    )  # fmt: skip
    report = sweep(load_model(checkpoint), config, (x[:40], y[:40]), work_dir=tmp_path)
    row = report.row("time_ratio=1")
    assert row.time_ratio == 1.0 and row.mac_ratio is None and row.beta is None
    layers = report.approximations["time_ratio=1"]["layers"]
    timed = [lay for lay in layers if lay["status"] != "skipped"]
    assert timed and all(lay["cost_before"] > 0 for lay in timed)
    assert report.approximations["time_ratio=1"]["predicted_time_ratio"] <= 1.0 + 1e-9


def test_torch_target_sweep_runs_on_the_cpu(checkpoint_and_data, tmp_path):
    from gdws_export import load_model
    from gdws_export.harness.data import load_dataset
    from gdws_export.harness.sweep import sweep
    from gdws_export.harness.sweep_report import SweepConfig, parse_settings

    checkpoint, data = checkpoint_and_data
    x, y = load_dataset(data)
    config = SweepConfig(
        parse_settings(mac_ratios=[0.5]), target="torch", attacks=(AttackConfig(eps=0.05, steps=2),),
        batch_sizes=(4,), duration_s=None, iterations=3, warmup_s=0.0,
    )  # fmt: skip
    report = sweep(load_model(checkpoint), config, (x[:40], y[:40]), work_dir=tmp_path)
    assert [row.setting for row in report.rows][0] == "original" and len(report.rows) == 2
    assert all(row.engine_path.endswith(".pt2") for row in report.rows)
    for row in report.rows:  # the torch runner runs the same model PyTorch attacked
        assert row.engine_robust_accuracy == row.robust_accuracy


def test_refit_sweep_ships_the_refit_models(checkpoint_and_data, tmp_path):
    from gdws_export import approximate, load_model, refit_pointwise
    from gdws_export.harness.sweep import sweep
    from gdws_export.runtimes import OrtRunner

    checkpoint, _ = checkpoint_and_data
    model = load_model(checkpoint)
    _, x, y = trained_lenet()
    calibration, evaluation = (x[100:160], y[100:160]), (x[:40], y[:40])  # disjoint images
    config = SweepConfig(
        parse_settings(mac_ratios=[0.3]), threads=1, lowering="gather", exporter="legacy",
        attacks=(AttackConfig(eps=0.05, steps=2),), batch_sizes=(4,), duration_s=None,
        iterations=3, warmup_s=0.0,
    )  # fmt: skip
    report = sweep(model, config, evaluation, work_dir=tmp_path, refit_data=calibration)
    assert any("refit on 60 calibration images" in note for note in report.notes)
    expected, _ = refit_pointwise(approximate(model, mac_ratio=0.3)[0], model, calibration,
                                  eps=0.05, step_size=0.0125, samples=60)  # fmt: skip
    with OrtRunner(report.row("mac_ratio=0.3").onnx_path, threads=1) as runner:
        shipped = runner.predict(x[:8].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(shipped, expected(x[:8]).numpy(), rtol=1e-4, atol=1e-4)


def test_sweep_with_measures_ships_the_one_most_robust_on_held_out_images(
    checkpoint_and_data, tmp_path, monkeypatch
):
    """gdws-export's --sensitivity auto per MAC budget: every candidate built (refit
    included), judged by `choose_measure` on the held-out images only, and the chosen one's
    model is the one exported, timed and attacked."""
    from gdws_export import approximate, load_model, refit_pointwise
    from gdws_export.gdws.activations import relative_gains
    from gdws_export.harness.measure_choice import choose_measure
    from gdws_export.runtimes import OrtRunner

    checkpoint, _ = checkpoint_and_data
    model = load_model(checkpoint)
    _, x, y = trained_lenet()
    calibration, held_out, evaluation = (x[100:140], y[100:140]), (x[140:180], y[140:180]), (
        x[:40], y[:40])  # fmt: skip
    measures = {"none": None, "relative": relative_gains(model)}
    judged = []

    def spy(models, xh, yh, attack, **kwargs):
        judged.append((list(models), xh, attack))
        choice = choose_measure(models, xh, yh, attack, **kwargs)
        # the second candidate, so that shipping it shows the choice was followed
        return dataclasses.replace(choice, chosen="relative")

    # the package exports the function `sweep` under the module's name
    sweep_module = importlib.import_module("gdws_export.harness.sweep")
    monkeypatch.setattr(sweep_module, "choose_measure", spy)
    config = SweepConfig(
        parse_settings(mac_ratios=[0.3]), threads=1, lowering="gather", exporter="legacy",
        attacks=(AttackConfig(eps=0.05, steps=2),), batch_sizes=(4,), duration_s=None,
        iterations=3, warmup_s=0.0,
    )  # fmt: skip
    report = sweep_module.sweep(model, config, evaluation, work_dir=tmp_path,
                                refit_data=calibration, measures=measures, held_out=held_out)  # fmt: skip
    ((names, xh, attack),) = judged
    assert names == ["none", "relative"] and torch.equal(xh, held_out[0])
    assert attack.steps == 10 and attack.eps == 0.05  # PGD-10 at the sweep's eps
    choice = report.approximations["mac_ratio=0.3"]["sensitivity_choice"]
    assert choice["chosen"] == "relative" and choice["held_out"] == 40
    assert [t["measure"] for t in choice["trials"]] == ["none", "relative"]
    assert any(n.startswith("mac_ratio=0.3: shipped relative alphas") for n in report.notes)
    gdws, _ = approximate(model, mac_ratio=0.3, alphas=measures["relative"])
    expected, _ = refit_pointwise(gdws, model, calibration, eps=0.05, step_size=0.0125,
                                  samples=40)  # fmt: skip
    with OrtRunner(report.row("mac_ratio=0.3").onnx_path, threads=1) as runner:
        shipped = runner.predict(x[:8].numpy())
    with torch.no_grad():
        np.testing.assert_allclose(shipped, expected(x[:8]).numpy(), rtol=1e-4, atol=1e-4)


def test_sweep_measures_need_held_out_images_and_no_alphas(checkpoint_and_data, tmp_path):
    from gdws_export import load_model
    from gdws_export.harness.sweep import sweep

    checkpoint, _ = checkpoint_and_data
    model = load_model(checkpoint)
    _, x, y = trained_lenet()
    config = SweepConfig(parse_settings(mac_ratios=[0.3]), threads=1)
    for kwargs in ({"measures": {"none": None}},
                   {"measures": {"none": None}, "held_out": (x[:8], y[:8]), "alphas": {}},
                   {"measures": {}, "held_out": (x[:8], y[:8])}):  # fmt: skip
        with pytest.raises(InvalidInputError, match="measures"):
            sweep(model, config, (x[:8], y[:8]), work_dir=tmp_path, **kwargs)


def test_cli_sweep_with_calib_chooses_the_measure_per_mac_ratio(tmp_path):
    """`gdws-export sweep --calib`: as gdws-export's default, unweighted and calibrated
    alphas are built and judged on the --calib images after the --calib-samples ones;
    --held-out-samples 0 turns the choice off."""
    model, x, y = trained_lenet()
    checkpoint = save_checkpoint(model, tmp_path / "lenet.pt")
    data, calib = tmp_path / "eval.npz", tmp_path / "calib.npz"
    np.savez(data, x=x[:30].numpy(), y=y[:30].numpy())
    np.savez(calib, x=x[30:200].numpy(), y=y[30:200].numpy())
    common = [checkpoint, "--mac-ratios", 0.3, "--data", data, "--calib", calib,
              "--calib-samples", 32, "--threads", 1, "--lowering", "gather", "--exporter",
              "legacy", "--eps", "0.05", "--steps", 2, "--batch-sizes", 4, "--iterations", 3,
              "--warmup", 0]  # fmt: skip
    assert run_command(sweep_command, [*common, "--held-out-samples", 100,
                                       "--output-dir", tmp_path / "auto"]) == 0  # fmt: skip
    report = read_json(tmp_path / "auto" / "sweep.json")
    choice = report.approximations["mac_ratio=0.3"]["sensitivity_choice"]
    assert choice["held_out"] == 100 and choice["chosen"] in ("none", "calibrated")
    assert [t["measure"] for t in choice["trials"]] == ["none", "calibrated"]
    assert any("refit on 32 calibration images" in n for n in report.notes)
    assert run_command(sweep_command, [*common, "--held-out-samples", 0,
                                       "--output-dir", tmp_path / "off"]) == 0  # fmt: skip
    report = read_json(tmp_path / "off" / "sweep.json")
    assert "sensitivity_choice" not in report.approximations["mac_ratio=0.3"]


def test_cli_sweep_with_too_few_held_out_images_warns_and_stays_unweighted(tmp_path, capsys):
    model, x, y = trained_lenet()
    checkpoint = save_checkpoint(model, tmp_path / "lenet.pt")
    data, calib = tmp_path / "eval.npz", tmp_path / "calib.npz"
    np.savez(data, x=x[:30].numpy(), y=y[:30].numpy())
    np.savez(calib, x=x[30:102].numpy(), y=y[30:102].numpy())  # 32 fit, 40 left: below 64
    code = run_command(sweep_command, [
        checkpoint, "--mac-ratios", 0.3, "--data", data, "--calib", calib, "--calib-samples", 32,
        "--threads", 1, "--lowering", "gather", "--exporter", "legacy", "--eps", "0.05",
        "--steps", 2, "--batch-sizes", 4, "--iterations", 3, "--warmup", 0,
        "--output-dir", tmp_path / "out"])  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert "has 40 images after the first 32, too few to judge the measures" in err
    report = read_json(tmp_path / "out" / "sweep.json")
    assert "sensitivity_choice" not in report.approximations["mac_ratio=0.3"]
    assert any("refit on 32 calibration images" in n for n in report.notes)
    # A folder the sweep created is marked as gdws-export's (the swept fixture's, which
    # existed before, is not).
    assert read_marker(tmp_path / "out")["written_by"] == "gdws-export sweep"


def test_sweep_times_the_auto_lowering_at_its_largest_batch(checkpoint_and_data, tmp_path,
                                                            monkeypatch):  # fmt: skip
    """The table ranks throughput at the largest batch size, so `auto` picks forms there."""
    from gdws_export import load_model

    sweep_module = importlib.import_module("gdws_export.harness.sweep")
    batches = []
    real = sweep_module.export_and_build

    def spy(model, stem, **kwargs):
        batches.append(kwargs["auto_batch"])
        return real(model, stem, **kwargs)

    monkeypatch.setattr(sweep_module, "export_and_build", spy)
    checkpoint, _ = checkpoint_and_data
    _, x, y = trained_lenet()
    config = SweepConfig(
        parse_settings(mac_ratios=[0.5]), threads=1, exporter="legacy",
        attacks=(AttackConfig(eps=0.05, steps=1),), batch_sizes=(1, 4), duration_s=None,
        iterations=2, warmup_s=0.0,
    )  # fmt: skip
    sweep_module.sweep(load_model(checkpoint), config, (x[:8], y[:8]), work_dir=tmp_path)
    assert batches == [4, 4]  # the original and the GDWS model


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
