"""The data layer on the committed Fashion-MNIST slice, IDX files, image folders and .npz."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from gdws_export.errors import InvalidInputError, MissingDependencyError
from gdws_export.harness import data
from gdws_export.harness.data import (
    DEBIAN_FASHION_MNIST_DIR,
    find_idx_dir,
    load_dataset,
    load_train_and_test,
    read_idx,
)

SLICE = Path(__file__).parent / "data" / "fashion_mnist_test_1k.npz"
HAS_DEBIAN_FASHION_MNIST = (DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


@pytest.fixture(scope="module")
def raw():
    """The slice as stored: uint8 (1000, 28, 28) images and uint8 labels."""
    with np.load(SLICE) as arrays:
        return arrays["x"], arrays["y"]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


def test_the_slice_loads_as_float_nchw_in_unit_range(raw):
    x, y = load_dataset(SLICE)
    assert x.shape == (1000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (1000,) and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.99
    assert torch.equal(x[:, 0], torch.from_numpy(raw[0]).float() / 255)
    assert torch.equal(y, torch.from_numpy(raw[1]).long())
    assert set(y.tolist()) == set(range(10))  # every class is in the slice
    first, labels = load_dataset(SLICE, limit=10)
    assert torch.equal(first, x[:10]) and torch.equal(labels, y[:10])


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_directories_read_like_the_original(tmp_path, raw, suffix):
    images, labels = raw[0][:50], raw[1][:50]
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)
    assert np.array_equal(read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}"), images)
    x, y = load_dataset(tmp_path, split="test")
    assert torch.equal(x[:, 0], torch.from_numpy(images).float() / 255)
    assert torch.equal(y, torch.from_numpy(labels).long())
    with pytest.raises(InvalidInputError, match="no train images or labels file"):
        load_dataset(tmp_path, split="train")


def test_named_mnist_reads_local_idx_files_without_torchvision(tmp_path, raw):
    raw_dir = tmp_path / "MNIST" / "raw"  # torchvision's layout
    raw_dir.mkdir(parents=True)
    for split, count in (("train", 30), ("t10k", 20)):
        write_idx(raw_dir / f"{split}-images-idx3-ubyte", raw[0][:count])
        write_idx(raw_dir / f"{split}-labels-idx1-ubyte", raw[1][:count])
    assert find_idx_dir("mnist", tmp_path) == raw_dir
    x_train, y_train, x_test, y_test = load_train_and_test("mnist", root=tmp_path)
    assert x_train.shape == (30, 1, 28, 28) and x_test.shape == (20, 1, 28, 28)
    assert torch.equal(y_test, torch.from_numpy(raw[1][:20]).long())


def test_bad_idx_files_are_rejected(tmp_path, raw):
    truncated = tmp_path / "truncated-idx3-ubyte"
    write_idx(truncated, raw[0][:5])
    truncated.write_bytes(truncated.read_bytes()[:-10])
    with pytest.raises(InvalidInputError, match="truncated"):
        read_idx(truncated)
    not_idx = tmp_path / "notes-idx3-ubyte"
    not_idx.write_bytes(b"hello world")
    with pytest.raises(InvalidInputError, match="not an IDX file"):
        read_idx(not_idx)
    with pytest.raises(InvalidInputError, match="cannot read"):
        read_idx(tmp_path / "missing-idx3-ubyte.gz")


@pytest.mark.skipif(not HAS_DEBIAN_FASHION_MNIST, reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_is_where_the_slice_came_from():
    x, y = load_dataset("fashion-mnist", split="test")
    assert x.shape == (10_000, 1, 28, 28)
    sliced_x, sliced_y = load_dataset(SLICE)
    assert torch.equal(x[:1000], sliced_x) and torch.equal(y[:1000], sliced_y)
    assert find_idx_dir("fashion-mnist") == DEBIAN_FASHION_MNIST_DIR


@pytest.mark.skipif(not HAS_DEBIAN_FASHION_MNIST, reason="dataset-fashion-mnist not installed")
def test_full_fashion_mnist_train_and_test():
    x_train, y_train, x_test, y_test = load_train_and_test("fashion-mnist")
    assert x_train.shape == (60_000, 1, 28, 28) and x_test.shape == (10_000, 1, 28, 28)
    assert torch.bincount(y_train).tolist() == [6000] * 10


@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is not None, reason="torchvision is installed"
)
@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_named_datasets_without_torchvision_say_what_to_install(name):
    with pytest.raises(MissingDependencyError, match="pip install torchvision"):
        load_dataset(name)


def fake_torchvision(dataset_class):
    return types.SimpleNamespace(
        datasets=types.SimpleNamespace(**{dataset_class.__name__: dataset_class})
    )


def test_torchvision_datasets_are_converted_to_nchw(monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    calls = []

    class CIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            self.data, self.targets = hwc, [0, 1, 2, 3, 4, 9]

    class SVHN:
        def __init__(self, root, split, download):
            calls.append((root, split, download))
            self.data, self.labels = hwc.transpose(0, 3, 1, 2), np.arange(6)

    for dataset_class, name in ((CIFAR10, "cifar10"), (SVHN, "svhn")):
        monkeypatch.setattr(data, "require", lambda _, cls=dataset_class: fake_torchvision(cls))
        x, y = load_dataset(name, split="train", root=tmp_path, limit=4)
        assert x.shape == (4, 3, 32, 32)
        assert torch.equal(x, torch.from_numpy(hwc[:4]).permute(0, 3, 1, 2).float() / 255)
        assert y.tolist() == [0, 1, 2, 3]
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), "train", True)]


def test_torchvision_failures_become_invalid_input(monkeypatch):
    class CIFAR100:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found or corrupted.")

    monkeypatch.setattr(data, "require", lambda _: fake_torchvision(CIFAR100))
    with pytest.raises(InvalidInputError, match="could not load"):
        load_dataset("cifar100", download=False)


@pytest.fixture
def image_folder(tmp_path, raw):
    """Three classes of PNGs cut from the slice (lossless, so values survive exactly)."""
    image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    for label, class_name in enumerate(["boot", "coat", "shirt"]):  # sorted order = label
        (folder / class_name).mkdir(parents=True)
        for index in range(4):
            pixels = raw[0][label * 4 + index]
            image.fromarray(pixels, mode="L").save(folder / class_name / f"{index}.png")
    (folder / "boot" / "notes.txt").write_text("not an image, ignored")
    return folder


def test_image_folders_keep_pixels_and_sort_classes(image_folder, raw):
    x, y = load_dataset(image_folder, input_shape=(1, 28, 28))
    assert x.shape == (12, 1, 28, 28)
    assert torch.equal(x[:, 0], torch.from_numpy(raw[0][:12]).float() / 255)
    assert y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    unshaped, _ = load_dataset(image_folder)
    assert torch.equal(unshaped, x)


def test_image_folders_are_converted_to_the_model_input(image_folder):
    x, y = load_dataset(image_folder, input_shape=(3, 32, 32), limit=5)
    assert x.shape == (5, 3, 32, 32) and len(y) == 5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray as RGB


def test_bad_image_folders_are_rejected(image_folder, tmp_path):
    image = pytest.importorskip("PIL.Image")
    image.new("L", (20, 20)).save(image_folder / "coat" / "small.png")
    with pytest.raises(InvalidInputError, match="differ in size"):
        load_dataset(image_folder)
    (image_folder / "coat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InvalidInputError, match="broken.png"):
        load_dataset(image_folder, input_shape=(1, 28, 28))
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(InvalidInputError, match="no images"):
        load_dataset(tmp_path / "empty")


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def test_npz_float_nchw_and_uint8_nhwc_agree(tmp_path, raw):
    hwc = np.repeat(raw[0][:8, :, :, None], 3, axis=3)
    x_uint8, y = load_dataset(save_npz(tmp_path / "a.npz", x=hwc, y=raw[1][:8]))
    chw = hwc.transpose(0, 3, 1, 2).astype(np.float64) / 255
    x_float, _ = load_dataset(save_npz(tmp_path / "b.npz", x=chw, y=raw[1][:8]))
    assert x_uint8.shape == (8, 3, 28, 28) and torch.allclose(x_uint8, x_float)
    assert y.dtype == torch.int64


@pytest.mark.parametrize(
    ("arrays", "kwargs", "fragment"),
    [
        ({"x": "slice", "y": "slice"}, {"num_classes": 5}, "labels must lie in [0, 4]"),
        ({"x": "slice", "y": "negative"}, {}, "labels must lie in >= 0"),
        ({"x": "slice", "y": "short"}, {}, "labels must have shape"),
        ({"x": "slice", "y": "float"}, {}, "labels must be integers"),
        ({"x": "flat", "y": "slice"}, {}, "uint8 images must be"),
        ({"x": "nchw_uint8", "y": "slice"}, {}, "uint8 images must be"),
        ({"x": "nhwc_float", "y": "slice"}, {}, "float images must be"),
        ({"x": "too_bright", "y": "slice"}, {}, "[0, 1]"),
        ({"x": "empty", "y": "empty"}, {}, "empty"),
        ({"x": "slice"}, {}, "needs arrays x"),
        ({"x": "slice", "y": "slice"}, {"input_shape": (3, 32, 32)}, "model takes"),
        ({"x": "slice", "y": "slice"}, {"limit": 0}, "limit"),
        ({"x": "slice", "y": "slice"}, {"input_shape": (1, 28)}, "input_shape"),
        ({"x": "slice", "y": "slice"}, {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_npz_files_are_rejected(tmp_path, raw, arrays, kwargs, fragment):
    images, labels = raw[0][:20], raw[1][:20]
    choices = {
        "slice": None,
        "negative": labels.astype(np.int64) - 1,
        "short": labels[:-1],
        "float": labels.astype(np.float32),
        "flat": images.reshape(20, -1),
        "nchw_uint8": np.repeat(images[:, None], 3, axis=1),
        "nhwc_float": np.repeat(images[..., None], 3, axis=3) / 255.0,
        "too_bright": images.astype(np.float32),
        "empty": np.zeros((0, 28, 28), np.uint8),
    }
    saved = {}
    for key, choice in arrays.items():
        value = choices[choice]
        saved[key] = value if value is not None else (images if key == "x" else labels)
    if arrays.get("y") == "empty":
        saved["y"] = np.zeros((0,), np.int64)
    path = save_npz(tmp_path / "bad.npz", **saved)
    with pytest.raises(InvalidInputError) as info:
        load_dataset(path, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_missing_and_unsupported_sources_are_rejected(tmp_path):
    with pytest.raises(InvalidInputError, match="no such file"):
        load_dataset(tmp_path / "nowhere.npz")
    with pytest.raises(InvalidInputError, match="no such file"):
        load_dataset("imagenet-21k")
    text = tmp_path / "labels.txt"
    text.write_text("0 1 2")
    with pytest.raises(InvalidInputError, match="unsupported file type"):
        load_dataset(text)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(InvalidInputError, match="cannot read"):
        load_dataset(corrupt)
    with pytest.raises(InvalidInputError, match="unknown split"):
        load_dataset("cifar10", split="validation")
    with pytest.raises(InvalidInputError, match="no train/test splits"):
        load_train_and_test(SLICE)
