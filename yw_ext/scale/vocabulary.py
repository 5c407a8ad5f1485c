"""The vocabulary of a batch job, built once on the client and shipped to the workers as embeddings.

Text goes through an exported CLIP text encoder (``text_encoder=``, torch-free) or the PyTorch CLIP and its on-disk
cache (``clip=``, ``yw_ext.text.vocabulary.build_vocabulary``); image exemplars through the PyTorch CLIP; a prompt
file (``yw embed``, ``save_prompts``, prompt tuning) is read as stored. The workers receive ``payload(vocab)``:
names and ``(K, G, D)`` embeddings, plus a hash that keys their model cache.

Examples:
    >>> import numpy as np
    >>> v = resolve_vocabulary(["a", "b"], embeddings=np.eye(2, 8, dtype=np.float32))
    >>> payload(v)["embeddings"].shape
    (2, 1, 8)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from yw_ext.core.classes import pad_prompts, parse_classes
from yw_ext.core.embeddings import check_embedding_array
from yw_ext.core.io import load_npz
from yw_ext.vocab import Vocabulary

PROMPT_FORMAT = "yw_ext.prompts/1"  # yw_ext.prompts.PROMPT_FORMAT (that module imports torch)


def read_prompt_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """A prompt file (``.npz``, ``yw_ext.prompts``) as a ``Vocabulary``, read without torch (names, embeddings, G,
    prompts; the file's tuning extras are not needed to detect).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a prompt file, or inconsistent entries.

    Examples:
        >>> read_prompt_vocabulary("vocab.npz").names  # doctest: +SKIP
        ('person', 'car')
    """
    p = Path(path)
    files = load_npz(p, what="prompt file")
    if str(files.get("format", "")) != PROMPT_FORMAT or "names" not in files or "embeddings" not in files:
        raise ValueError(f"'{p}' is not a yw_ext prompt file (format={PROMPT_FORMAT!r}, names, embeddings).")
    names = [str(n) for n in np.atleast_1d(files["names"])]
    emb = np.asarray(files["embeddings"], np.float32)
    flat, g = check_embedding_array(emb, len(names), None, max_prompts=sys.maxsize)  # (K * G, D)
    prompts = json.loads(str(files["class_prompts"])) if "class_prompts" in files else None
    sources = [str(s) for s in np.atleast_1d(files["class_sources"])] if "class_sources" in files else None
    text_id = str(files["text_encoder_id"]) if "text_encoder_id" in files else None
    return Vocabulary(names, flat, g, prompts, sources, text_id or None)


def resolve_vocabulary(classes: Any = None, embeddings: Any = None, prompts: str | os.PathLike | None = None,
                       images: dict | None = None, text_encoder: Any = None, clip: Any = None,
                       dim: int | None = None) -> Vocabulary | None:
    """One ``Vocabulary`` from the ways a user gives classes (None: keep the model's own vocabulary).

    Args:
        classes: Class names; a class may be a list of synonyms (``["car", "automobile"]``).
        embeddings: ``(K, D)`` / ``(K, G, D)`` array or ``.npy`` path for ``classes`` (plain names).
        prompts: A prompt file (``.npz``); ``classes`` then renames its classes (same count) if given.
        images: ``{class: exemplar(s)}`` image prompts (PyTorch CLIP, see ``YOLOWorld.set_classes``).
        text_encoder: ``yw_ext.runtime.TextEncoder`` or the path of an exported CLIP text encoder (torch-free).
        clip: PyTorch CLIP source for text / images (default ``$YW_CLIP``); used when no ``text_encoder``.
        dim: The detector's embedding width D (checked when given).

    Raises:
        ValueError: conflicting arguments, wrong shapes, a renaming of another length.

    Examples:
        >>> resolve_vocabulary(["a", "b"], embeddings=np.ones((2, 3, 8), np.float32)).prompts_per_class
        3
        >>> resolve_vocabulary(["person", ["car", "automobile"]], text_encoder="clip_text.onnx")  # doctest: +SKIP
    """
    if prompts is not None:
        if embeddings is not None or images is not None:
            raise ValueError("give the vocabulary once: prompts= (a prompt file), embeddings= or images=, not several.")
        vocab = read_prompt_vocabulary(prompts)
        if classes is not None:
            names, _ = parse_classes(classes)
            if len(names) != vocab.k:
                raise ValueError(f"classes has {len(names)} names for the {vocab.k} classes of {prompts}.")
            vocab = vocab.replace(names=names)
    elif classes is None:
        if embeddings is not None or images is not None:
            raise ValueError("embeddings= / images= need classes=... (one name per class).")
        return None
    elif embeddings is not None and images is None:
        names, plist = parse_classes(classes)
        if any(len(p) > 1 for p in plist):
            raise ValueError("give synonyms either as text prompts or as (K, G, D) embeddings, not both.")
        flat, g = check_embedding_array(embeddings, len(names), dim, max_prompts=sys.maxsize)  # (K * G, D)
        vocab = Vocabulary(names, flat, g)
    elif text_encoder is not None and images is None:
        from yw_ext.runtime.text import TextEncoder

        enc = text_encoder if hasattr(text_encoder, "encode") else TextEncoder(text_encoder)
        names, plist = parse_classes(classes)
        flat_prompts, g = pad_prompts(plist, max_prompts=sys.maxsize)  # class-major, padded with the first prompt
        vocab = Vocabulary(names, enc.encode(flat_prompts), g, plist, None, getattr(enc, "identity", None))
    else:  # PyTorch CLIP (text through the on-disk cache, and image exemplars)
        from yw_ext.text.vocabulary import build_vocabulary

        vocab = build_vocabulary(classes, dim or 512, embeddings=embeddings, encoder=clip, images=images)
    if dim is not None and vocab.dim != dim:
        raise ValueError(f"vocabulary embeddings are {vocab.dim}-d, the model takes {dim}-d.")
    return vocab


def vocabulary_key(vocab: Vocabulary | None) -> str:
    """A content hash of names, G and embeddings (``"default"`` for the model's own vocabulary)."""
    if vocab is None:
        return "default"
    h = hashlib.sha256(json.dumps([list(vocab.names), vocab.prompts_per_class]).encode())
    h.update(np.ascontiguousarray(vocab.embeddings, np.float32).tobytes())
    return h.hexdigest()[:16]


def payload(vocab: Vocabulary | None) -> dict | None:
    """What the workers get: ``{"key", "names", "embeddings" (K, G, D) float32}`` (None: the model's own)."""
    if vocab is None:
        return None
    emb = np.ascontiguousarray(vocab.embeddings, np.float32).reshape(vocab.k, vocab.prompts_per_class, vocab.dim)
    return {"key": vocabulary_key(vocab), "names": list(vocab.names), "embeddings": emb}  # (K, G, D)


__all__ = ["payload", "read_prompt_vocabulary", "resolve_vocabulary", "vocabulary_key"]
