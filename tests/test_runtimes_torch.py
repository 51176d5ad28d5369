"""The torch target: TorchRunner, the .pt2 program + settings files, build(target="torch").

Runs for real on the CPU; the CUDA paths (fp16, CUDA graphs, event timing) run where a GPU is.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import gdws_export as gx
from gdws_export.errors import InvalidInputError, MissingDependencyError, UnsupportedModelError
from gdws_export.runtimes.build import BuildResult, build
from gdws_export.runtimes.torch_program import TorchSettings, export_program, load_program
from gdws_export.runtimes.torch_runner import TorchRunner

SHAPE = (3, 16, 16)


def _gdws_net() -> nn.Module:
    """A small CNN with its 3x3 convs replaced by GDWS convs (channel gather included)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4),
    )  # fmt: skip
    net[1].running_mean.uniform_(-0.2, 0.2)  # non-trivial BN statistics
    net.eval()
    gdws, _ = gx.approximate(net, mac_ratio=0.6, skip_first=False, input_shape=SHAPE)
    gdws.input_shape = SHAPE
    return gdws.eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return _gdws_net()


@pytest.fixture(scope="module")
def program(net, tmp_path_factory):
    return export_program(net, SHAPE, tmp_path_factory.mktemp("prog") / "net.pt2")


def _images(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *SHAPE), dtype=np.float32)


def _reference(net: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_runner_on_module_reproduces_the_model_and_leaves_it_unchanged(net):
    net.train()  # the runner must evaluate in eval mode, on a copy
    try:
        x = _images(5)
        with TorchRunner(net) as runner:
            got = runner.predict(x)
            assert runner.inputs()[0].shape == (None, *SHAPE)
            assert runner.model == "Sequential (in memory)"  # JSON-able, for reports
        assert net.training
    finally:
        net.eval()
    np.testing.assert_allclose(got, _reference(net, x), rtol=1e-5, atol=1e-6)


def test_program_runs_any_batch_and_reports_its_shapes(net, program):
    with TorchRunner(program) as runner:
        (spec,) = runner.inputs()
        assert (spec.name, spec.shape, spec.dtype) == ("input", (None, *SHAPE), np.float32)
        assert runner.outputs()[0].shape == (None, 4)
        for batch in (1, 3, 8):
            x = _images(batch, seed=batch)
            got = runner.infer({"input": x})["logits"]
            np.testing.assert_allclose(got, _reference(net, x), rtol=1e-5, atol=1e-6)


def test_compiled_runner_matches_eager(net, program):
    # aot_eager traces through dynamo and AOTAutograd like inductor, in seconds and without a
    # C++ compiler; the inductor test below is the slow, real one.
    x = _images(4)
    with TorchRunner(program, compile="aot_eager") as runner:
        got = runner.predict(x)
    np.testing.assert_allclose(got, _reference(net, x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_compile_on_cpu(net):
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("torch.compile (inductor) needs a C++ compiler on the CPU; none found")
    x = _images(2)
    with TorchRunner(net, compile=True, threads=1) as runner:
        got = runner.predict(x)
    np.testing.assert_allclose(got, _reference(net, x), rtol=1e-4, atol=1e-5)


def test_cpu_timing_counts_and_thread_setting_restored(program):
    before = torch.get_num_threads()
    with TorchRunner(program, threads=1) as runner:
        assert torch.get_num_threads() == 1
        times = runner.time_compute({"input": _images(2)}, iterations=5, warmup=1)
        latency = runner.time_latency({"input": _images(2)}, iterations=3, warmup=0)
    assert torch.get_num_threads() == before
    assert len(times) == 5 and len(latency) == 3
    assert all(t > 0 for t in times + latency)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp16"}, "fp16 on the CPU"),
        ({"precision": "int8"}, "int8 needs target"),
        ({"cuda_graphs": True}, "cuda_graphs=True needs device='cuda'"),
        ({"device": "tpu"}, "unknown device"),
        ({"threads": 0}, "threads"),
        ({"compile": 3}, "compile must be"),
    ],
)
def test_settings_refused_with_a_clear_message(net, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        TorchRunner(net, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_says_how_to_get_one(net):
    runner = TorchRunner(net, device="cuda")
    with pytest.raises(MissingDependencyError, match="--gpus all"):
        runner.activate()


def test_feed_errors(program):
    with TorchRunner(program) as runner:
        with pytest.raises(InvalidInputError, match="float32"):
            runner.infer({"input": _images(1).astype(np.float64)})
        with pytest.raises(InvalidInputError, match="one input named 'input'"):
            runner.infer({"x": _images(1)})
    with pytest.raises(InvalidInputError, match="not active"):
        TorchRunner(program).infer({"input": _images(1)})


def test_model_with_two_outputs_is_refused():
    class TwoHeads(nn.Module):
        def forward(self, x):
            return x.mean(), x.sum()

    with TorchRunner(TwoHeads()) as runner:
        with pytest.raises(UnsupportedModelError, match="one logits tensor"):
            runner.infer({"input": _images(1)})


def test_load_program_errors(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        load_program(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(InvalidInputError, match="not a torch.export program"):
        load_program(junk)
    with pytest.raises(InvalidInputError, match=r"\.pt2"):
        export_program(nn.Identity(), SHAPE, tmp_path / "model.onnx")


def test_build_writes_a_pair_that_reloads_and_moves(net, program, tmp_path):
    out = tmp_path / "built"
    result = build(program, target="torch", output_dir=out, threads=1)
    assert (result.target, result.precision) == ("torch", "fp32")
    assert result.versions["torch"] == torch.__version__
    assert result.engine_path == str(out / "net.pt2") and result.source_onnx == str(program)
    settings = json.loads((out / "net.fp32.torch.json").read_text())
    assert settings["program"] == "net.pt2" and settings["device"] == "cpu"
    assert BuildResult.from_dict(json.loads(result.to_json())) == result

    moved = shutil.move(out, tmp_path / "moved")  # relative program path: the pair moves
    x = _images(3)
    with TorchRunner.from_settings(f"{moved}/net.fp32.torch.json") as runner:
        assert runner.threads == 1
        np.testing.assert_allclose(runner.predict(x), _reference(net, x), rtol=1e-5, atol=1e-6)

    (tmp_path / "moved" / "net.pt2").write_bytes(program.read_bytes() + b"\0")
    with pytest.raises(InvalidInputError, match="SHA-256"):
        TorchRunner.from_settings(f"{moved}/net.fp32.torch.json")


def test_build_refuses_what_the_torch_target_cannot_do(program, tmp_path):
    with pytest.raises(InvalidInputError, match="not ONNX"):
        onnx_file = tmp_path / "m.onnx"
        onnx_file.write_bytes(b"")
        build(onnx_file, target="torch", device="cpu")
    with pytest.raises(InvalidInputError, match="timing_cache do"):
        build(program, target="torch", timing_cache="x.cache")
    with pytest.raises(InvalidInputError, match="device, cuda_graphs do"):
        build(program, target="ort", device="cpu", cuda_graphs=True)
    with pytest.raises(InvalidInputError, match="int8"):
        build(program, target="torch", precision="int8", device="cpu")
    assert not list(program.parent.glob("*.torch.json"))


def test_settings_round_trip(tmp_path):
    settings = TorchSettings(program=str(tmp_path / "a.pt2"), device="cuda", compile="inductor")
    path = settings.save(tmp_path / "sub" / "a.fp32.torch.json")
    loaded = TorchSettings.load(path)
    assert loaded.program == str(tmp_path / "sub" / ".." / "a.pt2")
    assert (loaded.device, loaded.compile, loaded.cuda_graphs) == ("cuda", "inductor", False)
    path.write_text("{not json")
    with pytest.raises(InvalidInputError, match="not a torch runner settings file"):
        TorchSettings.load(path)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("precision", "cuda_graphs"), [("fp32", True), ("fp16", False), ("fp16", True)]
)
def test_gpu_paths_match_the_cpu_model(net, program, precision, cuda_graphs):
    x = _images(4)
    want = _reference(net, x)
    runner = TorchRunner(program, device="cuda", precision=precision, cuda_graphs=cuda_graphs)
    with runner:
        got = runner.predict(x)
        again = runner.predict(x)  # a replayed graph gives the same answer
        compute = runner.time_compute({"input": x}, iterations=5, warmup=2)
        latency = runner.time_latency({"input": x}, iterations=5, warmup=2)
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(got, again)
    assert len(compute) == len(latency) == 5 and min(compute) > 0
