"""Outputs of batch detection: one Parquet file per partition, and YOLO label files, each written atomically.

Parquet columns (one row per image): ``path``, ``width``, ``height``, ``boxes`` (list of ``[x1, y1, x2, y2]`` in
original pixels), ``scores``, ``class_ids``, ``class_names``, ``error`` (null, or why the image was skipped).

Examples:
    >>> import numpy as np
    >>> yolo_lines(np.array([[10, 20, 30, 60]], np.float32), np.array([2]), (100, 200))
    '2 0.100000 0.400000 0.100000 0.400000\\n'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yw_ext.core.io import atomic_path, atomic_write

COLUMNS = ("path", "width", "height", "boxes", "scores", "class_ids", "class_names", "error")


def schema():
    """The pyarrow schema of a partition file."""
    import pyarrow as pa

    return pa.schema([
        ("path", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))), ("scores", pa.list_(pa.float32())),
        ("class_ids", pa.list_(pa.int32())), ("class_names", pa.list_(pa.string())), ("error", pa.string()),
    ])  # fmt: skip


def detection_row(path: str, shape: tuple[int, int] | None, boxes: np.ndarray | None = None,
                  scores: np.ndarray | None = None, class_ids: np.ndarray | None = None,
                  names: dict[int, str] | None = None, error: str | None = None) -> dict[str, Any]:
    """One image's row (``shape`` is ``(h, w)``; an unreadable image has ``error`` and empty lists)."""
    boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes, np.float32).reshape(-1, 4)
    ids = np.zeros(0, np.int64) if class_ids is None else np.asarray(class_ids, np.int64)
    return {
        "path": str(path),
        "width": None if shape is None else int(shape[1]),
        "height": None if shape is None else int(shape[0]),
        "boxes": boxes.tolist(),
        "scores": ([] if scores is None else np.asarray(scores, np.float32).tolist()),
        "class_ids": ids.tolist(),
        "class_names": [(names or {}).get(int(i), str(int(i))) for i in ids],
        "error": error,
    }


def write_partition(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write rows as one Parquet file, atomically (a temporary name, then ``os.replace``).

    Examples:
        >>> write_partition([detection_row("a.jpg", (480, 640))], "/tmp/yw_part_doctest.parquet").name
        'yw_part_doctest.parquet'
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(list(rows), schema=schema())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def yolo_lines(boxes: np.ndarray, class_ids: np.ndarray, shape: tuple[int, int]) -> str:
    """YOLO label text: ``class cx cy w h`` per box, normalised by the image ``shape`` ``(h, w)``."""
    h, w = shape
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cxcywh = np.c_[(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                   (b[:, 3] - b[:, 1]) / h]  # (N, 4)
    return "".join(f"{int(c)} {x:.6f} {y:.6f} {bw:.6f} {bh:.6f}\n" for c, (x, y, bw, bh) in zip(class_ids, cxcywh))


def label_path(image: str, root: str | None, labels_dir: str | os.PathLike) -> Path:
    """``labels_dir / <image path relative to root>.txt`` (the image's name alone when it is not under ``root``).

    Examples:
        >>> label_path("/data/a/x.jpg", "/data", "labels").as_posix()
        'labels/a/x.txt'
    """
    rel = Path(image).name
    if root:
        try:
            rel = os.path.relpath(image, root)
        except ValueError:  # another drive
            pass
        if rel.startswith(".."):
            rel = Path(image).name
    return Path(labels_dir) / Path(rel).with_suffix(".txt")


def write_labels(rows: Sequence[dict[str, Any]], root: str | None, labels_dir: str | os.PathLike) -> int:
    """One YOLO ``.txt`` per readable image (empty for no detections), atomically; returns the number written."""
    n = 0
    for r in rows:
        if r["error"] is None:
            text = yolo_lines(np.asarray(r["boxes"], np.float32), r["class_ids"], (r["height"], r["width"]))
            atomic_write(label_path(r["path"], root, labels_dir), lambda f, t=text: f.write(t), mode="w")
            n += 1
    return n


def write_class_names(names: dict[int, str], labels_dir: str | os.PathLike) -> Path:
    """``classes.txt`` (one name per line, in class-id order) next to the labels, for training YAMLs."""
    text = "".join(f"{names[i]}\n" for i in sorted(names))
    return atomic_write(Path(labels_dir) / "classes.txt", lambda f: f.write(text), mode="w")


__all__ = ["COLUMNS", "detection_row", "label_path", "schema", "write_class_names", "write_labels",
           "write_partition", "yolo_lines"]
