"""benchmarks/confirm_rows.py on a LeNet trained in seconds: the paired counts add up, the
accuracies match a direct evaluation, bad row names are one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import confirm_rows
from benchmarks.paper_table_variants import parse_variant
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


def test_row_names_parse_with_and_without_refit():
    assert parse_variant("gdws-calibrated@0.25") == ("calibrated", False, 0.25)
    assert parse_variant("gdws-relative+refit@0.3") == ("relative", True, 0.3)


@pytest.mark.parametrize(
    "row", ["no-colon", "lenet:l1-prune@0.5", "lenet:gdws-magic@0.5", "lenet:gdws-none+x@0.5"]
)
def test_bad_rows_are_one_line_errors(row, capsys):
    with pytest.raises(SystemExit) as exit_info:
        confirm_rows.parse_args([row])
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--models-dir", "/nonexistent"], "no checkpoint /nonexistent/fmnist_wrn28_4_w16.pt"),
     (["--samples", "0"], "--samples must be at least 1"),
     (["--torch-threads", "0"], "--torch-threads must be at least 1")],
)  # fmt: skip
def test_missing_checkpoints_and_empty_samples_stop_before_any_work(extra, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        confirm_rows.parse_args(["fmnist_wrn28_4_w16:gdws-none@0.25", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
