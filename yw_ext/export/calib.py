"""INT8 calibration data: letterboxed image batches (numpy + OpenCV) from a dataset YAML, a folder or a file list.

Used by TensorRT INT8 engines (``yw_ext.export.tensorrt``) and ONNX Runtime static quantisation
(``yw_ext.export.quant``). Images go through exactly the inference pre-processing (``yw_ext.runtime.ops``:
Ultralytics' ``LetterBox`` to the export size, RGB, float32 in [0, 1]) so calibration sees what the deployed
model sees.

Examples:
    >>> batches = calibration_batches("../shared/data/coco128/coco128.yaml", imgsz=640, batch=8)  # doctest: +SKIP
    >>> next(batches).shape  # doctest: +SKIP
    (8, 3, 640, 640)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

IMG_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_SUFFIXES and p.is_file())


def _from_yaml(path: Path, split: str) -> list[Path]:
    """Images of a dataset YAML's split (``path:`` + ``train`` / ``val``, Ultralytics style; relative to the YAML)."""
    import yaml

    d = yaml.safe_load(path.read_text()) or {}
    root = Path(d.get("path") or path.parent)
    if not root.is_absolute():
        root = (path.parent / root) if (path.parent / root).exists() else Path.cwd() / root
    entries = d.get(split) or d.get("val") or d.get("train")
    if entries is None:
        raise ValueError(f"{path}: no '{split}', 'val' or 'train' entry to take calibration images from.")
    files: list[Path] = []
    for e in entries if isinstance(entries, (list, tuple)) else [entries]:
        p = Path(e) if Path(e).is_absolute() else root / e
        if p.is_dir():
            files += _images_in(p)
        elif p.suffix == ".txt" and p.is_file():  # Ultralytics list file
            files += [Path(x) if Path(x).is_absolute() else root / x for x in p.read_text().split()]
    return files


def calibration_images(data: Any, split: str = "val") -> list[Path]:
    """The calibration image files of ``data``.

    Args:
        data: A dataset YAML (``coco128.yaml``: its ``val`` split, else ``train``), a folder of images, or a list of
            image paths.
        split: YAML split to use.

    Raises:
        ValueError: ``data`` is None or holds no images (INT8 needs calibration data).
        FileNotFoundError: ``data`` does not exist.

    Examples:
        >>> len(calibration_images("../shared/data/coco128/coco128.yaml"))  # doctest: +SKIP
        128
    """
    if data is None or (isinstance(data, str) and not data.strip()):
        raise ValueError("INT8 needs calibration images: pass data= a dataset YAML (e.g. coco128.yaml), a folder of "
                         "images or a list of image files (a few hundred representative images).")
    if isinstance(data, (list, tuple)):
        files = [Path(p) for p in data]
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"calibration images not found: {missing[:5]}")
    else:
        p = Path(os.path.expanduser(str(data)))
        if not p.exists():
            raise FileNotFoundError(f"calibration data not found: {p} (a dataset YAML, a folder of images or a list "
                                    "of images; nothing is downloaded for calibration).")
        files = _from_yaml(p, split) if p.suffix in {".yaml", ".yml"} else _images_in(p) if p.is_dir() else [p]
    files = [f for f in files if f.suffix.lower() in IMG_SUFFIXES]
    if not files:
        raise ValueError(f"no calibration images found in {data!r}: INT8 needs at least one image.")
    return files


def check_calibration_source(data: Any) -> int:
    """Raise early (before any export work) if ``data`` cannot provide calibration images; returns their count."""
    return len(calibration_images(data))


def calibration_batches(
    data: Any,
    imgsz: int | Sequence[int],
    batch: int = 8,
    n_images: int | None = 512,
    stride: int = 32,
    split: str = "val",
) -> Iterator[np.ndarray]:
    """Letterboxed calibration batches ``(batch, 3, H, W)`` float32 RGB in [0, 1] (the inference pre-processing).

    Args:
        data: See ``calibration_images``.
        imgsz: Export size ``(h, w)`` or an int.
        batch: Images per batch. Every batch has exactly ``batch`` images (the calibrator declares that shape):
            an incomplete last batch is dropped, and fewer images than ``batch`` are repeated to fill one batch.
        n_images: Most images used (None: all).
        stride: Model stride (letterbox without ``auto``: the full export size).
        split: YAML split.

    Yields:
        ``(batch, 3, H, W)`` float32 arrays.

    Examples:
        >>> x = next(calibration_batches(["bus.jpg"], imgsz=64, batch=4))  # doctest: +SKIP
        >>> x.shape, x.dtype  # one image, repeated to fill the batch  # doctest: +SKIP
        ((4, 3, 64, 64), dtype('float32'))
    """
    from yw_ext.runtime.ops import letterbox, load_image, preprocess

    files = calibration_images(data, split)[: n_images or None]
    batch = max(1, int(batch))
    if len(files) < batch:  # repeat the images: a shorter batch would not have the shape the consumer declared
        files = [files[i % len(files)] for i in range(batch)]
    size = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, np.integer)) else tuple(int(v) for v in imgsz)
    for i in range(0, len(files) - batch + 1, batch):
        ims = [letterbox(load_image(f), size, auto=False, stride=stride)[0] for f in files[i : i + batch]]
        yield preprocess(ims)


__all__ = ["calibration_images", "calibration_batches", "check_calibration_source", "IMG_SUFFIXES"]
