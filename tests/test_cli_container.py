"""The Docker entry point: argument handling, checks before a run, device facts.

No Docker, GPU or TensorRT is needed: a fake `Probe` plays the machine the container sees, and
the real probes run on this machine, where TensorRT and the GPU are absent.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gdws_export.cli import container
from gdws_export.errors import InvalidInputError, MissingDependencyError

TRT = "11.2.1.2"
GPU = "NVIDIA GeForce RTX 4090"


class FakeProbe(container.Probe):
    """A machine with or without TensorRT and a GPU, and with gdws-export installed."""

    def __init__(self, trt: str | None = TRT, gpu: str | None = GPU, facts_error=None):
        self.trt, self.gpu, self.facts_error = trt, gpu, facts_error

    def tensorrt_version(self):
        return self.trt

    def gpu_name(self):
        return self.gpu

    def which(self, program):
        return f"/usr/local/bin/{program}" if program == "gdws-export" else None

    def machine_facts(self):
        if self.facts_error is not None:
            raise self.facts_error
        return {"gpus": [{"name": self.gpu}] if self.gpu else []}, f"test machine, {self.gpu}"


@pytest.fixture
def out(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _plan(args, out, probe=None):
    return container.make_plan(args, {container.OUT_ENV: str(out)}, probe or FakeProbe())


def _run_main(args, out, monkeypatch, capsys, probe=None):
    """main() with exec recorded instead of done: (exit code, exec call or None, stderr lines)."""
    calls = []
    monkeypatch.setenv(container.OUT_ENV, str(out))
    for variable in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "GDWS_EXPORT_MODELS"):
        monkeypatch.delenv(variable, raising=False)  # torch.compile sets the first one itself
    monkeypatch.setattr(container.os, "execvpe", lambda *a: calls.append(a))
    code = container.main(args, probe=probe or FakeProbe())
    err = capsys.readouterr().err.strip().splitlines()
    return code, (calls[0] if calls else None), err


def test_bench_with_tensorrt_and_gpu_runs_the_sweep_into_out(out, monkeypatch, capsys):
    (out / "vgg16.pt").write_bytes(b"checkpoint")
    code, call, err = _run_main(["bench", "vgg16.pt", "--mac-ratios", "1", "0.5"], out,
                                monkeypatch, capsys)  # fmt: skip
    assert code == 0 and call is not None
    program, argv, env = call
    cache = out / "timing-caches" / "nvidia-geforce-rtx-4090-trt11.2.1.2.cache"
    assert argv == [
        "/usr/local/bin/gdws-export", "sweep", str(out / "vgg16.pt"), "--mac-ratios", "1", "0.5",
        "--target", "trt", "--timing-cache", str(cache), "--output-dir", str(out / "vgg16-sweep-trt"),
    ]  # fmt: skip
    assert program == argv[0] and cache.parent.is_dir()
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(out / "caches" / "torchinductor")
    assert env["GDWS_EXPORT_MODELS"] == str(out)
    assert json.loads((out / "machine.json").read_text()) == {"gpus": [{"name": GPU}]}
    assert any("machine: test machine" in line for line in err)
    assert err[-1].startswith("gdws-container: running: /usr/local/bin/gdws-export sweep")


def test_options_the_user_gives_are_kept(out):
    plan = _plan(
        ["bench", "resnet18", "--target=trt", "--timing-cache", "/cache/x", "--output-dir", "/o"],
        out,
    )
    assert plan.argv[1:] == ["sweep", "resnet18", "--target=trt", "--timing-cache", "/cache/x",
                             "--output-dir", "/o"]  # fmt: skip


def test_export_runs_gdws_export_itself(out):
    plan = _plan(["export", "resnet18", "--target", "ort", "--fp16"], out)
    assert plan.argv == ["/usr/local/bin/gdws-export", "resnet18", "--target", "ort", "--fp16",
                         "-o", str(out / "resnet18-ort")]  # fmt: skip


def test_torch_target_needs_neither_tensorrt_nor_gpu(out):
    plan = _plan(["bench", "resnet18", "--target", "torch"], out, FakeProbe(trt=None, gpu=None))
    assert "--timing-cache" not in plan.argv
    assert "no GPU is visible: the torch target runs on the CPU" in plan.notes


@pytest.mark.parametrize(
    ("args", "probe", "error", "message"),
    [
        (["bench"], FakeProbe(), InvalidInputError, "bench needs a model first"),
        (["export", "--fp16"], FakeProbe(), InvalidInputError, "export needs a model first"),
        (["bench", "missing.pt"], FakeProbe(), InvalidInputError, "mount its folder"),
        (["bench", "m", "--target", "tpu"], FakeProbe(), InvalidInputError, "unknown --target"),
        (["bench", "m", "--target"], FakeProbe(), InvalidInputError, "--target needs a value"),
        (["bench", "m"], FakeProbe(trt=None), MissingDependencyError, "import tensorrt"),
        (["bench", "m"], FakeProbe(gpu=None), MissingDependencyError, "--runtime nvidia"),
    ],
)
def test_what_a_run_lacks_is_said_before_it_starts(out, args, probe, error, message):
    with pytest.raises(error, match=message):
        _plan(args, out, probe)


def test_errors_are_one_line_with_the_error_class_exit_code(out, monkeypatch, capsys):
    code, call, err = _run_main(["bench", "m"], out, monkeypatch, capsys, FakeProbe(gpu=None))
    assert (code, call) == (MissingDependencyError.exit_code, None)
    assert len(err) == 1 and err[0].startswith("gdws-container: error: --target trt needs a GPU")
    assert "--gpus all" in err[0]
    code, _, err = _run_main(["bench"], out, monkeypatch, capsys)
    assert code == InvalidInputError.exit_code and len(err) == 1


def test_unwritable_output_folder_says_to_run_as_its_owner(out, monkeypatch):
    monkeypatch.setattr(container.os, "access", lambda *a: False)  # root may write anywhere
    with pytest.raises(InvalidInputError, match=r'--user "\$\(id -u\):\$\(id -g\)"'):
        _plan(["bench", "resnet18"], out)


def test_unmounted_default_output_folder_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr(container, "DEFAULT_OUT", str(tmp_path / "out"))
    plan = container.make_plan(["bench", "resnet18"], {}, FakeProbe())
    assert any("is not a mounted volume" in note and "-v" in note for note in plan.notes)


def test_missing_fact_collector_does_not_stop_a_bench(out):
    probe = FakeProbe(facts_error=ImportError("No module named 'gdws_export.harness.machine'"))
    plan = _plan(["bench", "resnet18"], out, probe)
    assert any(n.startswith("device facts not saved: device facts need") for n in plan.notes)
    assert plan.argv[1] == "sweep"
    with pytest.raises(MissingDependencyError, match="rebuild the image"):
        _plan(["facts"], out, probe)


def test_facts_prints_and_saves_them(out, monkeypatch, capsys):
    code, call, _ = _run_main(["facts"], out, monkeypatch, capsys)
    assert (code, call) == (0, None)
    saved = json.loads((out / "machine.json").read_text())
    assert saved == {"gpus": [{"name": GPU}]}


def test_help_and_other_programs(out, monkeypatch, capsys):
    assert container.main(["help"], probe=FakeProbe()) == 0
    assert "bench MODEL" in capsys.readouterr().out
    code, call, _ = _run_main(["bash", "-c", "true"], out, monkeypatch, capsys)
    assert code == 0 and call[1] == ["bash", "-c", "true"]


# The real probes, on this machine: no TensorRT, no GPU. Clear messages, not crashes.


def test_real_probes_without_runtime_or_gpu():
    probe = container.Probe()
    assert probe.tensorrt_version() is None
    assert probe.gpu_name() is None


def test_real_fact_collection_without_gpu_or_tensorrt(out, monkeypatch, capsys):
    monkeypatch.setenv(container.OUT_ENV, str(out))
    assert container.main(["facts"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "machine.json").read_text())
    assert printed["gpus"] == [] and "tensorrt" not in printed["packages"]


def _entry(*args, out):
    env = {"PATH": "/usr/bin:/bin", container.OUT_ENV: str(out)}
    return subprocess.run([sys.executable, "-m", "gdws_export.cli.container", *args], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_module_entry_point_in_a_fresh_process(out):
    done = _entry("bench", "vgg16", out=out)
    assert done.returncode == MissingDependencyError.exit_code
    assert done.stderr.strip().count("\n") == 0 and "import tensorrt" in done.stderr
    done = _entry("sh", "-c", "echo exec-ok", out=out)  # a real exec of another program
    assert (done.returncode, done.stdout) == (0, "exec-ok\n")


def test_unknown_program_exits_127(out, monkeypatch, capsys):
    def missing(*args):
        raise FileNotFoundError(args[0])

    monkeypatch.setenv(container.OUT_ENV, str(out))
    monkeypatch.setattr(container.os, "execvpe", missing)
    assert container.main(["no-such-program"], probe=FakeProbe()) == 127
    assert "unknown command 'no-such-program'" in capsys.readouterr().err
