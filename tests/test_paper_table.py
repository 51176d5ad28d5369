"""The paper table: its verdicts and options on made-up numbers, and its --quick mode end to
end on a LeNet trained in seconds (the default export, the sweep at its ratio and the fixed
ones, the paired attack)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import paper_table
from benchmarks.paper_table import (
    COMPARISON_RATIOS,
    CheckpointResult,
    PaperTable,
    Row,
    judge_target,
    judged,
    to_markdown,
)
from gdws_export.models import save_checkpoint
from gdws_export.pipeline.operating_point import PairedDrop
from tests._trained import fashion_slice, trained_lenet

# --- the verdict, on made-up numbers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("speedup", "drop", "verdict", "words"),
    [
        (2.5, PairedDrop(2000, lost=10, gained=12), "met", "met: 2.50x"),
        (1.9, PairedDrop(2000, lost=10, gained=12), "not met", "under 2x"),
        (3.0, PairedDrop(1000, lost=40, gained=5), "not met", "whole interval past 0.5"),
        (2.5, PairedDrop(1000, lost=12, gained=8), "unresolved", "straddles 0.5"),
        (1.5, PairedDrop(1000, lost=12, gained=8), "not met", "under 2x"),  # speed decides
    ],
)
def test_verdicts(speedup, drop, verdict, words):
    got, text = judge_target(speedup, drop)
    assert got == verdict and words in text
    low, high = drop.interval()
    assert f"{drop.points:+.2f} points on {drop.images} images" in text
    assert f"{low:+.2f} .. {high:+.2f}" in text


def test_a_verdict_near_the_speed_target_says_so():
    drop = PairedDrop(2000, lost=5, gained=5)
    assert "session_noise.py" in judge_target(2.1, drop)[1]
    assert "session_noise.py" in judge_target(1.95, drop)[1]  # a near miss is said too
    assert "session_noise.py" not in judge_target(2.5, drop)[1]
    assert "session_noise.py" not in judge_target(1.5, drop)[1]


def test_the_unresolved_verdict_says_how_many_images_would_resolve_it():
    drop = PairedDrop(1000, lost=12, gained=8)
    text = judge_target(2.5, drop)[1]
    assert f"about {drop.images_to_resolve(0.5)} images" in text


def test_only_onnx_runtime_cpu_fp32_at_one_thread_is_judged():
    assert judged({"target": "ort", "precision": "fp32", "threads": 1})
    assert not judged({"target": "ort", "precision": "fp32", "threads": 2})
    assert not judged({"target": "trt", "precision": "fp16", "threads": 1})


# --- options ---------------------------------------------------------------------------------


def test_defaults_name_no_checkpoint_specific_constant():
    args = paper_table.parse_args([])
    assert args.checkpoints == list(paper_table.CHECKPOINTS)
    assert args.ratios == list(COMPARISON_RATIOS)
    assert args.calib.endswith("models/fashion_mnist_calib_512.npz")
    assert (args.data, args.samples, args.steps, args.batch, args.threads) == (
        "fashion-mnist", 1000, 100, 32, 1,
    )  # fmt: skip
    assert args.export_options == {}  # every export option is the tool's own default


def test_quick_shrinks_the_run_and_options_pass_through():
    args = paper_table.parse_args(["--quick", "--exporter", "legacy", "--calib-samples", "32"])
    assert args.checkpoints == [paper_table.CHECKPOINTS[0]]
    assert args.samples <= 32 and args.steps <= 5 and args.duration < 1
    assert args.export_options == {"exporter": "legacy", "calib_samples": 32,
                                   "held_out_samples": paper_table.QUICK_CALIB}  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ratios", "0"], "--ratios must lie in"),
        (["--checkpoints", "nope"], "no checkpoint nope.pt"),
        (["--samples", "0"], "--samples must be at least 1"),
    ],
)
def test_bad_options_are_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        paper_table.parse_args(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


# --- the table, from made-up numbers ---------------------------------------------------------


def _row(setting, shipped=False, verdict="", drop=None) -> Row:
    return Row(
        setting=setting, shipped=shipped, mac_ratio=None, macs=1000, macs_ratio=1.0,
        measure="none", kept_exact=["features.3"], exporter="dynamo", lowering="auto: gather x2",
        options="ort fp32, batch 32, threads 1", fps_b1=100.0, fps_b32=200.0, speedup_b1=1.0,
        speedup_b32=1.0, p90_ms_b1=1.0, clean=0.9, robust=0.7, engine_clean=0.9,
        engine_robust=0.7, drop=drop, verdict=verdict, verdict_text=verdict,
    )  # fmt: skip


def test_the_table_round_trips_and_renders():
    drop = {"images": 1000, "lost": 3, "gained": 4, "points": -0.1, "interval": [-0.5, 0.3]}
    result = CheckpointResult(
        name="net", path="models/net.pt",
        export={"mac_ratio": 0.27, "measure": "none", "exclude": ["features.3"],
                "held_out": 256, "held_out_drop": 0.39, "held_out_interval": [-0.69, 1.46],
                "reason": "the fewest MACs", "speed_check": "2.1x"},
        settings={"exporter": "dynamo"},
        rows=[_row("original"), _row("mac_ratio=0.27", True, "met", drop)],
        verdict="met", verdict_text="met: 2.30x at batch 32", data="test", attack="PGD-100",
    )  # fmt: skip
    table = PaperTable(
        command="PYTHONPATH=. python benchmarks/paper_table.py", created="now",
        machine={"summary": "a CPU"}, load={"before": [1.0], "after": [1.0]},
        settings={"calib": "c.npz", "batch": 32, "threads": 1, "ratios": [0.25, 0.5]},
        checkpoints=[result],
    )  # fmt: skip
    data = json.loads(json.dumps(table.to_dict()))
    assert data["schema"] == paper_table.SCHEMA
    assert PaperTable.from_dict(data) == table
    text = to_markdown(table)
    assert "| net | MAC ratio 0.27, none alphas, kept exact: features.3 | +0.39 on 256" in text
    assert "met: 2.30x at batch 32" in text
    shipped_line = next(line for line in text.splitlines() if line.startswith("| mac_ratio=0.27"))
    assert "| yes |" in shipped_line and "| dynamo | auto: gather x2 |" in shipped_line
    assert "-0.10 (-0.50 .. +0.30)" in shipped_line


# --- --quick end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper_table")
    model, _, _ = trained_lenet()
    save_checkpoint(model, folder / "lenet_quick.pt")
    x, y = fashion_slice()
    np.savez(folder / "calib.npz", x=x[:96].numpy(), y=y[:96].numpy())  # 32 fit, 64 judge
    np.savez(folder / "test.npz", x=x[800:].numpy(), y=y[800:].numpy())  # never trained on
    argv = ["--quick", "--models-dir", str(folder), "--checkpoints", "lenet_quick",
            "--calib", str(folder / "calib.npz"), "--calib-samples", "32",
            "--held-out-samples", "64", "--sensitivity", "none", "--exporter", "legacy",
            "--lowering", "gather", "--data", str(folder / "test.npz"),
            "--out", str(folder / "out" / "paper-table")]  # fmt: skip
    return paper_table.main(argv)


def test_quick_run_writes_the_table(quick_run):
    data = json.loads(quick_run["json"].read_text())
    assert data["schema"] == paper_table.SCHEMA and "--quick" in data["command"]
    table = PaperTable.from_dict(data)
    assert table.machine["summary"] and table.settings["quick"] is True
    text = quick_run["markdown"].read_text()
    assert "| lenet_quick |" in text and "## lenet_quick" in text


def test_quick_run_measures_the_exports_own_choice_beside_the_fixed_ratios(quick_run):
    (result,) = PaperTable.from_dict(json.loads(quick_run["json"].read_text())).checkpoints
    chosen = result.export["mac_ratio"]
    assert chosen is not None and result.export["measure"] == "none"
    settings = [row.setting for row in result.rows]
    expected = [f"mac_ratio={r:g}" for r in dict.fromkeys([chosen, *COMPARISON_RATIOS])]
    assert settings == ["original", *expected]
    (shipped,) = [row for row in result.rows if row.shipped]
    assert shipped.setting == f"mac_ratio={chosen:g}"
    assert result.verdict == shipped.verdict and result.verdict_text.startswith(shipped.verdict)
    assert result.settings["exporter"] == "legacy" and result.settings["lowering"] == "gather"
    assert result.settings["calib_samples"] == 32  # the export's calibration split, kept
    original = result.row("original")
    assert original.drop is None and original.macs_ratio == 1 and original.speedup_b32 == 1
    for row in result.rows:
        assert row.exporter == "legacy" and row.options.startswith("ort fp32, batch 32")
        assert row.fps_b1 > 0 and row.fps_b32 > 0 and 0 <= row.robust <= row.clean <= 1
        if row is original:
            continue
        assert row.lowering.startswith("gather") and row.macs_ratio < 1
        assert row.verdict in ("met", "not met", "unresolved")
        drop = row.drop
        assert drop["images"] == 32 and drop["interval"][0] <= drop["points"] <= drop["interval"][1]
        # paired on the same images: the drop is the difference of the robust accuracies
        assert drop["points"] == pytest.approx(100 * (original.robust - row.robust), abs=1e-2)
