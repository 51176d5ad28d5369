"""Evaluation data as tensors: images float32 in [0, 1], shape (N, C, H, W); labels int64.

`load_dataset(spec)` reads, by `spec`:

- a named dataset: "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn". MNIST and
  Fashion-MNIST are read from local IDX files when found (in `root`, in torchvision's
  `root/<Name>/raw` layout, or, for Fashion-MNIST, from Debian's `dataset-fashion-mnist`
  package); otherwise, and always for CIFAR and SVHN, through torchvision, downloaded to `root`.
- a directory of IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, ...).
- an image folder: one sub-folder per class, classes numbered in sorted name order, PNG / JPEG /
  BMP images read with Pillow and converted to `input_shape`.
- an `.npz` file with arrays `x` and `y`: `x` is uint8 (N, H, W, C) or (N, H, W) with values
  0-255, or float (N, C, H, W) or (N, H, W) with values in [0, 1]; `y` holds N integer labels.

IDX directories and named datasets hold a train and a test split; files and image folders hold
one set of samples, and `split` does not apply to them.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gdws_export._optional import require
from gdws_export.errors import InvalidInputError, MissingDependencyError

# Where Debian's `dataset-fashion-mnist` package (apt-get install dataset-fashion-mnist) puts
# the full Fashion-MNIST: 60k train and 10k test images as gzipped IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

DEFAULT_ROOT = Path.home() / ".cache" / "gdws-export" / "datasets"

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class _NamedDataset:
    num_classes: int
    torchvision_class: str
    splits: tuple[str, ...] = ("train", "test")
    idx_dirs: tuple[Path, ...] = ()  # local IDX copies to try before torchvision
    offline_hint: str = ""


NAMED_DATASETS = {
    "mnist": _NamedDataset(
        10, "MNIST", offline_hint="or pass root= a directory of MNIST IDX files"
    ),
    "fashion-mnist": _NamedDataset(
        10,
        "FashionMNIST",
        idx_dirs=(DEBIAN_FASHION_MNIST_DIR,),
        offline_hint="or apt-get install dataset-fashion-mnist",
    ),
    "cifar10": _NamedDataset(10, "CIFAR10"),
    "cifar100": _NamedDataset(100, "CIFAR100"),
    "svhn": _NamedDataset(10, "SVHN", splits=("train", "test", "extra")),
}


def load_dataset(
    spec: str | Path,
    *,
    split: str = "test",
    root: str | Path | None = None,
    limit: int | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    download: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a dataset as (x, y): float32 (N, C, H, W) images in [0, 1] and int64 labels.

    Args:
        spec: a dataset name (see NAMED_DATASETS) or a path to an .npz file, an IDX directory
            or an image folder.
        split: "train" or "test" ("extra" too for SVHN); ignored for .npz files and image
            folders.
        root: where named datasets are looked up and downloaded. Defaults to DEFAULT_ROOT.
        limit: keep only the first `limit` samples in the source's order (image folders:
            by class, then file name). None keeps all.
        num_classes: labels must lie in [0, num_classes). Defaults to the named dataset's
            class count, or no upper bound.
        input_shape: (C, H, W) the model takes. Image folders are converted (gray / RGB) and
            resized to it; other sources must already match it.
        download: let torchvision download a missing named dataset.

    Returns:
        (x, y) on the CPU.

    Example:
        >>> x, y = load_dataset("fashion-mnist", split="test", limit=1000)
        >>> x.shape, y.dtype
        (torch.Size([1000, 1, 28, 28]), torch.int64)
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInputError(f"load_dataset: limit must be an integer >= 1, got {limit!r}")
    if input_shape is not None and not _is_chw(input_shape):
        raise InvalidInputError(
            f"load_dataset: input_shape must be (C, H, W) with positive sizes, got {input_shape}"
        )
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise InvalidInputError(
            f"load_dataset: num_classes must be an integer >= 1, got {num_classes!r}"
        )
    name = str(spec).lower()
    if name in NAMED_DATASETS:
        info = NAMED_DATASETS[name]
        if split not in info.splits:
            raise InvalidInputError(
                f"dataset {name!r}: unknown split {split!r}; use one of {', '.join(info.splits)}"
            )
        x, y = _load_named(name, info, split, root, download)
        num_classes = info.num_classes if num_classes is None else num_classes
        where = f"dataset {name!r}"
    else:
        path = Path(spec)
        where = f"dataset {str(path)!r}"
        if not path.exists():
            raise InvalidInputError(
                f"{where}: no such file or directory; pass an existing .npz file, IDX directory "
                f"or image folder, or one of {', '.join(NAMED_DATASETS)}"
            )
        if path.is_file():
            x, y = _load_npz(path, where)
        elif _is_idx_dir(path):
            x, y = _load_idx_split(path, split)
        else:
            x, y = _load_image_folder(path, where, limit, input_shape)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return _finish(x, y, where, num_classes, input_shape)


def _is_chw(shape: object) -> bool:
    try:
        return len(shape) == 3 and all(int(d) == d and d >= 1 for d in shape)
    except TypeError:
        return False


def load_train_and_test(
    spec: str | Path, **kwargs: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both splits of a named dataset or IDX directory, as (x_train, y_train, x_test, y_test).

    With Debian's dataset-fashion-mnist installed, `load_train_and_test("fashion-mnist")`
    returns the full 60k / 10k Fashion-MNIST offline. Keyword arguments go to `load_dataset`.
    """
    name = str(spec).lower()
    if name not in NAMED_DATASETS and not _is_idx_dir(Path(spec)):
        raise InvalidInputError(
            f"load_train_and_test: {str(spec)!r} holds no train/test splits; pass a named "
            f"dataset ({', '.join(NAMED_DATASETS)}) or a directory of IDX files"
        )
    x_train, y_train = load_dataset(spec, split="train", **kwargs)
    x_test, y_test = load_dataset(spec, split="test", **kwargs)
    return x_train, y_train, x_test, y_test


def find_idx_dir(name: str, root: str | Path | None = None) -> Path | None:
    """The first local directory holding the IDX files of MNIST or Fashion-MNIST, or None.

    Looks in `root`, then torchvision's `root/<Name>/raw`, then the dataset's system copies
    (DEBIAN_FASHION_MNIST_DIR for Fashion-MNIST).
    """
    info = NAMED_DATASETS.get(name.lower())
    if info is None:
        raise InvalidInputError(f"find_idx_dir: unknown dataset {name!r}")
    candidates = list(info.idx_dirs)
    if root is not None:
        candidates[:0] = [Path(root), Path(root) / info.torchvision_class / "raw"]
    return next((path for path in candidates if _has_idx_files(path)), None)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as exc:
        raise InvalidInputError(f"IDX file {str(path)!r}: cannot read it ({exc})") from None
    # Header: two zero bytes, type code 0x08 (unsigned byte), the number of dimensions, then
    # each dimension as a big-endian uint32.
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise InvalidInputError(f"IDX file {str(path)!r}: not an IDX file of unsigned bytes")
    dims_end = 4 + 4 * data[3]
    if len(data) < dims_end:
        raise InvalidInputError(f"IDX file {str(path)!r}: truncated header")
    shape = struct.unpack(f">{data[3]}I", data[4:dims_end])
    if len(data) - dims_end != int(np.prod(shape)):
        raise InvalidInputError(
            f"IDX file {str(path)!r}: holds {len(data) - dims_end} bytes of data, its header "
            f"promises {int(np.prod(shape))} (shape {shape}); the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=dims_end).reshape(shape)


def _idx_file(directory: Path, split: str, kind: str) -> Path | None:
    stem = f"{_IDX_PREFIX.get(split, split)}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def _has_idx_files(directory: Path, split: str = "test") -> bool:
    return directory.is_dir() and all(
        _idx_file(directory, split, kind) is not None for kind in ("images", "labels")
    )


def _is_idx_dir(directory: Path) -> bool:
    """True when the directory holds at least one IDX file of either split."""
    return directory.is_dir() and any(
        _idx_file(directory, split, kind) is not None
        for split in _IDX_PREFIX
        for kind in ("images", "labels")
    )


def _load_idx_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in _IDX_PREFIX:
        raise InvalidInputError(
            f"IDX directory {str(directory)!r}: unknown split {split!r}; use train or test"
        )
    files = {kind: _idx_file(directory, split, kind) for kind in ("images", "labels")}
    missing = [kind for kind, path in files.items() if path is None]
    if missing:
        raise InvalidInputError(
            f"IDX directory {str(directory)!r}: no {split} {' or '.join(missing)} file "
            f"({_IDX_PREFIX[split]}-*-idx*-ubyte[.gz])"
        )
    return read_idx(files["images"]), read_idx(files["labels"])


def _load_named(
    name: str, info: _NamedDataset, split: str, root: str | Path | None, download: bool
) -> tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]:
    if name in ("mnist", "fashion-mnist"):
        local = find_idx_dir(name, root)
        if local is not None and _has_idx_files(local, split):
            return _load_idx_split(local, split)
    try:
        torchvision = require("torchvision")
    except MissingDependencyError as exc:
        hint = f", {info.offline_hint}" if info.offline_hint else ""
        raise MissingDependencyError(
            f"dataset {name!r} needs torchvision, which is not installed: pip install "
            f"torchvision{hint}, or pass an .npz file or image folder instead"
        ) from exc
    dataset_class = getattr(torchvision.datasets, info.torchvision_class)
    root = str(DEFAULT_ROOT if root is None else root)
    try:
        if name == "svhn":
            dataset = dataset_class(root, split=split, download=download)
        else:
            dataset = dataset_class(root, train=split == "train", download=download)
    except (RuntimeError, OSError) as exc:
        raise InvalidInputError(
            f"dataset {name!r}: torchvision could not load it from {root!r} ({exc}); check the "
            "internet connection, or pass download=True or a root holding the files"
        ) from None
    labels = dataset.labels if name == "svhn" else dataset.targets
    images = np.asarray(dataset.data)
    if name == "svhn":  # torchvision keeps SVHN as (N, C, H, W); the others as (N, H, W[, C])
        images = images.transpose(0, 2, 3, 1)
    return images, np.asarray(labels)


def _load_npz(path: Path, where: str) -> tuple[np.ndarray, np.ndarray]:
    if path.suffix != ".npz":
        raise InvalidInputError(f"{where}: unsupported file type; pass an .npz with x and y")
    try:
        # Opened here, not by np.load, which leaks the handle when the zip is corrupt.
        with open(path, "rb") as stream:
            arrays = np.load(stream, allow_pickle=False)
            if not isinstance(arrays, np.lib.npyio.NpzFile):
                raise InvalidInputError(f"{where}: holds one array, not an .npz archive of x, y")
            with arrays:
                found = {key: arrays[key] for key in ("x", "y") if key in arrays.files}
                names = arrays.files
    except InvalidInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidInputError(f"{where}: cannot read it as .npz ({exc})") from None
    if len(found) < 2:
        raise InvalidInputError(f"{where}: needs arrays x (images) and y (labels), it has {names}")
    return found["x"], found["y"]


def _load_image_folder(
    folder: Path, where: str, limit: int | None, input_shape: tuple[int, int, int] | None
) -> tuple[np.ndarray, np.ndarray]:
    try:
        image_module = require("PIL.Image")
    except MissingDependencyError as exc:
        raise MissingDependencyError(
            f"{where}: reading an image folder needs Pillow: pip install pillow ({exc})"
        ) from exc
    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    files = [
        (path, label)
        for label, class_name in enumerate(classes)
        for path in sorted((folder / class_name).iterdir())
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    ]
    if not files:
        raise InvalidInputError(
            f"{where}: no images found; expected one sub-folder per class holding "
            f"{'/'.join(IMAGE_SUFFIXES)} files"
        )
    files = files[:limit]
    images = []
    for path, _ in files:
        try:
            with image_module.open(path) as image:
                image.load()
                images.append(_convert_image(image, input_shape, images))
        except (OSError, ValueError, image_module.DecompressionBombError) as exc:
            raise InvalidInputError(f"image {str(path)!r}: cannot read it ({exc})") from None
    shapes = {array.shape for array in images}
    if len(shapes) > 1:
        raise InvalidInputError(
            f"{where}: images differ in size or channels {sorted(shapes)}; pass input_shape "
            "to resize them to the model's input"
        )
    return np.stack(images), np.array([label for _, label in files], dtype=np.int64)


def _convert_image(
    image: Any, input_shape: tuple[int, int, int] | None, previous: list[np.ndarray]
) -> np.ndarray:
    """One PIL image as uint8 (H, W, C): gray or RGB as input_shape asks (or as the first
    image is), resized to input_shape's H x W when given."""
    if input_shape is not None:
        gray = input_shape[0] == 1
        if input_shape[0] not in (1, 3):
            raise InvalidInputError(
                f"input_shape {input_shape}: image folders give 1 (gray) or 3 (RGB) channels"
            )
    elif previous:
        gray = previous[0].shape[2] == 1
    else:
        gray = image.mode in _GRAY_MODES
    image = image.convert("L" if gray else "RGB")
    if input_shape is not None and image.size != (input_shape[2], input_shape[1]):
        image = image.resize((int(input_shape[2]), int(input_shape[1])), resample=2)  # bilinear
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _finish(
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    where: str,
    num_classes: int | None,
    input_shape: tuple[int, int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arrays and convert them to float32 NCHW in [0, 1] and int64 labels."""
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[:1] == (0,) or x.ndim == 0:
        raise InvalidInputError(f"{where}: the dataset is empty")
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, :, :, None]
        if x.ndim != 4 or x.shape[3] not in (1, 3):
            raise InvalidInputError(
                f"{where}: uint8 images must be (N, H, W, C) with C 1 or 3, or (N, H, W), "
                f"got {x.shape}"
            )
        # astype copies: the arrays may be read-only views of a file's bytes.
        images = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32)) / 255
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise InvalidInputError(
                f"{where}: float images must be (N, C, H, W) with C 1 or 3, or (N, H, W), "
                f"got {x.shape}"
            )
        images = torch.from_numpy(x.astype(np.float32))
        if not bool(torch.isfinite(images).all()) or images.min() < 0 or images.max() > 1:
            raise InvalidInputError(
                f"{where}: float images must lie in [0, 1]; store uint8 0-255 or divide by 255"
            )
    else:
        raise InvalidInputError(f"{where}: images must be uint8 or float, got {x.dtype}")
    if y.ndim != 1 or len(y) != len(images):
        raise InvalidInputError(
            f"{where}: labels must have shape ({len(images)},) to match the images, got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise InvalidInputError(f"{where}: labels must be integers, got {y.dtype}")
    labels = torch.from_numpy(y.astype(np.int64))
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or (num_classes is not None and high >= num_classes):
        bound = f"[0, {num_classes - 1}]" if num_classes is not None else ">= 0"
        raise InvalidInputError(
            f"{where}: labels must lie in {bound}, got labels in [{low}, {high}]"
        )
    if input_shape is not None and tuple(images.shape[1:]) != tuple(input_shape):
        raise InvalidInputError(
            f"{where}: images are {tuple(images.shape[1:])} but the model takes "
            f"{tuple(input_shape)} (C, H, W)"
        )
    return images, labels
