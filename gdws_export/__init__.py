"""gdws-export: make robust CNNs fast with GDWS convolutions, on ONNX Runtime and TensorRT.

The math (`approximate`, `noise_gains`, `GDWSConv2d`) and the model registry need only torch;
importing this package loads nothing else (no ONNX, no TensorRT, no CUDA initialisation).

Example:
    >>> import gdws_export as gx
    >>> model = gx.create_model("preact_resnet18")
    >>> alphas = gx.noise_gains(model, (images, labels), samples=1000)      # doctest: +SKIP
    >>> gdws_model, report = gx.approximate(model, mac_ratio=0.5, alphas=alphas)
    >>> gdws_model, _ = gx.refit_pointwise(gdws_model, model, (images, labels))  # doctest: +SKIP
    >>> costs = gx.measure_layer_costs(model, (3, 32, 32), batch=32)  # ONNX Runtime timings
    >>> fast_model, report = gx.approximate(model, time_ratio=0.5, layer_costs=costs)
"""

from gdws_export.errors import (
    GDWSExportError,
    InvalidInputError,
    MissingDependencyError,
    ParityError,
    UnsupportedModelError,
)
from gdws_export.gdws.activations import activation_gains, input_moments, relative_gains
from gdws_export.gdws.approximate import (
    ApproximationReport,
    LayerCost,
    LayerReport,
    approximate,
)
from gdws_export.gdws.calibration import calibrated_gains
from gdws_export.gdws.conv import GDWSConv2d
from gdws_export.gdws.refit import RefitReport, refit_pointwise
from gdws_export.gdws.sensitivity import load_alphas, load_input_moments, noise_gains, save_alphas
from gdws_export.models import create_model, list_models, load_model

__version__ = "0.1.0"

# Names whose modules import ONNX or runtimes: loaded on first use, so `import gdws_export`
# stays light.
_LAZY = {
    "build": "gdws_export.runtimes.build",
    "BuildResult": "gdws_export.runtimes.build",
    "export_onnx": "gdws_export.lowering",
    "measure_layer_costs": "gdws_export.lowering",
    "ExportResult": "gdws_export.lowering",
    "ParityReport": "gdws_export.lowering",
    "read_metadata": "gdws_export.lowering",
    "ExportConfig": "gdws_export.pipeline",
    "run_export": "gdws_export.pipeline",
    "benchmark": "gdws_export.harness.speed",
    "evaluate_accuracy": "gdws_export.harness.accuracy",
    "sweep": "gdws_export.studies.sweep",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gdws_export' has no attribute {name!r}")


__all__ = [
    "ApproximationReport",
    "BuildResult",
    "ExportConfig",
    "ExportResult",
    "GDWSConv2d",
    "GDWSExportError",
    "InvalidInputError",
    "LayerCost",
    "LayerReport",
    "MissingDependencyError",
    "ParityError",
    "ParityReport",
    "RefitReport",
    "UnsupportedModelError",
    "activation_gains",
    "approximate",
    "benchmark",
    "build",
    "calibrated_gains",
    "create_model",
    "evaluate_accuracy",
    "export_onnx",
    "input_moments",
    "list_models",
    "load_alphas",
    "load_input_moments",
    "load_model",
    "measure_layer_costs",
    "noise_gains",
    "read_metadata",
    "refit_pointwise",
    "relative_gains",
    "run_export",
    "save_alphas",
    "sweep",
]
