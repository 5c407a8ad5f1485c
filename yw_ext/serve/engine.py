"""The service's inference core, torch-free: configuration, vocabularies (text-embedding cache, prompt files), and one
model call for a batch of requests that may each have their own vocabulary.

Examples:
    >>> cfg = ServeConfig(model="dv.onnx", text_encoder="clip_text.onnx")  # doctest: +SKIP
    >>> engine = Engine(cfg)  # doctest: +SKIP
    >>> item = Item(image, engine.vocabularies.get(["person", "bus"]), 0.25, 0.7, 300)  # doctest: +SKIP
    >>> engine.run([item])[0]["boxes"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np

from yw_ext.core.classes import pad_prompts, parse_class_string, parse_classes
from yw_ext.runtime import Detector, TextEncoder, letterbox, non_max_suppression, preprocess, scale_boxes

ENV = "YW_SERVE_CONFIG"


@dataclasses.dataclass
class ServeConfig:
    """What ``yw serve`` runs.

    Args:
        model: Exported ONNX (``dynamic_vocab=True, dynamic=True`` to batch requests with different vocabularies).
        text_encoder: Exported CLIP text encoder (``yw export model=clip``), for ``classes`` given as text.
        prompts: ``{id: prompt file (.npz)}`` vocabularies clients select with ``prompts=id``.
        max_batch: Most images per model call.
        max_wait_ms: How long a batch waits for more requests once one is queued.
        max_image_bytes: Largest upload.
        max_pixels: Largest decoded image (height x width).
        max_classes: Most classes per request.
        threads: ONNX Runtime intra-op threads (per worker process).
        providers: ONNX Runtime providers (default CPU).
        cache_size: Text embeddings kept in memory (prompts).

    Examples:
        >>> ServeConfig(model="dv.onnx").max_batch
        8
    """

    model: str
    text_encoder: str | None = None
    prompts: dict[str, str] = dataclasses.field(default_factory=dict)
    max_batch: int = 8
    max_wait_ms: float = 5.0
    max_image_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    max_classes: int = 1203
    threads: int | None = None
    providers: list[str] | None = None
    cache_size: int = 65536

    def to_env(self) -> str:
        """JSON for ``$YW_SERVE_CONFIG`` (how uvicorn's worker processes get the configuration)."""
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The configuration in ``$YW_SERVE_CONFIG``."""
        raw = os.environ.get(ENV)
        if not raw:
            raise RuntimeError(f"${ENV} is not set: start the service with `yw serve` or yw_ext.serve.serve().")
        return cls(**json.loads(raw))


@dataclasses.dataclass(frozen=True)
class Vocab:
    """A request's vocabulary: names, ``(K * G, D)`` embeddings, G, and a content key."""

    names: tuple[str, ...]
    embeddings: np.ndarray
    g: int
    key: str


@dataclasses.dataclass
class Item:
    """One image to detect: BGR ``(H, W, 3)``, its vocabulary (None: the model's own) and thresholds."""

    image: np.ndarray
    vocab: Vocab | None
    conf: float
    iou: float
    max_det: int


class VocabularyStore:
    """Vocabularies of requests: text through an in-memory embedding cache (a prompt is encoded once per process),
    or a prompt file loaded at start (``prompts=id``).

    Examples:
        >>> store = VocabularyStore(TextEncoder("clip_text.onnx"))  # doctest: +SKIP
        >>> store.get("person,car|automobile").g  # doctest: +SKIP
        2
    """

    def __init__(self, encoder: Any = None, prompt_files: dict[str, str] | None = None, dim: int | None = None,
                 max_classes: int = 1203, cache_size: int = 65536):
        """Load the prompt files and check their width against ``dim``."""
        from yw_ext.scale.vocabulary import read_prompt_vocabulary

        self.encoder, self.dim, self.max_classes, self.cache_size = encoder, dim, max_classes, cache_size
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.prompt_sets: dict[str, Vocab] = {}
        for pid, path in (prompt_files or {}).items():
            v = read_prompt_vocabulary(path)
            if dim is not None and v.dim != dim:
                raise ValueError(f"prompt file {path} ({pid}) is {v.dim}-d, the model takes {dim}-d.")
            self.prompt_sets[str(pid)] = self._vocab(v.names, v.embeddings, v.prompts_per_class)

    @staticmethod
    def _vocab(names: Sequence[str], emb: np.ndarray, g: int) -> Vocab:
        e = np.ascontiguousarray(emb, np.float32)  # (K * G, D)
        key = hashlib.sha256(json.dumps([list(names), g]).encode() + e.tobytes()).hexdigest()[:16]
        return Vocab(tuple(names), e, int(g), key)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """``(N, D)`` rows of ``texts``, from the cache; the missing ones encoded in one call."""
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._rows]
            self.hits += len(texts) - len(missing)
        if missing:
            new = self.encoder.encode(missing)  # (M, D)
            with self._lock:
                self.misses += len(missing)
                for t, row in zip(missing, new):
                    self._rows[t] = row
                while len(self._rows) > self.cache_size:
                    self._rows.popitem(last=False)
        with self._lock:
            rows = [self._rows.get(t) for t in texts]
        if any(r is None for r in rows):  # evicted meanwhile (a tiny cache): encode directly
            return self.encoder.encode(texts)
        return np.stack(rows)

    def get(self, classes: Any = None, prompts: str | None = None) -> Vocab | None:
        """The vocabulary of ``classes`` (``"a,b|b2"`` or a list) or of prompt file ``prompts``; None for neither.

        Raises:
            ValueError: both given, an unknown prompt id, empty / duplicate classes, too many, no text encoder.
        """
        if prompts is not None:
            if classes is not None:
                raise ValueError("give either classes or prompts (a prompt-file id), not both.")
            if str(prompts) not in self.prompt_sets:
                raise ValueError(f"unknown prompts id {prompts!r}; this service has {sorted(self.prompt_sets)}.")
            return self.prompt_sets[str(prompts)]
        if classes is None:
            return None
        parsed = parse_class_string(classes) if isinstance(classes, str) else classes
        if not isinstance(parsed, list) or not parsed:
            raise ValueError("classes is empty: give class names, e.g. classes=\"person,car|automobile\".")
        names, plist = parse_classes(parsed)
        if len(names) > self.max_classes:
            raise ValueError(f"{len(names)} classes exceed this service's limit of {self.max_classes}.")
        if self.encoder is None:
            raise ValueError("this service has no text encoder (start it with text_encoder=clip_text.onnx); use "
                             f"prompts=<id> with one of {sorted(self.prompt_sets)}.")
        flat, g = pad_prompts(plist, max_prompts=sys.maxsize)  # class-major, padded with each class's first prompt
        return self._vocab(names, self._encode(flat), g)  # (K * G, D)


def _pad_txt(vocabs: Sequence[Vocab]) -> np.ndarray:
    """``(B, P_max, D)``: each vocabulary's ``(P_i, D)`` rows, padded by repeating its first row (a repeated prompt
    changes no max in the neck's attention, and its score columns are dropped)."""
    p = max(v.embeddings.shape[0] for v in vocabs)
    out = np.empty((len(vocabs), p, vocabs[0].embeddings.shape[1]), np.float32)  # (B, P, D)
    for i, v in enumerate(vocabs):
        n = v.embeddings.shape[0]
        out[i, :n] = v.embeddings
        out[i, n:] = v.embeddings[0]
    return out


class Engine:
    """The model of one service process and its batch call.

    Args:
        config: ``ServeConfig``.

    Attributes:
        detector (Detector): The runtime detector.
        vocabularies (VocabularyStore): Text cache and prompt files.
        mixed (bool): Whether one model call can take a vocabulary per image (run-time vocabulary, dynamic batch,
            raw output); otherwise a batch is split by vocabulary.

    Examples:
        >>> engine = Engine(ServeConfig(model="dv.onnx"))  # doctest: +SKIP
    """

    def __init__(self, config: ServeConfig):
        """Load the detector, the text encoder and the prompt files."""
        self.config = config
        self.detector = Detector(config.model, providers=config.providers, threads=config.threads)
        det = self.detector
        enc = TextEncoder(config.text_encoder, providers=config.providers, threads=config.threads) \
            if config.text_encoder else None
        self.vocabularies = VocabularyStore(enc, config.prompts, det.embed_dim, config.max_classes, config.cache_size)
        txt = det.backend.shape("txt_feats") if det.dynamic_vocab else None
        self.mixed = bool(txt) and not (isinstance(txt[0], int) and txt[0] > 0) and not det.end2end
        self.batches = self.images = self.calls = self.mixed_calls = 0  # mixed: calls with > 1 vocabulary

    def check(self, vocab: Vocab | None) -> None:
        """Raise ``ValueError`` if this model cannot take ``vocab`` (fixed vocabulary, too many prompts, width)."""
        det = self.detector
        if vocab is None:
            det.text_features()  # a model without a stored vocabulary needs classes
            return
        if not det.dynamic_vocab:
            raise ValueError(f"this model has a fixed vocabulary {det.vocabulary[:10]}; omit classes / prompts.")
        if det.max_prompts is not None and vocab.embeddings.shape[0] > det.max_prompts:
            raise ValueError(f"{vocab.embeddings.shape[0]} prompts (classes x synonyms) exceed the model's "
                             f"{det.max_prompts}.")
        if det.embed_dim and vocab.embeddings.shape[1] != det.embed_dim:
            raise ValueError(f"{vocab.embeddings.shape[1]}-d embeddings for a model that takes {det.embed_dim}-d.")

    def run(self, items: Sequence[Item]) -> list[dict[str, Any] | Exception]:
        """Detect a batch: letterbox, group by input size (and vocabulary unless ``mixed``), one call per group.

        Returns:
            Per item ``{"boxes", "scores", "class_ids", "names", "shape"}`` or the exception it raised.
        """
        det = self.detector
        size = det.static_hw or det.imgsz
        lbs = [letterbox(it.image, size, auto=det.static_hw is None, stride=det.stride)[0] for it in items]
        groups: dict[tuple, list[int]] = {}
        for i, (it, lb) in enumerate(zip(items, lbs)):
            key = lb.shape if self.mixed else (lb.shape, it.vocab.key if it.vocab else None)
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(items)
        for idx in groups.values():
            try:
                res = self._group([items[i] for i in idx], [lbs[i] for i in idx])
            except Exception as e:  # this group fails, the others and the service go on
                res = [e] * len(idx)
            for i, r in zip(idx, res):
                out[i] = r
            self.calls += 1
            self.mixed_calls += len({items[i].vocab.key if items[i].vocab else None for i in idx}) > 1
        self.batches += 1
        self.images += len(items)
        return out

    def _group(self, items: Sequence[Item], lbs: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """One model call for images of one input size; per-image slicing, synonym max, NMS, scaling."""
        det = self.detector
        x = preprocess(lbs)  # (B, 3, H, W)
        vocabs = [it.vocab for it in items]
        if det.end2end:  # in-graph NMS: the Detector's own path, one vocabulary per call (grouped in run)
            if vocabs[0] is None:  # the file's own vocabulary, on a detector whose classes were never set
                det = self._plain = getattr(self, "_plain", None) or Detector(
                    self.config.model, providers=self.config.providers, threads=self.config.threads)
            else:
                det.set_classes(list(vocabs[0].names), embeddings=vocabs[0].embeddings.reshape(
                    len(vocabs[0].names), vocabs[0].g, -1))  # (K, G, D)
            return [self._pack(d.boxes, d.scores, d.class_ids, it) for d, it in
                    zip((det.predict(it.image, conf=it.conf, iou=it.iou, max_det=it.max_det)[0] for it in items),
                        items)]
        txt = None
        if vocabs[0] is not None:
            txt = _pad_txt(vocabs) if self.mixed else vocabs[0].embeddings[None]  # (B or 1, P, D)
        y = det.forward(x, txt)  # (B, 4 + P, A)
        res = []
        for i, it in enumerate(items):
            v = it.vocab
            g = v.g if v else det.prompts_per_class
            p = v.embeddings.shape[0] if v else y.shape[1] - 4
            yi = y[i : i + 1, : 4 + p]  # (1, 4 + K * G, A)
            if g > 1:
                a = yi.shape[2]
                yi = np.concatenate((yi[:, :4], yi[:, 4:].reshape(1, p // g, g, a).max(2)), 1)  # (1, 4 + K, A)
            d = non_max_suppression(yi, it.conf, it.iou, max_det=it.max_det)[0]
            boxes = scale_boxes(x.shape[2:], d[:, :4], it.image.shape[:2])
            res.append(self._pack(boxes, d[:, 4], d[:, 5], it))
        return res

    def _pack(self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, it: Item) -> dict[str, Any]:
        names = list(it.vocab.names) if it.vocab else self.detector.vocabulary
        ids = np.asarray(class_ids).astype(np.int64)
        return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4), "scores": np.asarray(scores, np.float32),
                "class_ids": ids, "names": names, "shape": it.image.shape[:2]}


__all__ = ["ENV", "Engine", "Item", "ServeConfig", "Vocab", "VocabularyStore"]
