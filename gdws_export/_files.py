"""Atomic file output and hashing, shared by every layer.

Every file the tool writes goes to a temporary name beside its destination and is renamed into
place only once complete, so an interrupted run never leaves a file that looks finished.
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
from dataclasses import asdict
from pathlib import Path

from gdws_export.errors import InvalidInputError


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
        return cls.from_dict(json.loads(Path(path).read_text()))
