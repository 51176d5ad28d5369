"""The torch target's files: a torch.export program (`.pt2`) and its runner settings (`.json`).

The torch target has no ONNX engine. What `build(..., target="torch")` takes and writes:

- `<stem>.pt2`: the model as a `torch.export` program (graph + weights, batch axis dynamic),
  made by `export_program`. It loads without the model's Python class and is
  precision-independent; `build` copies it into the output folder when that is elsewhere.
- `<stem>.<precision>.torch.json`: `TorchSettings`, everything that fixes a benchmark of it:
  device, precision, torch.compile backend, CUDA graphs, CPU threads, the program's SHA-256 and
  the torch version. `TorchRunner.from_settings` reloads the pair.

Precision is applied when the runner loads the program (weights cast to float16 on the GPU),
not baked into the file, so one `.pt2` serves every setting.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from gdws_export._files import atomic_output, file_sha256
from gdws_export.errors import InvalidInputError, UnsupportedModelError, plain_line
from gdws_export.loading.gate import check_program_archive
from gdws_export.runtimes.base import SettingsFile

DEVICES = ("cpu", "cuda")
TORCH_PRECISIONS = ("fp32", "fp16")
PROGRAM_SUFFIX = ".pt2"


@dataclass
class TorchSettings(SettingsFile):
    """The program file and the settings a `TorchRunner` runs it with.

    Saved as JSON; `program` is stored relative to the JSON file so the pair can be moved
    together. `compile` is None (eager) or a torch.compile backend name ("inductor").
    """

    path_field: ClassVar[str] = "program"
    file_kind: ClassVar[str] = "torch runner settings file"

    program: str
    device: str = "cpu"
    precision: str = "fp32"
    compile: str | None = None
    cuda_graphs: bool = False
    threads: int | None = None
    program_sha256: str = ""
    torch_version: str = ""


def export_program(
    model,
    example,
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
) -> Path:
    """Save `model` (one image batch in, one logits tensor out) as a torch.export program.

    Args:
        model: an `nn.Module` (a GDWS model); exported in eval mode on the CPU, its mode
            restored afterwards.
        example: an input batch (tensor), or its (C, H, W) shape for a random one.
        path: the `.pt2` file to write (atomically).
        dynamic_batch: make the batch axis symbolic; False fixes it to `example`'s batch. A
            model made from a program with a bounded batch (`Dim("batch", max=1024)`) keeps
            those bounds (`loading.programs.batch_range`).

    Returns:
        The path written.

    Example:
        >>> export_program(gdws_model, (3, 32, 32), "vgg16.gdws.pt2")  # doctest: +SKIP
    """
    import torch

    path = Path(path)
    if path.suffix != PROGRAM_SUFFIX:
        raise InvalidInputError(f"a torch.export program is saved as {PROGRAM_SUFFIX}, got {path}")
    from gdws_export.loading.programs import batch_range

    if not isinstance(example, torch.Tensor):
        example = torch.rand(2, *tuple(example))
    dynamic_shapes = None
    if dynamic_batch:
        low, high = batch_range(model)
        least = max(2, low)  # torch.export specializes sizes 0 and 1
        if len(example) < least or (high is not None and len(example) > high):
            size = least if high is None else min(least, high)
            example = example[torch.arange(size) % len(example)]
        batch = torch.export.Dim("batch", min=low or None, max=high)
        dynamic_shapes = ({0: batch},)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedModelError(
            f"torch.export failed on {type(model).__name__} with an input of shape "
            f"{tuple(example.shape)}: {first}"
        ) from exc
    finally:
        model.train(was_training)
    with atomic_output(path) as tmp:
        torch.export.save(program, tmp)
    return path


def load_program(path: str | os.PathLike):
    """Load a `.pt2` program (`torch.export.ExportedProgram`), with a clear error when it can't."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(
            f"torch.export program {path} does not exist; make it with export_program()"
        )
    # torch.export.load logs a long traceback before failing on a non-archive: check first.
    if not zipfile.is_zipfile(path):
        raise InvalidInputError(
            f"{path} is not a torch.export program (.pt2 archive); make it with export_program()"
        )
    # The same gate as a model file: a sha256 in a sidecar beside it pins nothing against
    # someone who writes both, and gdws-export never writes a program that needs trust.
    check_program_archive(
        path, trust_pickle=False,
        advice="gdws-export never writes such programs: export the model again",
    )  # fmt: skip
    try:
        return torch.export.load(path)
    except Exception as exc:
        raise InvalidInputError(
            f"{path} could not be loaded as a torch.export program ({type(exc).__name__}: "
            f"{plain_line(str(exc))}); re-export it with this torch version ({torch.__version__})"
        ) from exc


def check_torch_settings(
    *, device: str, precision: str, compile: bool | str | None, cuda_graphs: bool, threads
) -> str | None:
    """Validate runner settings; returns the torch.compile backend (None for eager).

    Raises:
        InvalidInputError: a setting that does not exist or does not apply to `device`.
    """
    if device not in DEVICES:
        raise InvalidInputError(f"unknown device {device!r}; choose one of {DEVICES}")
    if precision not in TORCH_PRECISIONS:
        raise InvalidInputError(
            f"precision {precision!r} is not available for the torch runner; choose one of "
            f"{TORCH_PRECISIONS} (int8 needs target 'ort' or 'trt')"
        )
    if precision == "fp16" and device == "cpu":
        raise InvalidInputError(
            "fp16 on the CPU is not offered by the torch runner: PyTorch runs float16 convs on "
            "the CPU slowly or not at all; use precision='fp32' or device='cuda'"
        )
    if cuda_graphs and device != "cuda":
        raise InvalidInputError("cuda_graphs=True needs device='cuda'")
    if threads is not None and (device != "cpu" or threads < 1):
        raise InvalidInputError(f"threads applies to device='cpu' and must be >= 1, got {threads}")
    if compile is None or compile is False:
        return None
    if compile is True:
        return "inductor"
    if isinstance(compile, str) and compile:
        return compile
    raise InvalidInputError(f"compile must be a bool or a torch.compile backend name: {compile!r}")


def build_torch(
    program_path: str | os.PathLike,
    out_dir: Path,
    *,
    precision: str,
    device: str,
    compile: bool | str | None,
    cuda_graphs: bool,
    threads: int | None,
) -> tuple[Path, Path, dict[str, str]]:
    """`build(target="torch")`: write the settings beside the program (copied into `out_dir`);
    `build` then checks that a `TorchRunner` loads them.

    Returns:
        (program path, settings path, versions).
    """
    import torch

    backend = check_torch_settings(
        device=device, precision=precision, compile=compile, cuda_graphs=cuda_graphs,
        threads=threads,
    )  # fmt: skip
    source = Path(program_path)
    if source.suffix == ".onnx":
        raise InvalidInputError(
            f"target 'torch' runs a torch.export program, not ONNX ({source}); make one with "
            "gdws_export.runtimes.torch_program.export_program(model, example, 'model.pt2')"
        )
    load_program(source)  # fail here, with its message, rather than in the runner
    program = out_dir / source.name
    if program.resolve() != source.resolve():
        with atomic_output(program) as tmp:
            shutil.copyfile(source, tmp)
    settings_path = out_dir / f"{source.stem}.{precision}.torch.json"
    TorchSettings(
        program=os.fspath(program),
        device=device,
        precision=precision,
        compile=backend,
        cuda_graphs=cuda_graphs,
        threads=threads,
        program_sha256=file_sha256(program),
        torch_version=torch.__version__,
    ).save(settings_path)
    versions = {"torch": torch.__version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    return program, settings_path, versions
