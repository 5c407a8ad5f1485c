"""Pre- and post-processing for exported detectors, in numpy + OpenCV only (no torch, no ultralytics).

Every function reproduces the Ultralytics 8.4 step it is named after, so that the runtime's detections equal
``ultralytics`` predictions on the same exported file:

- ``letterbox``: ``ultralytics.data.augment.LetterBox`` (resize keeping the aspect ratio with ``cv2.INTER_LINEAR``,
  centred padding with value 114; ``auto=True`` pads only to a multiple of the stride);
- ``preprocess``: ``BasePredictor.preprocess`` (BGR -> RGB, HWC -> CHW, float32 in [0, 1]);
- ``non_max_suppression``: ``ultralytics.utils.nms.non_max_suppression`` with ``multi_label=False`` (best class per
  box, ``conf > conf_thres``, at most ``max_nms`` boxes by score, class-aware NMS through a ``7680 * class`` box offset,
  greedy suppression of IoU ``> iou_thres`` as ``torchvision.ops.nms``, at most ``max_det`` kept);
- ``scale_boxes``: ``ultralytics.utils.ops.scale_boxes`` (undo the letterbox, clip to the image).

Examples:
    >>> import numpy as np
    >>> im = np.zeros((480, 640, 3), np.uint8)
    >>> lb, (ratio, pad) = letterbox(im, (320, 320))
    >>> lb.shape, ratio, pad
    ((320, 320, 3), (0.5, 0.5), (0, 40))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

MAX_WH = 7680  # Ultralytics' per-class box offset for class-aware NMS (pixels)
MAX_NMS = 30000  # Ultralytics' cap on boxes entering NMS


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``640`` -> ``(640, 640)``; ``(h, w)`` unchanged."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = (int(v) for v in size)
    return h, w


def letterbox(
    image: np.ndarray,
    new_shape: int | Sequence[int],
    auto: bool = False,
    stride: int = 32,
    scaleup: bool = True,
    padding_value: int = 114,
) -> tuple[np.ndarray, tuple[tuple[float, float], tuple[int, int]]]:
    """Resize and pad an HWC image as Ultralytics' ``LetterBox`` (centred, ``cv2.INTER_LINEAR``, value 114).

    Args:
        image: ``(H, W, C)`` image (uint8 BGR as ``cv2.imread``).
        new_shape: Target ``(h, w)`` or one int for a square.
        auto: Pad only to the next multiple of ``stride`` (Ultralytics' ``rect`` inference with dynamic shapes).
        stride: Model stride, for ``auto``.
        scaleup: Allow enlarging the image.
        padding_value: Border value.

    Returns:
        (letterboxed image, ((ratio_w, ratio_h), (pad_left, pad_top))).

    Examples:
        >>> im = np.zeros((1080, 810, 3), np.uint8)
        >>> out, (r, pad) = letterbox(im, 640, auto=True)
        >>> out.shape, pad
        ((640, 480, 3), (0, 0))
    """
    shape = image.shape[:2]  # (h, w)
    nh, nw = _pair(new_shape)
    r = min(nh / shape[0], nw / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = max(round(shape[1] * r), 1), max(round(shape[0] * r), 1)  # (w, h)
    dw, dh = nw - new_unpad[0], nh - new_unpad[1]
    if auto:
        dw, dh = np.mod(dw, stride), np.mod(dh, stride)
    dw /= 2
    dh /= 2
    if shape[::-1] != new_unpad:
        image = cv2.resize(image, new_unpad, interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[..., None]
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    if image.shape[2] == 3:
        image = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(padding_value,) * 3)
    else:
        h, w, c = image.shape
        out = np.full((h + top + bottom, w + left + right, c), padding_value, dtype=image.dtype)
        out[top : top + h, left : left + w] = image
        image = out
    return image, ((r, r), (left, top))


def load_image(source: Any) -> np.ndarray:
    """An image as a uint8 BGR ``(H, W, 3)`` array: a path (read with OpenCV) or an array (used as is).

    Files are decoded as Ultralytics' predictor does (``cv2.imdecode`` of the bytes, ``IMREAD_COLOR``): grayscale is
    replicated to 3 channels, alpha dropped, 16-bit scaled to 8-bit, CMYK converted, so each predicts like its RGB
    version. ``cv2.imread`` is not used: it returns a half-grey image from a truncated JPEG (only a console warning).

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: an empty, truncated or unreadable file (the message names it), or an array that is not
            ``(H, W, 3)``.
    """
    if isinstance(source, (str, Path)):
        p = Path(source)
        if not p.is_file():
            raise FileNotFoundError(f"image not found: {p}")
        data = np.fromfile(str(p), dtype=np.uint8)
        if not data.size:
            raise ValueError(f"cannot read image {p}: the file is empty (0 bytes).")
        im = cv2.imdecode(data, cv2.IMREAD_COLOR)  # None for a truncated JPEG, unlike cv2.imread
        if im is None:
            raw = data.tobytes()
            if raw[:2] == b"\xff\xd8" and raw.rfind(b"\xff\xd9") < raw.rfind(b"\xff\xda"):  # no end after the scan
                raise ValueError(f"cannot read image {p}: the JPEG is truncated (it ends before its end-of-image "
                                 "marker).")
            raise ValueError(f"cannot read image {p}: not an image OpenCV can decode (not an image file, or damaged).")
        return im
    im = np.asarray(source)
    if im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"images must be (H, W, 3) BGR arrays or paths, got an array of shape {im.shape}.")
    return im


def preprocess(images: Sequence[np.ndarray]) -> np.ndarray:
    """Letterboxed BGR HWC uint8 images (same size) -> RGB ``(B, 3, H, W)`` float32 in [0, 1], as Ultralytics.

    Examples:
        >>> preprocess([np.zeros((64, 96, 3), np.uint8)]).shape
        (1, 3, 64, 96)
    """
    x = np.stack(images)[..., ::-1].transpose(0, 3, 1, 2)  # (B, 3, H, W) RGB, a strided view
    out = np.empty(x.shape, np.float32)
    np.divide(x, np.float32(255.0), out=out, dtype=np.float32)  # one pass: cast, reorder and scale (float32 math)
    return out


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    """``(..., 4)`` centre-size boxes -> corner boxes."""
    y = np.empty_like(x)
    xy, wh = x[..., :2], x[..., 2:4] / 2
    y[..., :2] = xy - wh
    y[..., 2:4] = xy + wh
    return y


NMS_BLOCK = 256
"""Boxes whose IoUs with every remaining box ``nms_indices`` computes in one vectorised step."""


def nms_indices(
    boxes: np.ndarray, scores: np.ndarray, iou_thres: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS as ``torchvision.ops.nms``: indices kept, by decreasing score; IoU ``> iou_thres`` suppresses.

    Boxes are taken in blocks of ``NMS_BLOCK`` (by decreasing score): the IoUs of a block with every box after its
    start that is still alive are one vectorised computation, and the greedy pass over the block only ORs rows of
    that matrix into the suppression mask. A Python step per kept box, not a re-filtered copy of all remaining boxes
    per kept box; the same boxes as the one-at-a-time greedy loop.

    Args:
        boxes: ``(N, 4)`` xyxy, float32.
        scores: ``(N,)``.
        iou_thres: IoU threshold.
        max_keep: Stop after this many kept boxes (the first ``max_keep`` of the full result).

    Examples:
        >>> b = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
        >>> nms_indices(b, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
        [0, 2]
    """
    order = np.argsort(-scores, kind="stable")
    b = boxes.astype(np.float32, copy=False)[order]  # (N, 4) by decreasing score
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, i]) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    n = len(order)
    dead = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for s in range(0, n, NMS_BLOCK):
        e = min(n, s + NMS_BLOCK)
        alive = s + np.flatnonzero(~dead[s:])  # (M,) boxes not yet suppressed, from the block's start on
        if not alive.size or alive[0] >= e:
            continue
        blk = alive[alive < e]  # (m,)
        w = np.maximum(np.minimum(x2[blk, None], x2[alive]) - np.maximum(x1[blk, None], x1[alive]), 0)  # (m, M)
        h = np.maximum(np.minimum(y2[blk, None], y2[alive]) - np.maximum(y1[blk, None], y1[alive]), 0)
        inter = w * h
        with np.errstate(invalid="ignore", divide="ignore"):
            over = inter / (areas[blk, None] + areas[alive] - inter) > iou_thres  # (m, M); NaN IoU never suppresses
        for r, i in enumerate(blk):
            if dead[i]:
                continue
            keep.append(i)
            if max_keep is not None and len(keep) >= max_keep:
                return order[np.asarray(keep, dtype=np.int64)]
            dead[alive[over[r]]] = True  # suppressed by i (i itself too: it is decided already)
    return order[np.asarray(keep, dtype=np.int64)]


def non_max_suppression(
    prediction: np.ndarray,
    conf_thres: float = 0.25,
    iou_thres: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    max_nms: int = MAX_NMS,
    max_wh: int = MAX_WH,
) -> list[np.ndarray]:
    """Ultralytics' NMS (best class per box) on raw ``(B, 4 + K, A)`` predictions with xywh boxes.

    Returns:
        Per image an ``(N, 6)`` float32 array ``[x1, y1, x2, y2, score, class]``, by decreasing score.

    Examples:
        >>> p = np.zeros((1, 6, 3), np.float32)
        >>> p[0, :4, 0] = [50, 50, 20, 20]; p[0, 4, 0] = 0.9
        >>> non_max_suppression(p)[0].astype(float).round(1).tolist()
        [[40.0, 40.0, 60.0, 60.0, 0.9, 0.0]]
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf ({conf_thres}) and iou ({iou_thres}) must be in [0, 1].")
    out = []
    for p in prediction:  # (4 + K, A)
        cls_scores = p[4:]  # (K, A): reduced along the contiguous class axis (no transposed copy of all scores)
        j = cls_scores.argmax(0)  # (A,)
        conf = np.take_along_axis(cls_scores, j[None], 0)[0]  # (A,)
        out.append(_best_class_nms(p[:4], conf, j, conf_thres, iou_thres, max_det, agnostic, classes, max_nms, max_wh))
    return out


def non_max_suppression_reduced(
    prediction: np.ndarray,
    conf_thres: float = 0.25,
    iou_thres: float = 0.7,
    max_det: int = 300,
    agnostic: bool = False,
    classes: Sequence[int] | None = None,
    max_nms: int = MAX_NMS,
    max_wh: int = MAX_WH,
    groups: int = 1,
) -> list[np.ndarray]:
    """``non_max_suppression`` for graphs exported with ``scores="max"``: ``(B, 6, A)`` ``[x, y, w, h, score, id]``.

    The graph already holds each anchor's best score and class (prompt index for run-time vocabularies: the class is
    ``id // groups`` with ``groups`` prompts per class); the rest is the same best-class NMS.

    Examples:
        >>> p = np.zeros((1, 6, 3), np.float32)
        >>> p[0, :, 0] = [50, 50, 20, 20, 0.9, 5]
        >>> non_max_suppression_reduced(p, groups=2)[0].astype(float).round(1).tolist()
        [[40.0, 40.0, 60.0, 60.0, 0.9, 2.0]]
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ValueError(f"conf ({conf_thres}) and iou ({iou_thres}) must be in [0, 1].")
    if prediction.ndim != 3 or prediction.shape[1] != 6:
        raise ValueError(f"expected (B, 6, A) reduced predictions, got {prediction.shape}.")
    out = []
    for p in prediction:  # (6, A)
        j = p[5].astype(np.int64)
        j = j // groups if groups > 1 else j
        out.append(_best_class_nms(p[:4], p[4], j, conf_thres, iou_thres, max_det, agnostic, classes, max_nms, max_wh))
    return out


def _best_class_nms(xywh: np.ndarray, conf: np.ndarray, j: np.ndarray, conf_thres: float, iou_thres: float,
                    max_det: int, agnostic: bool, classes: Sequence[int] | None, max_nms: int,
                    max_wh: int) -> np.ndarray:
    """One image: boxes ``(4, A)`` xywh, best scores ``(A,)``, classes ``(A,)`` -> ``(N, 6)`` kept rows."""
    return best_class_nms_index(xywh, conf, j, conf_thres, iou_thres, max_det, agnostic, classes, max_nms, max_wh)[0]


def best_class_nms_index(xywh: np.ndarray, conf: np.ndarray, j: np.ndarray, conf_thres: float, iou_thres: float,
                         max_det: int, agnostic: bool = False, classes: Sequence[int] | None = None,
                         max_nms: int = MAX_NMS, max_wh: int = MAX_WH) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """One image's best-class NMS: ``(N, 6)`` kept rows and the ``(N,)`` anchor index of each (for per-anchor extras
    such as a seg model's mask coefficients).

    Examples:
        >>> xywh = np.array([[50.0, 10], [50, 10], [20, 4], [20, 4]], np.float32)  # (4, A): anchors 0 and 1
        >>> rows, idx = best_class_nms_index(xywh, np.array([0.3, 0.9], np.float32), np.zeros(2, int), 0.25, 0.7, 300)
        >>> idx.tolist()
        [1, 0]
    """
    keep = conf > conf_thres
    if classes is not None:
        keep &= np.isin(j, np.asarray(classes))
    anchor = np.flatnonzero(keep)  # (N,)
    box, conf, j = xywh2xyxy(xywh[:, keep].T), conf[keep], j[keep]  # (N, 4)
    if conf.size > max_nms:
        top = np.argsort(-conf, kind="stable")[:max_nms]
        box, conf, j, anchor = box[top], conf[top], j[top], anchor[top]
    if not conf.size:
        return np.zeros((0, 6), np.float32), np.zeros(0, np.int64)
    off = (j.astype(np.float32) * (0 if agnostic else max_wh))[:, None]
    i = nms_indices(box + off, conf, iou_thres, max_keep=max_det)
    rows = np.concatenate((box[i], conf[i, None], j[i, None].astype(np.float32)), 1).astype(np.float32)
    return rows, anchor[i]


def end2end_rows(
    d: np.ndarray, conf: float, iou: float, groups: int = 1, agnostic: bool = False, classes: Sequence[int] | None = None
) -> np.ndarray:
    """Rows of one image from a graph with NMS inside (``(max_det, 6 + extra)``): score filter, prompts -> classes.

    With ``groups`` prompts per class the graph's NMS ran per prompt, so synonyms of one class may both keep a box:
    classes are ``prompt // groups`` and a class-aware NMS (``iou``) removes those duplicates. Extra columns (mask
    coefficients) follow their rows.

    Examples:
        >>> d = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 1], [0, 0, 5, 5, 0.1, 2]], np.float32)
        >>> end2end_rows(d, conf=0.25, iou=0.7, groups=2)[:, 4:].tolist()
        [[0.8999999761581421, 0.0]]
    """
    d = d[d[:, 4] > conf].astype(np.float32)
    if groups > 1:
        d[:, 5] = np.floor(d[:, 5] / groups)
        off = (0 if agnostic else 7680.0) * d[:, 5:6]  # Ultralytics' class offset (MAX_WH)
        d = d[nms_indices(d[:, :4] + off, d[:, 4], iou)] if len(d) else d
    if classes is not None:
        d = d[np.isin(d[:, 5], np.asarray(classes))]
    return d


def scale_boxes(
    img1_shape: Sequence[int], boxes: np.ndarray, img0_shape: Sequence[int], ratio_pad: tuple | None = None
) -> np.ndarray:
    """Boxes of a letterboxed ``img1_shape`` image back to the original ``img0_shape`` (xyxy, clipped), in place.

    Examples:
        >>> b = np.array([[0.0, 40.0, 320.0, 280.0]])
        >>> scale_boxes((320, 320), b, (480, 640)).tolist()
        [[0.0, 0.0, 640.0, 480.0]]
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        new_h, new_w = (max(round(v * gain), 1) for v in img0_shape[:2])
        gain_y, gain_x = new_h / img0_shape[0], new_w / img0_shape[1]
        pad_x, pad_y = round((img1_shape[1] - new_w) / 2 - 0.1), round((img1_shape[0] - new_h) / 2 - 0.1)
    else:
        (gain_y, gain_x), (pad_x, pad_y) = ratio_pad
    boxes[..., [0, 2]] -= pad_x
    boxes[..., [1, 3]] -= pad_y
    boxes[..., [0, 2]] /= gain_x
    boxes[..., [1, 3]] /= gain_y
    h, w = img0_shape[:2]
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


@dataclass
class Detections:
    """Detections of one image, in original-image pixels.

    Attributes:
        boxes: ``(N, 4)`` float32 xyxy.
        scores: ``(N,)`` float32.
        class_ids: ``(N,)`` int64 indices into ``names``.
        names: Class names of the vocabulary, index -> name.
        orig_shape: ``(H, W)`` of the image.
        masks: ``(N, H, W)`` bool instance masks at the image's size (seg models; None for detectors).
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: dict[int, str] = field(default_factory=dict)
    orig_shape: tuple[int, int] = (0, 0)
    masks: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def labels(self) -> list[str]:
        """The class name of every detection."""
        return [self.names.get(int(c), str(int(c))) for c in self.class_ids]

    def __repr__(self) -> str:
        top = ", ".join(f"{n} {s:.2f}" for n, s in zip(self.labels[:5], self.scores[:5]))
        return f"Detections({len(self)} in {self.orig_shape[1]}x{self.orig_shape[0]}: {top}{', ...' if len(self) > 5 else ''})"


__all__ = [
    "Detections",
    "letterbox",
    "load_image",
    "preprocess",
    "xywh2xyxy",
    "nms_indices",
    "non_max_suppression",
    "non_max_suppression_reduced",
    "best_class_nms_index",
    "scale_boxes",
]
