"""GDWS settings, per-layer kernels, tool version and parity figures in the ONNX metadata.

Everything goes into one `metadata_props` entry, key "gdws_export", as JSON, so a deployed
graph says how it was made: `read_metadata("model.onnx")["settings"]["beta"]`.
"""

from __future__ import annotations

import json
import os

from gdws_export.errors import InvalidInputError

METADATA_KEY = "gdws_export"


def write_metadata(model, data: dict) -> None:
    """Store `data` (JSON-serializable) in `model.metadata_props`, replacing an older entry."""
    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise InvalidInputError(f"metadata must be JSON-serializable: {exc}") from exc
    for i in reversed(range(len(model.metadata_props))):
        if model.metadata_props[i].key == METADATA_KEY:
            del model.metadata_props[i]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, text


def read_metadata(model) -> dict:
    """The gdws-export metadata of an `onnx.ModelProto` or .onnx file ({} when absent)."""
    if isinstance(model, (str, os.PathLike)):
        import onnx

        model = onnx.load(os.fspath(model), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


__all__ = ["METADATA_KEY", "read_metadata", "write_metadata"]
