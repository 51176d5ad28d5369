"""run_export end to end on tiny models: files, report, atomic outputs, settings, targets.

Most runs use the legacy exporter and the gather lowering: 0.3 s an export instead of ~4 s
(the dynamo exporter and auto lowering have their own tests in tests/test_lowering_*.py, and
test_cli.py runs the defaults once).
"""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import onnx
import pytest
import torch

from gdws_export.errors import InvalidInputError, ParityError, UnsupportedModelError
from gdws_export.harness.measure_choice import AUTO_MEASURES
from gdws_export.models import create_model, save_checkpoint
from gdws_export.pipeline import ExportConfig, ExportReport, run_export
from gdws_export.pipeline.config import DEFAULT_MAC_RATIO, parse_input_shape
from gdws_export.runtimes import OrtRunner
from gdws_export.runtimes.onnxruntime import OrtSettings
from tests import _model_files as files

FAST = {"exporter": "legacy", "lowering": "gather"}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return str(files.checkpoint(tmp_path_factory.mktemp("model")))


def _config(model, out, **kwargs) -> ExportConfig:
    return ExportConfig(model, output=str(out), **{**FAST, **kwargs})


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


# --- ExportConfig --------------------------------------------------------------------------


def test_defaults_are_resolved_in_one_place(ckpt):
    c = ExportConfig(ckpt).resolved()
    assert c.mac_ratio == DEFAULT_MAC_RATIO and c.beta is None
    assert c.output == "lenet-ort-fp32" and c.lowering == "auto" and c.dynamic_batch
    assert any(f"mac_ratio {DEFAULT_MAC_RATIO}" in note for note in c.notes)
    assert ExportConfig(ckpt, beta=0.1).resolved().mac_ratio is None
    assert ExportConfig(ckpt, time_ratio=0.5).resolved().mac_ratio is None
    assert ExportConfig(ckpt, dynamic_batch=False).resolved().batch == 1
    assert ExportConfig(ckpt, input_shape=(4, 1, 16, 16)).resolved().batch == 4
    assert ExportConfig(ckpt, triton_repo="r").resolved().triton_name == "lenet"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": -1.0}, r"--beta must be a finite number >= 0"),
        ({"mac_ratio": 2.0}, r"--mac-ratio must be in \(0, 1\]"),
        ({"mac_ratio": 0.0}, r"--mac-ratio must be in \(0, 1\]"),
        ({"beta": 0.1, "mac_ratio": 0.5}, "not more"),
        ({"mac_ratio": 0.5, "time_ratio": 0.5}, "not more"),
        ({"time_ratio": 0.0}, r"--time-ratio must be in \(0, 1\]"),
        ({"gdws": False, "time_ratio": 0.5}, "--no-gdws exports the original model; --time-ratio"),
        ({"gdws": False, "exclude": ("features.3",)}, "--no-gdws .* --exclude would be ignored"),
        ({"exclude": ("features.3", " ")}, "--exclude takes conv names or patterns"),
        ({"max_layer_error": 0.0}, r"--max-layer-error must be in \(0, 1\]"),
        ({"max_layer_error": float("nan")}, r"--max-layer-error must be in \(0, 1\]"),
        ({"beta": 0.1, "max_layer_error": 0.3}, "caps a budget .* not --beta"),
        ({"precision": "int8"}, "--int8 needs calibration data"),
        ({"workspace_mib": 512}, "--workspace applies to --target trt only"),
        ({"gdws": False, "beta": 1.0}, "--no-gdws exports the original model; --beta"),
        ({"target": "tpu"}, "--target must be one of ort, trt"),
        ({"input_shape": (2, 1, 16, 16), "batch": 4}, "batch 2 but --batch 4"),
        ({"mean": (0.5,)}, "--mean and --std together"),
        ({"mean": (0.5,), "std": (0.0,)}, "--std positive"),
        ({"lowering": "sideways"}, "--lowering 'sideways' is unknown"),
        ({"calib_samples": 0}, "--calib-samples must be a positive integer"),
        ({"calib": "x.npz", "held_out_samples": 0}, "--held-out-samples must be a positive"),
        ({"sensitivity": "auto"}, "--sensitivity auto judges .* pass --calib DATA"),
        ({"sensitivity": "auto", "calib": "x.npz", "beta": 0.1}, "use --mac-ratio or"),
        ({"sensitivity": "auto", "calib": "x.npz", "alphas": "a.pt"}, "give one"),
        ({"triton_repo": "r", "triton_name": "a/b"}, "--triton-name"),
        ({"target": "torch", "precision": "int8", "calib": "x.npz"}, "not --int8"),
        ({"target": "torch", "triton_repo": "r"}, "use --target trt or ort"),
        ({"refit": True}, "--refit needs calibration data"),
        ({"refit": True, "gdws": False, "calib": "x.npz"}, "--refit refits GDWS layers"),
    ],
)
def test_bad_settings_are_invalid_input(ckpt, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        ExportConfig(ckpt, **kwargs).resolved()


@pytest.mark.parametrize("text", ["3x32", "1x3x32x32x2", "ax3x32x32", "1x0x32x32", ""])
def test_malformed_input_shapes(text):
    with pytest.raises(InvalidInputError, match="malformed"):
        parse_input_shape(text)


def test_input_shapes_parse():
    assert parse_input_shape("1x3x32x32") == (1, 3, 32, 32)
    assert parse_input_shape("3,28,28") == (3, 28, 28)


def test_config_round_trips_through_json(ckpt):
    c = ExportConfig(ckpt, mean=(0.5,), std=(0.25,), input_shape=(1, 16, 16),
                     exclude=("features.3",)).resolved()  # fmt: skip
    assert ExportConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert c.resolved() == c  # resolving twice changes nothing


# --- run_export ----------------------------------------------------------------------------


def test_ort_export_writes_a_complete_directory(ckpt, tmp_path):
    events = []
    report = run_export(_config(ckpt, tmp_path / "out"), progress=lambda *e: events.append(e))
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["original.onnx", "gdws.onnx", "gdws.fp32.ort.onnx", "gdws.fp32.ort.json",
         "alphas.pt", "report.json", "report.md",  # alphas: the default relative ones
         "shipped.pt2",  # the engine's PyTorch twin
         ".gdws-export"]  # the marker that lets a later --force replace the folder
    )  # fmt: skip
    # The twin computes what the engine does (the parity inputs the export checked).
    from gdws_export.runtimes.torch_program import load_program

    twin = load_program(out / "shipped.pt2").module()
    x = torch.rand(4, *files.SHAPE)
    engine = OrtRunner(str(out / "gdws.fp32.ort.onnx"))
    with engine:
        (logits,) = engine.infer({engine.inputs()[0].name: x.numpy()}).values()
    np.testing.assert_allclose(twin(x).detach().numpy(), logits, rtol=1e-4, atol=1e-4)
    assert _leftovers(tmp_path) == []
    assert stat.S_IMODE(os.stat(out / "report.json").st_mode) & 0o044  # readable by others
    # The report: schema, figures, files, and a reload that gives the same object.
    saved = ExportReport.load(out / "report.json")
    assert saved == ExportReport.from_dict(json.loads(report.to_json()))
    document = json.loads((out / "report.json").read_text())
    assert (document["schema_version"], document["kind"]) == (1, "export")
    assert document["tool"] == {"name": "gdws-export", "version": saved.tool_version}
    assert saved.files["engine"] == "gdws.fp32.ort.onnx"
    assert (
        saved.macs["gdws"] < saved.macs["original"]
        and saved.params["gdws"] < saved.params["original"]
    )
    assert all(saved.parity[k]["passed"] for k in ("onnx_original", "onnx_gdws", "engine"))
    assert set(saved.timings) >= {"load", "approximate", "export_gdws", "build", "check_engine"}
    assert saved.versions["torch"] == torch.__version__
    rows = {r["name"]: r for r in saved.layer_rows()}
    assert rows["features.3"]["status"] == "gdws" and rows["features.3"]["lowering"] == "gather"
    assert rows["features.0"]["status"] == "skipped"
    markdown = (out / "report.md").read_text()
    assert "| features.3 | 8x4x5x5 | gdws |" in markdown and "## Parity" in markdown
    # Stage events: a start and an end per stage, in order.
    started = [stage for stage, _, seconds in events if seconds is None]
    ended = [stage for stage, _, seconds in events if seconds is not None]
    assert started == ended and started[0] == "load" and started[-1] == "check_engine"
    # The engine runs from its settings file and computes what the GDWS graph computes.
    x = files.images(4).numpy()
    with (
        OrtRunner.from_settings(out / "gdws.fp32.ort.json") as engine,
        OrtRunner(out / "gdws.onnx") as graph,
    ):
        np.testing.assert_allclose(engine.predict(x), graph.predict(x), atol=1e-5)
        assert engine.inputs()[0].shape[0] not in (1, 4)  # dynamic batch axis
    assert OrtSettings.load(out / "gdws.fp32.ort.json").source_onnx == "gdws.onnx"


def test_time_ratio_for_another_target_warns_that_ort_priced_it(ckpt, tmp_path):
    report = run_export(
        _config(ckpt, tmp_path / "out", dry_run=True, target="trt", time_ratio=1.0, threads=1)
    )
    assert report.approximation["time_ratio"] == 1.0
    assert any("priced the layers by ONNX Runtime CPU timings" in w for w in report.warnings)
    assert "layer_costs" in report.timings
    ort = run_export(_config(ckpt, tmp_path / "out2", dry_run=True, time_ratio=1.0, threads=1))
    assert not any("priced the layers" in w for w in ort.warnings)


def test_report_documents_of_another_kind_or_version_are_refused(ckpt, tmp_path):
    report = run_export(_config(ckpt, tmp_path / "out", dry_run=True))
    document = json.loads(report.to_json())
    assert json.loads(ExportReport.from_dict(document).to_json()) == document
    with pytest.raises(InvalidInputError, match="kind is not 'export'"):
        ExportReport.from_dict({**document, "kind": "sweep"})
    with pytest.raises(InvalidInputError, match="schema_version 2 is not 1"):
        ExportReport.from_dict({**document, "schema_version": 2})


def test_failed_run_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import gdws_export.runtimes.build as build_module

    def broken(*args, **kwargs):
        raise UnsupportedModelError("the builder fell over")

    monkeypatch.setattr(build_module, "build", broken)
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(UnsupportedModelError, match="fell over"):
        run_export(_config(ckpt, out))
    assert list(tmp_path.iterdir()) == []  # not even the parent folders it created


def test_interrupted_run_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import gdws_export.lowering as lowering

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lowering, "export_onnx", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_export(_config(ckpt, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_is_a_parity_error_and_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import gdws_export.pipeline.engine as engine

    monkeypatch.setattr(engine, "TOLERANCES", {**engine.TOLERANCES, "fp32": -1.0})
    with pytest.raises(ParityError, match="differs from its ONNX graph"):
        run_export(_config(ckpt, tmp_path / "out"))
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="already exists; pass --force"):
        run_export(_config(ckpt, out))
    with pytest.raises(InvalidInputError, match="not written by gdws-export"):
        run_export(_config(ckpt, out, force=True))  # --force replaces only our own folders
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    out.rename(tmp_path / "mine")
    run_export(_config(ckpt, out))
    (out / "added.txt").write_text("x")
    run_export(_config(ckpt, out, force=True))
    assert (out / "report.json").is_file() and not (out / "added.txt").exists()
    assert _leftovers(tmp_path) == []


def test_unwritable_output_is_invalid_input(ckpt, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(InvalidInputError, match="cannot write"):
        run_export(_config(ckpt, blocker / "out"))
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_no_gdws_exports_the_original_only(ckpt, tmp_path):
    report = run_export(_config(ckpt, tmp_path / "out", gdws=False))
    assert report.approximation is None and "gdws" not in report.exports
    assert report.files["engine"] == "original.fp32.ort.onnx"
    assert not (tmp_path / "out" / "gdws.onnx").exists()


def test_dry_run_plans_and_writes_nothing(ckpt, tmp_path):
    report = run_export(_config(ckpt, tmp_path / "out", dry_run=True, mac_ratio=0.3))
    assert report.dry_run and report.files == {} and list(tmp_path.iterdir()) == []
    assert [r["status"] for r in report.layer_rows()] == ["skipped", "gdws"]
    assert report.macs["gdws"] < report.macs["original"]


def test_alphas_from_calibration_data_and_int8(ckpt, tmp_path):
    calib = files.calib_npz(tmp_path, n=8)
    report = run_export(
        _config(
            ckpt,
            tmp_path / "out",
            calib=str(calib),
            precision="int8",
            sensitivity="calibrated",
            mac_ratio=0.75,
        )
    )
    from gdws_export import load_alphas

    alphas = load_alphas(tmp_path / "out" / "alphas.pt")
    assert set(alphas) == {"features.3"} and alphas["features.3"].shape == (4,)
    assert report.model["alphas"].startswith(f"calibrated, computed on {calib} (8 samples")
    assert report.approximation["weighted"] and report.files["engine"] == "gdws.int8.ort.onnx"
    assert "engine" in report.parity  # figures reported; INT8 does not fail the export
    # The saved alphas reproduce the same plan when passed back.
    again = run_export(
        _config(ckpt, tmp_path / "again", alphas=str(tmp_path / "out" / "alphas.pt"))
    )
    assert again.approximation["layers"] == report.approximation["layers"]


def test_activation_aware_alphas_save_their_moments(ckpt, tmp_path):
    from gdws_export import load_alphas, load_input_moments

    calib = files.calib_npz(tmp_path, n=8)
    report = run_export(_config(ckpt, tmp_path / "out", calib=str(calib), sensitivity="activation",
                                mac_ratio=0.75))  # fmt: skip
    saved = tmp_path / "out" / "alphas.pt"
    moments = load_input_moments(saved)
    assert set(moments) == set(load_alphas(saved)) == {"features.3"}
    assert moments["features.3"].shape == (4, 25, 25)  # 4 input channels, 5x5 taps
    assert report.model["alphas"].startswith(f"activation, computed on {calib} (8 samples")
    assert report.approximation["weighted"]
    # The saved file (alphas and moments) reproduces the same plan when passed back.
    again = run_export(_config(ckpt, tmp_path / "again", alphas=str(saved), dry_run=True))
    assert again.model["alphas"] == f"file {saved} (activation-aware)"
    assert again.approximation["layers"] == report.approximation["layers"]


def test_relative_alphas_need_no_data(ckpt, tmp_path):
    from gdws_export import load_alphas, load_model, relative_gains

    report = run_export(_config(ckpt, tmp_path / "out", sensitivity="relative"))
    assert report.model["alphas"].startswith("relative")
    assert report.approximation["weighted"]
    saved = load_alphas(tmp_path / "out" / "alphas.pt")
    expected = relative_gains(load_model(ckpt))
    assert set(saved) == set(expected) == {"features.3"}
    torch.testing.assert_close(saved["features.3"], expected["features.3"])


def test_refit_is_on_with_calibration_data_and_lowers_the_error(ckpt, tmp_path):
    assert ExportConfig(ckpt, calib="x.npz").resolved().refit is True
    assert ExportConfig(ckpt).resolved().refit is False
    assert ExportConfig(ckpt, calib="x.npz", refit=False).resolved().refit is False
    calib = files.calib_npz(tmp_path, n=16)
    runs = {}
    for refit in (True, False):  # one sensitivity: the default differs with and without refit
        runs[refit] = run_export(_config(ckpt, tmp_path / f"out-{refit}", calib=str(calib),
                                         mac_ratio=0.3, refit=refit, sensitivity="relative"))  # fmt: skip
    refit = runs[True].refit
    assert refit["inputs"] == 32  # clean and PGD images
    assert [layer["name"] for layer in refit["layers"]] == ["features.3"]
    assert refit["layers"][0]["error_after"] < refit["layers"][0]["error_before"]
    assert runs[False].refit is None
    # Same kernels and MACs; the refit model is closer to the original on the parity inputs.
    assert runs[True].macs == runs[False].macs
    closer = runs[True].parity["approximation"]["max_abs_diff"]
    assert closer < runs[False].parity["approximation"]["max_abs_diff"]
    assert "## 1x1 refit" in (tmp_path / "out-True" / "report.md").read_text()
    assert "refit" in runs[True].timings and "refit" not in runs[False].timings
    assert ExportReport.load(tmp_path / "out-True" / "report.json").refit == refit


def test_default_sensitivity_is_auto_with_refit_and_relative_without(ckpt, tmp_path):
    from gdws_export import approximate, load_model

    auto = ExportConfig(ckpt, calib="x.npz").resolved()
    assert (auto.sensitivity, auto.calib_samples, auto.held_out_samples) == ("auto", 256, 256)
    # Under beta the measures would buy different MACs; a file gives the alphas itself.
    assert ExportConfig(ckpt, calib="x.npz", beta=0.1).resolved().sensitivity == "none"
    assert ExportConfig(ckpt, calib="x.npz", alphas="a.pt").resolved().sensitivity == "none"
    unrefit = ExportConfig(ckpt, calib="x.npz", refit=False, mac_ratio=0.5).resolved()
    assert (unrefit.sensitivity, unrefit.calib_samples) == ("relative", 512)
    assert ExportConfig(ckpt).resolved().sensitivity == "relative"
    assert ExportConfig(ckpt, calib="x.npz", sensitivity="relative").resolved().sensitivity == (
        "relative"
    )
    # 8 calibration images: none left to judge the measures on, so auto ships the first
    # candidate (unweighted) and says why.
    calib = files.calib_npz(tmp_path, n=8)
    report = run_export(_config(ckpt, tmp_path / "out", calib=str(calib), mac_ratio=0.3,
                                dry_run=True))  # fmt: skip
    assert report.model["alphas"].startswith("none (unweighted")
    assert report.sensitivity_choice is None
    assert any("too few to judge the measures" in w for w in report.warnings)
    assert not report.approximation["weighted"]
    # The plan is unweighted GDWS's: the kernels approximate(alphas=None) picks.
    _, plain = approximate(load_model(ckpt), mac_ratio=0.3)
    planned = report.approximation["layers"]
    assert {row["name"]: row["kernels"] for row in planned if row["status"] == "gdws"} == {
        layer.name: layer.kernels for layer in plain.replaced
    }


def test_alpha_eps_defaults_to_the_checkpoints_training_eps(tmp_path):
    from gdws_export.models import save_checkpoint

    robust = save_checkpoint(files.lenet(), tmp_path / "robust.pt",
                             training={"eps": 0.05, "norm": "linf"})  # fmt: skip
    plain = files.checkpoint(tmp_path)
    calib = files.calib_npz(tmp_path, n=8)
    runs = {}
    for name, path in (("robust", robust), ("plain", plain)):
        runs[name] = run_export(_config(str(path), tmp_path / name, calib=str(calib),
                                        mac_ratio=0.3, dry_run=True))  # fmt: skip
    assert runs["robust"].settings["alpha_eps"] == 0.05
    assert runs["robust"].refit["attack_eps"] == pytest.approx(0.1)  # the refit's 2x radius
    assert "--alpha-eps 0.05: the checkpoint's training eps" in runs["robust"].settings["notes"]
    assert runs["plain"].settings["alpha_eps"] == pytest.approx(8 / 255)
    given = run_export(_config(str(robust), tmp_path / "given", calib=str(calib), mac_ratio=0.3,
                               alpha_eps=0.02, dry_run=True))  # fmt: skip
    assert given.settings["alpha_eps"] == 0.02


def test_calibration_labels_must_fit_the_model(ckpt, tmp_path):
    calib = files.calib_npz(tmp_path, n=4, classes=50)
    with pytest.raises(InvalidInputError, match="has label .* but the model has 10 outputs"):
        run_export(_config(ckpt, tmp_path / "out", calib=str(calib), dry_run=True))


def test_normalization_is_baked_into_the_graph(tmp_path):
    path = files.checkpoint(tmp_path)  # a model without normalization
    run_export(_config(str(path), tmp_path / "out", gdws=False, mean=(0.5,), std=(0.25,)))
    x = files.images(3)
    with OrtRunner(tmp_path / "out" / "original.onnx") as runner:
        got = runner.predict(x.numpy())
    with torch.no_grad():
        expected = files.lenet()((x - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_double_normalization_is_refused(tmp_path):
    path = files.checkpoint(tmp_path, mean=[0.5], std=[0.25])
    with pytest.raises(InvalidInputError, match="already normalizes its inputs inside"):
        run_export(_config(str(path), tmp_path / "out", mean=(0.5,), std=(0.25,)))


def test_exclude_keeps_the_named_convs_exact(tmp_path):
    """--exclude names layers as the user's model does, also under the normalizing wrapper
    (whose layers are "model.<name>"; the report names them as the user does)."""
    torch.manual_seed(0)
    vgg = create_model("vgg16_bn", num_classes=10, in_channels=1, width=4, input_size=16)
    path = save_checkpoint(vgg, tmp_path / "vgg.pt")
    settings = {"mean": (0.5,), "std": (0.25,), "dry_run": True, "mac_ratio": 0.3}
    plain = run_export(_config(str(path), tmp_path / "a", **settings))
    kept = run_export(_config(str(path), tmp_path / "b", exclude=("features.3", "features.1?"),
                              **settings))  # fmt: skip
    status = {lay["name"]: lay["status"] for lay in kept.approximation["layers"]}
    assert status["features.3"] == status["features.10"] == "skipped"
    assert "gdws" in status.values()
    before = {lay["name"]: lay["status"] for lay in plain.approximation["layers"]}
    assert before["features.3"] == before["features.10"] == "gdws"
    with pytest.raises(InvalidInputError, match="exclude pattern 'features.99' matches no conv"):
        run_export(_config(str(path), tmp_path / "c", exclude=("features.99",), **settings))


def test_static_batch(ckpt, tmp_path):
    report = run_export(_config(ckpt, tmp_path / "out", dynamic_batch=False, batch=2))
    graph = onnx.load(tmp_path / "out" / "gdws.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert report.parity["engine"]["passed"]


def test_torch_export_program_end_to_end(tmp_path):
    path = files.export_file(tmp_path)
    report = run_export(_config(str(path), tmp_path / "out"))
    assert report.model["kind"] == "torch_export"
    assert [r["status"] for r in report.layer_rows()] == ["skipped", "gdws"]
    assert report.parity["onnx_gdws"]["passed"] and report.parity["engine"]["passed"]


def test_program_with_a_fixed_batch_is_exported_static(tmp_path):
    path = files.export_file(tmp_path, batch=1)
    report = run_export(_config(str(path), tmp_path / "out", batch=8))
    assert report.warnings == [
        "the model fixes its batch size to 1: exported with that static batch"
    ]
    graph = onnx.load(tmp_path / "out" / "gdws.onnx").graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert report.parity["engine"]["passed"]


def test_auto_sensitivity_on_a_program_with_a_fixed_batch(tmp_path):
    path = files.export_file(tmp_path, batch=1)
    calib = files.calib_npz(tmp_path, n=72)  # 8 fit, 64 judge
    report = run_export(_config(str(path), tmp_path / "out", calib=str(calib), calib_samples=8,
                                mac_ratio=0.3, dry_run=True))  # fmt: skip
    choice = report.sensitivity_choice
    assert choice["held_out"] == 64 and len(choice["trials"]) == len(AUTO_MEASURES)


def test_model_without_conv_is_unsupported(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10))
    path = files.pickled_module_file(tmp_path, model)
    cfg = _config(str(path), tmp_path / "out", trust_pickle=True, input_shape=files.SHAPE)
    with pytest.raises(UnsupportedModelError, match="no KxK conv that GDWS can replace"):
        run_export(cfg)
    assert not (tmp_path / "out").exists()
    run_export(_config(str(path), tmp_path / "plain", trust_pickle=True, gdws=False,
                       input_shape=files.SHAPE))  # fmt: skip


def test_forward_failure_names_the_shape(tmp_path):
    path = files.checkpoint(tmp_path)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 10)
    )
    pickled = files.pickled_module_file(tmp_path, model)
    cfg = _config(str(pickled), tmp_path / "out", trust_pickle=True, input_shape=(1, 20, 20))
    with pytest.raises(
        UnsupportedModelError, match=r"forward fails on input shape \(2, 1, 20, 20\)"
    ):
        run_export(cfg)
    assert path.exists() and not (tmp_path / "out").exists()


def test_torch_target_runs_the_program(ckpt, tmp_path):
    from gdws_export.runtimes.torch_runner import TorchRunner

    report = run_export(_config(ckpt, tmp_path / "out", target="torch"))
    out = tmp_path / "out"
    assert report.files["engine"] == "gdws.pt2"
    assert report.files["engine_settings"] == "gdws.fp32.torch.json"
    assert report.parity["engine"]["passed"]  # the program vs gdws.onnx
    x = files.images(3).numpy()
    with (
        TorchRunner.from_settings(out / "gdws.fp32.torch.json") as program,
        OrtRunner(out / "gdws.onnx") as graph,
    ):
        np.testing.assert_allclose(program.predict(x), graph.predict(x), atol=1e-5)


def test_trt_target_without_tensorrt_fails_before_any_work(ckpt, tmp_path, monkeypatch):
    from gdws_export.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    with pytest.raises(MissingDependencyError, match="tensorrt is not installed"):
        run_export(_config(ckpt, tmp_path / "out", target="trt", precision="fp16"))
    assert list(tmp_path.iterdir()) == []


def test_trt_target_with_a_stand_in_tensorrt(ckpt, tmp_path, monkeypatch):
    from tests._fake_tensorrt import FakeTensorRT

    fake = FakeTensorRT("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    report = run_export(_config(ckpt, tmp_path / "out", target="trt", precision="fp16", batch=8,
                                workspace_mib=256, triton_repo=str(tmp_path / "repo")))  # fmt: skip
    assert report.files["engine"] == "gdws.fp16.engine"
    assert (tmp_path / "out" / "gdws.fp16.engine").is_file()
    assert fake.calls["config"].flags >= {"FP16"}
    assert any("not run here" in w for w in report.warnings)  # no GPU: parity skipped, said so
    assert report.triton["platform"] == "tensorrt_plan" and report.triton["max_batch_size"] == 8
    assert (tmp_path / "repo" / "lenet" / "1" / "model.plan").is_file()
    info = json.loads((tmp_path / "out" / "gdws.fp16.engine.json").read_text())
    assert not os.path.isabs(info["engine_path"]) and ".partial-" not in json.dumps(info)


def test_layers_shipped_as_original_convs_are_reported_as_shipped(ckpt, tmp_path):
    """With the "dense" lowering every GDWS layer ships its original conv: the report's
    approximation figures and parameters then describe the original model exactly."""
    report = run_export(_config(ckpt, tmp_path / "out", lowering="dense"))
    approx = report.parity["approximation"]
    assert approx["original_convs_kept"] == [
        layer["name"] for layer in report.exports["gdws"]["layers"]
    ]
    assert approx["top1_agreement"] == 1.0 and approx["max_abs_diff"] < 1e-4
    assert report.params["shipped"] == report.params["original"]
    assert report.macs["shipped"] == report.macs["original"]


def test_auto_sensitivity_without_held_out_images_builds_only_the_model_it_ships(
    ckpt, tmp_path, monkeypatch
):
    """A calibrated candidate that no held-out image can judge is never built."""
    import gdws_export.pipeline.candidates as candidates

    def never(*args, **kwargs):
        raise AssertionError("calibrated alphas computed for a candidate that cannot be judged")

    monkeypatch.setattr(candidates, "calibrated_gains", never)
    calib = files.calib_npz(tmp_path, n=8)  # all 8 fit; 0 held out
    report = run_export(_config(ckpt, tmp_path / "out", calib=str(calib), mac_ratio=0.3,
                                dry_run=True))  # fmt: skip
    # the settings say what was built (auto's first candidate), so they rebuild it
    assert report.settings["sensitivity"] == "none" and report.sensitivity_choice is None
    assert any("built and shipped none alone" in w for w in report.warnings)
    assert "alphas" not in report.timings  # unweighted: no alphas computed at all


def _summary_report(parity: dict, kept: list[str]) -> ExportReport:
    settings = {"target": "ort", "precision": "fp32", "gdws": True, "lowering": "auto"}
    return ExportReport(
        tool_version="0", created="now", dry_run=False, settings=settings,
        model={"path": "m.pt"}, output_dir="out", files={"engine": "gdws.fp32.ort.onnx"},
        macs={"original": 10, "shipped": 8}, parity={"approximation": {
            **parity, "original_convs_kept": kept}},
    )  # fmt: skip


def test_parity_on_random_inputs_does_not_judge_top1_and_counts_layers_in_words():
    """Random inputs gave 'top-1 agreement 12.5 %': meaningless, and alarming. The summary and
    report.md give the logit error instead; '1 layers keep their conv' is '1 layer keeps its'."""
    from gdws_export.cli.progress import summary
    from gdws_export.lowering.parity import compare_logits

    rng = np.random.default_rng(0)
    near_ties = rng.normal(size=(16, 10)) * 1e-3 + 5  # a robust model on random images
    figures = compare_logits(near_ties, near_ties + rng.normal(size=(16, 10)) * 1e-3).to_dict()
    assert figures["top1_agreement"] < 0.5 and figures["decided_inputs"] == 0
    random = _summary_report({**figures, "inputs": "random"}, ["features.3"])
    text = summary(random)
    assert "top-1 agreement not judged (random inputs)" in text and "12.5" not in text
    assert "on 16 random inputs: max |logit diff|" in text
    assert "(1 layer keeps its conv: faster on the target)" in text
    assert "| not judged (random inputs) |" in random.to_markdown()
    two_kept = summary(_summary_report({**figures, "inputs": "random"}, ["a", "b"]))
    assert "(2 layers keep their conv" in two_kept

    # Real images: agreement overall, and apart on the inputs not near a tie.
    clear = np.eye(10)[np.arange(16) % 10] * 10.0
    clear[:4] = 5.0  # four exact ties
    candidate = clear.copy()
    candidate[:4, 3] += 0.01  # the ties flip; the decided inputs do not
    figures = compare_logits(clear, candidate).to_dict()
    assert figures["decided_inputs"] == 12 and figures["decided_top1_agreement"] == 1.0
    real = _summary_report({**figures, "inputs": "calibration"}, [])
    assert "top-1 agreement 75.0 % (100.0 % of 12 not near a tie)" in summary(real)


def test_auto_lowering_ships_the_original_when_the_confirmation_round_says_so(
    ckpt, tmp_path, monkeypatch
):
    """GDWS won the first whole-graph round but not the confirmation: the engine computes the
    original convs, and the report says why (speed-up 1.00x)."""
    import gdws_export.lowering.auto as auto
    import gdws_export.lowering.pipeline as lowering_pipeline
    from gdws_export.cli.progress import summary
    from gdws_export.lowering.timing import TimedGraph

    class NoRunner:
        def deactivate(self):
            pass

    def gather_wins(graphs, repeats):
        for key, graph in graphs.items():
            graph.samples = [(1.0 if key == "gather" else 2.0) / 1e3] * repeats

    rounds = iter([{"auto": (1, 1, 1.0), "dense": (2, 2, 2.0)},  # the per-layer choice wins
                   {"auto": (2, 2, 1.98), "dense": (2, 2, 2.0)}])  # fmt: skip

    def network_rounds(models, *args, **kwargs):
        times = next(rounds)
        return {key: times[key] for key in models}

    monkeypatch.setattr(auto, "time_interleaved", gather_wins)
    monkeypatch.setattr(auto, "timing_graph", lambda *a: TimedGraph(NoRunner(), {}))
    monkeypatch.setattr(lowering_pipeline, "time_networks", network_rounds)
    report = run_export(_config(ckpt, tmp_path / "out", lowering="auto"))
    gdws = report.exports["gdws"]
    assert gdws["network_plan"] == "dense" and gdws["speed_margin"] == 0.05
    assert report.original_ships.endswith("not faster by the 5% margin, so the original ships")
    assert {layer["form"] for layer in gdws["layers"]} == {"dense"}
    assert report.macs["shipped"] == report.macs["original"]
    assert f"{report.original_ships} (speed-up 1.00x)" in summary(report)
    assert (
        "- shipped: the assembled GDWS graph (auto plan) ran 1.01x"
        in (tmp_path / "out" / "report.md").read_text()
    )
