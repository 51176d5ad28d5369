"""Entry point of the Docker images: `docker run ... IMAGE COMMAND [ARGS]`.

Commands:
    bench MODEL [ARGS]   export -> engine build -> speed and accuracy benchmark, as
                         `gdws-export sweep MODEL ARGS`, writing the reports into /out
    export MODEL [ARGS]  `gdws-export MODEL ARGS`, writing into /out
    facts                print the device facts as JSON and save them to /out/machine.json
    help                 this text
    anything else        run as a program in the image (bash, python3, trtexec, nvidia-smi)

A thin layer: it checks what a run needs before starting it (a writable /out, the model file,
TensorRT and a visible GPU for `--target trt`) and says how to fix what is missing in one line,
points outputs and caches into /out (so TensorRT timing caches and compiled torch kernels
survive the container), records the device facts, then replaces itself with `gdws-export`.
Everything else is gdws-export's job. Exit codes are those of `gdws_export.errors`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gdws_export.errors import GDWSExportError, InvalidInputError, MissingDependencyError

OUT_ENV = "GDWS_OUT"  # where outputs go; the image sets nothing, so /out
DEFAULT_OUT = "/out"
TARGETS = ("trt", "ort", "torch")
DEFAULT_TARGET = "trt"
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".pt2", ".onnx", ".safetensors")
OUTPUT_FLAGS = ("-o", "--output", "--output-dir")
MODELS_DIR_ENV = "GDWS_EXPORT_MODELS"  # gdws_export.models.checkpoint's checkpoint folder
PROG = "gdws-container"
USAGE = """\
usage: docker run [--gpus all | --runtime nvidia] -v "$PWD/out:/out" IMAGE COMMAND [ARGS]

commands:
  bench MODEL [ARGS]   export -> engine build -> speed and accuracy benchmark
                       (gdws-export sweep MODEL ARGS); reports in /out
  export MODEL [ARGS]  gdws-export MODEL ARGS; outputs in /out
  facts                print the device facts as JSON, save them to /out/machine.json
  help                 this text
  PROGRAM [ARGS]       run a program of the image (bash, python3, trtexec, nvidia-smi)

bench and export default to --target trt; --target torch or ort run without TensorRT.
A model file is looked for as given, then in /out; so are bare checkpoint names."""

GPU_HINT = (
    "run the container with --gpus all (x86) or --runtime nvidia (Jetson), or benchmark on "
    "the CPU with --target ort or --target torch"
)


class Probe:
    """What the container can see: TensorRT, a GPU, programs. Tests replace it."""

    def tensorrt_version(self) -> str | None:
        """TensorRT's version, or None when `import tensorrt` fails."""
        try:
            import tensorrt
        except Exception:  # ImportError, or a broken install failing to load its libraries
            return None
        return str(tensorrt.__version__)

    def gpu_name(self) -> str | None:
        """Name of CUDA device 0, or None when torch sees no GPU."""
        try:
            import torch

            return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        except Exception:
            return None

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def machine_facts(self) -> tuple[dict, str]:
        """(facts as a dict, one-line summary), from the harness's collector."""
        from gdws_export.harness.machine import machine_info

        info = machine_info()
        return info.to_dict(), info.summary()


@dataclass
class Plan:
    """What `main` does: run `argv` with `env` added, after printing `notes`."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def make_plan(args: list[str], environ: dict[str, str], probe: Probe) -> Plan | None:
    """Turn the container's arguments into the command to run; None means "nothing to run".

    Raises:
        InvalidInputError: bad arguments, a missing model file, an unwritable output folder.
        MissingDependencyError: TensorRT or the GPU that the run needs is not there.
    """
    if not args or args[0] in ("help", "-h", "--help"):
        print(USAGE)
        return None
    command, rest = args[0], args[1:]
    if command == "facts":
        print(f"{PROG}: " + _facts(_out_dir(environ, need_writable=False), probe, verbose=True),
              file=sys.stderr)  # fmt: skip
        return None
    if command not in ("bench", "export"):
        return Plan(argv=args)  # a program in the image; main() reports one that isn't there
    if not rest or rest[0].startswith("-"):
        raise InvalidInputError(
            f"{command} needs a model first: {command} MODEL [options], e.g. "
            f"{command} vgg16.pt --target trt (see `help`)"
        )
    out = _out_dir(environ, need_writable=True)
    plan = Plan(argv=[])
    if not os.path.ismount(out) and environ.get(OUT_ENV) is None:
        plan.notes.append(
            f"{out} is not a mounted volume, so the reports vanish with the container: "
            f'add -v "$PWD/out:{out}"'
        )
    model = _resolve_model(rest[0], out)
    options = rest[1:]
    target = _option(options, "--target")
    if target is None:
        target = DEFAULT_TARGET
        options += ["--target", target]
    if target not in TARGETS:
        raise InvalidInputError(f"unknown --target {target!r}; choose one of {TARGETS}")
    gpu = probe.gpu_name()
    if target == "trt":
        options += _tensorrt_options(options, out, gpu, probe.tensorrt_version())
    elif gpu is None and target == "torch":
        plan.notes.append("no GPU is visible: the torch target runs on the CPU")
    if not any(_option(options, flag) is not None for flag in OUTPUT_FLAGS):
        # A folder of its own inside /out: gdws-export refuses an existing output folder,
        # and /out (the mount point, holding caches and machine.json) is not gdws-export's
        # to replace (--force replaces only folders gdws-export wrote).
        stem = Path(model).name.split(".")[0]
        run_dir = out / (f"{stem}-sweep-{target}" if command == "bench" else f"{stem}-{target}")
        options += ["--output-dir" if command == "bench" else "-o", str(run_dir)]
    defaults = {
        "TORCHINDUCTOR_CACHE_DIR": out / "caches" / "torchinductor",
        "TRITON_CACHE_DIR": out / "caches" / "triton",
        MODELS_DIR_ENV: out,  # bare checkpoint names are looked up in the mounted folder
    }
    plan.env.update({k: str(v) for k, v in defaults.items() if k not in environ})
    if command == "bench":
        try:
            plan.notes.append(_facts(out, probe, verbose=False))
        except MissingDependencyError as exc:  # the sweep's report records them too
            plan.notes.append(f"device facts not saved: {exc}")
    program = probe.which("gdws-export")
    if program is None:
        raise MissingDependencyError(
            "gdws-export is not on PATH: install the package in the image (pip install .)"
        )
    plan.argv = [program, *(["sweep"] if command == "bench" else []), model, *options]
    plan.notes.append("running: " + shlex.join(plan.argv))
    return plan


def _tensorrt_options(
    options: list[str], out: Path, gpu: str | None, trt_version: str | None
) -> list[str]:
    """What --target trt adds to the options (a timing cache in `out` per GPU and TensorRT
    version, unless one is given), after checking TensorRT and a GPU are there."""
    if trt_version is None:
        raise MissingDependencyError(
            "--target trt needs TensorRT and `import tensorrt` fails in this image; use the "
            "image built from the Dockerfile (TensorRT base), or --target torch / ort"
        )
    if gpu is None:
        raise MissingDependencyError(f"--target trt needs a GPU, none is visible: {GPU_HINT}")
    if _option(options, "--timing-cache") is not None:
        return []
    cache = out / "timing-caches" / f"{_slug(gpu)}-trt{trt_version}.cache"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a file of that name in the mounted folder
        raise InvalidInputError(
            f"cannot create the timing cache folder {cache.parent}: {exc.strerror}; "
            "move what is there, or pass --timing-cache FILE"
        ) from exc
    return ["--timing-cache", str(cache)]


def main(argv: list[str] | None = None, *, probe: Probe | None = None) -> int:
    """Run the container command; returns an exit code only when nothing was exec'd."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        plan = make_plan(args, dict(os.environ), probe or Probe())
    except GDWSExportError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if plan is None:
        return 0
    for note in plan.notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(plan.argv[0], plan.argv, {**os.environ, **plan.env})
    except FileNotFoundError:
        print(
            f"{PROG}: error: unknown command {plan.argv[0]!r}; use bench, export, facts, help, "
            "or a program in the image",
            file=sys.stderr,
        )
        return 127
    except PermissionError:
        print(f"{PROG}: error: {plan.argv[0]!r} is not executable", file=sys.stderr)
        return 126
    return 0  # not reached: exec replaced this process


def _out_dir(environ: dict[str, str], *, need_writable: bool) -> Path:
    out = Path(environ.get(OUT_ENV) or DEFAULT_OUT)
    if not need_writable:
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create the output folder {out}: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise InvalidInputError(
            f"{out} is not writable by uid {os.getuid()}: run with "
            f'--user "$(id -u):$(id -g)" so the container writes as the owner of the mounted folder'
        )
    return out


def _resolve_model(model: str, out: Path) -> str:
    """A model file's absolute path (looked for as given, then in the output folder), or a
    registry name unchanged."""
    if Path(model).suffix not in MODEL_SUFFIXES and "/" not in model:
        return model  # a registry name, for gdws-export to look up
    for candidate in (Path(model), out / model):
        if candidate.is_file():
            return str(candidate.resolve())
    raise InvalidInputError(
        f"model file {model} is not in the container (looked in {Path.cwd()} and {out}): put it "
        f'in the mounted output folder, or mount its folder (-v "$PWD/models:/models:ro") and '
        "pass /models/NAME"
    )


def _option(options: list[str], flag: str) -> str | None:
    """The value of `flag` (`--flag value` or `--flag=value`) in `options`, else None."""
    for index, item in enumerate(options):
        if item == flag:
            if index + 1 >= len(options):
                raise InvalidInputError(f"{flag} needs a value")
            return options[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def _slug(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'nvidia-geforce-rtx-4090' (a file-name-safe device name)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def _facts(out: Path, probe: Probe, *, verbose: bool) -> str:
    """Collect the device facts, save them to `out`/machine.json when it is writable.

    Returns a one-line note; with `verbose`, also prints the facts as JSON to stdout.
    """
    try:
        facts, summary = probe.machine_facts()
    except ImportError as exc:
        raise MissingDependencyError(
            f"device facts need gdws_export.harness.machine, which this install lacks ({exc}); "
            "rebuild the image from a current checkout"
        ) from exc
    if verbose:
        print(json.dumps(facts, indent=2))
    if out.is_dir() and os.access(out, os.W_OK):
        from gdws_export._files import atomic_write_text

        atomic_write_text(out / "machine.json", json.dumps(facts, indent=2) + "\n")
        return f"machine: {summary} (saved to {out / 'machine.json'})"
    return f"machine: {summary}"


if __name__ == "__main__":
    sys.exit(main())
