"""The vocabulary: one value object for the classes a detector looks for, and the checks at the public boundary.

A vocabulary is K classes. Each class has a display name and one or more text prompts (synonyms); a class's
score is the maximum over its prompts. Inside the detector the prompts are laid out class-major and padded to
the same count G per class by repeating the class's first prompt (a repeated prompt cannot change a maximum),
so the embeddings are ``(K * G, D)`` and the head's output reshapes to ``(B, K, G, A)`` for the max.

``Vocabulary`` is plain data (numpy, no torch): the network installs it (``YWDetectionModel.install_vocabulary``),
prompt files, exports, the runtime and the demo read and write it through ``to_dict`` / ``from_dict``. It is built
outside the network, from names + a text encoder, images, embeddings or a prompt file (``yw_ext.text.vocabulary``).

This module imports neither torch nor Ultralytics (``check_embeddings`` imports torch only to return a tensor).

Examples:
    >>> import numpy as np
    >>> v = Vocabulary(["car", "bus"], np.ones((4, 8), np.float32), prompts_per_class=2,
    ...                prompts=[["car", "automobile"], ["bus"]])
    >>> v.k, v.dim, v.sources
    (2, 8, ('text', 'text'))
    >>> Vocabulary.from_dict(v.to_dict()) == v
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from yw_ext.core import classes as _classes
from yw_ext.core.classes import names_dict, parse_class_string, parse_classes
from yw_ext.core.embeddings import check_embedding_array, read_embedding_file

MAX_PROMPTS = _classes.MAX_PROMPTS
"""Largest number of text prompts (K classes x G prompts per class, after padding) a vocabulary may have.

LVIS (1203 classes) fits with room to spare; past a few thousand prompts the neck's (B, heads, H*W, K*G)
attention tensor dominates memory. Raise it deliberately with ``yw_ext.vocab.MAX_PROMPTS = ...`` if needed.
"""

SOURCES = ("text", "image", "text+image", "embedding", "prompt")
"""Where a class embedding came from: CLIP text, CLIP image exemplars, both fused, user embeddings, prompt tuning."""


def pad_prompts(prompts: list[list[str]]) -> tuple[list[str], int]:
    """Lay prompts out class-major, each class padded to G prompts by repeating its first prompt.

    Raises:
        ValueError: K * G exceeds ``MAX_PROMPTS``.

    Examples:
        >>> pad_prompts([["car", "automobile"], ["bus"]])
        (['car', 'automobile', 'bus', 'bus'], 2)
    """
    return _classes.pad_prompts(prompts, max_prompts=MAX_PROMPTS)


def check_embeddings(embeddings: Any, k: int, dim: int) -> tuple[Any, int]:
    """Validate user-supplied class embeddings and return them as a float32 CPU tensor ``(K * G, D)`` plus G.

    Args:
        embeddings: A ``(K, D)`` or ``(K, G, D)`` tensor / ndarray, or a path to a ``.npy`` file holding one.
        k: Number of classes K.
        dim: The model's text-embedding width D.

    Returns:
        (embeddings (K * G, D) float32 torch tensor on CPU, G).

    Raises:
        TypeError: not a tensor, array or .npy path.
        ValueError: wrong rank, K or D; NaN/inf values; all-zero rows; too many prompts.

    Examples:
        >>> e, g = check_embeddings(np.eye(3, 512, dtype=np.float32), k=3, dim=512)
        >>> tuple(e.shape), g
        ((3, 512), 1)
    """
    import torch

    if isinstance(embeddings, torch.Tensor):
        if not (embeddings.is_floating_point() or embeddings.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"embeddings must be a floating-point tensor, got {embeddings.dtype}.")
        embeddings = embeddings.detach().to("cpu", torch.float32).numpy()
    elif isinstance(embeddings, str) or hasattr(embeddings, "__fspath__"):
        embeddings = read_embedding_file(embeddings)
    elif not isinstance(embeddings, np.ndarray):
        raise TypeError(f"embeddings must be a torch.Tensor, numpy.ndarray or .npy path, got {type(embeddings).__name__}.")
    flat, g = check_embedding_array(embeddings, k, dim, max_prompts=MAX_PROMPTS)
    return torch.from_numpy(flat), g  # (K * G, D)


def _as_array(embeddings: Any) -> np.ndarray:
    """A read-only float32 ``(P, D)`` numpy copy of a tensor or array (bitwise for float32 input)."""
    if hasattr(embeddings, "detach"):  # torch.Tensor, without importing torch
        embeddings = embeddings.detach().to("cpu").float().numpy()
    a = np.array(embeddings, dtype=np.float32, copy=True)
    a.setflags(write=False)
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class Vocabulary:
    """K classes as the detector consumes them: names, prompts, embeddings ``(K * G, D)`` and where they came from.

    Args:
        names: K unique display names.
        embeddings: ``(K * G, D)`` float32 (tensor or array; stored as a read-only numpy copy), class-major.
        prompts_per_class: G; a class's score is the max over its G prompts.
        prompts: Each class's text prompts (None: not from text, e.g. user embeddings).
        sources: Per class, one of ``SOURCES`` (default: ``"text"`` with prompts, else ``"embedding"``).
        text_encoder_id: Identity of the text encoder whose space the embeddings are in (None: unknown / user).
        image_encoder_id: Identity of the CLIP image tower used for image prompts (None: none).
        tuning: Prompt-tuning extras of these exact embeddings (``raw_embeddings``, ``adapter``, ``detector``,
            ``detector_sha256``, ``meta``), kept for prompt files; None otherwise.

    Raises:
        ValueError: empty or duplicate names, embeddings not ``(K * G, D)``, sources / prompts of another length.

    Examples:
        >>> v = Vocabulary(["a", "b"], np.eye(2, 4, dtype=np.float32))
        >>> v.names, v.sources, v.num_prompts
        (('a', 'b'), ('embedding', 'embedding'), 2)
    """

    names: Sequence[str]
    embeddings: Any
    prompts_per_class: int = 1
    prompts: Sequence[Sequence[str]] | None = None
    sources: Sequence[str] | None = None
    text_encoder_id: str | None = None
    image_encoder_id: str | None = None
    tuning: dict | None = None

    def __post_init__(self) -> None:
        """Normalise the fields to tuples / a read-only array and check they agree."""
        put = object.__setattr__
        names = tuple(str(n) for n in self.names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a vocabulary needs unique, non-empty names, got {list(names)[:10]}.")
        emb, g = _as_array(self.embeddings), int(self.prompts_per_class)
        if emb.ndim != 2 or g < 1 or emb.shape[0] != len(names) * g:
            raise ValueError(f"expected ({len(names) * g}, D) embeddings for {len(names)} classes x {g} prompts, "
                             f"got {tuple(emb.shape)}.")
        prompts = None if self.prompts is None else tuple(tuple(p) for p in self.prompts)
        if prompts is not None and len(prompts) != len(names):
            raise ValueError(f"prompts has {len(prompts)} entries for {len(names)} classes.")
        default = "text" if prompts is not None else "embedding"
        sources = tuple(self.sources) if self.sources is not None else (default,) * len(names)
        if len(sources) != len(names):
            raise ValueError(f"class_sources has {len(sources)} entries for {len(names)} classes.")
        put(self, "names", names)
        put(self, "embeddings", emb)
        put(self, "prompts_per_class", g)
        put(self, "prompts", prompts)
        put(self, "sources", sources)

    @property
    def k(self) -> int:
        """K, the number of classes."""
        return len(self.names)

    @property
    def dim(self) -> int:
        """D, the embedding width."""
        return int(self.embeddings.shape[1])

    @property
    def num_prompts(self) -> int:
        """P = K * G, the number of embedding rows."""
        return int(self.embeddings.shape[0])

    @property
    def class_prompts(self) -> list[list[str]] | None:
        """Each class's prompts as lists (None when not from text)."""
        return None if self.prompts is None else [list(p) for p in self.prompts]

    def names_dict(self) -> dict[int, str]:
        """Ultralytics-style ``{index: name}``."""
        return names_dict(self.names)

    def replace(self, **changes: Any) -> Vocabulary:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data: lists, strings, ints and the ``(K * G, D)`` float32 array (``tuning`` as stored).

        Examples:
            >>> sorted(Vocabulary(["a"], np.ones((1, 4), np.float32)).to_dict())[:3]
            ['embeddings', 'image_encoder_id', 'names']
        """
        return {
            "names": list(self.names),
            "embeddings": np.array(self.embeddings),
            "prompts_per_class": self.prompts_per_class,
            "prompts": self.class_prompts,
            "sources": list(self.sources),
            "text_encoder_id": self.text_encoder_id,
            "image_encoder_id": self.image_encoder_id,
            "tuning": self.tuning,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        """Inverse of ``to_dict`` (unknown keys are an error, missing optional keys take their defaults)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown vocabulary fields {sorted(unknown)}; expected some of {sorted(fields)}.")
        return cls(**d)

    def __eq__(self, other: object) -> bool:
        """Same fields and bitwise-equal embeddings (``tuning`` compared by identity of its keys' presence)."""
        if not isinstance(other, Vocabulary):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        ea, eb = a.pop("embeddings"), b.pop("embeddings")
        a.pop("tuning"), b.pop("tuning")
        return a == b and ea.shape == eb.shape and bool((ea.view(np.uint32) == eb.view(np.uint32)).all())

    __hash__ = None  # mutable-by-identity data; not hashable

    def __repr__(self) -> str:
        more = " ..." if self.k > 5 else ""
        return (f"Vocabulary(K={self.k}, G={self.prompts_per_class}, D={self.dim}, names={list(self.names[:5])}{more}, "
                f"sources={sorted(set(self.sources))})")


__all__ = [
    "MAX_PROMPTS",
    "SOURCES",
    "Vocabulary",
    "check_embeddings",
    "names_dict",
    "pad_prompts",
    "parse_class_string",
    "parse_classes",
]
