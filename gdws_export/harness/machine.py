"""Facts about the machine a benchmark ran on, so a number can be judged and reproduced.

Every probe is optional: a missing tool (nvidia-smi, nvpmodel), a missing package (tensorrt,
onnxruntime) or an unreadable file leaves its field empty, never raises. Nothing here imports
tensorrt or initialises CUDA unless `machine_info(gpu=True)` asks for GPU facts.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gdws_export.runtimes.int8_settings import ISA_FLAGS, parse_cpu_flags

# External tools get this long to answer; a hung nvidia-smi must not hang the benchmark.
_TOOL_TIMEOUT_S = 10.0

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
CPUINFO = Path("/proc/cpuinfo")


@dataclass
class GpuInfo:
    """One CUDA GPU: name, compute capability, memory, and the driver/CUDA/TensorRT stack."""

    name: str = ""
    compute_capability: str = ""
    memory_mib: int | None = None
    driver: str = ""
    cuda_runtime: str = ""  # the CUDA version torch was built with (torch.version.cuda)
    cuda_driver: str = ""  # the highest CUDA version the driver supports (nvidia-smi)
    tensorrt: str = ""


@dataclass
class JetsonInfo:
    """Jetson power and clock state (NVIDIA's jetson_benchmarks records both)."""

    l4t_release: str = ""  # first line of /etc/nv_tegra_release
    power_mode: str = ""  # `nvpmodel -q`
    clocks: str = ""  # `jetson_clocks --show` (needs root on most images)


@dataclass
class MachineInfo:
    """The machine and software stack of a run. Empty strings mean "could not be read"."""

    os: str = ""
    python: str = ""
    cpu_model: str = ""
    # INT8-relevant instruction sets (VNNI, AMX, AVX-512, AVX2, ARM dot product): ONNX Runtime's
    # INT8 speed and its `reduce_range` choice depend on them
    cpu_isa: list[str] = field(default_factory=list)
    cpu_threads: int | None = None  # logical CPUs of the machine
    usable_threads: int | None = None  # CPUs this process may run on (affinity mask)
    packages: dict[str, str] = field(default_factory=dict)
    gpus: list[GpuInfo] = field(default_factory=list)
    jetson: JetsonInfo | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MachineInfo:
        data = dict(data)
        data["gpus"] = [GpuInfo(**gpu) for gpu in data.get("gpus", [])]
        if data.get("jetson") is not None:
            data["jetson"] = JetsonInfo(**data["jetson"])
        return cls(**data)

    def summary(self) -> str:
        """One line for report headers, e.g. 'AMD EPYC, 2/2 threads; Linux-6.1; python 3.11'."""
        parts = [f"{self.cpu_model or 'unknown CPU'}, {self.usable_threads}/{self.cpu_threads} "
                 "threads"]  # fmt: skip
        for gpu in self.gpus:
            stack = ", ".join(
                f"{label} {value}"
                for label, value in (
                    ("driver", gpu.driver),
                    ("CUDA", gpu.cuda_runtime or gpu.cuda_driver),
                    ("TensorRT", gpu.tensorrt),
                )
                if value
            )
            parts.append(f"{gpu.name or 'GPU'}" + (f" ({stack})" if stack else ""))
        if self.jetson is not None:
            parts.append(
                f"Jetson {self.jetson.l4t_release or '?'}; power mode "
                f"{_first_line(self.jetson.power_mode) or '?'}"
            )
        parts.append(self.os)
        parts.append(f"python {self.python}")
        return "; ".join(part for part in parts if part)


# Packages whose versions change what a benchmark or an attack measures.
PACKAGES = ("torch", "numpy", "onnx", "onnxruntime", "tensorrt", "gdws-export")


def machine_info(*, gpu: bool | None = None) -> MachineInfo:
    """Collect the facts of this machine.

    Args:
        gpu: look for CUDA GPUs (nvidia-smi, torch.cuda). None looks when nvidia-smi exists or
            torch was built with CUDA; False never looks (and never initialises CUDA).

    Example:
        >>> print(machine_info().summary())  # doctest: +SKIP
        AMD EPYC, 2/2 threads; Linux-6.1-x86_64; python 3.11.2
    """
    info = MachineInfo(
        os=platform.platform(),
        python=platform.python_version(),
        cpu_model=cpu_model(),
        cpu_isa=cpu_isa(),
        cpu_threads=os.cpu_count(),
        usable_threads=_usable_threads(),
        packages={name: v for name in PACKAGES if (v := package_version(name))},
    )
    if gpu is None:
        gpu = _has_nvidia_smi() or _torch_has_cuda_build()
    if gpu:
        info.gpus = gpu_info()
    if TEGRA_RELEASE.is_file():
        info.jetson = jetson_info()
    return info


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo on Linux, else `platform`."""
    try:
        for line in CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels say "Hardware" or "Model" instead.
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The flags of `int8_settings.ISA_FLAGS` this CPU has (/proc/cpuinfo); [] when unreadable."""
    try:
        flags = parse_cpu_flags(CPUINFO.read_text(errors="replace"))
    except OSError:
        return []
    return [flag for flag in ISA_FLAGS if flag in flags]


def package_version(name: str) -> str:
    """Installed version of a distribution, or of an importable module; "" when absent.

    JetPack installs tensorrt as a Debian package without pip metadata, so a module that
    imports but has no distribution is asked for `__version__` (only when metadata is missing).
    """
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    module = name.replace("-", "_")
    try:
        if importlib.util.find_spec(module) is None:
            return ""
        return str(getattr(importlib.import_module(module), "__version__", ""))
    except Exception:  # a broken install must not break the report
        return ""


def gpu_info() -> list[GpuInfo]:
    """One entry per visible CUDA GPU, from nvidia-smi and torch.cuda; [] when there is none."""
    gpus = _nvidia_smi_gpus()
    torch_gpus = _torch_gpus()
    if not gpus:
        gpus = [GpuInfo(name=name) for name, _ in torch_gpus]
    tensorrt = package_version("tensorrt")
    cuda_runtime = _torch_cuda_version()
    for index, gpu in enumerate(gpus):
        gpu.tensorrt = tensorrt
        gpu.cuda_runtime = cuda_runtime
        if index < len(torch_gpus) and not gpu.compute_capability:
            gpu.compute_capability = torch_gpus[index][1]
    return gpus


def jetson_info() -> JetsonInfo:
    """L4T release, nvpmodel power mode and jetson_clocks state, each "" when unreadable."""
    try:
        release = _first_line(TEGRA_RELEASE.read_text(errors="replace")).lstrip("# ")
    except OSError:
        release = ""
    return JetsonInfo(
        l4t_release=release,
        power_mode=run_tool(["nvpmodel", "-q"]),
        clocks=run_tool(["jetson_clocks", "--show"]),
    )


def run_tool(command: list[str]) -> str:
    """stdout of a command, stripped; "" when it is missing, fails or times out."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_TOOL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _nvidia_smi_gpus() -> list[GpuInfo]:
    out = run_tool(
        [
            "nvidia-smi",
            "--query-gpu=name,driver_version,memory.total,compute_cap",
            "--format=csv,noheader,nounits",
        ]
    )
    header = run_tool(["nvidia-smi"])
    cuda_driver = ""
    if "CUDA Version:" in header:
        cuda_driver = header.split("CUDA Version:")[1].split()[0].strip("|")
    gpus = []
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4:
            continue
        memory = int(fields[2]) if fields[2].isdigit() else None
        gpus.append(GpuInfo(fields[0], fields[3], memory, fields[1], "", cuda_driver))
    return gpus


def _torch_gpus() -> list[tuple[str, str]]:
    """(name, compute capability) per device torch sees; initialises CUDA when torch has it."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        result = []
        for index in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(index)
            result.append((torch.cuda.get_device_name(index), f"{major}.{minor}"))
        return result
    except Exception:  # a broken driver reports here; the report goes on without it
        return []


def _torch_cuda_version() -> str:
    try:
        import torch

        return torch.version.cuda or ""
    except Exception:
        return ""


def _torch_has_cuda_build() -> bool:
    return bool(_torch_cuda_version())


def _has_nvidia_smi() -> bool:
    from shutil import which

    return which("nvidia-smi") is not None


def _usable_threads() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _first_line(text: str) -> str:
    text = text.strip()
    return text.splitlines()[0].strip() if text else ""
