# yw_ext, AGPL-3.0 license
"""LVIS evaluation with the LVIS API: fixed AP (Dave et al. 2021) and standard AP, on a detection array.

**Fixed AP** is the metric of YOLO-World's (and GLIP's, MDETR's, YOLOE's) LVIS minival tables:

1. inference keeps many low-scoring boxes: score >= ``FIXED_AP_CONF`` (0.001), up to ``FIXED_AP_PER_IMAGE``
   (1000) per image after NMS, as the official evaluation config does;
2. over the whole dataset, each category keeps only its ``FIXED_AP_PER_CLASS`` (10,000) highest-scoring
   detections, and no per-image cap is applied (``LVISResults(..., max_dets=-1)``);
3. the LVIS API's federated evaluation (``lvis.LVISEval``, bbox) gives AP, AP50, AP75, APs/m/l and APr/APc/APf.

**Standard LVIS AP** keeps the 300 highest-scoring detections per image (``STANDARD_PER_IMAGE``, the LVIS API
default) and no per-class cap.

Detections travel as one ``(N, 7)`` float64 array, columns ``DET_COLUMNS``: image id, category id, box
``x, y, w, h`` (top-left corner and size in original-image pixels, COCO / LVIS convention) and score. Caps keep the
highest scores; equal scores are kept in array order (a stable sort).

Requires the ``lvis`` package (``pip install 'yw_ext[lvis]'``, i.e. ``lvis`` and ``pycocotools``). Its last release
(0.5.3) uses ``np.float``, which NumPy 1.24 removed (lvis-dataset/lvis-api#37, fixed on its main branch but not
released): while ``LVISEval`` runs, ``np.float`` is set to the builtin ``float`` it aliased, then removed again.

This module is torch-free.

Examples:
    >>> import numpy as np
    >>> dets = np.array([[1, 1, 0, 0, 10, 10, 0.9], [1, 1, 5, 5, 10, 10, 0.8], [2, 1, 0, 0, 4, 4, 0.7]])
    >>> cap_detections(dets, max_per_class=2)[:, 6].tolist()
    [0.9, 0.8]
    >>> result = evaluate_lvis("lvis_v1_minival.json", dets)  # doctest: +SKIP
    >>> result.metrics["APr"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from yw_ext.eval.lvis_data import gt_counts, load_lvis_json

FIXED_AP_PER_CLASS = 10_000
"""Detections kept per category over the whole dataset (fixed AP, Dave et al. 2021)."""
FIXED_AP_PER_IMAGE = 1000
"""Detections kept per image after NMS, before the per-class cap (the official evaluation's ``max_per_img``)."""
FIXED_AP_CONF = 0.001
"""Score threshold of the fixed-AP inference (the official evaluation's ``score_thr``)."""
STANDARD_PER_IMAGE = 300
"""Detections kept per image for standard LVIS AP (the LVIS API's ``max_dets``)."""
DET_COLUMNS = ("image_id", "category_id", "x", "y", "w", "h", "score")
METRIC_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
INSTALL_HINT = ("LVIS evaluation needs the 'lvis' package (the LVIS API) and pycocotools: "
                "pip install 'yw_ext[lvis]'  (or: pip install lvis pycocotools).")  # fmt: skip


def require_lvis() -> tuple[Any, Any, Any]:
    """``(LVIS, LVISEval, LVISResults)`` from the ``lvis`` package.

    Raises:
        ImportError: ``lvis`` (or its ``pycocotools`` dependency) is not installed; the message says how to install.

    Examples:
        >>> LVIS, LVISEval, LVISResults = require_lvis()  # doctest: +SKIP
    """
    try:
        from lvis import LVIS, LVISEval, LVISResults
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from e
    return LVIS, LVISEval, LVISResults


def _top_k(groups: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (ascending) of the ``k`` highest scores of each group; ties kept in index order."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(n), -scores, groups))  # by group, then score descending, then index
    g = groups[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]  # first position of each group in `order`
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))  # position within its group
    return np.sort(order[rank < k])


def cap_detections(dets: np.ndarray, max_per_class: int | None = None, max_per_image: int | None = None) -> np.ndarray:
    """Keep the ``max_per_image`` best detections of each image, then the ``max_per_class`` best of each category.

    Args:
        dets: ``(N, 7)`` detections (``DET_COLUMNS``).
        max_per_class: Per-category cap over the whole array (None: no cap).
        max_per_image: Per-image cap (None: no cap).

    Returns:
        The kept rows, in their original order.

    Examples:
        >>> d = np.array([[1, 3, 0, 0, 1, 1, .2], [2, 3, 0, 0, 1, 1, .5], [2, 4, 0, 0, 1, 1, .1]])
        >>> cap_detections(d, max_per_class=1)[:, 6].tolist()
        [0.5, 0.1]
        >>> cap_detections(d, max_per_image=1)[:, 6].tolist()
        [0.2, 0.5]
    """
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, len(DET_COLUMNS))  # (N, 7)
    for column, k in ((0, max_per_image), (1, max_per_class)):
        if k is not None:
            if k < 1:
                raise ValueError(f"detection caps must be positive integers, got {k}.")
            dets = dets[_top_k(dets[:, column], dets[:, 6], int(k))]
    return dets


def to_results(dets: np.ndarray) -> list[dict]:
    """COCO / LVIS results list (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of a detection array.

    Examples:
        >>> to_results(np.array([[1, 2, 0.5, 1, 2, 3, 0.25]]))
        [{'image_id': 1, 'category_id': 2, 'bbox': [0.5, 1.0, 2.0, 3.0], 'score': 0.25}]
    """
    return [{"image_id": int(d[0]), "category_id": int(d[1]), "bbox": [float(v) for v in d[2:6]], "score": float(d[6])}
            for d in dets]  # fmt: skip


@contextlib.contextmanager
def numpy_float_alias() -> Iterator[None]:
    """Give NumPy back its removed ``np.float`` alias (= ``float``) for the duration; the lvis 0.5.3 API needs it."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


@contextlib.contextmanager
def _quiet_lvis() -> Iterator[None]:
    """Only errors from the ``lvis`` loggers (it warns "Assuming user provided the results in correct format")."""
    log = logging.getLogger("lvis")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def lvis_api(gt: dict) -> Any:
    """An ``lvis.LVIS`` index over an already loaded (and checked) annotation dict, without reading the file again.

    ``LVIS.__init__`` only reads the JSON and indexes it; this does the same for a dict (one parse of a large file).
    """
    LVIS, _, _ = require_lvis()
    api = LVIS.__new__(LVIS)
    api.logger = logging.getLogger("lvis.lvis")
    api.dataset = gt
    api._create_index()
    return api


@dataclass
class LVISResult:
    """What one LVIS evaluation gives.

    Attributes:
        metrics: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``APr``, ``APc``, ``APf`` (and ``AR``), from
            the LVIS API; -1 where a group has no ground truth (the LVIS API's convention).
        per_class: One dict per category: ``category_id``, ``name``, ``frequency``, ``instances``, ``images``,
            ``detections`` (evaluated), ``ap`` (NaN without ground truth in the evaluated images).
        detections: The evaluated ``(M, 7)`` detections (after the caps).
        fixed: Fixed AP (per-class cap, no per-image cap) or standard AP.
        max_per_class: The per-class cap (None: none).
        max_per_image: The per-image cap (None: none).
        images: Number of images evaluated.
    """

    metrics: dict[str, float]
    per_class: list[dict] = field(repr=False)
    detections: np.ndarray = field(repr=False)
    fixed: bool = True
    max_per_class: int | None = FIXED_AP_PER_CLASS
    max_per_image: int | None = None
    images: int = 0


def evaluate_lvis(
    gt: str | os.PathLike | dict,
    dets: np.ndarray,
    image_ids: list[int] | None = None,
    fixed: bool = True,
    max_per_class: int | None = FIXED_AP_PER_CLASS,
    max_per_image: int | None = None,
) -> LVISResult:
    """Evaluate detections against LVIS ground truth with the LVIS API: fixed AP (default) or standard AP.

    Args:
        gt: LVIS annotation JSON path, or its loaded dict (checked with ``check_lvis_fields`` when a path).
        dets: ``(N, 7)`` detections (``DET_COLUMNS``); image and category ids as in ``gt``.
        image_ids: The images evaluated (default: all of ``gt``); ground truth of other images is not used.
        fixed: True: cap ``max_per_class`` per category over the dataset, no per-image cap. False: standard LVIS
            AP, ``max_per_image`` (default ``STANDARD_PER_IMAGE``) per image and no per-class cap.
        max_per_class: Per-category cap of fixed AP (default 10,000).
        max_per_image: Per-image cap; with ``fixed=True`` an extra cap applied first (default none).

    Returns:
        ``LVISResult``.

    Raises:
        ImportError: the ``lvis`` package is missing (with the install command).
        LVISFormatError: ``gt`` lacks LVIS fields.
        ValueError: detections of images or categories that ``gt`` does not have.

    Examples:
        >>> r = evaluate_lvis("lvis_v1_minival.json", dets)  # doctest: +SKIP
        >>> r.metrics["AP"], r.metrics["APr"]  # doctest: +SKIP
    """
    _, LVISEval, LVISResults = require_lvis()
    if not isinstance(gt, dict):
        gt = load_lvis_json(gt)
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, len(DET_COLUMNS))  # (N, 7)
    _check_ids(gt, dets, image_ids)
    ids = sorted({int(i) for i in (image_ids if image_ids is not None else (im["id"] for im in gt["images"]))})
    dets = dets[np.isin(dets[:, 0], ids)]
    if not fixed:
        max_per_class, max_per_image = None, max_per_image or STANDARD_PER_IMAGE
    dets = cap_detections(dets, max_per_class=max_per_class, max_per_image=max_per_image)
    api = lvis_api(gt)
    if len(dets):
        with numpy_float_alias(), _quiet_lvis():
            evaluator = LVISEval(api, LVISResults(api, to_results(dets), max_dets=-1), iou_type="bbox")
            evaluator.params.img_ids = ids
            evaluator.run()
        metrics = {k: float(v) for k, v in evaluator.get_results().items() if k in METRIC_KEYS}
        metrics["AR"] = float(evaluator.results[f"AR@{evaluator.params.max_dets}"])
        ap = _per_class_ap(evaluator.eval["precision"], evaluator.params.cat_ids)
    else:
        metrics, ap = {k: 0.0 for k in (*METRIC_KEYS, "AR")}, {}
    rows = _per_class_rows(gt, dets, ids, ap)
    return LVISResult(metrics, rows, dets, fixed, max_per_class, max_per_image, len(ids))


def _check_ids(gt: dict, dets: np.ndarray, image_ids: list[int] | None) -> None:
    """Detections and ``image_ids`` must use ids of ``gt`` (else the image or class mapping is wrong)."""
    img_ids = {int(im["id"]) for im in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    for what, found, known in (("image", set(dets[:, 0].astype(np.int64).tolist()) | set(image_ids or []), img_ids),
                               ("category", set(dets[:, 1].astype(np.int64).tolist()), cat_ids)):  # fmt: skip
        unknown = sorted(found - known)
        if unknown:
            raise ValueError(f"{len(unknown)} {what} id(s) are not in the LVIS ground truth (e.g. {unknown[:5]}); the "
                             f"{what}s of the dataset and of the annotation JSON do not match.")


def _per_class_ap(precision: np.ndarray, cat_ids: list[int]) -> dict[int, float]:
    """Per category, the mean of its (IoU x recall) precision at area 'all' (as LVIS's AP), NaN without GT."""
    out = {}
    for k, c in enumerate(cat_ids):
        p = precision[:, :, k, 0]  # (T IoU thresholds, R recall thresholds), area 'all'
        out[int(c)] = float(np.mean(p[p > -1])) if (p > -1).any() else float("nan")
    return out


def _per_class_rows(gt: dict, dets: np.ndarray, ids: list[int], ap: dict[int, float]) -> list[dict]:
    """Per-class rows of an ``LVISResult`` (category order)."""
    counts = gt_counts(gt, set(ids))
    n_det = dict(zip(*np.unique(dets[:, 1].astype(np.int64), return_counts=True))) if len(dets) else {}
    rows = []
    for c in sorted(gt["categories"], key=lambda c: int(c["id"])):
        cid = int(c["id"])
        inst, imgs = counts.get(cid, (0, 0))
        rows.append({"category_id": cid, "name": c.get("name", str(cid)), "frequency": c["frequency"],
                     "instances": inst, "images": imgs, "detections": int(n_det.get(cid, 0)),
                     "ap": ap.get(cid, float("nan") if inst == 0 else 0.0)})  # fmt: skip
    return rows


__all__ = ["DET_COLUMNS", "FIXED_AP_CONF", "FIXED_AP_PER_CLASS", "FIXED_AP_PER_IMAGE", "INSTALL_HINT", "LVISResult",
           "METRIC_KEYS", "STANDARD_PER_IMAGE", "cap_detections", "evaluate_lvis", "lvis_api", "numpy_float_alias",
           "require_lvis", "to_results"]  # fmt: skip
