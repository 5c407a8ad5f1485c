"""Vocabulary checks: class names, synonyms and class embeddings, validated at the public boundary.

A vocabulary is K classes. Each class has a display name and one or more text prompts (synonyms); a class's
score is the maximum over its prompts. Inside the detector the prompts are laid out class-major and padded to
the same count G per class by repeating the class's first prompt (a repeated prompt cannot change a maximum),
so the text tensor is ``(1, K * G, D)`` and the head's output reshapes to ``(B, K, G, A)`` for the max.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

MAX_PROMPTS = 4096
"""Largest number of text prompts (K classes x G prompts per class, after padding) a vocabulary may have.

LVIS (1203 classes) fits with room to spare; past a few thousand prompts the neck's (B, heads, H*W, K*G)
attention tensor dominates memory. Raise it deliberately with ``yw_ext.vocab.MAX_PROMPTS = ...`` if needed.
"""


def parse_classes(classes: Any) -> tuple[list[str], list[list[str]]]:
    """Validate class names and split them into display names and prompt lists.

    Args:
        classes: A non-empty list whose items are a class name (``"person"``) or a list of synonyms whose first
            item is the display name (``["car", "automobile"]``); or a dict ``{name: [prompts...]}``.

    Returns:
        (names, prompts): K display names and, per class, its list of prompts.

    Raises:
        TypeError: classes is not a list/tuple/dict, or an item is not a string / list of strings.
        ValueError: empty vocabulary, empty name or prompt, duplicate class names.

    Examples:
        >>> parse_classes(["person", ["car", "automobile"]])
        (['person', 'car'], [['person'], ['car', 'automobile']])
    """
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of class names, not the string {classes!r}; e.g. ['person', 'bus'].")
    if isinstance(classes, dict):
        items = []
        for k, v in classes.items():
            v = [v] if isinstance(v, str) else list(v)
            items.append([k, *[p for p in v if p != k]])  # the key is the display name and first prompt
    elif isinstance(classes, (list, tuple)):
        items = list(classes)
    else:
        raise TypeError(f"classes must be a list (or dict) of class names, got {type(classes).__name__}.")
    if not items:
        raise ValueError("classes is empty: give at least one class name, e.g. ['person'].")
    names, prompts = [], []
    for i, item in enumerate(items):
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, (list, tuple)) or not group:
            raise TypeError(
                f"class {i} is {item!r} ({type(item).__name__}); each class must be a non-empty string or a "
                "non-empty list of strings (synonyms)."
            )
        clean = []
        for p in group:
            if not isinstance(p, str):
                raise TypeError(f"class {i}: prompt {p!r} is a {type(p).__name__}, not a string.")
            if not p.strip():
                raise ValueError(f"class {i}: empty class name or prompt {p!r}.")
            clean.append(p.strip())
        names.append(clean[0])
        prompts.append(clean)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise ValueError(f"duplicate class name {n!r} (classes {seen[n]} and {i}); class names must be unique.")
        seen[n] = i
    return names, prompts


def pad_prompts(prompts: list[list[str]]) -> tuple[list[str], int]:
    """Lay prompts out class-major, each class padded to G prompts by repeating its first prompt.

    Args:
        prompts: Per class, its prompts.

    Returns:
        (flat list of K * G prompts, G).

    Raises:
        ValueError: K * G exceeds ``MAX_PROMPTS``.

    Examples:
        >>> pad_prompts([["car", "automobile"], ["bus"]])
        (['car', 'automobile', 'bus', 'bus'], 2)
    """
    g = max(len(p) for p in prompts)
    if len(prompts) * g > MAX_PROMPTS:
        raise ValueError(
            f"vocabulary too large: {len(prompts)} classes x {g} prompts per class = {len(prompts) * g} prompts, "
            f"the maximum is yw_ext.vocab.MAX_PROMPTS = {MAX_PROMPTS}."
        )
    return [q for p in prompts for q in (p + [p[0]] * (g - len(p)))], g


def check_embeddings(embeddings: Any, k: int, dim: int) -> tuple[torch.Tensor, int]:
    """Validate user-supplied class embeddings and return them as float32 ``(K * G, D)`` plus G.

    Args:
        embeddings: A ``(K, D)`` or ``(K, G, D)`` tensor / ndarray, or a path to a ``.npy`` file holding one.
        k: Number of classes K.
        dim: The model's text-embedding width D.

    Returns:
        (embeddings (K * G, D) float32 on CPU, G).

    Raises:
        TypeError: not a tensor, array or .npy path.
        ValueError: wrong rank, K or D; NaN/inf values; all-zero rows; too many prompts.

    Examples:
        >>> e, g = check_embeddings(np.eye(3, 512, dtype=np.float32), k=3, dim=512)
        >>> tuple(e.shape), g
        ((3, 512), 1)
    """
    if isinstance(embeddings, (str, Path)):
        path = Path(embeddings)
        if path.suffix.lower() != ".npy":
            raise TypeError(f"embeddings file must be a .npy array, got '{path}'.")
        if not path.is_file():
            raise FileNotFoundError(f"embeddings file '{path}' does not exist.")
        embeddings = np.load(path, allow_pickle=False)
    if isinstance(embeddings, np.ndarray):
        if not np.issubdtype(embeddings.dtype, np.number):
            raise TypeError(f"embeddings must be numeric, got dtype {embeddings.dtype}.")
        t = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    elif isinstance(embeddings, torch.Tensor):
        if not (embeddings.is_floating_point() or embeddings.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"embeddings must be a floating-point tensor, got {embeddings.dtype}.")
        t = embeddings.detach().to("cpu", torch.float32)
    else:
        raise TypeError(f"embeddings must be a torch.Tensor, numpy.ndarray or .npy path, got {type(embeddings).__name__}.")
    if t.dim() == 2:
        t = t[:, None]  # (K, 1, D)
    if t.dim() != 3:
        raise ValueError(f"embeddings must have shape (K, D) or (K, G, D), got {tuple(t.shape)}.")
    if t.shape[0] != k:
        raise ValueError(f"embeddings have {t.shape[0]} rows but there are {k} class names.")
    if t.shape[-1] != dim:
        raise ValueError(
            f"embedding width {t.shape[-1]} does not match the model's text-embedding width {dim} "
            f"(CLIP ViT-B/32 gives 512, ViT-L/14 gives 768)."
        )
    if not torch.isfinite(t).all():
        bad = sorted({int(i) for i in torch.nonzero(~torch.isfinite(t))[:, 0].tolist()})
        raise ValueError(f"embeddings contain NaN or inf values (classes {bad[:10]}).")
    zero = torch.nonzero(t.abs().amax(-1) == 0)
    if len(zero):
        raise ValueError(f"embeddings contain all-zero vectors (classes {sorted({int(i) for i in zero[:, 0]})[:10]}).")
    g = t.shape[1]
    if k * g > MAX_PROMPTS:
        raise ValueError(f"{k} x {g} = {k * g} prompts exceeds yw_ext.vocab.MAX_PROMPTS = {MAX_PROMPTS}.")
    return t.reshape(k * g, dim), g  # (K * G, D)


def names_dict(names: Sequence[str]) -> dict[int, str]:
    """Ultralytics-style ``{index: name}`` dict.

    Examples:
        >>> names_dict(["a", "b"])
        {0: 'a', 1: 'b'}
    """
    return dict(enumerate(names))


__all__ = ["MAX_PROMPTS", "parse_classes", "pad_prompts", "check_embeddings", "names_dict"]
