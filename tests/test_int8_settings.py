"""INT8 settings per instruction set: a pure function of the CPU flags, checked on a table."""

from __future__ import annotations

import json

import pytest

from gdws_export.runtimes import int8_settings
from gdws_export.runtimes.int8_settings import (
    TENSORRT_INT8,
    Int8Settings,
    host_cpu_flags,
    ort_int8_settings,
    parse_cpu_flags,
)

SAPPHIRE_RAPIDS = {"sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}
ZEN4 = {"sse4_1", "avx2", "avx512f", "avx512bw", "avx512_vnni"}
ALDER_LAKE = {"sse4_1", "avx2", "avx_vnni"}
SKYLAKE_X = {"sse4_1", "avx2", "avx512f", "avx512bw"}  # AVX-512 without VNNI: saturates
HASWELL = {"sse4_1", "avx2"}
GRAVITON2 = {"fp", "asimd", "asimddp"}
CORTEX_A53 = {"fp", "asimd"}


# (flags, platform.machine(), reduce_range, words the reason must hold)
TABLE = [
    (SAPPHIRE_RAPIDS, "x86_64", False, ["VNNI", "amx_int8"]),
    (ZEN4, "x86_64", False, ["VNNI", "avx512_vnni"]),
    (ALDER_LAKE, "x86_64", False, ["VNNI", "avx_vnni"]),
    (SKYLAKE_X, "x86_64", True, ["without VNNI", "avx512bw", "saturate"]),
    (HASWELL, "x86_64", True, ["without VNNI", "avx2"]),
    ({"sse4_1"}, "i686", True, ["without VNNI"]),
    ({"fpu"}, "x86_64", True, ["no AVX2"]),
    (set(), "AMD64", True, ["flags unknown"]),  # Windows: no /proc/cpuinfo
    (GRAVITON2, "aarch64", False, ["ARM (with dot product)"]),
    (CORTEX_A53, "aarch64", False, ["ARM (without dot product)"]),
    (set(), "arm64", False, ["ARM (unknown dot product)"]),  # macOS
    (set(), "ppc64le", False, ["ppc64le"]),
]


@pytest.mark.parametrize(("flags", "machine", "reduce_range", "words"), TABLE)
def test_settings_per_instruction_set(flags, machine, reduce_range, words):
    settings = ort_int8_settings(flags, machine)
    # ORT's CPU guidance: U8S8 in QDQ form everywhere; 7-bit weights on x86 without VNNI only.
    assert (settings.activation_type, settings.weight_type) == ("uint8", "int8")
    assert not settings.activation_symmetric and settings.per_channel
    assert settings.quant_format == "qdq" and settings.op_types is None
    assert settings.target == "onnxruntime" and settings.machine == machine
    assert settings.reduce_range is reduce_range
    for word in words:
        assert word in settings.reason, settings.reason
    assert set(settings.cpu_flags) <= set(flags) & set(int8_settings.ISA_FLAGS)


def test_settings_are_a_pure_function_of_the_flag_set():
    one = ort_int8_settings(["AVX2", "avx512_vnni", "fpu", "sse4_1"], "x86_64")
    other = ort_int8_settings({"sse4_1", "avx2", "AVX512_VNNI"}, "x86_64")
    assert one == other
    assert one.cpu_flags == ("avx512_vnni", "avx2", "sse4_1")  # ISA_FLAGS order, lower case


def test_tensorrt_settings_are_symmetric_int8_on_weighted_ops():
    assert TENSORRT_INT8.target == "tensorrt"
    assert (TENSORRT_INT8.activation_type, TENSORRT_INT8.weight_type) == ("int8", "int8")
    assert TENSORRT_INT8.activation_symmetric and not TENSORRT_INT8.reduce_range
    assert TENSORRT_INT8.op_types == ("Conv", "Gemm", "MatMul")


def test_to_dict_is_json_and_the_summary_names_the_pair():
    settings = ort_int8_settings(HASWELL, "x86_64")
    data = json.loads(json.dumps(settings.to_dict()))
    assert data["cpu_flags"] == ["avx2", "sse4_1"] and data["reduce_range"] is True
    assert settings.summary() == (
        "U8S8 QDQ (uint8 asymmetric activations, int8 weights per channel, 7-bit (reduce_range))"
    )
    assert TENSORRT_INT8.summary().startswith("S8S8 QDQ (int8 symmetric activations")
    assert Int8Settings(**{**data, "op_types": None, "cpu_flags": ()}).reduce_range


X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse4_1 avx2 avx512f avx512bw avx512_vnni

processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes asimddp
CPU implementer\t: 0x41
"""


def test_cpuinfo_flags_of_x86_and_arm():
    assert parse_cpu_flags(X86_CPUINFO) == {"fpu", "sse4_1", "avx2", "avx512f", "avx512bw",
                                            "avx512_vnni"}  # fmt: skip
    assert "asimddp" in parse_cpu_flags(ARM_CPUINFO)
    assert parse_cpu_flags("processor\t: 0\n") == frozenset()


def test_host_flags_come_from_proc_cpuinfo(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ARM_CPUINFO)
    monkeypatch.setattr(int8_settings, "CPUINFO", cpuinfo)
    assert "asimddp" in host_cpu_flags()
    monkeypatch.setattr(int8_settings, "CPUINFO", tmp_path / "absent")
    assert host_cpu_flags() == frozenset()  # macOS, Windows: no file, no error
