"""One source of truth for what ships: `--target torch` saves the model gdws.onnx computes.

Layers keep their original conv either because the MAC budget pays for it (never replaced) or
because the auto lowering timed the original conv faster ("dense"); the `.pt2` program must
hold the original conv at both, and GDWS convs elsewhere, exactly as the report lists.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import gdws_export.lowering.pipeline as lowering_pipeline
from gdws_export.lowering.auto import LayerTiming
from gdws_export.pipeline import ExportConfig, run_export
from gdws_export.runtimes import OrtRunner
from gdws_export.runtimes.torch_program import load_program
from gdws_export.runtimes.torch_runner import TorchRunner
from tests import _model_files as files
from tests._trained import fashion_slice

SHAPE = (1, 28, 28)
# What the mocked auto lowering decides for the GDWS layers (layer "11" keeps its conv by the
# budget at mac_ratio 0.3, so it is no GDWS layer; see test below).
AUTO_FORMS = {"2": "dense", "6": "gather", "8": "dense"}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()  # fmt: skip


@pytest.fixture
def fixed_auto_choice(monkeypatch):
    """`--lowering auto` with a fixed per-layer choice instead of timings (deterministic)."""

    def choose_forms(model, example, **_):
        return {name: LayerTiming(form, {}, {}) for name, form in AUTO_FORMS.items()}

    def check_network(model, forms, example, **_):
        return lowering_pipeline._NetworkCheck("auto", forms, speed_check="fixed by the test")

    monkeypatch.setattr(lowering_pipeline, "choose_forms", choose_forms)
    monkeypatch.setattr(lowering_pipeline, "_check_network", check_network)


def test_the_torch_program_ships_the_convs_the_onnx_graph_keeps(tmp_path, fixed_auto_choice):
    model = _net()
    path = files.pickled_module_file(tmp_path, model)
    out = tmp_path / "out"
    report = run_export(ExportConfig(
        str(path), output=str(out), trust_pickle=True, input_shape=SHAPE, mac_ratio=0.3,
        target="torch", exporter="legacy", lowering="auto", threads=1,
    ))  # fmt: skip
    status = {row["name"]: row["status"] for row in report.layer_rows()}
    assert status == {"0": "skipped", "2": "gdws", "6": "gdws", "8": "gdws", "11": "original"}
    kept = report.parity["approximation"]["original_convs_kept"]
    assert kept == ["2", "8"] and report.exports["gdws"]["layers"][1]["form"] == "gather"

    # The program computes what gdws.onnx computes, on real images.
    x = fashion_slice()[0][:32].numpy()
    with (
        TorchRunner.from_settings(out / report.files["engine_settings"]) as program,
        OrtRunner(out / "gdws.onnx") as graph,
    ):
        np.testing.assert_allclose(program.predict(x), graph.predict(x), atol=1e-4)

    # Its weights are the original convs where the report says so, GDWS convs elsewhere.
    weights = load_program(out / "gdws.pt2").state_dict
    for name in ("0", "11", *kept):  # unchanged, kept by the budget, kept by the lowering
        assert torch.equal(weights[f"{name}.weight"], model.get_submodule(name).weight)
    assert "6.weight" not in weights and "6.pointwise.weight" in weights


@pytest.mark.parametrize("target", ["ort", "torch"])
def test_a_program_with_a_bounded_dynamic_batch_exports_for_every_target(tmp_path, target):
    """`Dim("batch", min=1, max=1024)`: the graph checks the bounds, so the torch target's
    re-export declares the same range (an unbounded Dim was refused)."""
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ).eval()  # fmt: skip
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.rand(2, *SHAPE),), dynamic_shapes=({0: batch},))
    path = tmp_path / "bounded.pt2"
    torch.export.save(program, path)
    out = tmp_path / "out"
    report = run_export(ExportConfig(str(path), output=str(out), target=target,
                                     exporter="legacy", lowering="gather", threads=1))  # fmt: skip
    assert report.parity["engine"]["passed"]
    if target == "torch":
        bounds = next(iter(load_program(out / "gdws.pt2").range_constraints.values()))
        assert (int(bounds.lower), int(bounds.upper)) == (1, 1024)


def test_a_program_with_a_batch_of_one_exports_for_the_torch_target(tmp_path):
    """The engine check ran all parity images through the fixed-batch model at once (an
    internal error, exit 1); its reference is now gdws.onnx, run in the graph's batches."""
    path = files.export_file(tmp_path, batch=1)
    out = tmp_path / "out"
    report = run_export(ExportConfig(str(path), output=str(out), target="torch",
                                     exporter="legacy", lowering="gather", threads=1))  # fmt: skip
    assert report.parity["engine"]["passed"] and report.parity["engine"]["n_inputs"] == 16
