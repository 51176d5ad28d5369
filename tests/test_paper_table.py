"""The paper table's --quick mode end to end on a LeNet trained in seconds: the files exist and
parse, the rows are the expected ones, Pareto flags are consistent, quoted numbers say so."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from benchmarks import paper_table, paper_table_report
from benchmarks.paper_table_report import (
    QUOTED_LABEL,
    PaperTable,
    collect_confirmations,
    confirmations_for,
    load,
    refresh_confirmations,
    verdicts,
    write_results,
)
from benchmarks.paper_table_variants import Sensitivity, build_variants
from gdws_export import approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.harness.data import load_dataset
from gdws_export.harness.measure_choice import AUTO_MEASURES, MeasureChoice
from gdws_export.harness.sweep_report import pareto_front
from gdws_export.models import create_model, save_checkpoint
from gdws_export.runtimes import build as build_module
from tests._trained import SLICE, trained_lenet


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("paper_table")
    model, _, _ = trained_lenet()
    save_checkpoint(model, directory / "lenet_quick.pt")
    argv = ["--quick", "--models-dir", str(directory), "--checkpoints", "lenet_quick",
            "--data", str(SLICE), "--threads", "1", "--out", str(directory / "out" / "ort-cpu")]  # fmt: skip
    return paper_table.main(argv), argv


def test_files_exist_and_parse(quick_run):
    paths, _ = quick_run
    assert set(paths) == {"json", "plot", "markdown"}
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = load(paths["json"])
    assert json.loads(paths["json"].read_text())["schema"] == "gdws-export/paper-table/1"
    assert table.settings["quick"] is True and "--quick" in table.command
    assert table.machine["summary"]


def test_rows_are_the_expected_ones(quick_run):
    paths, _ = quick_run
    (result,) = load(paths["json"]).checkpoints
    variants = [row.variant for row in result.rows]
    assert variants == [
        "original",
        "gdws-none+refit@0.75", "gdws-calibrated+refit@0.75",  # the refit rows at every ratio
        # the comparison rows at the smallest ratio only: GDWS without the refit, baselines
        "gdws-none@0.5", "gdws-none+refit@0.5", "gdws-relative@0.5", "gdws-activation@0.5",
        "gdws-calibrated@0.5", "gdws-calibrated+refit@0.5",
        "gdws-time@1",
        "l1-prune@0.5", "in-prune@0.5",
    ]  # fmt: skip
    assert [row.budget for row in result.rows].count("time") == 1
    assert result.row("gdws-time@1").budget == "time"
    original = result.row("original")
    assert original.macs_ratio == 1 and original.speedup_b32 == 1
    for row in result.rows:
        assert row.samples == 8 and 0 <= row.robust <= row.clean <= 1
        assert row.fps_b1 > 0 and row.fps_b32 > 0 and row.p90_ms_b1 > 0
        assert row.engine_robust is not None
        if row.method in ("l1-prune", "in-prune"):
            assert row.macs_ratio < 1 and row.lowering == "plain convs"
        if row.same_as_original:  # ships no GDWS layer: the original's accuracy
            assert (row.clean, row.robust) == (original.clean, original.robust)
            assert row.macs == original.macs
    # The refit keeps the kernels: the same MAC budget spent.
    for measure, ratio in (("none", "0.5"), ("calibrated", "0.5")):
        refit, plain = (
            result.row(f"gdws-{measure}+refit@{ratio}"),
            result.row(f"gdws-{measure}@{ratio}"),
        )
        assert refit.conv_mac_ratio == plain.conv_mac_ratio and refit.sensitivity == measure
    for measure in ("none", "calibrated"):
        assert result.row(f"gdws-{measure}+refit@0.75").sensitivity == measure
    assert set(result.noise_floor) == {"b1", "b32"}
    assert result.spectra and all(0 < s["top1"] <= s["top2"] <= 1 for s in result.spectra)


def test_the_export_default_is_judged_per_ratio(quick_run):
    paths, _ = quick_run
    table = load(paths["json"])
    (result,) = table.checkpoints
    assert [d["ratio"] for d in result.export_defaults] == [0.75, 0.5]
    for default in result.export_defaults:
        choice = MeasureChoice.from_dict(default["choice"])
        assert [t.measure for t in choice.trials] == list(AUTO_MEASURES)
        assert choice.held_out == table.settings["held_out_samples"] == 32
        best = max(t.robust for t in choice.trials)
        assert choice.chosen == next(t.measure for t in choice.trials if t.robust == best)
        assert default["variant"] == f"gdws-{choice.chosen}+refit@{default['ratio']:g}"
    text = paths["markdown"].read_text()
    assert "What `gdws-export --calib DATA` ships by default" in text
    assert f"lenet_quick at MAC ratio 0.5: {result.export_defaults[1]['variant']}" in text


def test_pareto_flags_are_consistent(quick_run):
    paths, _ = quick_run
    (result,) = load(paths["json"]).checkpoints
    flags = pareto_front([(row.fps_b32, row.robust) for row in result.rows])
    assert [row.pareto for row in result.rows] == flags
    assert any(flags)


def test_markdown_labels_quoted_numbers_and_gives_verdicts(quick_run):
    paths, argv = quick_run
    text = paths["markdown"].read_text()
    assert QUOTED_LABEL in text
    quoted = text.split("## The paper's numbers")[1].split("## Verdicts")[0]
    assert "51.8" in quoted and "(quoted)" in quoted
    verdicts = text.split("## Verdicts")[1].split("![")[0]
    # met, met on 8 images (unconfirmed) or not met: the timings of a tiny LeNet decide
    assert re.search(r"\*\*lenet_quick: (not met|met[^*]*)\.\*\*", verdicts)
    assert "at MAC ratio 0.5" in verdicts
    # the comparison rows run at the smallest ratio only: the line for 0.75 says so
    comparisons = [line for line in verdicts.splitlines()
                   if "weighted GDWS" in line or "No comparison rows" in line]  # fmt: skip
    (at_075,) = [line for line in comparisons if "lenet_quick at MAC ratio 0.75:" in line]
    (at_05,) = [line for line in comparisons if "lenet_quick at MAC ratio 0.5:" in line]
    assert at_075.endswith("No comparison rows at this ratio.")
    assert "unweighted GDWS and every pruning baseline:" in at_05 and "l1-prune" in at_05
    assert "--quick" in text.split("\n")[2]
    assert "![robust accuracy" in text and paths["plot"].name in text


def test_a_comparison_without_pruning_baselines_says_so(quick_run):
    paths, _ = quick_run
    table = load(paths["json"])
    (result,) = table.checkpoints
    result.rows = [r for r in result.rows if r.method not in ("l1-prune", "in-prune")]
    (at_05,) = [line for line in paper_table_report.sensitivity_verdicts(table)
                if line.startswith("lenet_quick at MAC ratio 0.5:")]  # fmt: skip
    assert "weighted GDWS beating unweighted GDWS (no pruning baseline at this ratio):" in at_05


def test_markdown_names_the_runtime(quick_run):
    paths, _ = quick_run
    assert paths["markdown"].read_text().startswith("# GDWS paper table on ONNX Runtime CPU\n")
    assert load(paths["json"]).settings["runtime"] == "ONNX Runtime CPU"


def test_torch_target_times_and_replays_on_pytorch(tmp_path):
    model, _, _ = trained_lenet()
    save_checkpoint(model, tmp_path / "lenet_quick.pt")
    argv = ["--quick", "--target", "torch", "--models-dir", str(tmp_path),
            "--checkpoints", "lenet_quick", "--data", str(SLICE), "--threads", "1",
            "--out", str(tmp_path / "out" / "torch-0.5")]  # fmt: skip
    paths = paper_table.main(argv)
    assert paths["json"].name == "torch-0.5.json"  # the stem's dot is kept, not a suffix
    table = load(paths["json"])
    (result,) = table.checkpoints
    assert table.settings["runtime"] == "PyTorch" and table.settings["target"] == "torch"
    assert paths["markdown"].read_text().startswith("# GDWS paper table on PyTorch\n")
    assert set(result.speed["runners"]) >= {row.variant for row in result.rows}
    assert {r["runtime"] for r in result.speed["runners"].values()} == {"torch"}
    for row in result.rows:
        assert row.fps_b32 > 0 and row.engine_robust is not None
        if row.method == "gdws" and not row.same_as_original:
            assert row.lowering.startswith("torch.export (")
    # Without auto lowering every GDWS layer ships: no row falls back to the original.
    assert result.row("gdws-none@0.5").conv_mac_ratio == pytest.approx(0.5, abs=0.05)


def test_trt_target_builds_gather_graphs_with_a_profile_for_every_batch(tmp_path, monkeypatch):
    model, _, _ = trained_lenet()
    args = paper_table.parse_args(["--target", "trt", "--precision", "fp16"])
    assert args.time_ratios == []  # layer costs are ONNX Runtime timings: not for TensorRT
    calls = []
    monkeypatch.setattr(build_module, "build", lambda path, **kw: calls.append((path, kw)))
    gdws, _ = approximate(model, mac_ratio=0.5, input_shape=tuple(model.input_shape))
    variant = paper_table.Variant("gdws-none@0.5", "gdws", "none", 0.5, model=gdws)
    x = load_dataset(SLICE)[0][:16]
    paper_table.export_variant(variant, model, tmp_path / "m", x, args)
    ((path, kwargs),) = calls
    assert Path(path).suffix == ".onnx" and Path(path).is_file()
    # auto would time forms on ONNX Runtime CPU: TensorRT gets the reference lowering
    assert set(variant.details["forms"].values()) == {"gather"}
    assert kwargs["target"] == "trt" and kwargs["precision"] == "fp16"
    assert kwargs["batch"] == (1, 32, 100)
    assert paper_table.runtime_label("trt", "fp16") == "trt-fp16"
    assert paper_table.runtime_label("ort", "fp32") == "ort-cpu"


def test_variants_whose_names_differ_after_a_dot_get_their_own_files(tmp_path):
    """'..._r0.4' and '..._r0.3' must not both become '..._r0.onnx' (one graph timed twice)."""
    model, _, _ = trained_lenet()
    args = paper_table.parse_args([])
    x = load_dataset(SLICE)[0][:16]
    paths = set()
    for ratio in (0.4, 0.3):
        gdws, _ = approximate(model, mac_ratio=ratio, input_shape=tuple(model.input_shape))
        variant = paper_table.Variant(f"gdws-none@{ratio}", "gdws", "none", ratio, model=gdws)
        stem = tmp_path / f"lenet-{paper_table._stem(variant.name)}"
        built = paper_table.export_variant(variant, model, stem, x, args)
        paths.add(built.engine_path)
        assert Path(built.source_onnx).name == f"lenet-gdws-none_r{ratio}.onnx"
    assert len(paths) == 2


def test_each_checkpoint_gets_its_plan(tmp_path):
    for name in ("full", "light", "own"):
        (tmp_path / f"{name}.pt").touch()
    argv = ["--models-dir", str(tmp_path), "--checkpoints", "full", "light", "own",
            "--ratios", "0.25", "0.2", "--light", "light", "own@0.3,0.2", "--light-ratios", "0.4",
            "--sensitivities", "none", "paper", "--light-sensitivities", "none"]  # fmt: skip
    args = paper_table.parse_args(argv)
    full, light, own = (paper_table.checkpoint_plan(n, args) for n in ("full", "light", "own"))
    assert (full.light, full.ratios, full.measures) == (False, (0.25, 0.2), ("none", "paper"))
    assert (full.comparison_ratios, full.samples) == ((0.2,), args.samples)
    assert (light.light, light.ratios, light.comparison_ratios) == (True, (0.4,), (0.4,))
    assert (light.measures, light.samples) == (("none",), args.samples_light)
    assert (own.ratios, own.comparison_ratios) == ((0.3, 0.2), (0.2,))
    every = paper_table.checkpoint_plan(
        "full", paper_table.parse_args([*argv, "--all-comparison-ratios"])
    )
    assert every.comparison_ratios == (0.25, 0.2)


def test_the_default_checkpoints_and_light_ones_exist():
    args = paper_table.parse_args([])
    assert set(args.light) <= set(args.checkpoints) == set(paper_table.CHECKPOINTS)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--light", "x@fast"], "'x@fast' is not NAME or NAME@RATIO[,RATIO]"),
     (["--light", "x@1.5"], "'x@1.5' is not NAME or NAME@RATIO[,RATIO] (0 < RATIO <= 1)"),
     (["--lowering", "sideways"], "--lowering 'sideways' is not auto or a lowering form"),
     (["--checkpoints", "nope"], "no checkpoint nope.pt in"),
     (["--light", "fmnist_vgg16_bn_w16", "vgg"], "--light vgg: not one of --checkpoints"),
     (["--checkpoints", "fmnist_vgg16_bn_w16", "--keep-exact", "fmnist_vgg16_bn_w32:features.3"],
      "--keep-exact fmnist_vgg16_bn_w32: not one of --checkpoints"),
     (["--target", "tpu"], "invalid choice: 'tpu'"),
     (["--torch-threads", "0"], "--threads and --torch-threads must be at least 1"),
     (["--speed-auto-repeats", "0"], "--auto-repeats and --speed-auto-repeats must be at least 1")],
)  # fmt: skip
def test_bad_options_are_one_line_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        paper_table.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_runtime_this_machine_lacks_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_table.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "never"
    with pytest.raises(SystemExit, match="fp16 needs a CUDA GPU"):
        paper_table.main(["--target", "torch", "--precision", "fp16", "--out", str(out)])
    assert not list(tmp_path.iterdir())
    assert paper_table.runtime_problem("ort", "fp32") is None


def test_robust_change_names_losses_and_gains():
    from types import SimpleNamespace

    from benchmarks.paper_table_report import robust_change

    original = SimpleNamespace(robust=0.735)
    assert robust_change(original, SimpleNamespace(robust=0.705)) == "3.0 points lost"
    assert robust_change(original, SimpleNamespace(robust=0.740)) == "0.5 points gained"
    assert robust_change(original, SimpleNamespace(robust=0.735)) == "no change in robust accuracy"


def test_ort_and_torch_threads_are_separate_settings(quick_run):
    args = paper_table.parse_args(["--threads", "1", "--torch-threads", "2"])
    assert (args.threads, args.torch_threads) == (1, 2)
    paths, _ = quick_run
    settings = load(paths["json"]).settings
    text = paths["markdown"].read_text()
    assert settings["threads"] == 1
    assert (f"ONNX Runtime 1 intra-op thread(s) per session, PyTorch (attacks, sensitivities) "
            f"{settings['torch_threads']}") in text  # fmt: skip


def _meet_target_with(table, variant: str, samples: int):
    """The table with `variant` made 3x faster at no robust loss, every row on `samples`."""
    (result,) = table.checkpoints
    original = result.row("original")
    for row in result.rows:
        row.samples = samples
        if row.variant != "original":
            row.speedup_b32, row.robust = 1.0, 0.0
    chosen = result.row(variant)
    chosen.speedup_b32, chosen.robust, chosen.same_as_original = 3.0, original.robust, False
    return table


def test_a_verdict_met_on_the_table_images_is_unconfirmed_until_1000(quick_run):
    paths, _ = quick_run
    (line,) = verdicts(_meet_target_with(load(paths["json"]), "gdws-none@0.5", 8))
    assert line.startswith("**lenet_quick: met on 8 images, unconfirmed.**")
    assert "`PYTHONPATH=. python benchmarks/confirm_rows.py lenet_quick:gdws-none@0.5`" in line
    assert "No approximated model stays within" not in line
    (line,) = verdicts(_meet_target_with(load(paths["json"]), "gdws-none@0.5", 1000))
    assert line.startswith("**lenet_quick: met.**") and "confirm_rows" not in line
    assert "No approximated model stays within" not in line
    # confirm_rows.py rebuilds GDWS rows on a MAC budget only: no command for the others.
    (line,) = verdicts(_meet_target_with(load(paths["json"]), "gdws-time@1", 8))
    assert "unconfirmed" in line and "confirm_rows" not in line
    # Nothing within the loss target: said so, and nothing to confirm.
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 8)
    table.checkpoints[0].row("gdws-none@0.5").robust = 0.0
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: not met.** No approximated model stays within")
    assert "confirm" not in line


def _confirm_file(path, checkpoint, variant, differences, attack, export_default=False,
                  samples=1000, kept_exact=()):  # fmt: skip
    """A confirm_rows.py JSON; an export-default row is named `<variant> (auto)` there, with
    the row it chose under export_default."""
    chosen = {"variant": variant} if export_default else None
    name = f"{variant} (auto)" if export_default else variant
    rows = [{"checkpoint": checkpoint, "variant": name, "export_default": chosen,
             "samples": samples, "attack": attack, "kept_exact": list(kept_exact),
             "engine": {"difference_points": d, "ci95_points": [d - 0.9, d + 0.9]}}
            for d in differences]  # fmt: skip
    rows.append({**rows[0], "attack": "another attack", "engine": {**rows[0]["engine"],
                                                                    "difference_points": -9.0}})  # fmt: skip
    path.write_text(json.dumps({"command": "confirm_rows.py", "rows": rows}))


def test_committed_confirmations_settle_a_provisional_verdict(quick_run, tmp_path):
    paths, _ = quick_run
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 8)
    attack = table.checkpoints[0].attack
    _confirm_file(
        tmp_path / "ort-cpu-a-confirm.json", "lenet_quick", "gdws-none@0.5", [-0.4], attack
    )
    _confirm_file(
        tmp_path / "ort-cpu-b-confirm.json", "other_model", "gdws-none@0.5", [-3.0], attack
    )
    table.confirmations = collect_confirmations(tmp_path, attack)
    assert [c.difference_points for c in table.confirmations] == [-0.4, -3.0]  # same attack only
    assert confirmations_for("ort", attack, tmp_path) == table.confirmations
    assert confirmations_for("trt", attack, tmp_path) == []  # confirm_rows.py replays on ORT
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: met, confirmed on 1000 images.**")
    assert "-0.4 points on the engine" in line and "ort-cpu-a-confirm.md" in line
    assert "within the target" in line and "before claiming it" not in line
    # Two runs: the worse one decides, and a loss past 0.5 points means the row misses it.
    _confirm_file(
        tmp_path / "ort-cpu-c-confirm.json",
        "lenet_quick",
        "gdws-none@0.5",
        [-0.6],
        attack,
        export_default=True,
    )
    table.confirmations = collect_confirmations(tmp_path, attack)
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: not met.** No approximated model stays within")
    assert "in 2 runs, the worst: -0.6 points" in line and "outside the target" in line
    # The confirmations travel with the table's JSON.
    assert (
        PaperTable.from_dict(json.loads(json.dumps(table.to_dict()))).confirmations
        == table.confirmations
    )


def test_a_confirmation_decides_over_the_few_table_images(quick_run, tmp_path):
    """3 points lost on the table's 8 images, 0.2 on 1000 in confirm_rows.py: the 1000 decide."""
    paths, _ = quick_run
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 8)
    result = table.checkpoints[0]
    result.row("gdws-none@0.5").robust = result.row("original").robust - 0.03
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: not met.**")
    attack = result.attack
    _confirm_file(tmp_path / "x-confirm.json", "lenet_quick", "gdws-none@0.5", [-0.2], attack)
    table.confirmations = collect_confirmations(tmp_path, attack)
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: met, confirmed on 1000 images.**")
    assert "3.0 points lost on these 8 images; its confirmation decides" in line
    assert "-0.2 points on the engine" in line and "within the target" in line


def test_the_largest_confirmation_of_the_same_row_decides(quick_run, tmp_path):
    """Runs on more images supersede runs on fewer; a run that kept other convs exact is
    another row."""
    paths, _ = quick_run
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 8)
    attack = table.checkpoints[0].attack
    confirm = ("lenet_quick", "gdws-none@0.5")
    _confirm_file(tmp_path / "a-confirm.json", *confirm, [-0.9, -0.2], attack)
    _confirm_file(tmp_path / "b-confirm.json", *confirm, [-0.3], attack, samples=3000)
    _confirm_file(tmp_path / "c-confirm.json", *confirm, [-2.0], attack, samples=5000,
                  kept_exact=["features.3"])  # fmt: skip
    table.confirmations = collect_confirmations(tmp_path, attack)
    assert [c.kept_exact for c in table.confirmations][-1] == ["features.3"]
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: met, confirmed on 3000 images.**")
    assert "in one run: -0.3 points" in line and "b-confirm.md" in line
    table.checkpoints[0].kept_exact = ["features.3"]  # now only the 5000-image run is this row
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: not met.**") and "c-confirm.md" in line


def test_a_speed_up_near_the_target_is_flagged(quick_run):
    paths, _ = quick_run
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 1000)
    (line,) = verdicts(table)
    assert "within 10% of the 2x target" not in line
    table.checkpoints[0].row("gdws-none@0.5").speedup_b32 = 2.05
    (line,) = verdicts(table)
    assert line.startswith("**lenet_quick: met.**")
    assert "Its 2.05x is within 10% of the 2x target" in line and "session_noise.py" in line


def test_keep_exact_names_convs_per_checkpoint(capsys):
    args = paper_table.parse_args([])
    assert paper_table.checkpoint_plan("fmnist_vgg16_bn_w32", args).exclude == ("features.3",)
    assert paper_table.checkpoint_plan("fmnist_vgg16_bn_w16", args).exclude == ()
    args = paper_table.parse_args(["--keep-exact", "fmnist_vgg16_bn_w32:"])
    assert paper_table.checkpoint_plan("fmnist_vgg16_bn_w32", args).exclude == ()
    for argv, message in (
        (["--keep-exact", "fmnist_vgg16_bn_w32"], "is not NAME:LAYER[,LAYER]"),
        (["--keep-exact", "fmnist_vgg16_bn_w32:features.99"],
         "--keep-exact fmnist_vgg16_bn_w32: exclude pattern 'features.99' matches no conv"),
    ):  # fmt: skip
        with pytest.raises(SystemExit):
            paper_table.parse_args(argv)
        assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_kept_convs_stay_exact_in_every_gdws_and_dws_row():
    torch.manual_seed(0)
    model = create_model("vgg16_bn", num_classes=10, in_channels=1, width=4, input_size=16).eval()
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    variants = build_variants(model, (0.5,), {"none": Sensitivity(None)},
                              baselines=("dws", "l1-prune"), refit=("none",), refit_data=(x, y),
                              exclude=("features.3", "features.10"))  # fmt: skip
    assert {v.method for v in variants} == {"original", "gdws", "dws", "l1-prune"}
    for v in variants:
        if v.method in ("gdws", "dws"):
            kept = [v.model.get_submodule(n) for n in ("features.3", "features.10")]
            assert all(type(m) is torch.nn.Conv2d for m in kept), v.name
            assert torch.equal(kept[0].weight, model.features[3].weight)
            assert any(isinstance(m, GDWSConv2d) for m in v.model.modules()), v.name


def test_refreshing_confirmations_rewrites_only_the_verdicts(quick_run, tmp_path):
    paths, _ = quick_run
    table = _meet_target_with(load(paths["json"]), "gdws-none@0.5", 8)
    stem = tmp_path / "table"
    write_results(table, stem)
    before = load(Path(f"{stem}.json"))
    assert "unconfirmed" in verdicts(before)[0] and not before.confirmations_refreshed
    results = tmp_path / "results"
    results.mkdir()
    attack = table.checkpoints[0].attack
    _confirm_file(results / "x-confirm.json", "lenet_quick", "gdws-none@0.5", [0.1], attack)
    written = refresh_confirmations(Path(f"{stem}.json"), results)
    after = load(written["json"])
    assert after.confirmations_refreshed and len(after.confirmations) == 1
    assert after.checkpoints == before.checkpoints and after.seconds == before.seconds
    text = written["markdown"].read_text()
    assert "**lenet_quick: met, confirmed on 1000 images.**" in text
    assert "Confirmations re-read on" in text


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "No such file"), ("{not json", "Expecting property name"),
     ("{}", "not a paper table")],
)  # fmt: skip
def test_refreshing_a_file_that_is_no_table_is_a_one_line_error(tmp_path, text, message):
    path = tmp_path / "table.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        paper_table_report.main([str(path)])
    assert str(exit_info.value).startswith(f"paper_table_report.py: {path}: ")
    assert message in str(exit_info.value) and "\n" not in str(exit_info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if text is None else ["table.json"])
