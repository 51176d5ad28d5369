"""benchmarks/refit_measures.py on a LeNet trained in seconds: the rows' accuracies are the
refit models' own, and the paired difference is between the two measures."""

from __future__ import annotations

import json

import pytest

from benchmarks import confirm_rows, refit_measures
from gdws_export import approximate, refit_pointwise
from gdws_export.models import save_checkpoint
from tests._trained import SLICE, trained_lenet


def test_compare_two_measures_end_to_end(tmp_path):
    model, _, _ = trained_lenet()
    save_checkpoint(model, tmp_path / "lenet_quick.pt")
    argv = ["lenet_quick:0.5", "--models-dir", str(tmp_path), "--data", str(SLICE),
            "--samples", "40", "--steps", "2", "--calib-samples", "16", "--threads", "1",
            "--out", str(tmp_path / "measures-0.5")]  # fmt: skip
    paths = refit_measures.main(argv)
    assert paths["md"].name == "measures-0.5.md"  # the stem's dot is kept, not a suffix
    (row,) = json.loads(paths["json"].read_text())["rows"]
    assert row["mac_ratio"] == 0.5 and row["samples"] == 40
    d, none, relative = row["none_against_relative"], row["none+refit"], row["relative+refit"]
    # The measures' paired difference is between their two refit models, same images.
    assert d["original"] == relative["variant"] and d["variant"] == none["variant"]
    assert none["original"] == relative["original"]  # one original, attacked once
    assert d["difference_points"] == pytest.approx(100 * (none["variant"] - relative["variant"]))
    # The unweighted row is the refit unweighted GDWS model, attacked as the script does.
    x_train, y_train, x_test, y_test = refit_measures.load_data(str(SLICE))
    loaded = refit_measures.load_model(tmp_path / "lenet_quick.pt").eval()
    gdws, _ = approximate(loaded, mac_ratio=0.5, input_shape=tuple(loaded.input_shape))
    refit, _ = refit_pointwise(gdws, loaded, (x_train[:16], y_train[:16]), eps=0.1,
                               step_size=0.025, samples=16)  # fmt: skip
    attack = refit_measures.AttackConfig("pgd", eps=0.1, step_size=0.025, steps=2)
    mask, _ = confirm_rows.pytorch_robust(refit, x_test[:40], y_test[:40], attack, 250)
    assert none["variant"] == pytest.approx(float(mask.float().mean()))
    assert "| lenet_quick | 0.5 | 40 |" in paths["md"].read_text()


def test_bad_rows_are_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        refit_measures.parse_args(["nothere:0.5", "--models-dir", str(tmp_path)])
    assert "no checkpoint nothere.pt" in capsys.readouterr().err
