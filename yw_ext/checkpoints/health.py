# yw_ext, AGPL-3.0 license
"""Checks on a loaded model's numbers: a checkpoint with NaN / inf weights warns at load.

Examples:
    >>> import torch
    >>> non_finite_tensors({"w": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)})
    ['w']
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from yw_ext.core.log import LOGGER

NAMES_SHOWN = 5
"""Largest number of tensor names listed in the warning."""


def non_finite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` that hold a NaN or an infinity.

    Examples:
        >>> non_finite_tensors({"a": torch.ones(1)})
        []
    """
    return [k for k, v in tensors.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def warn_non_finite(model: torch.nn.Module, source: str) -> list[str]:
    """Warn (``ultralytics`` logger) when the model's weights, buffers or class embeddings hold NaN / inf.

    Args:
        model: The loaded model.
        source: The file it came from, for the message.

    Returns:
        The names of the offending tensors (empty: all finite).

    Examples:
        >>> warn_non_finite(torch.nn.Linear(2, 2), "demo.pt")
        []
    """
    tensors = dict(model.state_dict())
    txt = getattr(model, "txt_feats", None)
    if isinstance(txt, torch.Tensor) and getattr(model, "vocab", None) is not None:
        tensors["txt_feats (class embeddings)"] = txt
    bad = non_finite_tensors(tensors)
    if bad:
        shown = ", ".join(bad[:NAMES_SHOWN]) + (" ..." if len(bad) > NAMES_SHOWN else "")
        LOGGER.warning(f"yw_ext: {source}: {len(bad)} tensor(s) hold NaN or inf values ({shown}); its predictions "
                       "will be meaningless. The file is damaged, or comes from a training run that diverged.")
    return bad


__all__ = ["non_finite_tensors", "warn_non_finite"]
