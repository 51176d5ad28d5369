"""Model files of every usual kind loaded as eager modules GDWS can edit, never running code
from a pickle unless asked (see `load_model_file`)."""

from gdws_export.loading.detect import FORMATS, detect_format, pickle_globals
from gdws_export.loading.load import LoadedModel, check_finite, load_model_file
from gdws_export.loading.programs import convert_convs

__all__ = [
    "FORMATS",
    "LoadedModel",
    "check_finite",
    "convert_convs",
    "detect_format",
    "load_model_file",
    "pickle_globals",
]
