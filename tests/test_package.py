"""The package itself: light to import, one version, every public name importable."""

from __future__ import annotations

import subprocess
import sys

import gdws_export


def test_import_loads_no_heavy_runtime():
    code = (
        "import sys, gdws_export\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxsim', 'tensorrt', 'matplotlib')"
        " if m in sys.modules]\n"
        "import torch\n"
        "print(heavy, torch.cuda.is_initialized())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"


def test_public_names_exist():
    for name in gdws_export.__all__:
        assert getattr(gdws_export, name) is not None
