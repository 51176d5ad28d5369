"""What kind of model file this is, and which classes a pickle names: read, never run."""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from gdws_export.errors import InvalidInputError, plain_line

FORMATS = ("torchscript", "torch_export", "torch_save", "pickle")
FORMAT_NAMES = {
    "torchscript": "TorchScript archive",
    "torch_export": "torch.export program",
    "torch_save": "torch.save file",
    "pickle": "pickle file",
}
# Globals every torch.save file names (tensor rebuilding, plain containers): not worth listing.
_ROUTINE_GLOBALS = ("torch._utils.", "collections.OrderedDict", "__builtin__.set", "builtins.set")


def detect_format(path: Path) -> str:
    """One of FORMATS, from the file's bytes (zip member names, pickle opcode), running nothing.

    Raises:
        InvalidInputError: the file is empty, a directory, a truncated zip archive, or neither
            a zip archive nor a pickle.
    """
    if path.is_dir():
        raise InvalidInputError(f"model file {path} is a directory; pass the model file itself")
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise InvalidInputError(f"model file {path} is empty")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise InvalidInputError(
                f"model file {path} is a truncated or corrupt zip archive (no central "
                "directory); copy or save it again"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise InvalidInputError(f"model file {path} is a corrupt zip archive ({exc})") from exc
        members = {name.split("/", 1)[1] for name in names if "/" in name}
        if "models/model.json" in members or "archive_format" in members:
            return "torch_export"
        if any(m.startswith("code/") for m in members) and "data.pkl" in members:
            return "torchscript"
        if "data.pkl" in members:
            return "torch_save"
        raise InvalidInputError(
            f"model file {path} is a zip archive but not a PyTorch file (no data.pkl, "
            "TorchScript code or torch.export program inside)"
        )
    if _starts_with_a_pickle(path):
        return "pickle"
    raise InvalidInputError(
        f"model file {path} is not a PyTorch file (neither a zip archive nor a pickle); pass a "
        "state_dict, a TorchScript archive, a torch.export .pt2 program or a pickled module"
    )


def _starts_with_a_pickle(path: Path, window: int = 4096) -> bool:
    """Whether the file's first bytes parse as pickle opcodes up to a STOP or the end of the
    window (any protocol: legacy torch.save files of protocol 0 or 1 start with LONG, "L").
    Parsed, never run; a false "yes" only leads to a weights-only load that refuses it."""
    with open(path, "rb") as f:
        head = f.read(window)
    count = 0
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            count += 1
            if opcode.name == "STOP":
                return True
    except (ValueError, EOFError):
        return count > 0 and len(head) == window  # cut by the window, not by bad bytes
    return False


def pickle_globals(path: Path, *, routine: bool = False) -> list[str]:
    """The classes and functions a pickle refers to ("module.name"), read without unpickling.

    For zip archives the pickle is their data.pkl; for plain or legacy files, the first pickle.
    Stops quietly at a truncated stream. Globals every torch.save file names (tensor rebuilding,
    OrderedDict) are left out unless `routine`.
    """
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            data = archive.read(member)
    else:
        data = path.read_bytes()
    found: list[str] = []
    strings: list[str] = []  # recent string pushes, for STACK_GLOBAL
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if opcode.name == "STOP":
                break
    except (ValueError, EOFError):
        pass  # a truncated stream: what was read is enough for a message
    found = list(dict.fromkeys(found))
    return found if routine else [g for g in found if not g.startswith(_ROUTINE_GLOBALS)]


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (C++ errors run to many lines), as plain text:
    see `errors.plain_line`."""
    return plain_line(str(exc)) or type(exc).__name__
