"""Text embeddings without torch: an exported text encoder (ONNX Runtime) + its tokenizer.

Two kinds of export (``yw_ext.export.text``), told apart by the ``kind`` metadata:

- ``clip_text``: CLIP; tokens from ``yw_ext.runtime.Tokenizer`` (CLIP's BPE, needs ``ftfy`` and ``regex``);
- ``st_text``: Sentence-Transformers / M-CLIP (with an optional ``yw align-text`` projection); tokens from the
  ``tokenizers`` library (Hugging Face's Rust tokenizer, no torch) reading ``<name>.tokenizer.json``.

Examples:
    >>> enc = TextEncoder("clip_text.onnx")  # doctest: +SKIP
    >>> enc.encode(["person", "bus"]).shape  # doctest: +SKIP
    (2, 512)
    >>> TextEncoder("st_text.onnx").encode(["人", "公共汽车"]).shape  # doctest: +SKIP
    (2, 512)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from yw_ext.runtime.tokenizer import Tokenizer, find_bpe


def session_metadata(session) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX Runtime session's model (strings)."""
    return dict(session.get_modelmeta().custom_metadata_map)


def make_session(path: str | os.PathLike, providers: Sequence | None = None, threads: int | None = None):
    """An ONNX Runtime session (CPU unless ``providers`` says otherwise) with quiet logging.

    Args:
        path: ``.onnx`` file.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: Intra-op threads (default: ONNX Runtime's choice).

    Raises:
        FileNotFoundError: no such file.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"ONNX model not found: {p}")
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the default-vocabulary initializer of dynamic-vocabulary files is intentional
    if threads:
        so.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(p), so, providers=list(providers or ["CPUExecutionProvider"]))


class HFTokenizer:
    """A ``tokenizers`` tokenizer as the exported Sentence-Transformers / M-CLIP encoders need it.

    Texts -> ``(input_ids, attention_mask)`` ``(N, L)`` int64, padded to the longest text with ``pad_id``, cut at
    ``max_length`` tokens (special tokens included), lower-cased first when ``lowercase``.

    Args:
        path: ``tokenizer.json`` (as written next to the ONNX file by the export).
        max_length: Tokens per text.
        lowercase: Lower-case texts first.
        pad_id: Padding token id.

    Examples:
        >>> tok = HFTokenizer("st_text.tokenizer.json", max_length=128)  # doctest: +SKIP
        >>> ids, mask = tok(["a dog", "人"])  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, max_length: int = 512, lowercase: bool = False, pad_id: int = 0):
        """Read the tokenizer file (ImportError when the ``tokenizers`` library is missing)."""
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as e:
            raise ImportError("this text encoder needs the `tokenizers` library: pip install tokenizers") from e
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {p} (the export writes it next to the .onnx file).")
        self.path, self.max_length, self.lowercase = p, int(max_length), bool(lowercase)
        self.tok = _Tok.from_file(str(p))
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_length)
        self.pad_id = int(pad_id)

    def __call__(self, texts: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, mask)``, both ``(N, L)`` int64."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text {i} must be a non-empty string, got {t!r}.")
        if self.lowercase:
            texts = [t.lower() for t in texts]
        enc = self.tok.encode_batch(texts) if texts else []
        n = max((len(e.ids) for e in enc), default=0)
        ids = np.full((len(enc), n), self.pad_id, np.int64)
        mask = np.zeros((len(enc), n), np.int64)
        for i, e in enumerate(enc):
            ids[i, : len(e.ids)], mask[i, : len(e.ids)] = e.ids, 1
        return ids, mask


class TextEncoder:
    """Text encoder exported by ``yw export model=clip`` / ``model=text`` (``yw_ext.export.text``), run with ONNX
    Runtime: CLIP (``kind=clip_text``) or Sentence-Transformers / M-CLIP (``kind=st_text``).

    Args:
        model: The ``.onnx`` file.
        tokenizer: CLIP: a ``Tokenizer`` or a BPE file path (default: the copy next to ``model``, else ``find_bpe``);
            ``st_text``: an ``HFTokenizer`` or a ``tokenizer.json`` path (default: the file named in the metadata,
            next to ``model``).
        providers: ONNX Runtime providers.
        threads: Intra-op threads.

    Attributes:
        dim (int): Embedding width D.
        identity (str | None): The encoder's identity (as ``CLIPTextEncoder.identity``).

    Examples:
        >>> enc = TextEncoder("clip_text.onnx")  # doctest: +SKIP
        >>> e = enc.encode(["a dog"])  # (1, D), unit norm  # doctest: +SKIP
    """

    def __init__(self, model: str | os.PathLike, tokenizer: Tokenizer | str | os.PathLike | None = None,
                 providers: Sequence | None = None, threads: int | None = None):
        """Open the session and the tokenizer."""
        self.path = Path(model)
        self.session = make_session(self.path, providers, threads)
        meta = self.metadata = session_metadata(self.session)
        self.kind = meta.get("kind", "clip_text")
        if self.kind not in ("clip_text", "st_text"):
            raise ValueError(f"{self.path} is not a text encoder export (kind={meta.get('kind')!r}).")
        self.identity = meta.get("identity")
        self.input = self.session.get_inputs()[0].name
        self.dim = int(meta.get("embed_dim", self.session.get_outputs()[0].shape[-1]))
        if self.kind == "st_text":
            self.tokenizer = tokenizer if isinstance(tokenizer, HFTokenizer) else HFTokenizer(
                tokenizer if tokenizer is not None else self.path.parent / meta.get("tokenizer", "tokenizer.json"),
                int(meta.get("max_length", 512)), meta.get("lowercase", "0") in ("1", "True"),
                int(meta.get("pad_id", 0)))
            return
        ctx = int(meta.get("context_length", self.session.get_inputs()[0].shape[1]))
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer(tokenizer if tokenizer is not None else find_bpe(near=self.path), context_length=ctx)
        self.tokenizer = tokenizer

    def encode(self, texts: str | Sequence[str], batch: int = 256) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of ``texts``."""
        if self.kind == "st_text":
            return self._encode_st(texts, batch)
        tokens = self.tokenizer(texts)  # (N, 77)
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        parts = [self.session.run(None, {self.input: tokens[i : i + batch]})[0] for i in range(0, len(tokens), batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def _encode_st(self, texts: str | Sequence[str], batch: int) -> np.ndarray:
        """Sentence-Transformers / M-CLIP export: tokenise each batch (padded to its longest text) and run."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        parts = []
        for i in range(0, len(texts), batch):
            ids, mask = self.tokenizer(texts[i : i + batch])  # (B, L) each
            parts.append(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0])
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros((0, self.dim), np.float32)

    __call__ = encode


__all__ = ["HFTokenizer", "TextEncoder", "make_session", "session_metadata"]
