"""Tiny model files of every kind the loader reads, made on the fly for loading/CLI tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gdws_export.models import create_model, save_checkpoint

SHAPE = (1, 16, 16)  # (C, H, W): small enough for fast exports, big enough for two pools


def lenet(**kwargs) -> nn.Module:
    """A width-4 LeNet on 1x16x16 images with random weights (seeded)."""
    torch.manual_seed(kwargs.pop("seed", 0))
    return create_model("lenet", in_channels=1, input_size=16, width=4, **kwargs)


def checkpoint(folder: Path, name: str = "lenet.pt", **kwargs) -> Path:
    """A gdws-export checkpoint (architecture recorded in the file)."""
    return save_checkpoint(lenet(**kwargs), folder / name)


def state_dict_file(folder: Path, wrap_key: str | None = None) -> Path:
    """A bare state_dict, or one nested under `wrap_key` as training scripts save it."""
    state = lenet().state_dict()
    path = folder / "weights.pt"
    torch.save({wrap_key: state, "epoch": 3} if wrap_key else state, path)
    return path


def torchscript_file(folder: Path, how: str = "script") -> Path:
    model = lenet(mean=[0.5], std=[0.25])
    scripted = torch.jit.script(model) if how == "script" else torch.jit.trace(model, images(2))
    path = folder / f"lenet_{how}.pt"
    torch.jit.save(scripted, path)
    return path


def export_file(folder: Path, batch: int | None = None) -> Path:
    """A torch.export program: dynamic batch, or fixed to `batch`."""
    model = lenet()
    if batch is None:
        dims = ({0: torch.export.Dim("batch")},)
        program = torch.export.export(model, (images(2),), dynamic_shapes=dims)
    else:
        program = torch.export.export(model, (images(batch),))
    path = folder / f"lenet_{batch or 'dynamic'}.pt2"
    torch.export.save(program, path)
    return path


def pickled_module_file(folder: Path, module: nn.Module | None = None, name="whole.pt") -> Path:
    path = folder / name
    torch.save(module if module is not None else lenet(), path)
    return path


class WritesMarker:
    """Unpickling this calls open(marker, "w"): code from the file creating a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def code_running_pickles(folder: Path) -> tuple[list[Path], Path]:
    """A torch.save file and a plain pickle whose loading would create `marker`."""
    marker = folder / "MARKER_code_ran"
    saved = folder / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": WritesMarker(marker)}, saved)
    plain = folder / "evil.pkl"
    plain.write_bytes(pickle.dumps(WritesMarker(marker)))
    return [saved, plain], marker


def images(n: int, shape=SHAPE, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def calib_npz(folder: Path, n: int = 16, classes: int = 10) -> Path:
    """An .npz calibration set (float images in [0, 1], labels) for the 1x16x16 LeNet."""
    rng = np.random.default_rng(0)
    path = folder / "calib.npz"
    np.savez(path, x=rng.random((n, *SHAPE), dtype=np.float32), y=rng.integers(0, classes, n))
    return path


def tampered_export_file(folder: Path) -> tuple[Path, Path]:
    """A .pt2 program whose first weight is a pickle torch.export.load would run."""
    import io
    import json
    import zipfile

    source = export_file(folder)
    marker = folder / "MARKER_pt2_code_ran"
    evil = io.BytesIO()
    torch.save(WritesMarker(marker), evil)
    path = folder / "tampered.pt2"
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(path, "w") as tampered:
        for info in original.infolist():
            data = original.read(info)
            if info.filename.endswith("data/weights/model_weights_config.json"):
                config = json.loads(data)
                first = next(iter(config["config"].values()))
                first["use_pickle"] = True
                data = json.dumps(config).encode()
            elif info.filename.endswith("data/weights/weight_0"):
                data = evil.getvalue()
            tampered.writestr(info, data)
    return path, marker
