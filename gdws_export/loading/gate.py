"""The one gate every model archive passes before PyTorch reads it.

Two checks, both reading bytes and running nothing:

- `_files.check_zip_integrity`: every member's CRC. PyTorch's own zip reader skips CRCs, so a bit
  flip inside a weight file would otherwise load, export and report as if nothing were wrong.
- `program_hazards`: what `torch.export.load` would run. It unpickles some members of a `.pt2`
  with `weights_only=False` (weights and constants flagged `use_pickle`, the sample inputs and
  legacy weight files when the weights-only unpickler refuses them), unpickles opaque and
  custom-object constants with plain `pickle.loads`, and loads AOTInductor members as native
  code. Rather than guess from leading bytes which member is a pickle, the gate reads the
  archive's payload configs (the same JSON torch reads) and classifies *every* member: text
  and JSON torch parses, raw tensor bytes a config names as such, or a member that must load
  in full under the weights-only unpickler (which runs nothing, whatever the pickle protocol).
  Anything else is a hazard, named in the refusal.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import warnings
import zipfile
from pathlib import Path

import torch

from gdws_export._files import check_zip_integrity
from gdws_export.errors import InvalidInputError, shown

# Members torch reads as plain text (versions, ids, byte order) or JSON (graphs, configs).
_TEXT_MEMBERS = frozenset(
    {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
)
_CONFIG = re.compile(r"data/(weights|constants)/[^/]+_(weights|constants)_config\.json")
# Constants torch unpickles with plain pickle or the TorchScript object unpickler.
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")
_NATIVE_CODE_DIR = "data/aotinductor/"
_EXTRA_DIR = "extra/"  # extra files: read as strings


def program_hazards(path: Path) -> list[str]:
    """Members of a `.pt2` archive that `torch.export.load` would run code from, each as
    "member (why)"; empty when loading it runs nothing."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if len(set(names)) != len(names):  # which copy torch reads is not ours to guess
            return ["the archive (member names repeated)"]
        top = _top_folder(names)
        members = {name[len(top) :]: name for name in names if not name.endswith("/")}
        raw, pickled, objects, hazards = set(), set(), set(), []
        for member in filter(_CONFIG.fullmatch, members):
            folder = member.rsplit("/", 1)[0]
            try:
                entries = json.loads(archive.read(members[member]))["config"].values()
                for entry in entries:
                    target = posixpath.join(folder, entry["path_name"])
                    if entry["path_name"].startswith(_OBJECT_PREFIXES):
                        objects.add(target)
                    elif entry.get("use_pickle"):
                        pickled.add(target)
                    else:
                        raw.add(target)
            except (ValueError, KeyError, TypeError, AttributeError):
                hazards.append(f"{member} (a payload config that cannot be read)")
        for member, name in members.items():
            if member in objects:
                hazards.append(f"{member} (a pickled Python object)")
            elif member.startswith(_NATIVE_CODE_DIR):
                hazards.append(f"{member} (compiled native code, AOTInductor)")
            elif member in pickled or not _never_unpickled(member, raw):
                if not _weights_only_loadable(archive.read(name)):
                    hazards.append(f"{member} (a pickle of objects other than tensors)")
    return hazards


def _top_folder(names: list[str]) -> str:
    """The archive's one top-level folder ("model/"), which torch strips from member names."""
    tops = {name.split("/", 1)[0] for name in names if "/" in name}
    return f"{tops.pop()}/" if len(tops) == 1 else ""


def _never_unpickled(member: str, raw: set[str]) -> bool:
    return (
        member in raw
        or member in _TEXT_MEMBERS
        or member.endswith(".json")
        or member.startswith(_EXTRA_DIR)
    )


def _weights_only_loadable(data: bytes) -> bool:
    """Whether `data` loads in full with the weights-only unpickler (which runs no code).

    Any failure counts as refusal: torch falls back to `weights_only=False` on some members
    after a failed weights-only load, so only a member that loads cleanly is safe to hand on.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4" and the like
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        return False
    return True


def check_program_archive(path: Path, *, trust_pickle: bool, advice: str) -> None:
    """Raise InvalidInputError if `path` is a corrupt zip or, unless `trust_pickle`, a `.pt2`
    program that `torch.export.load` would run code from. `advice` ends the refusal: what the
    user can do (e.g. pass --trust-pickle)."""
    check_zip_integrity(path, "torch.export program")
    if trust_pickle:
        return
    hazards = program_hazards(path)
    if hazards:
        raise InvalidInputError(
            f"torch.export program {path} holds members that would run code when loaded "
            f"({shown(hazards, 3)}), so it was not loaded; {advice}"
        )
