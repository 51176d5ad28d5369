"""INT8 quantization settings: ONNX Runtime's chosen from the CPU's instruction set, TensorRT's set.

ONNX Runtime's CPU kernels want different data types on different CPUs. Its guidance, in the
docstring of `onnxruntime.quantization.quantize_static` (1.32, "Choosing parameters for CPU
inference") and in its docs ("Quantize ONNX Models", onnxruntime.ai/docs/performance/
model-optimizations/quantization.html, "Data type selection" and "When and why do I need to try
U8U8?"):

- QDQ is the recommended format on CPU since ORT 1.11; S8S8 in QOperator form is slow on x86-64.
- x86-64 without VNNI: uint8 activations, int8 weights (U8S8) with `reduce_range` (7-bit weights):
  AVX2/AVX-512 run U8S8 with VPMADDUBSW, whose 16-bit intermediate sums can saturate.
- x86-64 with VNNI: U8S8 without `reduce_range`; VNNI (VPDPBUSD) accumulates in 32 bits.
- ARM: no such saturation; ORT names symmetric int8 activations as often preferred by its ARM
  kernels and says uint8 activations also work.

U8S8 (asymmetric uint8 activations) is used on every CPU here, ARM included, so the numerics
checked on one machine hold on the others: measured on this project's GDWS graphs
(docs/cli.md, "INT8 on ONNX Runtime and TensorRT"), uint8 activations let ONNX Runtime absorb
each ReLU into the conv's output range and keep the whole network in INT8, where int8
activations left ReLUs, and on x86 even depthwise convs, in float. `ort_int8_settings` is a
pure function of the CPU flags, so every branch is testable on any machine;
`host_ort_int8_settings` reads this machine's.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# /proc/cpuinfo flag names (x86 "flags", ARM "Features") that decide or explain the settings.
X86_VNNI = ("avx512_vnni", "avx_vnni", "avx_vnni_int8")  # VPDPBUSD: 32-bit accumulation
X86_AMX = ("amx_int8",)  # AMX tiles; every AMX CPU also has AVX512-VNNI
X86_SIMD = ("avx512bw", "avx512f", "avx2", "sse4_1")  # U8S8 through VPMADDUBSW: can saturate
ARM_DOT = ("asimddp",)  # ARMv8.2 SDOT/UDOT: ORT's fast ARM INT8 kernels
ARM_I8MM = ("i8mm",)  # ARMv8.6 SMMLA/UMMLA
ISA_FLAGS = (*X86_AMX, *X86_VNNI, *X86_SIMD, *ARM_I8MM, *ARM_DOT)

_X86_MACHINES = ("x86_64", "amd64", "x64", "i386", "i686", "x86")
_ARM_MACHINES = ("aarch64", "arm64", "aarch64_be")

# TensorRT quantizes weighted layers' inputs and propagates through the rest itself; ONNX
# Runtime runs more ops in INT8 (pooling, Add, Gather) when they are quantized too.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
_LETTERS = {"uint8": "U8", "int8": "S8"}  # ORT's shorthand: U8S8 = uint8 activations, int8 weights


@dataclass(frozen=True)
class Int8Settings:
    """How a float graph is quantized to INT8 (arguments of ORT's `quantize_static`).

    Attributes:
        target: "onnxruntime" or "tensorrt", the runtime the Q/DQ graph is made for.
        activation_type: "uint8" or "int8".
        activation_symmetric: zero point 0 for activations (TensorRT requires it).
        weight_type: "int8" (symmetric, zero point 0).
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights, against U8S8 saturation on x86 CPUs without VNNI.
        quant_format: "qdq" (QuantizeLinear/DequantizeLinear around float ops).
        op_types: op types whose inputs are quantized; None: every op ORT can quantize.
        machine: `platform.machine()` of the CPU the settings were chosen for ("" for TensorRT).
        cpu_flags: the instruction-set flags of `ISA_FLAGS` that CPU has.
        reason: why these settings, in words.
    """

    target: str
    activation_type: str
    activation_symmetric: bool
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    quant_format: str = "qdq"
    op_types: tuple[str, ...] | None = None
    machine: str = ""
    cpu_flags: tuple[str, ...] = ()
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists)."""
        data = asdict(self)
        data["op_types"] = None if self.op_types is None else list(self.op_types)
        data["cpu_flags"] = list(self.cpu_flags)
        return data

    def summary(self) -> str:
        """One line, e.g. 'U8S8 QDQ (uint8 asymmetric activations, int8 weights per channel)'."""
        return settings_text(self.to_dict())


def settings_text(data: dict[str, Any]) -> str:
    """`Int8Settings.summary` of a settings dict (as saved in a report)."""
    pair = _LETTERS[data["activation_type"]] + _LETTERS[data["weight_type"]]
    symmetry = "symmetric" if data["activation_symmetric"] else "asymmetric"
    weights = "per channel" if data["per_channel"] else "per tensor"
    bits = ", 7-bit (reduce_range)" if data["reduce_range"] else ""
    return (
        f"{pair} {data['quant_format'].upper()} ({data['activation_type']} "
        f"{symmetry} activations, {data['weight_type']} weights {weights}{bits})"
    )


TENSORRT_INT8 = Int8Settings(
    target="tensorrt",
    activation_type="int8",
    activation_symmetric=True,
    op_types=WEIGHTED_OPS,
    reason="TensorRT takes symmetric INT8 Q/DQ (zero points 0) and full 8-bit weights",
)


def ort_int8_settings(flags: Iterable[str], machine: str) -> Int8Settings:
    """ONNX Runtime CPU settings for a CPU with these /proc/cpuinfo flags (see the module doc).

    Args:
        flags: the CPU's flags (x86 "flags" or ARM "Features"); empty when unknown.
        machine: `platform.machine()`, e.g. "x86_64", "AMD64", "aarch64", "arm64".

    Example:
        >>> ort_int8_settings({"avx2", "avx512_vnni"}, "x86_64").reduce_range
        False
        >>> ort_int8_settings({"avx2"}, "x86_64").reduce_range
        True
    """
    have = {f.lower() for f in flags}
    seen = tuple(f for f in ISA_FLAGS if f in have)
    arch = machine.lower()
    reduce_range = False
    if arch in _X86_MACHINES:
        fast = [f for f in (*X86_AMX, *X86_VNNI) if f in have]
        if fast:
            reason = (
                f"x86-64 with VNNI ({', '.join(fast)}): U8S8 accumulates in 32 bits without "
                "saturation, so full 8-bit weights"
            )
        else:
            reduce_range = True
            known = f"without VNNI ({', '.join(seen) or 'no AVX2'})" if have else "flags unknown"
            reason = (
                f"x86-64 {known}: U8S8 runs through VPMADDUBSW, whose 16-bit sums can saturate, "
                "so 7-bit weights (reduce_range)"
            )
    elif arch in _ARM_MACHINES or arch.startswith("arm"):
        dot = "with" if any(f in have for f in ARM_DOT) else ("without" if have else "unknown")
        reason = (
            f"ARM ({dot} dot product): no U8S8 saturation on ARM, so full 8-bit weights; uint8 "
            "activations as on x86, so one graph's accuracy holds on both"
        )
    else:
        reason = f"{machine or 'unknown CPU'}: no x86 VPMADDUBSW saturation, so full 8-bit weights"
    return Int8Settings(
        target="onnxruntime",
        activation_type="uint8",
        activation_symmetric=False,
        reduce_range=reduce_range,
        machine=machine,
        cpu_flags=seen,
        reason=reason,
    )


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo text (x86 "flags", ARM "Features")."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def host_cpu_flags() -> frozenset[str]:
    """This machine's CPU flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        return parse_cpu_flags(CPUINFO.read_text(errors="replace"))
    except OSError:
        return frozenset()


def host_ort_int8_settings() -> Int8Settings:
    """`ort_int8_settings` for the CPU this process runs on."""
    return ort_int8_settings(host_cpu_flags(), platform.machine())
