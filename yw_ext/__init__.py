"""yw_ext: YOLO-World on the Ultralytics engine (AGPL-3.0).

Examples:
    >>> import yw_ext
    >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")  # random weights; yw_ext.YOLOWorld("l") loads v2-L weights
"""

__version__ = "0.1.0"

try:  # torch-free deployments import only yw_ext.runtime (numpy + onnxruntime + opencv)
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - exercised in a subprocess by tests/test_export.py

    def __getattr__(name: str):
        if name in {"YOLOWorld", "YWDetectionModel"}:
            raise ImportError(f"yw_ext.{name} needs PyTorch, which is not installed; without it use yw_ext.runtime.")
        raise AttributeError(f"module 'yw_ext' has no attribute {name!r}")

else:
    from yw_ext.model import YOLOWorld  # noqa: E402
    from yw_ext.nn.model import YWDetectionModel  # noqa: E402

__all__ = ["YOLOWorld", "YWDetectionModel", "__version__"]
