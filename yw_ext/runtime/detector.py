"""``Detector``: run an exported yw_ext detector (ONNX Runtime, or a TensorRT engine) on images, without torch.

Works with every ONNX file ``YOLOWorld.export(format="onnx", ...)`` writes (and with plain Ultralytics detection
exports):

- fixed vocabulary (folded): one input ``images``; class names from the metadata; ``set_classes`` raises;
- run-time vocabulary (``dynamic_vocab=True``): inputs ``images`` and ``txt_feats`` (``(1, P, D)`` for a fixed batch,
  broadcast to the batch in the graph; ``(1 or B, P, D)`` for a dynamic batch); one ``(1, P, D)`` vocabulary is fed
  with every batch; ``set_classes(names)`` encodes prompts with a ``TextEncoder`` (exported CLIP text tower) or
  takes embeddings; synonyms (``["car", "automobile"]``) are scored as the max over their prompts, here in numpy
  (the graph scores prompts); without ``set_classes`` the vocabulary stored in the file is used;
- raw output ``(B, 4 + K, A)`` (Ultralytics' NMS is reproduced in numpy, ``yw_ext.runtime.ops``) or in-graph NMS
  ``(B, max_det, 6)`` (``nms=True``; the graph's ``conf`` / ``iou`` were fixed at export, ``conf`` here filters
  further).
- YOLO-World-Seg exports (metadata ``task: segment``; outputs ``output0`` with ``nm`` mask coefficients per row and
  ``output1`` prototypes, raw or with NMS in the graph): each ``Detections`` also has ``masks``, ``(N, H, W)`` bool
  at the original image size (``yw_ext.runtime.masks``: Ultralytics' ``retina_masks=True`` masks); detections whose
  mask is empty are dropped, as Ultralytics' segmentation predictor does.

Pre- and post-processing follow Ultralytics' predictor: ``LetterBox`` (minimal ``rect`` padding when the model
takes dynamic image sizes and a batch's images share a shape, else the model's ``imgsz``), RGB in [0, 1], NMS,
``scale_boxes`` back to each original image.

Examples:
    >>> det = Detector("model_dynvocab.onnx", text_encoder="clip_text.onnx")  # doctest: +SKIP
    >>> det.set_classes(["person", "bus", ["car", "automobile"]])  # doctest: +SKIP
    >>> out = det("bus.jpg", conf=0.25)[0]  # doctest: +SKIP
    >>> out.boxes, out.scores, out.class_ids, out.labels  # doctest: +SKIP
"""

from __future__ import annotations

import ast
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yw_ext.core.classes import pad_prompts, parse_classes
from yw_ext.core.embeddings import check_embedding_array, check_rows, check_width
from yw_ext.runtime.ops import Detections, end2end_rows, letterbox, load_image, non_max_suppression
from yw_ext.runtime.ops import preprocess
from yw_ext.runtime.ops import non_max_suppression_reduced
from yw_ext.runtime.masks import process_mask_native, seg_postprocess
from yw_ext.runtime.ops import scale_boxes
from yw_ext.runtime.text import TextEncoder, make_session, session_metadata
from yw_ext.vocab import Vocabulary

TXT_INPUT = "txt_feats"
_LITERAL_KEYS = {
    "names", "imgsz", "args", "stride", "batch", "channels", "end2end", "embed_dim", "max_prompts",
    "prompts_per_class", "class_prompts", "class_sources", "default_classes", "default_vocab", "kpt_shape", "nm", "nms",
}  # fmt: skip


def parse_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Ultralytics / yw_ext export metadata (strings) -> Python values (``ast.literal_eval``, as ``AutoBackend``).

    Examples:
        >>> parse_metadata({"names": "{0: 'person'}", "stride": "32", "author": "Ultralytics"})
        {'names': {0: 'person'}, 'stride': 32, 'author': 'Ultralytics'}
    """
    out = dict(meta)
    for k, v in meta.items():
        if k in _LITERAL_KEYS and isinstance(v, str):
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                pass
    return out


class _ORTBackend:
    """ONNX Runtime session + parsed metadata + input/output description."""

    def __init__(self, path: Path, providers: Sequence | None, threads: int | None):
        try:
            self.session = make_session(path, providers, threads)
        except FileNotFoundError:
            raise
        except Exception as e:  # onnxruntime's InvalidProtobuf / Fail / ...: not a complete ONNX model
            raise ValueError(f"'{path}' is not a readable ONNX model (truncated or corrupt?): "
                             f"{type(e).__name__}: {e}") from e
        self.metadata = parse_metadata(session_metadata(self.session))
        self.inputs = {i.name: list(i.shape) for i in self.session.get_inputs()}
        self.defaults = {i.name: list(i.shape) for i in self.session.get_overridable_initializers()}
        self.output_shape = list(self.session.get_outputs()[0].shape)
        self.profile: dict[str, tuple] = {}  # TensorRT only

    def shape(self, name: str) -> list:
        return self.inputs.get(name) or self.defaults.get(name)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]

    def run_all(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


class Detector:
    """Open-vocabulary detector from an exported file, numpy in and out.

    Args:
        model: ``.onnx`` (ONNX Runtime) or ``.engine`` (TensorRT; needs ``tensorrt`` and a CUDA GPU, see
            ``yw_ext.runtime.trt``).
        text_encoder: ``TextEncoder`` or path of an exported CLIP text encoder (for ``set_classes`` with names).
        providers: ONNX Runtime providers (default CPU).
        threads: ONNX Runtime intra-op threads.
        device: CUDA device index of a ``.engine`` (ignored for ONNX files; use ``providers``).

    Attributes:
        names (dict[int, str]): Current class names.
        dynamic_vocab (bool): Whether classes can be changed (``set_classes``).
        embed_dim (int | None): Text-embedding width D the model expects.
        max_prompts (int | None): Largest number of prompts (K x G) accepted.
        max_batch (int | None): Largest batch per model call (a TensorRT engine's profile maximum, a static batch;
            None: any). ``predict`` splits longer lists of images into calls of at most this many.

    Examples:
        >>> det = Detector("best.onnx")  # fixed vocabulary  # doctest: +SKIP
        >>> [d.labels for d in det(["bus.jpg", "zidane.jpg"])]  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike, text_encoder: TextEncoder | str | os.PathLike | None = None,
                 providers: Sequence | None = None, threads: int | None = None, device: int = 0):
        """Load the model and read its metadata."""
        self.path = Path(model)
        if self.path.suffix.lower() == ".engine":
            from yw_ext.runtime.trt import TRTBackend

            self.backend = TRTBackend(self.path, device=device)
        else:
            self.backend = _ORTBackend(self.path, providers, threads)
        meta = self.metadata = self.backend.metadata
        b = self.backend
        img_shape = b.shape("images") or next(iter(b.inputs.values()))
        self.input_name = "images" if b.shape("images") else next(iter(b.inputs))
        self.static_batch = img_shape[0] if isinstance(img_shape[0], int) and img_shape[0] > 0 else None
        self.max_batch = self.static_batch or getattr(b, "max_batch", None)  # a TensorRT profile's maximum
        hw = img_shape[2:4]
        self.static_hw = tuple(hw) if all(isinstance(v, int) and v > 0 for v in hw) else None
        imgsz = meta.get("imgsz", self.static_hw or (640, 640))
        self.imgsz = tuple(imgsz) if isinstance(imgsz, (list, tuple)) else (int(imgsz), int(imgsz))
        self.stride = int(meta.get("stride", 32))
        args = meta.get("args") if isinstance(meta.get("args"), dict) else {}
        self.end2end = bool(args.get("nms") or meta.get("end2end"))  # (B, max_det, 6) rows, as AutoBackend reads it
        self.nm = int(meta.get("nm") or 32) if meta.get("task") == "segment" else 0  # mask coefficients per row
        self.dynamic_vocab = b.shape(TXT_INPUT) is not None
        txt_shape = b.shape(TXT_INPUT) or [None, None, meta.get("embed_dim")]
        self.embed_dim = int(meta.get("embed_dim") or txt_shape[-1] or 0) or None
        self.max_prompts = int(meta["max_prompts"]) if meta.get("max_prompts") else None
        if TXT_INPUT in b.profile:  # TensorRT: the engine's K range
            lo, hi = b.profile[TXT_INPUT][0][1], b.profile[TXT_INPUT][2][1]
            self.min_prompts, self.max_prompts = int(lo), min(int(hi), self.max_prompts or int(hi))
        else:
            self.min_prompts = 1
        if isinstance(text_encoder, (str, os.PathLike)):
            text_encoder = TextEncoder(text_encoder, providers=providers, threads=threads)
        self.text_encoder = text_encoder
        if text_encoder is not None:
            warn_encoder_mismatch(self)
        self._txt: np.ndarray | None = None  # (1, P, D) prompts fed as txt_feats; None: the file's default
        self.vocab: Vocabulary | None = None  # the vocabulary set with set_classes (None: the file's own)
        names = meta.get("names") or {}
        g = int(meta.get("prompts_per_class", 1) or 1)
        if self.dynamic_vocab:
            default = meta.get("default_classes") or [names[i] for i in sorted(names)][::g]
            self.names = dict(enumerate(default))
            self.prompts_per_class = g
            self.has_default_vocab = TXT_INPUT in b.defaults
        else:
            self.names = dict(names) if names else {}
            self.prompts_per_class = 1  # a fixed graph already reduces synonyms
            self.has_default_vocab = True

    # ------------------------------------------------------------------ vocabulary
    @property
    def vocabulary(self) -> list[str]:
        """Current class names, in class-id order."""
        return [self.names[i] for i in range(len(self.names))]

    def set_classes(self, classes: Any, embeddings: Any = None) -> Detector:
        """Set the vocabulary of a run-time-vocabulary model.

        Args:
            classes: Class names; a class may be a list of synonyms (first = display name). Its score is the max
                over its prompts.
            embeddings: Optional ``(K, D)`` / ``(K, G, D)`` array (or ``.npy`` path) instead of text (then
                ``classes`` are plain names). Used as given (CLIP embeddings are unit-norm).

        Returns:
            self.

        Raises:
            ValueError: a fixed-vocabulary model; embedding width not the model's; more prompts than the model takes
                (``max_prompts``, or the TensorRT profile's range); NaN/inf embeddings; no text encoder for names.
        """
        if not self.dynamic_vocab:
            raise ValueError(
                f"{self.path.name} has a fixed vocabulary folded into its weights ({self.vocabulary[:5]}...); export "
                "with dynamic_vocab=True to change classes at run time."
            )
        names, prompts = parse_classes(classes)
        k = len(names)
        if embeddings is not None:
            if any(len(p) > 1 for p in prompts):
                raise ValueError("give synonyms either as text prompts or as (K, G, D) embeddings, not both.")
            # the model's prompt range is checked below, with this model's limits in the message
            e, g = check_embedding_array(embeddings, k, self.embed_dim, max_prompts=sys.maxsize)  # (K * G, D)
            self._check_count(k * g)
            vocab = Vocabulary(names, e, g)
        else:
            if self.text_encoder is None:
                raise ValueError("set_classes with names needs a text encoder: Detector(model, text_encoder="
                                 "'clip_text.onnx') (export it with `yw export model=clip`), or pass embeddings=.")
            flat, g = pad_prompts(prompts, max_prompts=sys.maxsize)  # class-major, padded with the first prompt
            self._check_count(k * g)
            e = self.text_encoder.encode(flat)  # (K * G, D)
            self._check_embeddings(e)
            vocab = Vocabulary(names, e, g, prompts, None, getattr(self.text_encoder, "identity", None))
        self.vocab = vocab
        self._txt = np.array(vocab.embeddings[None])  # (1, K * G, D), a writable copy for ONNX Runtime
        self.names = vocab.names_dict()
        self.prompts_per_class = g
        return self

    def _check_count(self, p: int) -> None:
        if self.max_prompts is not None and p > self.max_prompts:
            raise ValueError(f"{p} prompts (classes x synonyms) exceed this model's maximum of {self.max_prompts}"
                             + (" (the TensorRT engine's txt_feats profile; rebuild it with a larger prompts= range)"
                                if self.backend.profile else " (max_prompts in the export metadata)") + ".")
        if p < self.min_prompts:
            raise ValueError(f"{p} prompts is below the TensorRT engine's txt_feats profile minimum "
                             f"{self.min_prompts}.")

    def _check_embeddings(self, e: np.ndarray) -> None:
        """``(P, D)`` checks: width, count (this model's range), finite, non-zero."""
        check_width(e.shape[-1], self.embed_dim)
        self._check_count(e.shape[0])
        check_rows(e)

    def text_features(self) -> np.ndarray | None:
        """The ``(1, P, D)`` prompts fed as ``txt_feats`` (None: the file's stored default vocabulary)."""
        if self.dynamic_vocab and self._txt is None and not self.has_default_vocab:
            raise RuntimeError(f"{self.path.name} takes its vocabulary at run time: call set_classes(...) first.")
        return self._txt

    # ------------------------------------------------------------------ inference
    def forward(self, images: np.ndarray, txt_feats: np.ndarray | None = None) -> np.ndarray:
        """Raw model call: ``(B, 3, H, W)`` float32 -> ``(B, 4 + P, A)`` (or ``(B, max_det, 6)`` with NMS); a seg model
        gives ``(output0, prototypes)``, ``output0`` with ``nm`` more channels.

        ``txt_feats`` ``(1, P, D)`` (or ``(B, P, D)``, one vocabulary per image, for models exported with a dynamic
        batch) defaults to the current vocabulary; checked against the model's width and prompt range.
        """
        feeds = {self.input_name: np.ascontiguousarray(images, np.float32)}
        if self.dynamic_vocab:
            t = self.text_features() if txt_feats is None else np.asarray(txt_feats, np.float32)
            if t is not None:
                tb = self.backend.shape(TXT_INPUT)[0]  # 1 (fixed-batch export) or a dynamic dim
                if isinstance(tb, int) and tb > 0:
                    if t.ndim != 3 or t.shape[0] != tb:
                        raise ValueError(f"txt_feats must be ({tb}, P, D) for {self.path.name} (one vocabulary, "
                                         f"broadcast to the batch in the graph), got {t.shape}; export with "
                                         "dynamic=True for a vocabulary per image.")
                elif t.ndim != 3 or t.shape[0] not in (1, images.shape[0]):
                    raise ValueError(f"txt_feats must be (1 or B={images.shape[0]}, P, D), got {t.shape}.")
                for row in t:  # (P, D) per vocabulary
                    self._check_embeddings(row)
                feeds[TXT_INPUT] = np.ascontiguousarray(t)
        elif txt_feats is not None:
            raise ValueError(f"{self.path.name} has a fixed vocabulary: it takes no txt_feats.")
        return tuple(self.backend.run_all(feeds)[:2]) if self.nm else self.backend.run(feeds)

    def predict(
        self,
        images: Any,
        conf: float = 0.25,
        iou: float = 0.7,
        max_det: int = 300,
        agnostic: bool = False,
        classes: Sequence[int] | None = None,
        imgsz: int | Sequence[int] | None = None,
        rect: bool = True,
        batch: int = 16,
    ) -> list[Detections]:
        """Detect objects in images.

        Args:
            images: A path, a BGR ``(H, W, 3)`` uint8 array, or a list of them.
            conf: Score threshold (``score > conf``).
            iou: NMS IoU threshold (raw-output models; NMS graphs use the value fixed at export).
            max_det: Most detections per image.
            agnostic: Class-agnostic NMS.
            classes: Keep only these class ids.
            imgsz: Inference size for models with dynamic image sizes (default: the export's).
            rect: Minimal letterbox padding when the model takes dynamic sizes (Ultralytics' default).
            batch: Images per model call when the batch size is dynamic (at most ``max_batch``: a TensorRT engine's
                profile maximum).

        Returns:
            One ``Detections`` per image (boxes in original pixels).
        """
        items = images if isinstance(images, (list, tuple)) else [images]
        ims = [load_image(x) for x in items]
        size = self.static_hw or (tuple(imgsz) if isinstance(imgsz, (list, tuple)) else
                                  (int(imgsz), int(imgsz)) if imgsz else self.imgsz)
        step = self.static_batch or min(max(1, int(batch)), self.max_batch or sys.maxsize)
        out: list[Detections] = []
        for i in range(0, len(ims), step):
            chunk = ims[i : i + step]
            auto = rect and self.static_hw is None and len({im.shape for im in chunk}) == 1
            lb = [letterbox(im, size, auto=auto, stride=self.stride)[0] for im in chunk]
            x = preprocess(lb)  # (b, 3, H, W)
            n = len(chunk)
            if self.static_batch and n < self.static_batch:  # pad a static batch
                x = np.concatenate([x, np.zeros((self.static_batch - n, *x.shape[1:]), np.float32)])
            if self.nm:
                y, protos = self.forward(x)
                g = self.prompts_per_class if self.dynamic_vocab else 1
                dets = seg_postprocess(y[:n], self.nm, conf, iou, max_det, agnostic, classes, g, self.end2end)
                out += [self._result(im, x.shape[2:], d, mc, pr) for im, (d, mc), pr in zip(chunk, dets, protos)]
            else:
                dets = self._postprocess(self.forward(x)[:n], conf, iou, max_det, agnostic, classes)
                out += [self._result(im, x.shape[2:], d) for im, d in zip(chunk, dets)]
        return out

    __call__ = predict

    def _result(self, im: np.ndarray, in_hw: tuple, d: np.ndarray, coeffs: np.ndarray | None = None,
                protos: np.ndarray | None = None) -> Detections:
        """``Detections`` of one image from rows ``(N, 6)`` in input pixels (+ a seg model's coefficients and
        prototypes: masks at the image's size, detections with empty masks dropped)."""
        d = d.copy()
        d[:, :4] = scale_boxes(in_hw, d[:, :4], im.shape[:2])
        masks = None
        if coeffs is not None:
            masks = process_mask_native(protos, coeffs, d[:, :4], im.shape[:2])  # (N, H, W)
            keep = masks.any((1, 2))
            d, masks = d[keep], masks[keep]
        return Detections(d[:, :4].astype(np.float32), d[:, 4].astype(np.float32), d[:, 5].astype(np.int64),
                          dict(self.names), im.shape[:2], masks)

    def _postprocess(self, y: np.ndarray, conf: float, iou: float, max_det: int, agnostic: bool,
                     classes: Sequence[int] | None) -> list[np.ndarray]:
        """Model output -> per image ``(N, 6)`` rows ``[x1, y1, x2, y2, score, class]`` in input pixels."""
        g = self.prompts_per_class if self.dynamic_vocab else 1
        if self.end2end:  # (B, max_det, 6) from the graph's NMS: prompts -> classes, filter, dedupe synonyms
            return [end2end_rows(d, conf, iou, g, agnostic, classes)[:max_det] for d in y]
        if self.metadata.get("scores") == "max":  # (B, 6, A): the graph kept each anchor's best prompt / class
            return non_max_suppression_reduced(y, conf, iou, max_det=max_det, agnostic=agnostic, classes=classes,
                                               groups=g)
        if g > 1:  # (B, 4 + K * G, A) -> (B, 4 + K, A): max over each class's prompts
            b, c, a = y.shape
            y = np.concatenate((y[:, :4], y[:, 4:].reshape(b, (c - 4) // g, g, a).max(2)), 1)
        return non_max_suppression(y, conf, iou, max_det=max_det, agnostic=agnostic, classes=classes)

    def __repr__(self) -> str:
        kind = "dynamic vocabulary" if self.dynamic_vocab else "fixed vocabulary"
        return f"Detector({self.path.name}, {kind}, {len(self.names)} classes, imgsz={self.imgsz})"


def warn_encoder_mismatch(detector: Detector) -> None:
    """Warn when the detector's recorded text encoder differs from the one attached (embeddings would not match)."""
    want, have = detector.metadata.get("text_encoder"), getattr(detector.text_encoder, "identity", None)
    if want and have and want != have and want != "None":
        warnings.warn(f"the detector's vocabulary was encoded with {want}, the text encoder is {have}.", stacklevel=2)


__all__ = ["Detector", "parse_metadata"]
