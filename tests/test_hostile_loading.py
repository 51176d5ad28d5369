"""Hostile model files (part of the hostile-input corpus): nothing from a file runs unless the
user passes --trust-pickle, whatever the container and the pickle protocol, and damaged
archives are refused before PyTorch reads them.

Each case checks the library (`load_model_file`, `load_program`) and, for a representative set,
the CLI: exit 2, one plain line on stderr, no traceback, the payload's marker file never made,
and no file in the folder changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from gdws_export.cli import main
from gdws_export.errors import InvalidInputError, plain_line
from gdws_export.loading import load_model_file
from gdws_export.loading.gate import program_hazards
from gdws_export.runtimes.torch_program import TorchSettings, load_program
from tests import _model_files as files

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def _payload(marker: Path, how: str, protocol: int) -> bytes:
    """Bytes that create `marker` when unpickled: a plain pickle or a torch.save archive."""
    evil = files.WritesMarker(marker)
    if how == "pickle":
        return pickle.dumps(evil, protocol=protocol)
    buffer = io.BytesIO()
    torch.save(evil, buffer, pickle_protocol=protocol, _use_new_zipfile_serialization=how == "zip")
    return buffer.getvalue()


def _rewrite_archive(source: Path, path: Path, edit) -> Path:
    """Copy the zip at `source` to `path`, `edit(member, data)` giving each member's new bytes
    (None drops it) and `edit(None, None)` a dict of members to add."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as out:
        top = original.namelist()[0].split("/", 1)[0]
        for info in original.infolist():
            data = edit(info.filename.split("/", 1)[1], original.read(info))
            if data is not None:
                out.writestr(info, data)
        for member, data in (edit(None, None) or {}).items():
            out.writestr(f"{top}/{member}", data)
    return path


def _edit_json(data: bytes, change) -> bytes:
    config = json.loads(data)
    change(config)
    return json.dumps(config).encode()


def _hostile_program(folder: Path, case: str, how: str = "zip", protocol: int = 2):
    """A .pt2 program whose loading by torch.export.load would run code, one way per case."""
    marker = folder / f"MARKER_{case}_{how}_{protocol}"
    evil = _payload(marker, how, protocol)
    source = files.export_file(folder)

    def first_weight_pickled(config):
        next(iter(config["config"].values()))["use_pickle"] = True

    def object_constant(prefix):
        def change(config):
            config["config"]["evil"] = {"path_name": f"{prefix}0", "is_param": False,
                                        "use_pickle": True, "tensor_meta": None}  # fmt: skip

        return change

    def edit(member, data):
        if member is None:
            extra = {
                "unknown": {"data/unknown.bin": evil},
                "legacy_weights": {"data/weights/model.pt": evil},
                "opaque_constant": {"data/constants/opaque_obj_0": evil},
                "custom_constant": {"data/constants/custom_obj_0": evil},
                "native_code": {"data/aotinductor/model/model.so": b"\x7fELF"},
            }
            return extra.get(case)
        if case == "pickled_weight" and member == "data/weights/model_weights_config.json":
            return _edit_json(data, first_weight_pickled)
        if case == "pickled_weight" and member == "data/weights/weight_0":
            return evil
        if case == "sample_inputs" and member == "data/sample_inputs/model.pt":
            return evil
        if case in ("opaque_constant", "custom_constant") and member.endswith(
            "constants_config.json"
        ):
            return _edit_json(data, object_constant(case.split("_")[0] + "_obj_"))
        return data

    path = _rewrite_archive(source, folder / f"{case}_{how}_{protocol}.pt2", edit)
    if case == "repeated_member":  # a benign weight first, a second copy under the same name
        with warnings.catch_warnings(), zipfile.ZipFile(path, "a") as archive:
            warnings.simplefilter("ignore")  # zipfile warns of the repeated name: the point
            archive.writestr(f"{archive.namelist()[0].split('/')[0]}/data/weights/weight_0", evil)
    return path, marker


def _tree(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its content hash: what a run must leave unchanged."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _cli_refuses(capsys, folder: Path, argv: list[str], *phrases: str) -> str:
    """Run the CLI; exit 2, one plain line naming the problem, nothing in `folder` changed."""
    before = _tree(folder)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "\x1b" not in err and "weights_only=False" not in err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert _tree(folder) == before
    return lines[0]


# --- pickles of every protocol in every container ------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("how", ["pickle", "zip", "legacy"])
def test_model_file_that_would_run_code_is_refused(tmp_path, how, protocol):
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pt"
    path.write_bytes(_payload(marker, how, protocol))
    with pytest.raises(InvalidInputError) as caught:
        load_model_file(path)
    assert not marker.exists()
    assert "weights_only=False" not in str(caught.value)


PROGRAM_CASES = [
    "pickled_weight", "sample_inputs", "legacy_weights", "opaque_constant", "custom_constant",
    "unknown", "native_code", "repeated_member",
]  # fmt: skip


@pytest.mark.parametrize("how", ["pickle", "zip"])
@pytest.mark.parametrize("case", PROGRAM_CASES)
def test_program_that_would_run_code_is_refused(tmp_path, case, how):
    path, marker = _hostile_program(tmp_path, case, how)
    assert program_hazards(path)
    with pytest.raises(InvalidInputError, match="would run code when loaded"):
        load_model_file(path)
    with pytest.raises(InvalidInputError, match="would run code when loaded"):
        load_program(path)  # the torch target's and bench's path
    assert not marker.exists()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("how", ["pickle", "zip", "legacy"])
def test_pickled_program_weight_of_any_protocol_is_refused(tmp_path, how, protocol):
    path, marker = _hostile_program(tmp_path, "pickled_weight", how, protocol)
    with pytest.raises(InvalidInputError, match=r"weight_0 \(a pickle"):
        load_model_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("case", "how"),
    [("pickled_weight", "zip"), ("sample_inputs", "zip"), ("opaque_constant", "pickle")],
)
def test_the_corpus_cases_are_real_threats(tmp_path, case, how):
    """Without the gate, torch.export.load runs these payloads: the refusals above matter."""
    path, marker = _hostile_program(tmp_path, case, how)
    try:
        torch.export.load(path)
    except Exception:
        pass  # the payload is no tensor: loading fails after it ran
    assert marker.exists()


def test_trusted_program_loads_through_torch(tmp_path):
    path, marker = _hostile_program(tmp_path, "sample_inputs")
    with pytest.raises(InvalidInputError, match="cannot be loaded"):  # its inputs are a file
        load_model_file(path, trust_pickle=True)  # the user opted in: torch's loader runs it
    assert marker.exists()


def test_weight_bytes_that_look_like_a_pickle_header_load(tmp_path):
    """Raw float32 weights can start with 0x80 0x02, a pickle header: the gate reads the
    archive's payload config, so it never mistakes them for a pickle."""
    model = files.lenet()
    header_like = struct.unpack("<f", b"\x80\x02\x8a\x3d")[0]
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = header_like
    program = torch.export.export(model, (files.images(2),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    path = tmp_path / "header_like.pt2"
    torch.export.save(program, path)
    with zipfile.ZipFile(path) as archive:
        weights = [n for n in archive.namelist() if "/data/weights/weight_" in n]
        assert any(archive.read(n).startswith(b"\x80\x02") for n in weights)
    assert program_hazards(path) == []
    loaded = load_model_file(path)
    torch.testing.assert_close(loaded.module(files.images(3)), model(files.images(3)))


def test_alphas_file_that_would_run_code_is_refused(capsys, tmp_path):
    model = files.checkpoint(tmp_path)
    marker = tmp_path / "MARKER"
    alphas = tmp_path / "alphas.pt"
    alphas.write_bytes(_payload(marker, "zip", 2))
    out = tmp_path / "out"
    _cli_refuses(capsys, tmp_path, [str(model), "--alphas", str(alphas), "--dry-run"])
    assert not marker.exists() and not out.exists()


def test_calibration_file_holding_pickled_objects_is_refused(capsys, tmp_path):
    import numpy as np

    model = files.checkpoint(tmp_path)
    marker = tmp_path / "MARKER"
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.array([files.WritesMarker(marker)], dtype=object), y=np.zeros(1))
    _cli_refuses(capsys, tmp_path, [str(model), "--calib", str(calib), "--dry-run"])
    assert not marker.exists()


# --- the CLI, on every path that reads a program ---------------------------------------------


@pytest.mark.parametrize("case", ["pickled_weight", "sample_inputs", "native_code"])
def test_cli_export_never_runs_a_hostile_program(capsys, tmp_path, case):
    path, marker = _hostile_program(tmp_path, case)
    _cli_refuses(capsys, tmp_path, [str(path), "--dry-run"], "--trust-pickle")
    _cli_refuses(capsys, tmp_path, [str(path), "-o", str(tmp_path / "out")], "--trust-pickle")
    assert not marker.exists()


def test_cli_bench_never_runs_a_hostile_program(capsys, tmp_path):
    """A .torch.json's SHA-256 pins nothing against someone who writes both files."""
    path, marker = _hostile_program(tmp_path, "sample_inputs")
    settings = tmp_path / "gdws.fp32.torch.json"
    TorchSettings(program=str(path), device="cpu", precision="fp32", compile=None,
                  cuda_graphs=False, threads=1,
                  program_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                  torch_version=torch.__version__).save(settings)  # fmt: skip
    _cli_refuses(capsys, tmp_path, ["bench", str(settings)], "would run code")
    assert not marker.exists()


# --- damaged archives ------------------------------------------------------------------------


def _flip_a_byte_inside(path: Path, member_suffix: str) -> Path:
    """Flip one byte in the data of the member ending with `member_suffix` (CRC left stale)."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    data = bytearray(path.read_bytes())
    # The local header's name and extra-field lengths (torch pads members via the extra field).
    name_length, extra_length = struct.unpack_from("<HH", data, info.header_offset + 26)
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.file_size // 2] ^= 0x10
    damaged = path.with_name(f"damaged_{path.name}")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.parametrize(
    ("make", "member"),
    [
        (lambda folder: files.checkpoint(folder), "data/0"),
        (lambda folder: files.export_file(folder), "data/weights/weight_0"),
        (lambda folder: files.torchscript_file(folder), "data/0"),
    ],
    ids=["checkpoint", "program", "torchscript"],
)
def test_a_bit_flip_inside_an_archive_is_refused(capsys, tmp_path, make, member):
    damaged = _flip_a_byte_inside(make(tmp_path), member)
    line = _cli_refuses(capsys, tmp_path, [str(damaged), "--dry-run"], "CRC")
    assert member in line


def test_messages_are_plain_lines():
    torch_advice = (
        "Weights only load failed. This file can still be loaded, to do so you have two "
        "options, \x1b[1mdo those steps only if you trust the source\x1b[0m.\n(1) ..."
    )
    assert "weights_only" not in plain_line(torch_advice)
    assert "\x1b" not in plain_line(torch_advice)
    assert plain_line("\n\x1b[31mred\x1b[0m line\nsecond") == "red line"
