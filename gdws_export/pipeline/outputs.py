"""Output directories written under a temporary name and renamed into place at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import nullcontext
from pathlib import Path

from gdws_export.errors import InvalidInputError


def check_destination(path: Path, force: bool, what: str, option: str) -> None:
    """Refuse to overwrite an existing `path` without `force`.

    Raises:
        InvalidInputError: `path` exists (and `force` is off), or is a file.
    """
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise InvalidInputError(f"{what} {path} is a file; choose another {option}")
    if path.exists() and not force:
        raise InvalidInputError(
            f"{what} {path} already exists; pass --force to replace it, or choose another {option}"
        )


class Staging:
    """A temporary directory beside `target` that becomes `target` on `commit()`.

    Used as a context manager: on leaving without a commit (an error, Ctrl-C), the temporary
    directory and any parent directories it created are removed, so nothing that looks like a
    result is left. `commit()` replaces an existing `target` only when `force` was given.

    Example:
        >>> with Staging(Path("out")) as staged:                        # doctest: +SKIP
        ...     (staged.path / "report.json").write_text("{}")
        ...     staged.commit()
    """

    def __init__(self, target: Path, force: bool = False) -> None:
        self.target = Path(target)
        self.force = force
        self.path: Path | None = None
        self._created: list[Path] = []
        self._committed = False

    @classmethod
    def optional(cls, target: Path | None, force: bool = False):
        """A Staging for `target`, or a context yielding None when there is no target."""
        return nullcontext() if target is None else cls(target, force)

    def __enter__(self) -> Staging:
        parent = self.target.absolute().parent
        try:
            missing = [p for p in (parent, *parent.parents) if not p.exists()]
            parent.mkdir(parents=True, exist_ok=True)
            self._created = missing  # deepest first, the order to remove them in
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=parent))
        except OSError as exc:
            self._remove_created()
            raise InvalidInputError(
                f"cannot write {self.target}: {exc.strerror or exc} ({exc.filename or parent}); "
                "choose a writable location with -o/--output"
            ) from exc
        return self

    def commit(self) -> None:
        """Rename the staged directory to the target (replacing it under `force`)."""
        _usual_permissions(self.path)
        old = None
        if self.target.exists():
            if not self.force:
                raise InvalidInputError(
                    f"{self.target} appeared while exporting; pass --force to replace it"
                )
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.path, self.target)
        self._committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        if not self._committed:
            if self.path is not None:
                shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()

    def _remove_created(self) -> None:
        for directory in self._created:
            try:
                directory.rmdir()
            except OSError:
                break  # not empty or not ours any more: leave it and its parents


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
