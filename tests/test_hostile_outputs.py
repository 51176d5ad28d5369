"""Hostile and broken outputs (issue 27): what --force may replace, Triton model names, output
paths that are files or missing folders, SIGTERM and the staging folders of dead runs.

Each refused case checks the exit code, a one-line stderr (no traceback, no ANSI escapes) and
that no file outside the output changed (a tree of mtimes and SHA-256s before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gdws_export.cli import EXIT_TERMINATED, main
from gdws_export.pipeline.outputs import MARKER, read_marker, write_marker
from tests import _model_files as files

FAST = ["--exporter", "legacy", "--lowering", "gather"]
REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return files.checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture
def place(tmp_path, ckpt, monkeypatch) -> Path:
    """tmp_path/cwd (the working directory, holding a file), tmp_path/data/models/lenet.pt
    (the input, beside another file) and tmp_path/repo (a Triton repository with a model)."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "cwd" / "notes.txt").write_text("mine")
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    shutil.copyfile(ckpt, models / "lenet.pt")
    (models / "README.txt").write_text("mine too")
    (tmp_path / "repo" / "other" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "other" / "config.pbtxt").write_text('name: "other"\n')
    (tmp_path / "repo" / "other" / "1" / "model.onnx").write_bytes(b"not ours")
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path


def _model(place: Path) -> str:
    return str(place / "data" / "models" / "lenet.pt")


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every path under `root` (but `skip`) -> (mtime_ns, sha256) for files, "dir" for folders."""
    tree = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(folder, name)
            if skip is not None and (path == skip or skip in path.parents):
                continue
            if path.is_file() and not path.is_symlink():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                tree[str(path.relative_to(root))] = (path.stat().st_mtime_ns, digest)
            else:
                tree[str(path.relative_to(root))] = "dir" if path.is_dir() else "link"
    return tree


def _refused(capsys, place: Path, argv: list[str], code: int, *phrases: str) -> str:
    """Run main(argv): `code`, one plain stderr line naming `phrases`, nothing changed."""
    before = _tree(place)
    assert main(argv) == code
    err = capsys.readouterr().err
    _one_plain_line(err, *phrases)
    assert _tree(place) == before
    return err


def _one_plain_line(err: str, *phrases: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gdws-export: error: "), err
    assert "Traceback" not in err and "\x1b" not in err, err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


# --- what --force may replace ------------------------------------------------------------


def test_force_never_replaces_the_input_models_folder(capsys, place):
    models = place / "data" / "models"
    _refused(capsys, place, [_model(place), "-o", str(models), "--force", *FAST], 2,
             f"holds {models / 'lenet.pt'}", "may not be replaced")  # fmt: skip


@pytest.mark.parametrize("parent", ["data", "."])
def test_force_never_replaces_a_parent_of_the_input(capsys, place, parent):
    target = place / parent
    _refused(capsys, place, [_model(place), "-o", str(target), "--force", *FAST], 2,
             "holds", "may not be replaced")  # fmt: skip


def test_force_never_replaces_the_folder_through_a_symlink(capsys, place):
    (place / "link").symlink_to(place / "data" / "models")
    _refused(capsys, place, [_model(place), "-o", str(place / "link"), "--force", *FAST], 2,
             "may not be replaced")  # fmt: skip


@pytest.mark.parametrize(("output", "phrase"), [(".", "is the current directory"),
                                                ("..", "holds the current directory"),
                                                ("sub/..", "is the current directory")])  # fmt: skip
@pytest.mark.parametrize("force", [True, False])
def test_the_current_directory_is_never_replaced(capsys, place, output, phrase, force):
    (place / "cwd" / "sub").mkdir()
    _refused(capsys, place, [_model(place), "-o", output, *FAST, *(["--force"] * force)], 2,
             phrase)  # fmt: skip


def test_a_marked_folder_holding_the_input_is_never_replaced(capsys, place):
    earlier = place / "earlier-export"
    earlier.mkdir()
    write_marker(earlier, "export")
    shutil.copyfile(_model(place), earlier / "lenet.pt")  # the user keeps the model there
    argv = [str(earlier / "lenet.pt"), "-o", str(earlier), "--force", *FAST]
    _refused(capsys, place, argv, 2, f"holds {earlier / 'lenet.pt'}")


def test_force_refuses_a_symlink_to_a_folder_it_wrote(capsys, place):
    earlier = place / "earlier-export"
    earlier.mkdir()
    write_marker(earlier, "export")
    (place / "link").symlink_to(earlier)
    _refused(capsys, place, [_model(place), "-o", str(place / "link"), "--force", *FAST], 2,
             "is a symbolic link")  # fmt: skip


def test_force_refuses_a_folder_gdws_export_did_not_write(capsys, place):
    foreign = place / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    _refused(capsys, place, [_model(place), "-o", str(foreign), "--force", *FAST], 2,
             f"{foreign} was not written by gdws-export", MARKER)  # fmt: skip


def test_a_forged_marker_of_another_tool_is_not_gdws_exports(capsys, place):
    foreign = place / "photos"
    foreign.mkdir()
    (foreign / MARKER).write_text('{"tool": "something-else"}')
    _refused(capsys, place, [_model(place), "-o", str(foreign), "--force", *FAST], 2,
             "was not written by gdws-export")  # fmt: skip


def test_output_naming_a_file(capsys, place):
    notes = place / "cwd" / "notes.txt"
    _refused(capsys, place, [_model(place), "-o", str(notes), "--force", *FAST], 2, "is a file")


@pytest.mark.parametrize("swap", [True, False], ids=["one-step-swap", "two-renames"])
def test_force_replaces_a_folder_a_previous_run_wrote(capsys, place, monkeypatch, swap):
    if not swap:  # systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr("gdws_export.pipeline.outputs._exchange", lambda a, b: False)
    out, repo = place / "out", place / "repo"
    argv = [_model(place), "-o", str(out), "--triton-repo", str(repo), "-q", *FAST]
    assert main(argv) == 0
    marker = read_marker(out)
    assert marker["tool"] == "gdws-export" and marker["written_by"] == "gdws-export export"
    assert read_marker(repo / "lenet") is not None
    (out / "added-later.txt").write_text("x")
    (repo / "lenet" / "added-later.txt").write_text("x")
    other = _tree(place, skip=out)
    _refused(capsys, place, argv, 2, "already exists", "--force")  # no --force: untouched
    assert main([*argv, "--force"]) == 0
    assert (out / "report.json").is_file() and not (out / "added-later.txt").exists()
    assert not (repo / "lenet" / "added-later.txt").exists()
    assert (repo / "lenet" / "config.pbtxt").is_file()
    after = _tree(place, skip=out)
    assert {k: v for k, v in after.items() if not k.startswith("repo/lenet")} == {
        k: v for k, v in other.items() if not k.startswith("repo/lenet")
    }  # the other model of the repository, the input and the cwd are as they were
    assert not [p for p in place.rglob("*") if ".partial-" in p.name or ".old-" in p.name]


def test_force_refuses_a_triton_model_folder_it_did_not_write(capsys, place):
    argv = [_model(place), "-o", str(place / "out"), "--triton-repo", str(place / "repo"),
            "--triton-name", "other", "--force", *FAST]  # fmt: skip
    _refused(capsys, place, argv, 2, "Triton model directory", "was not written by gdws-export")


def test_a_triton_model_appearing_mid_run_commits_neither_folder(capsys, place, monkeypatch):
    import gdws_export.pipeline.run as run

    build = run.ship

    def build_while_another_run_writes_the_model(*args, **kwargs):
        build(*args, **kwargs)
        (place / "repo" / "lenet").mkdir()  # another run, or a person, got there first

    monkeypatch.setattr(run, "ship", build_while_another_run_writes_the_model)
    argv = [_model(place), "-o", str(place / "out"), "--triton-repo", str(place / "repo"), *FAST]
    assert main(argv) == 2
    _one_plain_line(capsys.readouterr().err, "lenet appeared while exporting")
    assert not (place / "out").exists()  # no output whose report claims a Triton model
    assert not [p for p in place.rglob("*") if ".partial-" in p.name]


# --- Triton model names ------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "a/b", "name\n", "na me", "\x1b[31m", "", "a\tb"])
@pytest.mark.parametrize("force", [False, True])
def test_bad_triton_names(capsys, place, name, force):
    argv = [_model(place), "-o", str(place / "out"), "--triton-repo", str(place / "repo"),
            f"--triton-name={name}", *FAST, *(["--force"] * force)]  # fmt: skip
    _refused(capsys, place, argv, 2, "is not a Triton model name")


def test_a_model_file_named_dots_gets_a_usable_default_name(place):
    from gdws_export.pipeline import ExportConfig

    config = ExportConfig("...pt", triton_repo=str(place / "repo")).resolved()
    assert config.triton_name == "model"


# --- output paths that are files or missing folders --------------------------------------


def test_output_in_a_missing_folder_creates_it(capsys, place):
    out = place / "new" / "deeper" / "out"
    assert main([_model(place), "-o", str(out), "-q", *FAST]) == 0
    assert (out / "report.json").is_file() and (out / MARKER).is_file()


def test_sweep_output_dir_naming_a_file(capsys, place):
    argv = ["sweep", _model(place), "--betas", "0.1", "--data", "cifar10", "--output-dir",
            str(place / "cwd" / "notes.txt")]  # fmt: skip
    _refused(capsys, place, argv, 2, "--output-dir", "is a file")


@pytest.mark.parametrize("option", ["--output", "--markdown"])
def test_bench_never_writes_over_its_input_or_a_folder(capsys, place, option):
    model = place / "data" / "models" / "model.onnx"
    model.write_bytes(b"an onnx model")
    _refused(capsys, place, ["bench", str(model), option, str(model)], 2, "is an input")
    _refused(capsys, place, ["bench", str(model), option, str(place / "cwd")], 2, "is a folder")


# --- SIGTERM and the staging folders of dead runs ----------------------------------------


def _staging(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if ".partial-" in p.name]


def _export_until_staged(place: Path, out: Path) -> subprocess.Popen:
    """A `python -m gdws_export` export, returned once its staging folder exists."""
    # The default (dynamo) exporter: seconds of work after the staging folder appears.
    child = subprocess.Popen(
        [sys.executable, "-m", "gdws_export", _model(place), "-o", str(out)],
        cwd=place / "cwd", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not _staging(place) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _staging(place), "the export never staged its output"
    return child


def test_sigterm_mid_run_cleans_up_and_the_rerun_works(capsys, place):
    out = place / "out"
    child = _export_until_staged(place, out)
    child.send_signal(signal.SIGTERM)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == EXIT_TERMINATED == 143, stderr
    _one_plain_line(stderr, "terminated (SIGTERM)", "no output was left behind")
    assert not out.exists() and _staging(place) == []
    assert main([_model(place), "-o", str(out), "-q", *FAST]) == 0
    assert (out / "report.json").is_file() and _staging(place) == []


def test_sigkill_leaves_staging_that_the_next_run_removes(capsys, place):
    out = place / "out"
    child = _export_until_staged(place, out)
    child.kill()
    child.communicate(timeout=120)
    (left,) = _staging(place)  # SIGKILL cannot be handled: the folder stays
    assert not out.exists() and f".partial-{child.pid}-" in left.name
    contents = sorted(p.name for p in left.iterdir())
    assert main([_model(place), "-o", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert f"removed {left.name}, left by an interrupted run" in err, contents
    assert _staging(place) == [] and (out / "report.json").is_file()


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_staging_of_a_dead_run_is_removed_by_the_next_run(capsys, place):
    out = place / "out"
    dead = place / f".out.partial-{_dead_pid()}-abc123"
    dead.mkdir()
    write_marker(dead, "export")
    (dead / "original.onnx").write_bytes(b"a complete-looking file")
    live = place / f".out.partial-{os.getpid()}-live1234"  # this process: alive
    live.mkdir()
    write_marker(live, "export")
    unmarked = place / ".out.partial-1-notours"  # files but no marker: not ours to judge
    unmarked.mkdir()
    (unmarked / "data.bin").write_bytes(b"someone's")
    just_begun = place / f".out.partial-{_dead_pid()}-begun123"  # killed before its marker
    just_begun.mkdir()
    (just_begun / f".{MARKER}.x1y2.tmp").write_text('{"tool": "gdws')  # temporary_path's name
    assert main([_model(place), "-o", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert not dead.exists() and not just_begun.exists()
    assert live.is_dir() and (unmarked / "data.bin").is_file()
    assert f"removed {dead.name}, left by an interrupted run" in err
    assert f"left {unmarked}" in err
    report = json.loads((out / "report.json").read_text())
    assert any(dead.name in warning for warning in report["report"]["warnings"])


# --- the container entry point writes into /out ------------------------------------------


def test_container_timing_cache_folder_blocked_by_a_file(tmp_path, capsys, monkeypatch):
    from gdws_export.cli import container
    from tests.test_cli_container import FakeProbe

    out = tmp_path / "out"
    out.mkdir()
    (out / "timing-caches").write_text("a file where the cache folder goes")
    (out / "vgg16.pt").write_bytes(b"model")
    before = _tree(tmp_path)
    monkeypatch.setenv(container.OUT_ENV, str(out))
    code = container.main(["export", "vgg16.pt", "--target", "trt"], probe=FakeProbe())
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err
    assert "cannot create the timing cache folder" in err
    assert _tree(tmp_path) == before


def test_sigterm_between_the_renames_of_a_commit_waits_for_them(tmp_path, monkeypatch):
    from gdws_export.cli import Terminated, _sigterm_raises
    from gdws_export.pipeline import outputs

    target = tmp_path / "out"
    target.mkdir()
    write_marker(target, "export")
    (target / "old.txt").write_text("old")
    real_replace = os.replace

    def replace_and_get_killed(src, dst):
        real_replace(src, dst)
        os.kill(os.getpid(), signal.SIGTERM)  # right after the first rename
        time.sleep(0.05)  # where the handler would run

    monkeypatch.setattr(outputs, "_exchange", lambda a, b: False)  # the two-rename path
    with pytest.raises(Terminated), _sigterm_raises():
        with outputs.Staging(target, force=True) as staged:
            (staged.path / "new.txt").write_text("new")
            monkeypatch.setattr(outputs.os, "replace", replace_and_get_killed)
            staged.commit()
    monkeypatch.setattr(outputs.os, "replace", real_replace)
    assert sorted(p.name for p in target.iterdir()) == [MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no .old- or .partial- left
