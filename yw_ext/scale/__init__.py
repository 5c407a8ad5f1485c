"""Batch detection over many images on Dask distributed: ``detect_dataset`` and ``yw label``.

The same call runs on a laptop (a ``LocalCluster`` on 127.0.0.1, ``workers=`` processes x ``threads=`` threads) and
on a cluster (``scheduler="tcp://host:8786"``, started with ``dask scheduler`` / ``dask worker``). Dask reads the
image list into partitions; each worker loads the torch-free ``yw_ext.runtime.Detector`` once (a worker-level
cache keyed by model file and vocabulary hash), and decodes, letterboxes and detects a partition in batches. The
vocabulary is built once on the client (text, image exemplars or a prompt file) and shipped to the workers as
embeddings. Each partition becomes one Parquet file (written atomically, so a rerun skips the finished ones), and
optionally YOLO label files (an auto-labeller for training).

Needs the ``scale`` extra: ``pip install -e .[scale]`` (``dask[distributed]``, ``pyarrow``). Importing this package
does not import Dask, torch or Ultralytics.

Examples:
    >>> from yw_ext.scale import detect_dataset
    >>> summary = detect_dataset("images/", "dv.onnx", "labels_out/", classes=["person", "car"],
    ...                          text_encoder="clip_text.onnx", workers=2)  # doctest: +SKIP
    >>> summary["images"], summary["computed"], summary["skipped"]  # doctest: +SKIP
    (128, 4, 0)
"""

from __future__ import annotations

import importlib
from typing import Any

EXTRA_MODULES = ("dask", "distributed", "pyarrow")
INSTALL_HINT = "pip install -e .[scale]  (or: pip install 'dask[distributed]' pyarrow)"


def check_extras() -> None:
    """Raise ``ImportError`` with the install command when Dask distributed or pyarrow is missing.

    Examples:
        >>> check_extras()  # doctest: +SKIP
    """
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"batch detection needs {', '.join(missing)} (the 'scale' extra): {INSTALL_HINT}")


def __getattr__(name: str) -> Any:
    """Lazy public names: importing ``yw_ext.scale`` loads nothing heavy."""
    if name in {"detect_dataset", "read_results"}:
        from yw_ext.scale import dataset

        return getattr(dataset, name)
    if name in {"list_images", "partition"}:
        from yw_ext.scale import sources

        return getattr(sources, name)
    if name == "resolve_vocabulary":
        from yw_ext.scale.vocabulary import resolve_vocabulary

        return resolve_vocabulary
    raise AttributeError(f"module 'yw_ext.scale' has no attribute {name!r}")


__all__ = ["EXTRA_MODULES", "INSTALL_HINT", "check_extras", "detect_dataset", "list_images", "partition",
           "read_results", "resolve_vocabulary"]
