#!/usr/bin/env bash
# Create .venv (once) and install gdws-export into it with its test dependencies.
# PyTorch is installed first, pinned: an unpinned `torch` pulled in by a dependency would
# fetch a multi-GB CUDA build. Set TORCH_SPEC to choose another build (e.g. a CUDA one).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
