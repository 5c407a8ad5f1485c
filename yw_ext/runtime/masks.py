"""Instance masks of exported YOLO-World-Seg models, in numpy + OpenCV only (no torch, no ultralytics).

A seg export gives, per kept detection, ``nm`` mask coefficients, and per image ``nm`` prototypes at a quarter of the
input size. ``process_mask_native`` reproduces Ultralytics 8.4's ``ops.process_mask_native`` (the predictor's
``retina_masks=True`` path): mask logits ``coeffs @ protos`` at prototype resolution, bilinear upsampling (by the
smallest factor 1, 2 or 4 that crops the letterbox padding on whole pixels), the padding cropped, a bilinear resize
to the original image, ``> 0``, then every pixel outside the detection's box (original pixels) zeroed. Bilinear is
OpenCV's ``INTER_LINEAR`` on float32 (half-pixel centres, as ``F.interpolate(..., align_corners=False)``).

Examples:
    >>> protos = np.zeros((2, 8, 8), np.float32); protos[0] = 1.0
    >>> m = process_mask_native(protos, np.array([[1.0, 0.0]], np.float32), np.array([[0, 0, 16, 8]]), (32, 32))
    >>> m.shape, int(m.sum())
    ((1, 32, 32), 128)
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from yw_ext.runtime.ops import best_class_nms_index, end2end_rows



def crop_mask(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Zero every pixel of ``masks`` ``(N, H, W)`` outside its xyxy box ``(N, 4)`` (pixel ``i`` kept if ``x1 <= i <
    x2``), in place, as Ultralytics' ``crop_mask``.

    Examples:
        >>> crop_mask(np.ones((1, 2, 4), bool), np.array([[1.0, 0.0, 3.0, 1.0]])).astype(int).tolist()
        [[[0, 1, 1, 0], [0, 0, 0, 0]]]
    """
    _, h, w = masks.shape
    b = boxes.astype(np.float32)[:, :, None, None]  # (N, 4, 1, 1)
    cols = np.arange(w, dtype=np.float32)[None, None, :]  # (1, 1, W)
    rows = np.arange(h, dtype=np.float32)[None, :, None]  # (1, H, 1)
    masks &= (cols >= b[:, 0]) & (cols < b[:, 2])
    masks &= (rows >= b[:, 1]) & (rows < b[:, 3])
    return masks


def _content(in_hw: Sequence[int], out_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of an ``out_hw`` image letterboxed into ``in_hw`` (Ultralytics' ``scale_masks``)."""
    (h1, w1), (h0, w0) = in_hw, out_hw
    gain = min(h1 / h0, w1 / w0)
    pad_w, pad_h = (w1 - max(round(w0 * gain), 1)) / 2, (h1 - max(round(h0 * gain), 1)) / 2
    top, left = round(pad_h - 0.1), round(pad_w - 0.1)
    return top, top + max(round(h0 * gain), 1), left, left + max(round(w0 * gain), 1)


def _resize(x: np.ndarray, hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of ``(h, w)`` float32 to ``hw`` (OpenCV takes (width, height))."""
    return cv2.resize(x, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)


def process_mask_native(protos: np.ndarray, coeffs: np.ndarray, boxes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Binary instance masks at the original image size (Ultralytics' ``process_mask_native``; module notes).

    Args:
        protos: ``(nm, mh, mw)`` prototypes of one image (input size = 4 x prototype size).
        coeffs: ``(N, nm)`` mask coefficients of its kept detections.
        boxes: ``(N, 4)`` xyxy boxes in original-image pixels.
        shape: Original image ``(H, W)``.

    Returns:
        ``(N, H, W)`` bool masks.

    Examples:
        >>> process_mask_native(np.zeros((32, 40, 40), np.float32), np.zeros((0, 32), np.float32),
        ...                     np.zeros((0, 4)), (120, 90)).shape
        (0, 120, 90)
    """
    nm, mh, mw = protos.shape
    h, w = (int(v) for v in shape[:2])
    masks = np.zeros((len(coeffs), h, w), bool)
    if not len(coeffs):
        return masks
    logits = (coeffs.astype(np.float32) @ protos.reshape(nm, -1).astype(np.float32)).reshape(-1, mh, mw)  # (N, mh, mw)
    gain = min(4 * mh / h, 4 * mw / w)
    pad = (4 * mh - max(round(h * gain), 1)) | (4 * mw - max(round(w * gain), 1))  # input letterbox padding, px
    f = 4 // math.gcd(4, pad | pad // 2)  # smallest upsampling (1, 2 or 4) cropping the padding on whole pixels
    top, bottom, left, right = _content((f * mh, f * mw), (h, w))
    for i, m in enumerate(logits):
        up = _resize(m, (f * mh, f * mw)) if f > 1 else m  # (f mh, f mw)
        crop = up[top:bottom, left:right]
        masks[i] = (_resize(np.ascontiguousarray(crop), (h, w)) if crop.shape != (h, w) else crop) > 0
    return crop_mask(masks, boxes)



def seg_postprocess(y: np.ndarray, nm: int, conf: float, iou: float, max_det: int, agnostic: bool = False,
                    classes: Sequence[int] | None = None, groups: int = 1,
                    end2end: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:  # fmt: skip
    """A seg model's ``output0`` -> per image ``(N, 6)`` rows ``[x1, y1, x2, y2, score, class]`` (input pixels) and
    the ``(N, nm)`` mask coefficients of each.

    Args:
        y: Raw ``(B, 4 + P + nm, A)`` (xywh; P = K x ``groups`` prompts) or, with ``end2end``, the graph's NMS rows
            ``(B, max_det, 6 + nm)`` (xyxy, class = prompt index).
        nm: Mask coefficients per detection.
        conf: Score threshold (``score > conf``).
        iou: NMS IoU threshold (raw outputs; and synonyms of the same class after an NMS graph).
        max_det: Most detections per image.
        agnostic: Class-agnostic NMS.
        classes: Keep only these class ids.
        groups: Prompts per class G of a run-time vocabulary (a class's score is the max over its prompts).
        end2end: ``y`` holds NMS rows.

    Examples:
        >>> y = np.zeros((1, 4 + 2 + 3, 5), np.float32)
        >>> y[0, :, 0] = [50, 50, 20, 20, 0.1, 0.9, 1, 2, 3]
        >>> rows, mc = seg_postprocess(y, 3, 0.25, 0.7, 300)[0]
        >>> rows.astype(float).round(1).tolist(), mc.tolist()
        ([[40.0, 40.0, 60.0, 60.0, 0.9, 1.0]], [[1.0, 2.0, 3.0]])
    """
    out = []
    for p in y:
        if end2end:  # (max_det, 6 + nm): prompts -> classes, filter, dedupe synonyms
            d = end2end_rows(p, conf, iou, groups, agnostic, classes)
            out.append((d[:max_det, :6], d[:max_det, 6:]))
            continue
        c, a = p.shape  # (4 + P + nm, A)
        s = p[4 : c - nm]  # (P, A)
        if groups > 1:
            s = s.reshape(-1, groups, a).max(1)  # (K, A): max over each class's prompts
        j = s.argmax(0)  # (A,)
        best = np.take_along_axis(s, j[None], 0)[0]  # (A,)
        rows, idx = best_class_nms_index(p[:4], best, j, conf, iou, max_det, agnostic, classes)
        out.append((rows, p[c - nm :, idx].T.astype(np.float32)))  # (N, 6), (N, nm)
    return out


__all__ = ["crop_mask", "process_mask_native", "seg_postprocess"]
