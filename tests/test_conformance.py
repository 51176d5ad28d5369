"""Conformance: third-party-style CNNs in every model-file format through `gdws-export`.

A fast subset (six architectures, one format and setting each, about 40 s) runs with the
suite; the whole matrix (tests/_conformance.py: 20 architectures x 5 formats x 10 runs:
the default export, each --lowering, --target torch, --calib with the operating-point
search, a sweep and bench; a few hours on 2 cores) runs with GDWS_CONFORMANCE=all, and
benchmarks/conformance.py writes it as a results table. Every export's shipped program
(gdws.pt2 or the twin shipped.pt2) is checked against gdws.onnx.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests import _conformance as conformance

LEGACY = ("--exporter", "legacy")  # half the time of dynamo; the default run keeps dynamo
# (architecture, format, run, extra options): every format kind and target, non-square and
# grouped kernels, concatenation, a 5x5 depthwise net, the default auto lowering
FAST = [
    ("resnet18", "pickle", "default", ()),
    ("inception", "pt2-dynamic", "torch", LEGACY),
    ("mobilenet_v3", "torchscript", "fold", LEGACY),
    ("densenet", "pt2-bounded", "dense", LEGACY),
    ("res2net", "pt2-static", "calib", LEGACY),  # the search, on a model the project did not make
    ("hrnet", "pickle", "sweep", ()),
    ("vgg", "pt2-static", "bench", LEGACY),  # bench times a static batch at the batch it takes
    ("resnet18", "pt2-static", "sweep", ()),  # the documented refusal, one line, exit 3
]
FULL = [
    pytest.param(arch, fmt, run, (), id=f"{arch}-{fmt}-{run}")
    for arch in conformance.ARCHITECTURES
    for fmt in conformance.FORMATS
    for run in conformance.RUNS
]
full_matrix = pytest.mark.skipif(
    os.environ.get("GDWS_CONFORMANCE") != "all", reason="the whole matrix: GDWS_CONFORMANCE=all"
)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _conforms(arch: str, fmt: str, run: str, extra: tuple[str, ...], folder) -> None:
    outcome = conformance.export(conformance.build(arch), arch, fmt, run, folder, extra)
    assert conformance.check_run(outcome) == []
    assert not conformance.macs_problem(outcome)


@pytest.mark.parametrize(
    ("arch", "fmt", "run", "extra"), FAST, ids=[f"{a}-{f}-{r}" for a, f, r, _ in FAST]
)
def test_fast_subset_conforms(arch, fmt, run, extra, tmp_path):
    _conforms(arch, fmt, run, extra, tmp_path)


@pytest.mark.slow
@full_matrix
@pytest.mark.parametrize(("arch", "fmt", "run", "extra"), FULL)
def test_full_matrix_conforms(arch, fmt, run, extra, tmp_path):
    _conforms(arch, fmt, run, extra, tmp_path)


def test_the_independent_mac_count_agrees_on_eager_models():
    """FlopCounterMode and the tool's count agree on every architecture (eager modules), so a
    MAC mismatch in the matrix is the loader's, not the reference's."""
    from gdws_export.gdws.selection import count_macs

    for arch in conformance.ARCHITECTURES:
        model = conformance.build(arch)
        assert count_macs(model, conformance.SHAPE) == conformance.flop_macs(model), arch
