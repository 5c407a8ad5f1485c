"""Text embeddings without torch: an exported CLIP text encoder (ONNX Runtime) + the BPE tokenizer.

Examples:
    >>> enc = TextEncoder("clip_text.onnx")  # doctest: +SKIP
    >>> enc.encode(["person", "bus"]).shape  # doctest: +SKIP
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


class TextEncoder:
    """CLIP text encoder exported by ``yw export model=clip`` (``yw_ext.export.text``), run with ONNX Runtime.

    Args:
        model: The ``.onnx`` file.
        tokenizer: A ``Tokenizer`` or a BPE file path (default: the copy next to ``model``, else ``find_bpe``).
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
        meta = session_metadata(self.session)
        if meta.get("kind", "clip_text") != "clip_text":
            raise ValueError(f"{self.path} is not a text encoder export (kind={meta.get('kind')!r}).")
        self.identity = meta.get("identity")
        self.input = self.session.get_inputs()[0].name
        self.dim = int(meta.get("embed_dim", self.session.get_outputs()[0].shape[-1]))
        ctx = int(meta.get("context_length", self.session.get_inputs()[0].shape[1]))
        if not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer(tokenizer if tokenizer is not None else find_bpe(near=self.path), context_length=ctx)
        self.tokenizer = tokenizer

    def encode(self, texts: str | Sequence[str], batch: int = 256) -> np.ndarray:
        """``(N, D)`` float32 L2-normalised embeddings of ``texts``."""
        tokens = self.tokenizer(texts)  # (N, 77)
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        parts = [self.session.run(None, {self.input: tokens[i : i + batch]})[0] for i in range(0, len(tokens), batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    __call__ = encode


__all__ = ["TextEncoder", "make_session", "session_metadata"]
