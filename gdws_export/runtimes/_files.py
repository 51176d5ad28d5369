"""Loading ONNX files with clear errors, hashing, and atomic writes (temp file + rename)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from gdws_export.errors import InvalidInputError

if TYPE_CHECKING:
    import onnx


def load_onnx(model: onnx.ModelProto | str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Load (and by default check) an ONNX model, raising InvalidInputError when it can't be read.

    Args:
        model: a path to an .onnx file, or a loaded ModelProto (returned as is after the check).
        check: run `onnx.checker.check_model` on it.
    """
    import onnx

    if isinstance(model, onnx.ModelProto):
        proto, where = model, "the given ModelProto"
    else:
        path = Path(model)
        if not path.is_file():
            raise InvalidInputError(
                f"ONNX file {path} does not exist; pass the path of an .onnx file"
            )
        try:
            proto = onnx.load(path)
        except Exception as exc:  # protobuf raises DecodeError, RuntimeError or others
            raise InvalidInputError(
                f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); "
                "re-export it (gdws_export/lowering)"
            ) from exc
        where = str(path)
    if check:
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            first_line = (
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            )
            raise InvalidInputError(f"{where} fails onnx.checker: {first_line}") from exc
    return proto


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`.

    `data` may be any object with the buffer protocol (TensorRT's IHostMemory is written as
    is, as NVIDIA's samples do).

    A crash mid-write leaves a stray temporary file, never a truncated `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save a ModelProto atomically (models here are small CNNs, well under protobuf's 2 GB)."""
    return atomic_write_bytes(path, model.SerializeToString())


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh, unused file name beside `path` for tools that write files themselves.

    It keeps `path`'s extension, since some tools (ONNX Runtime) pick the format from it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(tmp)
