"""Loading and saving ONNX files, with clear errors and atomic writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gdws_export._files import atomic_write_bytes
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
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
            raise InvalidInputError(
                f"{path} is not a readable ONNX model ({type(exc).__name__}: {reason}); "
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


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Save a ModelProto atomically (models here are small CNNs, well under protobuf's 2 GB)."""
    return atomic_write_bytes(path, model.SerializeToString())
