"""gdws-export: make robust CNNs fast with GDWS convolutions, on ONNX Runtime and TensorRT.

The math (`approximate`, `noise_gains`, `GDWSConv2d`) and the model registry need only torch;
importing this package loads nothing else (no ONNX, no TensorRT, no CUDA initialisation).

Example:
    >>> import gdws_export as gx
    >>> model = gx.create_model("preact_resnet18")
    >>> alphas = gx.noise_gains(model, (images, labels), samples=1000)      # doctest: +SKIP
    >>> gdws_model, report = gx.approximate(model, mac_ratio=0.5, alphas=alphas)
"""

from gdws_export.errors import (
    GDWSExportError,
    InvalidInputError,
    MissingDependencyError,
    ParityError,
    UnsupportedModelError,
)
from gdws_export.gdws.approximate import ApproximationReport, LayerReport, approximate
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.sensitivity import load_alphas, noise_gains, save_alphas
from gdws_export.models import create_model, list_models, load_model

__version__ = "0.1.0"

__all__ = [
    "ApproximationReport",
    "GDWSConv2d",
    "GDWSExportError",
    "InvalidInputError",
    "LayerReport",
    "MissingDependencyError",
    "ParityError",
    "UnsupportedModelError",
    "approximate",
    "create_model",
    "list_models",
    "load_alphas",
    "load_model",
    "noise_gains",
    "save_alphas",
]
