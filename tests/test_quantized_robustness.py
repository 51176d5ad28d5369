"""Robust accuracy of an INT8 ONNX Runtime engine three ways (PGD on its fake-quantized twin,
the twin's images replayed on it, Square with AutoAttack's settings on it), the per-image worst
case, and the export's held-out measurement attacking the twin."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _trained import export_legacy, trained_lenet

from gdws_export.attacks import AttackConfig
from gdws_export.attacks.square import _square_side
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy import AccuracyReport, SquareConfig, evaluate_accuracy
from gdws_export.harness.data import load_dataset
from gdws_export.harness.measure_choice import selection_attack
from gdws_export.harness.quantized import quantized_robustness
from gdws_export.models import models_dir
from gdws_export.pipeline.ship import measure_held_out
from gdws_export.runtimes.build import build
from gdws_export.runtimes.fake_quant import twin_of_engine
from gdws_export.runtimes.onnxruntime import OrtRunner

PGD = AttackConfig("pgd", eps=0.1, steps=5, seed=0)


@pytest.fixture(scope="module")
def lenet_int8(tmp_path_factory):
    """(float LeNet, its INT8 build, its twin, 200 held-out images, labels)."""
    model, x, y = trained_lenet()
    folder = tmp_path_factory.mktemp("quantized")
    calibration = load_dataset(models_dir() / "fashion_mnist_calib_512.npz")[0].numpy()
    path = export_legacy(model, folder / "lenet.onnx")
    built = build(path, precision="int8", calibration=calibration, output_dir=folder, threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield model, built, twin_of_engine("ort", built.engine_path, built.settings_path), x, y
    torch.set_num_threads(threads)


def test_three_ways_and_the_worst_case_per_image(lenet_int8):
    _, built, twin, x, y = lenet_int8
    engine = OrtRunner.from_settings(built.settings_path)
    report = quantized_robustness(engine, twin, x, y, attack=PGD, square_queries=100)
    (m,) = report.models
    pgd, square = m.attack("pgd"), m.attack("square")
    assert m.clean_accuracy == m.engine_clean_accuracy > 0.7  # the twin computes the engine
    assert pgd.target == "pytorch" and square.target == "engine"
    assert pgd.robust_accuracy < m.clean_accuracy - 0.2  # (a) PGD reaches through the rounding
    assert pgd.agreement >= 0.98  # (b) the engine decides as the twin on the twin's images
    assert abs(pgd.transfer_gap_points) <= 2
    assert square.robust_accuracy < m.engine_clean_accuracy  # (c) queries the engine itself
    assert square.description.startswith("Square-100 (L-inf, eps=0.1, p_init=0.8")
    assert square.config["rescale_schedule"] is False
    headline = m.worst_case_accuracy
    assert headline <= min(pgd.robust_accuracy, pgd.engine_accuracy, square.robust_accuracy)
    assert "Worst case per image" in report.to_markdown()
    assert AccuracyReport.from_dict(report.to_dict()).models[0].worst_case_accuracy == headline


def test_the_worst_case_counts_an_image_once_any_attack_fools_it(lenet_int8):
    model, _, _, x, y = lenet_int8
    attacks = [AttackConfig("pgd", eps=0.03, steps=3, seed=s) for s in (0, 1)]
    m = evaluate_accuracy({"m": model}, x, y, attacks=attacks).model("m")
    with torch.no_grad():
        held = [model(_attacked(model, x, y, a)).argmax(1) == y for a in attacks]
    clean = model(x).argmax(1) == y
    assert m.worst_case_accuracy == pytest.approx(float((clean & held[0] & held[1]).float().mean()))
    # an old report, before the field: still loads
    data = m.__dict__ | {"attacks": []}
    del data["worst_case_accuracy"]
    old = AccuracyReport.from_dict({"data": "", "samples": 1, "batch_size": 1, "models": [data]})
    assert old.models[0].worst_case_accuracy is None


def _attacked(model, x, y, attack):
    from gdws_export.harness.accuracy import attack_batched

    return attack_batched(model, x, y, attack, batch_size=64)


def test_the_twins_attack_hurts_the_engine_at_least_as_the_float_models(lenet_int8):
    model, built, twin, x, y = lenet_int8
    engines = {"float": OrtRunner.from_settings(built.settings_path),
               "twin": OrtRunner.from_settings(built.settings_path)}  # fmt: skip
    report = evaluate_accuracy({"float": model, "twin": twin}, x, y, attacks=[PGD],
                               engines=engines)  # fmt: skip
    replayed = {m.name: m.attack("pgd").engine_accuracy for m in report.models}
    assert replayed["twin"] <= replayed["float"] + 0.01


def test_autoattack_square_settings_and_schedule():
    config = SquareConfig.autoattack(8 / 255)
    assert (config.queries, config.p_init, config.rescale_schedule) == (5000, 0.8, False)
    assert SquareConfig.autoattack(0.1, queries=500).queries == 500
    # AutoAttack halves p after iteration 10 of any budget; the rescaled schedule of a
    # 5000-query run halves it after iteration 5 (10 of 10,000, stretched).
    full = round((0.8 * 28 * 28) ** 0.5)
    assert _square_side(0.8, 8, 10_000, 28, 28) == full
    assert _square_side(0.8, 8, 5000, 28, 28) == round((0.4 * 28 * 28) ** 0.5)
    with pytest.raises(InvalidInputError, match="rescale_schedule must be True or False"):
        SquareConfig(rescale_schedule=1)


def test_quantized_robustness_refuses_what_it_cannot_run(lenet_int8):
    _, built, twin, x, y = lenet_int8
    engine = OrtRunner.from_settings(built.settings_path)
    with pytest.raises(InvalidInputError, match="L-inf only"):
        quantized_robustness(engine, twin, x, y, attack=AttackConfig("pgd", norm="l2", eps=1.0))
    with pytest.raises(InvalidInputError, match="gradient attack"):
        quantized_robustness(engine, twin, x, y, attack=AttackConfig("none"))


def test_the_exports_held_out_measure_attacks_the_int8_engines_twin(lenet_int8):
    model, built, twin, x, y = lenet_int8
    out = Path(built.engine_path).parent  # the export's folder: the engine and original.onnx
    export_legacy(model, out / "original.onnx")
    cfg = SimpleNamespace(precision="int8", target="ort", threads=1, alpha_eps=0.1, seed=0,
                          calib="calib.npz")  # fmt: skip
    files = {"engine": built.engine_path, "engine_settings": built.settings_path}
    report = SimpleNamespace(files=files, held_out_accuracy=None)
    state = SimpleNamespace(held_out=(x[:100], y[:100]), model=model, shipped_model=model,
                            loaded=SimpleNamespace(fixed_batch=None))  # fmt: skip
    measure_held_out(cfg, report, state, out, lambda *a: contextlib.nullcontext())
    shipped = AccuracyReport.from_dict(report.held_out_accuracy).model("shipped")
    with torch.no_grad():
        twin_clean = float((twin(x[:100]).argmax(1) == y[:100]).float().mean())
    assert shipped.clean_accuracy == twin_clean == shipped.engine_clean_accuracy
    assert shipped.attacks[0].agreement >= 0.98 and shipped.worst_case_accuracy is not None
    on_twin = evaluate_accuracy({"twin": twin}, x[:100], y[:100], batch_size=128,
                                attacks=[selection_attack(0.1, seed=0)]).model("twin")  # fmt: skip
    assert shipped.attacks[0].robust_accuracy == on_twin.attacks[0].robust_accuracy
