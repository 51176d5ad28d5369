"""Re-measure a checkpoint's clean and robust accuracy and update its model card.

Run from the repository root (one thread, niced: the machine is shared):

    PYTHONPATH=. nice -n 10 python benchmarks/evaluate_checkpoint.py models/fmnist_vgg16_bn_w16.pt

Measures, with `gdws_export.attacks` and the model in eval mode:

- clean accuracy on the full test set (10k images);
- PGD-20 (L-inf, eps from the card, step eps / 10 = 0.01 at eps 0.1, one random start, seed 0)
  on the full test set;
- PGD-100 (same settings) on the first 1000 test images;
- on the committed slice tests/data/fashion_mnist_test_1k.npz (Fashion-MNIST only): clean
  accuracy on its 1000 images and PGD-10 (default step 2.5 * eps / 10) on its first 100, the
  check `tests/test_checkpoints.py` repeats.

Then rewrites `<name>.json` / `<name>.md` next to the checkpoint (keeping the card's data and
training sections) and the folder's README.md index. `--only slice` re-measures the quick part.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from benchmarks._checkpoint_eval import evaluate_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path, help="models/<name>.pt files")
    parser.add_argument("--only", choices=("all", "slice"), default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--data-root", default=None, help="folder of the dataset's IDX files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        evaluate_checkpoint(
            checkpoint, only=args.only, device=args.device, data_root=args.data_root
        )


if __name__ == "__main__":
    main()
