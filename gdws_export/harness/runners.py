"""Open a runner from a file, picking the runtime by the file's kind (for the bench command)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gdws_export.errors import InvalidInputError
from gdws_export.runtimes.base import Runner

ENGINE_SUFFIXES = (".engine", ".plan")


def load_runner(path: str | os.PathLike, *, threads: int | None = None) -> Runner:
    """A runner (not yet activated) for an ONNX file, ONNX Runtime settings or TensorRT engine.

    Args:
        path: `.onnx` (ONNX Runtime), `.json` (ONNX Runtime settings saved by
            `runtimes.build`, e.g. `model.fp32.ort.json`), `.engine` / `.plan` (TensorRT), or
            `.torch.json` (the PyTorch target's settings).
        threads: CPU intra-op threads (ONNX Runtime, the torch runner on the CPU); for a
            settings file, overrides its threads. None keeps the settings' value (or lets
            ONNX Runtime decide for a bare .onnx).

    Raises:
        InvalidInputError: a missing, corrupt or unknown kind of file, a settings file with
            wrong fields, or threads for TensorRT.

    Example:
        >>> runner = load_runner("out/vgg.fp16.engine")  # doctest: +SKIP
    """
    from gdws_export.runtimes.onnx_files import load_onnx
    from gdws_export.runtimes.onnxruntime import OrtRunner, OrtSettings

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"model file {path} does not exist")
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise InvalidInputError(f"threads must be an integer >= 1, got {threads!r}")
    name = path.name.lower()
    if name.endswith(ENGINE_SUFFIXES):
        if threads is not None:
            raise InvalidInputError(f"threads apply to ONNX Runtime only, not to engine {path}")
        from gdws_export.runtimes.tensorrt_runner import TrtRunner

        return TrtRunner(path)
    if name.endswith(tuple(f"{suffix}.json" for suffix in ENGINE_SUFFIXES)):
        raise InvalidInputError(
            f"{path} describes a TensorRT engine; pass the engine itself ({path.name[:-5]})"
        )
    if name.endswith(".pt2"):
        # Loading a .pt2 can unpickle code; the settings file pins the program by its hash.
        raise InvalidInputError(
            f"{path}: pass the .torch.json settings written beside it by the build, not the "
            ".pt2 program itself"
        )
    if name.endswith(".torch.json"):
        from gdws_export.runtimes.torch_runner import TorchRunner

        runner = TorchRunner.from_settings(path)
        if threads is not None:
            if runner.device != "cpu":
                raise InvalidInputError(f"threads apply to CPU runners only, not to {path}")
            runner.threads = threads
        return runner
    if name.endswith(".onnx"):
        load_onnx(path)  # a corrupt file: one line naming it, before ONNX Runtime sees it
        return OrtRunner(path, threads=threads)
    if name.endswith(".json"):
        settings = OrtSettings.load(path)
        if threads is not None:
            settings.threads = threads
        return OrtRunner.from_settings(settings)
    raise InvalidInputError(
        f"{path}: unknown model file type; pass an .onnx file, ONNX Runtime settings (.json) "
        f"or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})"
    )


def load_runners_alike(
    paths: Sequence[str | os.PathLike], *, threads: int | None = None
) -> list[Runner]:
    """Runners for files timed against each other, every CPU runner at the same thread count.

    A ratio of two runners is only a speed-up of the models when both use the same threads:
    a settings file saved by an export records one thread, a bare `.onnx` would let ONNX
    Runtime take every core. Without `threads`, the count the settings files record applies to
    all (None, ONNX Runtime's default, when none records one).

    Raises:
        InvalidInputError: as `load_runner`, or settings files recording different counts
            without `threads` to settle them.
    """
    runners = [load_runner(path, threads=threads) for path in paths]
    cpu = [r for r in runners if hasattr(r, "threads") and getattr(r, "device", "cpu") == "cpu"]
    if threads is None:
        recorded = {r.threads for r in cpu if r.threads is not None}
        if len(recorded) > 1:
            counts = ", ".join(
                f"{Path(p).name}: {r.threads}" for p, r in zip(paths, runners, strict=True)
            )
            raise InvalidInputError(
                f"the files record different thread counts ({counts}); pass --threads N to time "
                "them alike"
            )
        threads = recorded.pop() if recorded else None
    for runner in cpu:
        runner.threads = threads
    return runners
