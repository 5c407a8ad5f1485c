# yw_ext, AGPL-3.0 license
"""Text encoders built from a CLIP text tower embedded in a checkpoint (official weights carry one).

``YWDetectionModel.text_encoder_state`` holds ``{"format": "hf-clip-text", "config", "state_dict", "identity"}``
(written by the checkpoint converters, ``yw_ext.checkpoints``). Building a ``CLIPTextEncoder`` from it costs a
second, so encoders are kept per identity (the two most recent) and shared between models.

Examples:
    >>> enc = text_encoder_from_state(model.text_encoder_state)  # doctest: +SKIP
    >>> enc.encode(["person"]).shape  # doctest: +SKIP
    torch.Size([1, 512])
"""

from __future__ import annotations

import threading
from typing import Any

_ENCODERS: dict[str, Any] = {}  # identity -> CLIPTextEncoder built from an embedded text tower
_ENCODERS_MAX = 2
_ENCODERS_LOCK = threading.Lock()


def remember_encoder(enc: Any, *keys: str) -> Any:
    """Keep ``enc`` under its identity (and ``keys``) for ``text_encoder_from_state``; the oldest entries go first.

    Examples:
        >>> remember_encoder(enc)  # doctest: +SKIP
    """
    with _ENCODERS_LOCK:
        while len(_ENCODERS) >= _ENCODERS_MAX:
            del _ENCODERS[next(iter(_ENCODERS))]
        _ENCODERS[enc.identity] = enc
        for key in keys:
            if key and key != enc.identity:
                _ENCODERS[key] = enc
    return enc


def text_encoder_from_state(state: dict[str, Any]) -> Any:
    """The ``CLIPTextEncoder`` of a model's ``text_encoder_state``, built once per process (cached by identity).

    Args:
        state: ``{"format": "hf-clip-text", "config": {...}, "state_dict": {...}, "identity": str}``.

    Returns:
        (yw_ext.text.CLIPTextEncoder): The encoder (CPU), shared between models with the same tower.

    Raises:
        ValueError: an unknown state format.

    Examples:
        >>> text_encoder_from_state({"format": "other"})
        Traceback (most recent call last):
        ...
        ValueError: unknown text_encoder_state format 'other' (expected 'hf-clip-text').
    """
    if state.get("format") != "hf-clip-text":
        raise ValueError(f"unknown text_encoder_state format {state.get('format')!r} (expected 'hf-clip-text').")
    key = state.get("identity")
    with _ENCODERS_LOCK:
        if key and key in _ENCODERS:
            return _ENCODERS[key]
    from yw_ext.text.clip import CLIPTextEncoder

    enc = CLIPTextEncoder.from_hf_state_dict(state["state_dict"], state.get("config"), source="embedded text tower")
    return remember_encoder(enc, key)


__all__ = ["remember_encoder", "text_encoder_from_state"]
