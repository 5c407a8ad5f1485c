"""ONNX model files: metadata, onnxslim, IR version, atomic saving (the ``onnx`` package; no torch, no Ultralytics).

Shared by the detector export (``yw_ext.export.onnx``), the CLIP text encoder export (``yw_ext.export.text``),
INT8 quantisation (``yw_ext.export.quant``) and the TensorRT build (``yw_ext.export.tensorrt``).

Examples:
    >>> import onnx
    >>> m = onnx.ModelProto(ir_version=11)
    >>> cap_ir_version(m)
    >>> m.ir_version
    10
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yw_ext.core.io import atomic_write
from yw_ext.core.log import LOGGER

MAX_IR_VERSION = 10
"""Highest ONNX IR version written (ONNX Runtime compatibility, as Ultralytics)."""


def add_metadata(proto, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` into an ONNX model's ``metadata_props`` as ``str(value)`` (replacing existing keys).

    Examples:
        >>> import onnx
        >>> m = onnx.ModelProto()
        >>> add_metadata(m, {"names": {0: "a"}, "stride": 32})
        >>> read_metadata(m)
        {'names': "{0: 'a'}", 'stride': '32'}
    """
    keep = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)


def read_metadata(proto) -> dict[str, str]:
    """An ONNX model's ``metadata_props`` as a plain dict of strings."""
    return {p.key: p.value for p in proto.metadata_props}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (strings), without loading external weight data."""
    import onnx

    return read_metadata(onnx.load(str(path), load_external_data=False))


def slim(proto, prefix: str):
    """onnxslim the model, keeping the original on failure (as Ultralytics does)."""
    try:
        import onnxslim

        LOGGER.info(f"{prefix} slimming with onnxslim {onnxslim.__version__}...")
        return onnxslim.slim(proto)
    except Exception as e:  # pragma: no cover - depends on onnxslim
        LOGGER.warning(f"{prefix} simplifier failure: {e}")
        return proto


def cap_ir_version(proto) -> None:
    """Lower the model's IR version to ``MAX_IR_VERSION`` (ONNX Runtime compatibility), in place."""
    if getattr(proto, "ir_version", 0) > MAX_IR_VERSION:
        proto.ir_version = MAX_IR_VERSION


def save_onnx(proto, path: str | os.PathLike) -> Path:
    """``onnx.save`` through ``yw_ext.core.io.atomic_write``: ``path`` is the complete model or left as it was."""
    import onnx

    return atomic_write(path, lambda f: onnx.save(proto, f))


__all__ = ["MAX_IR_VERSION", "add_metadata", "cap_ir_version", "load_metadata", "read_metadata", "save_onnx", "slim"]
