"""Atomic file output, hashing and JSON records (sidecars), shared by every layer.

Every file the tool writes goes to a temporary name beside its destination and is renamed into
place only once complete, so an interrupted run never leaves a file that looks finished. Every
JSON record it reads back (`*.ort.json`, `*.torch.json`, `<engine>.json`) is checked field by
field against its dataclass in `read_json_record`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from gdws_export.errors import InvalidInputError

Record = TypeVar("Record")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_zip_integrity(path: Path, what: str) -> None:
    """Raise InvalidInputError unless every member of the zip archive at `path` reads back
    with a matching CRC (`what` names the file's kind in the message)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        raise InvalidInputError(
            f"{what} {path} is a corrupt zip archive ({exc}); copy or save it again"
        ) from exc
    if bad is not None:
        raise InvalidInputError(
            f"{what} {path} is corrupt: member '{bad}' fails its CRC check (a damaged copy?); "
            "copy or save it again"
        )


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh, unused file name beside `path`, keeping its extension (some tools, ONNX
    Runtime among them, pick the format from it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    return Path(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed over `path`, on any error
    (or Ctrl-C) it is removed.

    Example:
        >>> with atomic_output("model.pt") as tmp:   # doctest: +SKIP
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        # mkstemp creates files readable by their owner only; outputs are meant to be
        # shared (a serving process often runs as another user), so apply the usual umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    """Write `data` (any buffer, e.g. TensorRT's IHostMemory) to `path` atomically."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class JsonRecord:
    """Mixin for flat dataclasses saved as JSON files: to_dict/to_json, from_dict, save/load."""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record to `path` atomically."""
        return atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        return read_json_record(cls, path, f"a {cls.__name__} record")


def read_json_record(cls: type[Record], path: str | os.PathLike, what: str) -> Record:
    """The dataclass `cls` read from the JSON object in `path`, every field type-checked.

    Args:
        cls: a dataclass whose fields are JSON types (str, int, float, bool, None, lists and
            dicts of them, as annotated).
        path: the JSON file.
        what: what the file should be, for messages ("an ONNX Runtime settings file").

    Raises:
        InvalidInputError: one line naming the file and the field: not JSON, not an object,
            a missing or unknown field, or a value of the wrong type.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} cannot be read as {what} ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{path} is not {what}: not JSON ({exc.msg}, line {exc.lineno})"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"{path} is not {what}: it holds a JSON {type(data).__name__}, not an object"
        )
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidInputError(f"{path} is not {what}: unknown field {unknown[0]!r}")
    for name, field in known.items():
        required = field.default is MISSING and field.default_factory is MISSING
        if name not in data:
            if required:
                raise InvalidInputError(f"{path} is not {what}: field {name!r} is missing")
            continue
        if not _json_matches(data[name], hints[name]):
            raise InvalidInputError(
                f"{path} is not {what}: field {name!r} must be {_describe(hints[name])}, got "
                f"{json.dumps(data[name])[:60]}"
            )
    return cls(**data)


def _json_matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (int is not bool; float takes int)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin in (Union, UnionType):
        return any(_json_matches(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_json_matches(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _json_matches(v, args[1]) for k, v in value.items()
        )
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    """'a string', 'a string or null', 'a list', ... for messages."""
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             type(None): "null"}  # fmt: skip
    if get_origin(hint) in (Union, UnionType):
        return " or ".join(_describe(arg) for arg in get_args(hint))
    origin = get_origin(hint) or hint
    return names.get(origin, {list: "a list", dict: "an object"}.get(origin, str(hint)))
