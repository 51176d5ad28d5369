"""Output directories: written under a temporary name, renamed into place at the end, and
replaced under --force only when gdws-export wrote them.

The one rule of what may be replaced lives here (`check_destination`): an existing folder is
replaced only with --force, only when it carries the marker file `MARKER` that every folder
gdws-export writes gets, and never when it is, or holds, the current directory or a file the
run reads (the input model, its data, its alphas). Staging folders
(`.<name>.partial-<pid>-XXXX`) carry the marker too, with the owning process and host, so a
later run can tell the ones of dead runs (SIGKILL, a power cut) from a live run's.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from gdws_export._files import atomic_write_text
from gdws_export.errors import InvalidInputError
from gdws_export.pipeline.report import TOOL_NAME as TOOL

MARKER = ".gdws-export"  # the file that says "gdws-export wrote this folder"


def write_marker(folder: Path, written_by: str) -> None:
    """Mark `folder` as written by gdws-export (`written_by`: the command, e.g. "export")."""
    from gdws_export import __version__

    record = {
        "tool": TOOL,
        "version": __version__,
        "written_by": f"{TOOL} {written_by}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    atomic_write_text(Path(folder) / MARKER, json.dumps(record, indent=2) + "\n")


def read_marker(folder: Path) -> dict | None:
    """The marker record of `folder`, or None when it has none (or not gdws-export's)."""
    path = Path(folder) / MARKER
    if path.is_symlink() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("tool") == TOOL else None


def check_destination(
    path: Path,
    force: bool,
    what: str,
    option: str,
    *,
    protected: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse an output folder `path` that may not be written or replaced.

    The one place that decides what --force may replace: an existing `path` only with
    `force`, only when it carries gdws-export's marker, and never when it is or holds the
    current directory or one of the `protected` paths (the run's inputs, its other outputs).

    Raises:
        InvalidInputError: `path` is a file, exists without `force`, holds something
            protected, or was not written by gdws-export.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise InvalidInputError(f"{what} {path} is a file; choose another {option}")
    held = _held_path(path, protected)
    if held is not None:
        raise InvalidInputError(
            f"{what} {path} {held}, so it may not be replaced; choose another {option}"
        )
    if not force:
        raise InvalidInputError(
            f"{what} {path} already exists; pass --force to replace it, or choose another {option}"
        )
    if path.is_symlink():  # replacing it would replace the link, not what it points to
        raise InvalidInputError(
            f"{what} {path} is a symbolic link; --force replaces only folders gdws-export "
            f"wrote: choose another {option}"
        )
    if read_marker(path) is None:
        raise InvalidInputError(
            f"{what} {path} was not written by gdws-export (no {MARKER} marker file in it); "
            f"--force replaces only folders gdws-export wrote: choose another {option}, or "
            "remove it yourself"
        )


def ensure_output_folder(path: Path, written_by: str, option: str) -> Path:
    """Create the folder `path` for outputs written file by file (sweep reports); marked when
    created here. An existing folder is used as it is (and not marked: it is not ours).

    Raises:
        InvalidInputError: `path` is a file, or cannot be created.
    """
    path = Path(path)
    check_output_folder(path, option)
    if path.is_dir():
        return path
    try:
        path.mkdir(parents=True)
        write_marker(path, written_by)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot create {option} {path}: {exc.strerror or exc}; choose a writable location"
        ) from exc
    return path


def check_output_folder(path: Path, option: str) -> None:
    """Refuse an output folder that names an existing file (before any work is done).

    Raises:
        InvalidInputError: `path` exists and is not a folder.
    """
    if (Path(path).exists() or Path(path).is_symlink()) and not Path(path).is_dir():
        raise InvalidInputError(f"{option} {path} is a file; choose a folder")


def check_output_file(path: Path, option: str, *, protected: Iterable[str | os.PathLike]) -> None:
    """Refuse an output file that is a folder or one of the run's inputs (`protected`).

    Raises:
        InvalidInputError: naming the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{option} {path} is a folder; name a file")
    for item in protected:
        if path.exists() and Path(item).exists() and os.path.samefile(path, item):
            raise InvalidInputError(
                f"{option} {path} is an input of this run ({item}); choose another file"
            )


def _held_path(path: Path, protected: Iterable[str | os.PathLike]) -> str | None:
    """How `path` holds the current directory or a protected path ("holds X", "is the
    current directory"), or None. Paths are compared both as written (`a/..` is `.`) and with
    symlinks resolved."""
    forms = {Path(os.path.abspath(path)), path.resolve()}
    cwd = Path.cwd()
    for item, name in ((cwd, "the current directory"), *((Path(p), str(p)) for p in protected)):
        for held in {Path(os.path.abspath(item)), item.resolve()}:
            if held in forms:
                return f"is {name}"
            if any(form in held.parents for form in forms):
                return f"holds {name}"
    return None


class Staging:
    """A temporary directory beside `target` that becomes `target` on `commit()`.

    Used as a context manager: on leaving without a commit (an error, Ctrl-C, SIGTERM), the
    temporary directory and any parent directories it created are removed, so nothing that
    looks like a result is left. The staged folder carries the marker (with this process's id),
    so the target does too. On entering, staging folders of dead runs beside the target are
    removed (listed in `notes`). `commit()` replaces an existing `target` only as
    `check_destination` allows, swapping the two folders in one step where the system can
    (Linux), so the path always holds a complete output, the old one or the new one.

    Example:
        >>> with Staging(Path("out")) as staged:                        # doctest: +SKIP
        ...     (staged.path / "report.json").write_text("{}")
        ...     staged.commit()
    """

    def __init__(
        self,
        target: Path,
        force: bool = False,
        *,
        what: str = "output directory",
        option: str = "-o/--output",
        protected: Iterable[str | os.PathLike] = (),
        written_by: str = "export",
    ) -> None:
        self.target = Path(os.path.abspath(target))  # `a/..` is a folder, not a name ".."
        self.force = force
        self.what, self.option, self.written_by = what, option, written_by
        self.protected = list(protected)
        self.path: Path | None = None
        self.notes: list[str] = []
        self._created: list[Path] = []
        self._committed = False

    @classmethod
    def optional(cls, target: Path | None, force: bool = False, **kwargs):
        """A Staging for `target`, or a context yielding None when there is no target."""
        return nullcontext() if target is None else cls(target, force, **kwargs)

    def __enter__(self) -> Staging:
        parent = self.target.parent
        try:
            # Signals wait until the folder exists with its marker (or is not made at all):
            # one in between would leave a folder no later run could judge.
            with _signals_deferred():
                missing = [p for p in (parent, *parent.parents) if not p.exists()]
                parent.mkdir(parents=True, exist_ok=True)
                self._created = missing  # deepest first, the order to remove them in
                self.notes = remove_stale_staging(self.target)
                prefix = f"{_staging_prefix(self.target)}{os.getpid()}-"
                self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
                write_marker(self.path, self.written_by)
        except BaseException as exc:  # __exit__ is not called when __enter__ fails
            self.__exit__()
            if isinstance(exc, OSError):
                raise InvalidInputError(
                    f"cannot write {self.target}: {exc.strerror or exc} "
                    f"({exc.filename or parent}); choose a writable location with {self.option}"
                ) from exc
            raise
        return self

    def check(self) -> None:
        """Raise now what `commit()` would (the target appeared, or may not be replaced), so a
        run committing two folders commits both or neither."""
        if self.target.exists() or self.target.is_symlink():
            if not self.force:
                raise InvalidInputError(
                    f"{self.target} appeared while exporting; pass --force to replace it"
                )
            check_destination(self.target, self.force, self.what, self.option,
                              protected=self.protected)  # fmt: skip

    def commit(self) -> None:
        """Rename the staged directory to the target (replacing it under `force`)."""
        self.check()
        _usual_permissions(self.path)
        with _signals_deferred():  # a signal between two renames would lose both folders
            old = None
            if not (self.target.exists() or self.target.is_symlink()):
                os.replace(self.path, self.target)
            elif _exchange(self.path, self.target):
                old = self.path  # it holds the replaced folder now
            else:  # two renames: for a moment nothing is at the target
                old = self.target.with_name(f"{_old_prefix(self.target)}{os.getpid()}")
                os.replace(self.target, old)
                os.replace(self.path, self.target)
            self._committed = True
            if old is not None:  # before a held signal ends the run, or it stays behind
                shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        if not self._committed:
            with _signals_deferred():  # a second Ctrl-C must not leave half a staging folder
                if self.path is not None:
                    shutil.rmtree(self.path, ignore_errors=True)
                self._remove_created()

    def _remove_created(self) -> None:
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty or not ours any more: leave it and its parents


def remove_stale_staging(target: Path) -> list[str]:
    """Remove the staging folders of dead runs beside `target`; returns one note for each
    folder removed, and for each one left because its owner cannot be checked.

    A folder is stale when its name is `.<name>.partial-<pid>-...` (or `.<name>.old-<pid>`),
    it carries the marker, the marker names this host, and no process <pid> is alive. A
    live run's folder, or one of another host (a shared or mounted folder), is never removed;
    nor is an unmarked one, unless it holds nothing but a half-written marker (a run killed
    as it began).
    """
    target = Path(target)
    staging, old = re.escape(_staging_prefix(target)), re.escape(_old_prefix(target))
    pattern = re.compile(rf"{staging}(\d+)-.+|{old}(\d+)")
    notes = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return notes
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(match.group(1) or match.group(2))
        marker = read_marker(entry)
        # A run killed between creating its folder and marking it leaves nothing but
        # (part of) the marker: judged by the process id alone.
        unmarked_new = marker is None and _holds_only_the_marker(entry)
        if not unmarked_new and (marker is None or marker.get("host") != socket.gethostname()):
            notes.append(
                f"left {entry}: a staging folder of another host's run, or not gdws-export's; "
                "remove it yourself if no run is writing it"
            )
            continue
        if _alive(pid):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        notes.append(f"removed {entry.name}, left by an interrupted run (process {pid})")
    return notes


def _holds_only_the_marker(folder: Path) -> bool:
    """Whether `folder` holds nothing but the marker file or its temporary file (named as
    `_files.temporary_path` names them: `.<name>.XXXX.tmp`)."""
    try:
        return all(
            entry.name == MARKER or entry.name.startswith(f".{MARKER}.")
            for entry in folder.iterdir()
        )
    except OSError:
        return False


def _staging_prefix(target: Path) -> str:
    return f".{target.name}.partial-"


def _old_prefix(target: Path) -> str:
    return f".{target.name}.old-"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE), so a replaced
    output is never missing; False where the system or the file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without it (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]  # fmt: skip
    at_fdcwd, rename_exchange = -100, 2  # <fcntl.h>, <linux/fs.h>
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _alive(pid: int) -> bool:
    """Whether a process `pid` exists (another user's counts: it may be a run)."""
    if pid <= 0:
        return True  # not a process id we wrote: leave the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done; one that came is then delivered.

    Python runs signal handlers in the main thread only, so a block elsewhere needs nothing;
    in the main thread the handlers are swapped for ones that take note (blocking the signal
    would not do: another thread, ONNX Runtime's or torch's, would receive it instead).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.signal(number, lambda n, _: caught.append(n)) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])  # to the usual handler: KeyboardInterrupt, exit...


def _usual_permissions(root: Path) -> None:
    """Give the staged tree the permissions of freshly created files (umask applied).

    Temporary files and directories are created private (0600/0700); served models must be
    readable by the server's user like any file the user writes.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~umask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~umask)
