"""Image lists for batch detection: a folder, a glob, a list, a ``.txt`` list, or a Parquet / CSV column; partitions.

Examples:
    >>> partition(["a.jpg", "b.jpg", "c.jpg"], 2)
    [['a.jpg', 'b.jpg'], ['c.jpg']]
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Sequence

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".jp2", ".png", ".pbm", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
"""Image files picked from folders and globs (what OpenCV decodes)."""


def _column(path: Path, column: str) -> list[str]:
    """The ``column`` of a Parquet or CSV file as strings; relative paths are taken relative to the file's folder."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(path).names
        if column not in names:
            raise ValueError(f"{path} has no column {column!r} (columns: {names}); pass column=...")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    else:
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if column not in (reader.fieldnames or []):
                raise ValueError(f"{path} has no column {column!r} (columns: {reader.fieldnames}); pass column=...")
            values = [row[column] for row in reader]
    return [str(v if os.path.isabs(str(v)) else path.parent / str(v)) for v in values if v not in (None, "")]


def list_images(source: Any, column: str = "path") -> list[str]:
    """The image paths of ``source``, in a deterministic order.

    Args:
        source: A folder (its image files, sorted, not recursive, as Ultralytics), a glob (``"data/**/*.jpg"``,
            recursive), a list of paths, a ``.txt`` file with one path per line, or a ``.parquet`` / ``.csv`` file
            with a column of paths.
        column: The column of a Parquet / CSV ``source``.

    Returns:
        Paths as strings (folder / glob results sorted; lists and columns in their own order).

    Raises:
        FileNotFoundError: a folder or file that does not exist, or a glob that matches nothing.
        ValueError: no images, or a missing column.

    Examples:
        >>> list_images(["b.jpg", "a.jpg"])
        ['b.jpg', 'a.jpg']
    """
    if isinstance(source, (list, tuple)):
        paths = [str(p) for p in source]
    else:
        s = str(source)
        p = Path(s)
        if any(c in s for c in "*?[") and not p.exists():
            paths = sorted(q for q in glob.glob(s, recursive=True) if Path(q).suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise FileNotFoundError(f"source glob {s!r} matches no image files.")
        elif p.is_dir():
            paths = sorted(str(q) for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file() and p.suffix.lower() in {".parquet", ".csv"}:
            paths = _column(p, column)
        elif p.is_file() and p.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            paths = [str(q if os.path.isabs(q) else p.parent / q) for q in lines]
        elif p.is_file():
            paths = [s]
        else:
            raise FileNotFoundError(f"source not found: {s} (a folder, glob, list, .txt, .parquet or .csv).")
    if not paths:
        raise ValueError(f"source {source!r} holds no images (suffixes {sorted(IMAGE_SUFFIXES)}).")
    return paths


def partition(paths: Sequence[str], size: int) -> list[list[str]]:
    """Split ``paths`` into consecutive partitions of ``size`` (the last may be shorter).

    Raises:
        ValueError: ``size`` < 1.

    Examples:
        >>> [len(p) for p in partition([str(i) for i in range(130)], 64)]
        [64, 64, 2]
    """
    size = int(size)
    if size < 1:
        raise ValueError(f"partition_size must be >= 1, got {size}.")
    return [list(paths[i : i + size]) for i in range(0, len(paths), size)]


__all__ = ["IMAGE_SUFFIXES", "list_images", "partition"]
