# yw_ext, AGPL-3.0 license
"""Numpy checks of class embeddings, shared by the PyTorch model (``yw_ext.vocab``) and the torch-free runtime.

Examples:
    >>> e, g = check_embedding_array(np.eye(3, 512, dtype=np.float32), k=3, dim=512)
    >>> e.shape, g
    ((3, 512), 1)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from yw_ext.core.classes import MAX_PROMPTS


def read_embedding_file(path: str | os.PathLike) -> np.ndarray:
    """Load a ``.npy`` embedding array without unpickling.

    Raises:
        TypeError: not a ``.npy`` path.
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a plain numeric ``.npy`` array (pickled objects are never loaded), or is
            truncated or corrupt; the message names the file.

    Examples:
        >>> read_embedding_file("vocab.txt")
        Traceback (most recent call last):
        ...
        TypeError: embeddings file must be a .npy array, got 'vocab.txt'.
    """
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise TypeError(f"embeddings file must be a .npy array, got '{path}'.")
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file '{path}' does not exist.")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # object arrays (pickle), truncated or malformed headers
        raise ValueError(
            f"embeddings file '{path}' is not a plain numeric .npy array (pickled objects are never loaded; "
            f"or the file is truncated or corrupt): {e}"
        ) from e


def check_width(width: int, dim: int | None) -> None:
    """Raise a ValueError naming both widths when an embedding width is not the model's ``dim`` (None: any).

    Examples:
        >>> check_width(512, 512)
    """
    if dim is not None and width != dim:
        raise ValueError(
            f"embedding width {width} != the model's {dim}: width {width} does not match its text-embedding width "
            f"{dim} (use the CLIP the model was trained with; CLIP ViT-B/32 gives 512, ViT-L/14 gives 768)."
        )


def check_rows(e: np.ndarray) -> None:
    """``(P, D)`` rows must be finite and not all-zero; the error names the first bad rows.

    Examples:
        >>> check_rows(np.zeros((2, 4)))
        Traceback (most recent call last):
        ...
        ValueError: embeddings contain all-zero vectors (rows [0, 1]).
    """
    bad = np.nonzero(~np.isfinite(e).all(-1))[0]
    if len(bad):
        raise ValueError(f"embeddings contain NaN or inf values (rows {bad[:10].tolist()}).")
    zero = np.nonzero(np.abs(e).max(-1) == 0)[0]
    if len(zero):
        raise ValueError(f"embeddings contain all-zero vectors (rows {zero[:10].tolist()}).")


def check_embedding_array(
    embeddings: Any, k: int, dim: int | None, max_prompts: int = MAX_PROMPTS
) -> tuple[np.ndarray, int]:
    """Validate class embeddings and return them as float32 ``(K * G, D)`` plus G.

    Args:
        embeddings: A ``(K, D)`` or ``(K, G, D)`` numeric array (anything ``np.asarray`` takes that is numeric), or a
            ``.npy`` path.
        k: Number of classes K.
        dim: The model's text-embedding width D (None: not checked).
        max_prompts: Largest K * G allowed.

    Returns:
        (embeddings ``(K * G, D)`` float32, C-contiguous; G).

    Raises:
        TypeError: not numeric, or a path that is not ``.npy``.
        FileNotFoundError: a missing ``.npy``.
        ValueError: wrong rank, K or D; NaN/inf values; all-zero rows; more than ``max_prompts`` prompts.

    Examples:
        >>> e, g = check_embedding_array(np.ones((2, 3, 8)), k=2, dim=8)
        >>> e.shape, g
        ((6, 8), 3)
    """
    if isinstance(embeddings, (str, os.PathLike)):
        embeddings = read_embedding_file(embeddings)
    a = np.asarray(embeddings)
    if not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
        raise TypeError(f"embeddings must be numeric, got dtype {a.dtype}.")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 2:
        a = a[:, None]  # (K, 1, D)
    if a.ndim != 3:
        raise ValueError(f"embeddings must have shape (K, D) or (K, G, D), got {tuple(a.shape)}.")
    if a.shape[0] != k:
        raise ValueError(f"embeddings have {a.shape[0]} rows but there are {k} class names.")
    check_width(a.shape[-1], dim)
    g = a.shape[1]
    if k * g > max_prompts:
        raise ValueError(f"{k} x {g} = {k * g} prompts exceeds yw_ext.vocab.MAX_PROMPTS = {max_prompts}.")
    flat = a.reshape(k * g, a.shape[-1])  # (K * G, D)
    check_rows(flat)
    return flat, g


__all__ = ["check_embedding_array", "check_rows", "check_width", "read_embedding_file"]
