"""Parity figures, and a corrupted graph failing with ParityError."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from _lowering_nets import VGG, gdwsify, randomize_batchnorm
from onnx import numpy_helper

from gdws_export.errors import ParityError
from gdws_export.lowering.export import export_model
from gdws_export.lowering.parity import ParityReport, check_parity, compare_logits
from gdws_export.runtimes import OrtRunner


def test_compare_logits_figures():
    ref = np.array([[1.0, -4.0, 2.0], [0.5, 0.2, 0.1]])
    got = ref + np.array([[0.0, 0.004, 0.0], [0.0, 0.0, -0.002]])
    report = compare_logits(ref, got, tolerance=2e-3)
    assert report.max_abs_diff == pytest.approx(0.004)
    assert report.mean_abs_diff == pytest.approx(0.001)
    assert report.logit_scale == 4.0 and report.relative_diff == pytest.approx(1e-3)
    assert report.top1_agreement == 1.0 and report.passed
    assert not compare_logits(ref, got, tolerance=5e-4).passed
    flipped = compare_logits(ref, ref[:, ::-1].copy())
    assert flipped.top1_agreement == 0.0 and not flipped.passed
    assert not compare_logits(ref, ref + np.nan).passed


def test_report_json_round_trip():
    report = compare_logits(np.ones((2, 3)), np.ones((2, 3)) * 1.00001)
    assert ParityReport.from_dict(report.to_dict()) == report
    assert '"passed": true' in report.to_json()


@pytest.fixture(scope="module")
def model_and_graph():
    torch.manual_seed(0)
    model = gdwsify(randomize_batchnorm(VGG()), 0.1)
    return model, export_model(model, torch.rand(1, 3, 16, 16), exporter="legacy")


def test_parity_passes_and_runs_batch_one_first(model_and_graph):
    model, proto = model_and_graph
    x = np.random.default_rng(0).random((7, 3, 16, 16), dtype=np.float32)
    with OrtRunner(proto.SerializeToString()) as runner:
        report = check_parity(model, runner, x, batch=4, first_alone=True)
    assert report.n_inputs == 7 and report.passed and report.top1_agreement == 1.0
    assert report.relative_diff < 1e-5


def test_corrupted_graph_fails_parity(model_and_graph):
    model, proto = model_and_graph
    broken = onnx.ModelProto()
    broken.CopyFrom(proto)
    # Perturb the largest initializer (a conv weight) slightly: outputs move by > 1e-4.
    init = max(broken.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(init).copy()
    weights.flat[:: max(1, weights.size // 50)] += 0.05
    init.CopyFrom(numpy_helper.from_array(weights, init.name))
    x = np.random.default_rng(1).random((4, 3, 16, 16), dtype=np.float32)
    with OrtRunner(broken.SerializeToString()) as runner, pytest.raises(ParityError):
        check_parity(model, runner, x)


def test_fixed_batch_graph_pads_last_run(model_and_graph):
    model, _ = model_and_graph
    proto = export_model(model, torch.rand(4, 3, 16, 16), exporter="legacy", dynamic_batch=False)
    x = np.random.default_rng(2).random((6, 3, 16, 16), dtype=np.float32)
    with OrtRunner(proto.SerializeToString()) as runner:
        assert check_parity(model, runner, x, batch=32).n_inputs == 6
