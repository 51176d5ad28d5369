"""Lazy imports of optional or heavy dependencies, with an error that says what to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from gdws_export.errors import MissingDependencyError

# module name -> what to tell the user to install
_INSTALL_HINTS = {
    "tensorrt": 'pip install "gdws-export[trt]" (TensorRT wheels come from NVIDIA\'s index: '
    "pip install --extra-index-url https://pypi.nvidia.com tensorrt)",
    "onnxslim": 'pip install "gdws-export[slim]"',
    "tritonclient": "pip install tritonclient",
    "PIL": "pip install pillow",
    # AutoAttack: its PyPI release; the authors' git package (import name autoattack) also works
    "pyautoattack": 'pip install "gdws-export[autoattack]" (or pip install pyautoattack)',
    "autoattack": 'pip install "gdws-export[autoattack]" (or pip install pyautoattack)',
}


def require(module: str) -> ModuleType:
    """Import `module` or raise MissingDependencyError naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(module.split(".")[0], f"pip install {module.split('.')[0]}")
        raise MissingDependencyError(f"{module} is not installed ({exc}); {hint}") from exc
