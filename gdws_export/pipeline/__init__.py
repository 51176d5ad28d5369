"""One export, end to end: `run_export(ExportConfig(...)) -> ExportReport`.

The library function behind the `gdws-export` command (and sweeps): load a model file, compute
alphas, replace convs by GDWS convs, export the original and GDWS ONNX graphs, build the engine,
check it, write report.json and report.md (and a Triton model), all atomically.
"""

from gdws_export.pipeline.config import (
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_MAC_RATIO,
    ExportConfig,
    parse_input_shape,
)
from gdws_export.pipeline.model import NormalizedInput, count_macs_params
from gdws_export.pipeline.report import SCHEMA_VERSION, ExportReport
from gdws_export.pipeline.run import run_export
from gdws_export.pipeline.stages import STAGES, ProgressCallback

__all__ = [
    "DEFAULT_CALIB_SAMPLES",
    "DEFAULT_MAC_RATIO",
    "SCHEMA_VERSION",
    "STAGES",
    "ExportConfig",
    "ExportReport",
    "NormalizedInput",
    "ProgressCallback",
    "count_macs_params",
    "parse_input_shape",
    "run_export",
]
