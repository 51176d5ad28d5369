"""Machine facts: read what exists, never crash on what does not (fake tools stand in for NVIDIA's)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from gdws_export.harness import machine
from gdws_export.harness.machine import MachineInfo, machine_info

SLEEP = shutil.which("sleep")  # resolved before the tests empty PATH


def _tool(directory: Path, name: str, script: str) -> None:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_path(tmp_path, monkeypatch) -> Path:
    """An empty PATH directory (no nvidia-smi, nvpmodel, jetson_clocks) to put fake tools in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(machine, "TEGRA_RELEASE", tmp_path / "no_tegra_release")
    return bin_dir


def test_this_machine(fake_path):
    info = machine_info(gpu=True)  # asks for GPUs that are not there: empty, no error
    assert info.cpu_model and info.python and info.os
    assert info.cpu_threads >= 1 and 1 <= info.usable_threads <= os.cpu_count()
    assert info.packages["torch"] and info.packages["numpy"]
    assert info.gpus == [] and info.jetson is None
    assert info.cpu_model in info.summary()
    assert MachineInfo.from_dict(info.to_dict()) == info


def test_gpu_facts_from_nvidia_smi(fake_path):
    _tool(
        fake_path,
        "nvidia-smi",
        'case "$1" in --query-gpu*) echo "NVIDIA H100 80GB HBM3, 550.54.15, 81559, 9.0";; '
        '*) echo "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |";; '
        "esac",
    )
    info = machine_info()  # nvidia-smi on PATH: GPUs are looked for
    (gpu,) = info.gpus
    assert (gpu.name, gpu.driver, gpu.memory_mib, gpu.compute_capability) == (
        "NVIDIA H100 80GB HBM3", "550.54.15", 81559, "9.0",
    )  # fmt: skip
    assert gpu.cuda_driver == "12.4"
    assert "NVIDIA H100 80GB HBM3 (driver 550.54.15, CUDA 12.4" in info.summary()
    assert MachineInfo.from_dict(info.to_dict()) == info


def test_jetson_power_mode_and_clocks(fake_path, tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic\nextra\n")
    monkeypatch.setattr(machine, "TEGRA_RELEASE", release)
    _tool(fake_path, "nvpmodel", 'echo "NV Power Mode: MAXN"; echo 0')
    _tool(fake_path, "jetson_clocks", "exit 1")  # needs root: fails, field stays empty
    info = machine_info(gpu=False)
    assert info.jetson.l4t_release == "R36 (release), REVISION: 4.0, GCID: 1, BOARD: generic"
    assert info.jetson.power_mode == "NV Power Mode: MAXN\n0"
    assert info.jetson.clocks == ""
    assert "power mode NV Power Mode: MAXN" in info.summary()
    assert MachineInfo.from_dict(info.to_dict()) == info


def test_a_hanging_or_missing_tool_gives_an_empty_string(fake_path, monkeypatch):
    monkeypatch.setattr(machine, "_TOOL_TIMEOUT_S", 0.2)
    _tool(fake_path, "slow", f"exec {SLEEP} 5")  # exec: the timeout kills the sleep itself
    assert machine.run_tool(["slow"]) == ""
    assert machine.run_tool(["no-such-tool"]) == ""


def test_cpu_model_falls_back_without_proc_cpuinfo(monkeypatch, tmp_path):
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_model()  # platform.processor() or the architecture


def test_cpu_isa_lists_the_int8_flags_of_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse4_1 avx2 avx512_vnni sha_ni\n")
    monkeypatch.setattr(machine, "CPUINFO", cpuinfo)
    assert machine.cpu_isa() == ["avx512_vnni", "avx2", "sse4_1"]
    assert machine.machine_info(gpu=False).cpu_isa == ["avx512_vnni", "avx2", "sse4_1"]
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_isa() == []
