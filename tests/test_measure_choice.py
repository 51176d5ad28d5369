"""`--sensitivity auto`: `choose_measure` and its wiring into `run_export`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gdws_export import approximate, calibrated_gains, refit_pointwise
from gdws_export.attacks import run_attack
from gdws_export.errors import InvalidInputError
from gdws_export.gdws.sensitivity import load_alphas
from gdws_export.harness.measure_choice import (
    AUTO_MEASURES,
    MeasureChoice,
    choose_measure,
    selection_attack,
)
from gdws_export.models import save_checkpoint
from gdws_export.pipeline import ExportConfig, ExportReport, run_export
from tests._trained import fashion_slice, trained_lenet

EPS = 0.03  # the width-8 LeNet keeps some accuracy under it


def _robust_count(model, x, y, attack, batch=128) -> int:
    """Images right clean and under `attack`, counted directly (the reference): only the images
    right clean are attacked, `batch` at a time (a wrong one cannot count as robust)."""
    with torch.no_grad():
        right = model(x).argmax(1) == y
    x, y = x[right], y[right]
    count = 0
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        x_adv = run_attack(model, xb, yb, attack)
        with torch.no_grad():
            count += int((model(x_adv).argmax(1) == yb).sum())
    return count


def test_the_most_robust_candidate_is_chosen_and_counted_right():
    model, x, y = trained_lenet()
    weak, _ = approximate(model, mac_ratio=0.05)  # far fewer kernels: less robust
    attack = selection_attack(EPS)
    choice = choose_measure({"weak": weak, "strong": model}, x, y, attack)
    assert choice.chosen == "strong"
    assert [t.measure for t in choice.trials] == ["weak", "strong"]
    assert choice.held_out == len(x) and choice.attack == attack.describe()
    strong = _robust_count(model, x, y, attack) / len(x)
    assert choice.trials[1].robust == pytest.approx(strong)
    assert choice.trials[1].robust > choice.trials[0].robust
    # A GDWS candidate is judged as the function it computes (attacked as its dense copy).
    assert choice.trials[0].robust == pytest.approx(_robust_count(weak, x, y, attack) / len(x))
    assert MeasureChoice.from_dict(choice.to_dict()) == choice


def test_a_tie_keeps_the_earlier_candidate():
    model, x, y = trained_lenet()
    attack = selection_attack(EPS)
    assert choose_measure({"a": model, "b": model}, x[:64], y[:64], attack).chosen == "a"
    assert choose_measure({"b": model, "a": model}, x[:64], y[:64], attack).chosen == "b"


def test_bad_arguments():
    model, x, y = trained_lenet()
    with pytest.raises(InvalidInputError, match="no candidate models"):
        choose_measure({}, x, y, selection_attack(EPS))
    with pytest.raises(InvalidInputError, match="as many labels as images"):
        choose_measure({"a": model}, x, y[:3], selection_attack(EPS))


@pytest.fixture(scope="module")
def lenet_and_calib(tmp_path_factory):
    """The trained LeNet as a checkpoint, and 32 + 64 calibration images (fit + held out)."""
    folder = tmp_path_factory.mktemp("auto")
    model, _, _ = trained_lenet()
    path = save_checkpoint(model, folder / "lenet.pt")
    x, y = fashion_slice()
    calib = folder / "calib.npz"
    np.savez(calib, x=x[:96].numpy(), y=y[:96].numpy())
    return str(path), str(calib)


def _auto(path, calib, out, **kwargs):
    settings = dict(calib=calib, calib_samples=32, held_out_samples=64, mac_ratio=0.3,
                    alpha_eps=EPS, dry_run=True)  # fmt: skip
    return ExportConfig(path, output=str(out), **{**settings, **kwargs})


def test_auto_ships_the_measure_it_chose(lenet_and_calib, tmp_path, monkeypatch):
    import gdws_export.pipeline.candidates as candidates

    path, calib = lenet_and_calib
    judged = {}

    def choose_calibrated(models, x, y, attack, **kwargs):
        judged.update(models=list(models), images=len(x))
        return MeasureChoice("calibrated", len(x), attack.describe(), [])

    monkeypatch.setattr(candidates, "choose_measure", choose_calibrated)
    report = run_export(_auto(path, calib, tmp_path / "out"))
    assert judged == {"models": list(AUTO_MEASURES), "images": 64}
    assert report.model["alphas"].startswith("calibrated") and "auto" in report.model["alphas"]
    # What ships is calibrated's model: alphas, kernels and refit all from the 32 fit images.
    model, _, _ = trained_lenet()
    x, y = fashion_slice()
    alphas = calibrated_gains(model, (x[:32], y[:32]), samples=32, eps=EPS, step_size=EPS / 4,
                              batch_size=64)  # fmt: skip
    gdws, plan = approximate(model, mac_ratio=0.3, alphas=alphas)
    kernels = {r["name"]: r["kernels"] for r in report.approximation["layers"] if r["kernels"]}
    assert kernels == {layer.name: layer.kernels for layer in plan.replaced}
    _, refit = refit_pointwise(gdws, model, (x[:32], y[:32]), eps=EPS, step_size=EPS / 4,
                               samples=32, batch_size=64)  # fmt: skip
    assert report.refit == refit.to_dict()


def test_auto_end_to_end_report(lenet_and_calib, tmp_path):
    path, calib = lenet_and_calib
    report = run_export(_auto(path, calib, tmp_path / "out", dry_run=False,
                              exporter="legacy", lowering="gather"))  # fmt: skip
    choice = MeasureChoice.from_dict(report.sensitivity_choice)
    assert [t.measure for t in choice.trials] == list(AUTO_MEASURES)
    assert choice.held_out == 64
    best = max(t.robust for t in choice.trials)
    assert choice.chosen == next(t.measure for t in choice.trials if t.robust == best)
    assert report.model["alphas"].startswith(choice.chosen)
    assert 0 < best < 1  # the attack separates something at this eps
    text = (tmp_path / "out" / "report.md").read_text()
    assert "## Sensitivity choice" in text and f"**{choice.chosen}**" in text
    saved = ExportReport.load(tmp_path / "out" / "report.json")
    assert saved.sensitivity_choice == report.sensitivity_choice
    # Stages run once per candidate add up; the chosen measure's alphas are the ones saved.
    assert {"approximate", "refit", "choose"} <= set(report.timings)
    if choice.chosen != "none":
        assert (tmp_path / "out" / "alphas.pt").is_file()
        assert load_alphas(tmp_path / "out" / "alphas.pt")
