"""benchmarks/confirm_rows.py on a LeNet trained in seconds: the paired counts add up, the
accuracies match a direct evaluation, bad row names are one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from benchmarks import confirm_rows
from benchmarks.paper_table_variants import parse_variant
from gdws_export.harness.data import load_dataset
from gdws_export.harness.measure_choice import AUTO_MEASURES, MeasureChoice
from gdws_export.models import save_checkpoint
from tests._trained import SLICE, trained_lenet


def test_paired_counts_and_standard_error():
    original = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    variant = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0], dtype=torch.bool)
    p = confirm_rows.paired(original, variant)
    assert (p["both"], p["only_original"], p["only_variant"], p["neither"]) == (3, 2, 1, 2)
    assert p["original"] == 5 / 8 and p["variant"] == 4 / 8
    assert p["difference_points"] == pytest.approx(100 * (4 - 5) / 8)
    # per-image differences d_i in {-1, 0, 1}: SE = sqrt(sum (d_i - mean)^2) / n
    d = variant.float() - original.float()
    expected = math.sqrt(float(((d - d.mean()) ** 2).sum())) / len(d)
    assert p["se_points"] == pytest.approx(100 * expected)


def test_confirm_a_row_end_to_end(tmp_path):
    model, _, _ = trained_lenet()
    save_checkpoint(model, tmp_path / "lenet_quick.pt")
    argv = ["lenet_quick:gdws-none+refit@0.5", "--models-dir", str(tmp_path), "--data", str(SLICE),
            "--samples", "40", "--steps", "2", "--calib-samples", "16", "--threads", "1",
            "--out", str(tmp_path / "confirm")]  # fmt: skip
    paths = confirm_rows.main(argv)
    (row,) = json.loads(paths["json"].read_text())["rows"]
    p = row["pytorch"]
    assert row["samples"] == 40 and row["variant"] == "gdws-none+refit@0.5"
    assert p["both"] + p["only_original"] + p["only_variant"] + p["neither"] == 40
    assert p["original"] == (p["both"] + p["only_original"]) / 40
    # The engine replays the same adversarial images: it agrees with PyTorch up to float noise.
    assert abs(row["engine"]["original"] - p["original"]) <= 0.05
    assert "lenet_quick | gdws-none+refit@0.5" in paths["markdown"].read_text()


def test_confirm_the_export_default_calibrated_on_a_file(tmp_path):
    model, _, _ = trained_lenet()
    save_checkpoint(model, tmp_path / "lenet_quick.pt")
    x, y = load_dataset(SLICE)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=x[500:548].numpy(), y=y[500:548].numpy())  # 16 fit + 32 judge
    argv = ["lenet_quick:gdws-auto+refit@0.5", "--models-dir", str(tmp_path), "--data", str(SLICE),
            "--calib", str(calib), "--samples", "40", "--steps", "2", "--calib-samples", "16",
            "--held-out-samples", "32", "--threads", "1", "--out", str(tmp_path / "confirm")]  # fmt: skip
    paths = confirm_rows.main(argv)
    (row,) = json.loads(paths["json"].read_text())["rows"]
    default = row["export_default"]
    choice = MeasureChoice.from_dict(default["choice"])
    assert [t.measure for t in choice.trials] == list(AUTO_MEASURES) and choice.held_out == 32
    assert default["variant"] == f"gdws-{choice.chosen}+refit@0.5"
    assert row["variant"] == f"{default['variant']} (auto)"
    assert row["pytorch"]["both"] + row["pytorch"]["neither"] <= 40


def test_row_names_parse_with_and_without_refit():
    assert parse_variant("gdws-calibrated@0.25") == ("calibrated", False, 0.25)
    assert parse_variant("gdws-relative+refit@0.3") == ("relative", True, 0.3)
    assert confirm_rows.parse_row("gdws-auto+refit@0.2") == ("auto", True, 0.2)
    assert confirm_rows.parse_row("gdws-none@0.2") == ("none", False, 0.2)


@pytest.mark.parametrize(
    "row",
    ["no-colon", "lenet:l1-prune@0.5", "lenet:gdws-magic@0.5", "lenet:gdws-none+x@0.5",
     "lenet:gdws-auto@0.5"],  # auto chooses among refit rows only
)  # fmt: skip
def test_bad_rows_are_one_line_errors(row, capsys):
    with pytest.raises(SystemExit) as exit_info:
        confirm_rows.parse_args([row])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--models-dir", "/nonexistent"], "no checkpoint /nonexistent/fmnist_wrn28_4_w16.pt"),
     (["--samples", "0"], "--samples must be at least 1"),
     (["--torch-threads", "0"], "--torch-threads must be at least 1"),
     (["--held-out-samples", "0"], "--held-out-samples must be at least 1"),
     (["--calib", "/nonexistent.npz"], "--calib /nonexistent.npz: no such file"),
     (["--keep-exact", "fmnist_wrn28_4_w16:block9.*"],
      "--keep-exact fmnist_wrn28_4_w16: exclude pattern 'block9.*' matches no conv")],
)  # fmt: skip
def test_missing_checkpoints_and_empty_samples_stop_before_any_work(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        confirm_rows.parse_args(["fmnist_wrn28_4_w16:gdws-none@0.25", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
