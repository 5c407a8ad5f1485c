"""yw_ext: YOLO-World on the Ultralytics engine (AGPL-3.0).

Examples:
    >>> import yw_ext
    >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")  # random weights; yw_ext.YOLOWorld("l") loads v2-L weights
"""

__version__ = "0.1.0"

from yw_ext.model import YOLOWorld  # noqa: E402
from yw_ext.nn.model import YWDetectionModel  # noqa: E402

__all__ = ["YOLOWorld", "YWDetectionModel", "__version__"]
