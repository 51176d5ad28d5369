"""Regenerate tests/data/fashion_mnist_test_1k.npz: the first 1000 Fashion-MNIST test images.

Reads the IDX files of Debian's dataset-fashion-mnist package
(apt-get install -y dataset-fashion-mnist). Run from the repository root:

    PYTHONPATH=. python benchmarks/make_test_data.py
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np

from gdws_export.harness.data import DEBIAN_FASHION_MNIST_DIR, read_idx

COUNT = 1000
OUTPUT = Path("tests/data/fashion_mnist_test_1k.npz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST_DIR)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()

    images = read_idx(args.source / "t10k-images-idx3-ubyte.gz")[:COUNT]
    labels = read_idx(args.source / "t10k-labels-idx1-ubyte.gz")[:COUNT]
    buffer = io.BytesIO()
    # x: uint8 (N, 28, 28), y: uint8 (N,); the loader turns them into float NCHW / int64.
    np.savez_compressed(buffer, x=images, y=labels)
    # Written to a temporary name and renamed, so a failed run leaves no half-written file.
    temporary = args.output.with_name(args.output.name + ".tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, args.output)
    print(f"wrote {args.output}: {len(images)} images, {args.output.stat().st_size} bytes")


if __name__ == "__main__":
    main()
