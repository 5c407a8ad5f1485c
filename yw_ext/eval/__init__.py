# yw_ext, AGPL-3.0 license
"""Zero-shot evaluation as the papers report it: LVIS fixed AP and standard AP with the LVIS API (torch-free).

- ``lvis_data``: checks of the LVIS fields of an annotation JSON, conversion to YOLO labels, finding a split's JSON.
- ``fixed_ap``: per-class / per-image caps of a detection array and ``evaluate_lvis`` (``lvis.LVISEval``).
- ``report``: the predictions JSON, the per-class AP CSV (both atomic) and the printed summary.

The validator (``yw_ext.engine.validator.YWValidator``) collects the detections and calls these; ``YOLOWorld.val(
data="lvis.yaml", split="minival", fixed_ap=True)`` and ``yw val ... fixed_ap=True`` are the entry points.

Examples:
    >>> from yw_ext.eval import FIXED_AP_PER_CLASS, cap_detections
    >>> FIXED_AP_PER_CLASS
    10000
"""

from yw_ext.eval.fixed_ap import (
    FIXED_AP_CONF,
    FIXED_AP_PER_CLASS,
    FIXED_AP_PER_IMAGE,
    STANDARD_PER_IMAGE,
    LVISResult,
    cap_detections,
    evaluate_lvis,
    require_lvis,
)
from yw_ext.eval.lvis_data import LVISFormatError, check_lvis_fields, convert_lvis_json, find_lvis_json, load_lvis_json
from yw_ext.eval.report import summary, write_per_class_csv, write_predictions_json

__all__ = [
    "FIXED_AP_CONF",
    "FIXED_AP_PER_CLASS",
    "FIXED_AP_PER_IMAGE",
    "LVISFormatError",
    "LVISResult",
    "STANDARD_PER_IMAGE",
    "cap_detections",
    "check_lvis_fields",
    "convert_lvis_json",
    "evaluate_lvis",
    "find_lvis_json",
    "load_lvis_json",
    "require_lvis",
    "summary",
    "write_per_class_csv",
    "write_predictions_json",
]
