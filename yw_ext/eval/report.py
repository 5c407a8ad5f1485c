# yw_ext, AGPL-3.0 license
"""Files and log lines of an LVIS evaluation: the predictions JSON, the per-class AP CSV, a printed summary.

Both files are written atomically (``yw_ext.core.io``). Torch-free.

Examples:
    >>> from yw_ext.eval.fixed_ap import evaluate_lvis
    >>> result = evaluate_lvis("lvis_v1_minival.json", dets)  # doctest: +SKIP
    >>> write_predictions_json("runs/val/lvis_predictions.json", result.detections)  # doctest: +SKIP
    >>> write_per_class_csv("runs/val/lvis_per_class_ap.csv", result.per_class)  # doctest: +SKIP
    >>> print(summary(result))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from yw_ext.core.io import atomic_write
from yw_ext.eval.fixed_ap import METRIC_KEYS, to_results

CSV_COLUMNS = ("category_id", "name", "frequency", "instances", "images", "detections", "ap")


def write_predictions_json(path: str | os.PathLike, dets: np.ndarray) -> Path:
    """Write detections as a COCO / LVIS results JSON (list of ``image_id``, ``category_id``, ``bbox``, ``score``).

    The file is what ``lvis.LVISResults`` (and pycocotools' ``loadRes``) read, so the evaluation can be rerun on it.

    Examples:
        >>> p = write_predictions_json("/tmp/yw_eval_doctest.json", np.array([[1, 2, 0, 0, 3, 4, 0.5]]))
        >>> json.loads(p.read_text())[0]["bbox"]
        [0.0, 0.0, 3.0, 4.0]
    """
    return atomic_write(path, lambda f: json.dump(to_results(dets), f), mode="w")


def write_per_class_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write per-class AP rows (``CSV_COLUMNS``; AP empty where a class has no ground truth).

    Examples:
        >>> rows = [{"category_id": 1, "name": "a", "frequency": "r", "instances": 2, "images": 1, "detections": 3,
        ...          "ap": 0.5}]
        >>> write_per_class_csv("/tmp/yw_eval_doctest.csv", rows).read_text().splitlines()[1]
        '1,a,r,2,1,3,0.500000'
    """

    def write(f: Any) -> None:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            ap = r["ap"]
            w.writerow([*(r[k] for k in CSV_COLUMNS[:-1]), "" if math.isnan(ap) else f"{ap:.6f}"])

    return atomic_write(path, write, mode="w")


def summary(result: Any, images_per_s: float | None = None) -> str:
    """Log lines for an ``LVISResult``: the protocol and its caps, then AP, AP50, ... APf on one line.

    Examples:
        >>> from yw_ext.eval.fixed_ap import LVISResult
        >>> r = LVISResult({k: 0.25 for k in METRIC_KEYS}, [], np.zeros((0, 7)), images=5)
        >>> print(summary(r))  # doctest: +NORMALIZE_WHITESPACE
        LVIS fixed AP (top 10000 detections per class over the dataset, no per-image cap), 5 images, 0 detections:
        AP 25.0  AP50 25.0  AP75 25.0  APs 25.0  APm 25.0  APl 25.0  APr 25.0  APc 25.0  APf 25.0
    """
    if result.fixed:
        how = f"fixed AP (top {result.max_per_class} detections per class over the dataset, " + (
            f"at most {result.max_per_image} per image)" if result.max_per_image else "no per-image cap)")
    else:
        how = f"standard AP (top {result.max_per_image} detections per image)"
    speed = f", {images_per_s:.1f} images/s" if images_per_s else ""
    values = "  ".join(f"{k} {_pct(result.metrics[k])}" for k in METRIC_KEYS)
    return f"LVIS {how}, {result.images} images, {len(result.detections)} detections{speed}:\n{values}"


def _pct(v: float) -> str:
    """An AP in percent with one decimal, ``-`` for the LVIS API's -1 (no ground truth in that group)."""
    return "-" if v < 0 else f"{100 * v:.1f}"


__all__ = ["CSV_COLUMNS", "summary", "write_per_class_csv", "write_predictions_json"]
