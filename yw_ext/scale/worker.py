"""What runs on a Dask worker: a per-process model cache and one partition's detection.

The cache holds ``yw_ext.runtime.Detector`` objects keyed by (model file, providers, threads, vocabulary hash), so
a worker loads the model and sets the vocabulary once, however many partitions (and threads) it runs. The
vocabulary arrives as embeddings (``vocabulary.payload``): nothing is re-encoded on a worker.

A partition is decoded and detected in windows of ``4 * batch`` images; inside a window, images of the same size are
batched together, so letterboxing is Ultralytics' minimal ``rect`` padding, as single-image ``predict``.

Examples:
    >>> detect_partition(0, ["a.jpg"], "out/part-00000.parquet", {"model": "dv.onnx"}, None, {})  # doctest: +SKIP
    {'index': 0, 'images': 1, 'detections': 3, 'errors': 0, 'seconds': 0.1, 'labels': 0}
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any, Sequence

from yw_ext.scale.writers import detection_row, write_labels, write_partition

_MODELS: OrderedDict[tuple, Any] = OrderedDict()
_LOCK = threading.Lock()
CACHE_SIZE = 2  # models kept per worker process (a new vocabulary replaces the oldest)


def get_detector(spec: dict[str, Any], vocab: dict | None) -> Any:
    """The worker's ``Detector`` for ``spec`` (``model``, ``providers``, ``threads``) and ``vocab``, loaded once.

    Examples:
        >>> det = get_detector({"model": "dv.onnx"}, None)  # doctest: +SKIP
    """
    key = (str(spec["model"]), tuple(spec.get("providers") or ()), spec.get("threads"),
           vocab["key"] if vocab else None)
    with _LOCK:
        det = _MODELS.get(key)
        if det is None:
            from yw_ext.runtime import Detector

            det = Detector(spec["model"], providers=spec.get("providers"), threads=spec.get("threads"))
            if vocab is not None:
                det.set_classes(vocab["names"], embeddings=vocab["embeddings"])  # (K, G, D), no text encoding
            _MODELS[key] = det
            while len(_MODELS) > CACHE_SIZE:
                _MODELS.popitem(last=False)
        else:
            _MODELS.move_to_end(key)
    return det


def cache_info() -> dict[str, Any]:
    """The keys of the models cached in this process (for tests and diagnostics)."""
    with _LOCK:
        return {"models": [k[0] for k in _MODELS], "vocabularies": [k[3] for k in _MODELS]}


def _decode(paths: Sequence[str]) -> list[tuple[Any, str | None]]:
    """``(image or None, error or None)`` per path (an unreadable image is recorded, not fatal)."""
    from yw_ext.runtime.ops import load_image

    out = []
    for p in paths:
        try:
            out.append((load_image(p), None))
        except (OSError, ValueError) as e:
            out.append((None, f"{type(e).__name__}: {e}"))
    return out


def detect_window(det: Any, paths: Sequence[str], opts: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for ``paths``: decode, group by image size, detect each group in batches, keep the input order."""
    decoded = _decode(paths)
    groups: dict[tuple, list[int]] = {}
    for i, (im, _) in enumerate(decoded):
        if im is not None:
            groups.setdefault(im.shape, []).append(i)
    dets: dict[int, Any] = {}
    kw = {k: opts[k] for k in ("conf", "iou", "max_det", "imgsz") if opts.get(k) is not None}
    for idx in groups.values():
        out = det.predict([decoded[i][0] for i in idx], batch=int(opts.get("batch") or 8), **kw)
        dets.update(zip(idx, out))
    rows = []
    for i, (p, (im, err)) in enumerate(zip(paths, decoded)):
        if err is not None:
            rows.append(detection_row(p, None, error=err))
        else:
            d = dets[i]
            rows.append(detection_row(p, im.shape[:2], d.boxes, d.scores, d.class_ids, d.names))
    return rows


def detect_partition(index: int, paths: Sequence[str], out_file: str, spec: dict[str, Any], vocab: dict | None,
                     opts: dict[str, Any]) -> dict[str, Any]:
    """Detect one partition and write its Parquet file (last, atomically: its existence means done).

    Args:
        index: Partition number.
        paths: Its image paths.
        out_file: The ``part-NNNNN.parquet`` to write.
        spec: ``{"model", "providers", "threads"}`` for ``get_detector``.
        vocab: ``vocabulary.payload(...)`` or None (the model's own vocabulary).
        opts: ``conf``, ``iou``, ``max_det``, ``imgsz``, ``batch``, ``labels_dir``, ``root``.

    Returns:
        ``{"index", "images", "detections", "errors", "labels", "seconds"}``.
    """
    t0 = time.perf_counter()
    det = get_detector(spec, vocab)
    step = 4 * max(1, int(opts.get("batch") or 8))
    rows: list[dict[str, Any]] = []
    for i in range(0, len(paths), step):
        rows.extend(detect_window(det, paths[i : i + step], opts))
    labels = write_labels(rows, opts.get("root"), opts["labels_dir"]) if opts.get("labels_dir") else 0
    write_partition(rows, out_file)
    return {
        "index": index,
        "images": len(rows),
        "detections": sum(len(r["scores"]) for r in rows),
        "errors": sum(r["error"] is not None for r in rows),
        "labels": labels,
        "seconds": time.perf_counter() - t0,
    }


__all__ = ["CACHE_SIZE", "cache_info", "detect_partition", "detect_window", "get_detector"]
