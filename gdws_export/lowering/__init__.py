"""Lowering: GDWS convs to plain ONNX (forms, fold, auto choice), export, simplify, parity.

Imports the math (`gdws_export.gdws`) and the runtimes (`gdws_export.runtimes`, for parity
checks and `auto` timings); onnx and onnxruntime are imported only when a function needs them.
"""

from gdws_export.lowering.auto import LayerTiming, choose_forms
from gdws_export.lowering.export import export_model
from gdws_export.lowering.fold import FoldSite, find_fold_sites
from gdws_export.lowering.forms import FORMS, lower_layer
from gdws_export.lowering.lower import lower_model
from gdws_export.lowering.metadata import read_metadata, write_metadata
from gdws_export.lowering.options import ExportOptions
from gdws_export.lowering.parity import ParityReport, check_parity, compare_logits
from gdws_export.lowering.pipeline import ExportResult, LayerLowering, export_onnx
from gdws_export.lowering.simplify import SimplifyResult, simplify_model
from gdws_export.lowering.timing import measure_layer_costs, time_networks

__all__ = [
    "FORMS",
    "ExportOptions",
    "ExportResult",
    "FoldSite",
    "LayerLowering",
    "LayerTiming",
    "ParityReport",
    "SimplifyResult",
    "check_parity",
    "choose_forms",
    "compare_logits",
    "export_model",
    "export_onnx",
    "find_fold_sites",
    "lower_layer",
    "lower_model",
    "measure_layer_costs",
    "read_metadata",
    "simplify_model",
    "time_networks",
    "write_metadata",
]
