"""yw_ext: YOLO-World on the Ultralytics engine (AGPL-3.0).

The package is lazy: ``import yw_ext`` (or ``import yw_ext.runtime``) imports neither torch nor Ultralytics;
``yw_ext.YOLOWorld`` and ``yw_ext.YWDetectionModel`` import them on first use.

Examples:
    >>> import yw_ext
    >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")  # random weights; yw_ext.YOLOWorld("l") loads v2-L weights
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {"YOLOWorld": "yw_ext.model", "YWDetectionModel": "yw_ext.nn.model", "Vocabulary": "yw_ext.vocab"}


def __getattr__(name: str) -> Any:
    """Import ``YOLOWorld`` / ``YWDetectionModel`` / ``Vocabulary`` on first access (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError(f"module 'yw_ext' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    except ImportError as e:
        if e.name in {"torch", "torchvision", "ultralytics"}:
            raise ImportError(
                f"yw_ext.{name} needs PyTorch and Ultralytics ({e.name} is not installed); without them use "
                "yw_ext.runtime (numpy + ONNX Runtime)."
            ) from e
        raise
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["YOLOWorld", "YWDetectionModel", "Vocabulary", "__version__"]
