# yw_ext, AGPL-3.0 license
"""The residual MLP adapter of prompt tuning and image prompts: ``n(x + MLP(x))``.

One module serves both official recipes: the ``use_mlp_adapter`` of prompt tuning (``SimpleYOLOWorldDetector``) and the
projector that maps CLIP image embeddings into the detector's text space (v2.1 ``YOLOWorldImageDetector``):
``Linear(D, 2D)``, ReLU, ``Linear(2D, D)``, added to its input, then L2-normalised. Unlike the official modules the
last ``Linear`` starts at zero, so an untrained adapter is the identity on normalised inputs: training starts exactly
from the raw (text or CLIP image) embeddings, which are what a model without an adapter uses. The input is used as
given (not normalised first), as in the official prompt-tuning adapter, whose learnable embeddings drift off the unit
sphere; image prompts pass normalised CLIP embeddings.

Its tensors are stored as float32 arrays named ``adapter.0.weight``, ``adapter.0.bias``, ``adapter.2.weight``,
``adapter.2.bias`` (``ADAPTER_KEYS``) in prompt files and image-adapter files.

Examples:
    >>> a = ResidualAdapter(8)
    >>> x = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    >>> torch.allclose(a(x), x)  # identity until trained
    True
    >>> sorted(adapter_state(a))
    ['adapter.0.bias', 'adapter.0.weight', 'adapter.2.bias', 'adapter.2.weight']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

ADAPTER_KEYS = ("adapter.0.weight", "adapter.0.bias", "adapter.2.weight", "adapter.2.bias")
"""Names of the adapter tensors in files (``adapter.`` + the ``nn.Sequential`` state-dict keys)."""


class ResidualAdapter(nn.Sequential):
    """``n(x + MLP(x))`` with ``MLP = Linear(D, 2D), ReLU, Linear(2D, D)``; the last layer starts at zero.

    It is an ``nn.Sequential`` so that its state-dict keys are ``0.weight`` ... ``2.bias``, the layout of the files.

    Args:
        dim: Embedding width D.

    Examples:
        >>> a = ResidualAdapter(512)
        >>> a(torch.randn(4, 512)).norm(dim=-1)  # (N, D) -> (N, D), unit norm
        tensor([1.0000, 1.0000, 1.0000, 1.0000], grad_fn=<LinalgVectorNormBackward0>)
    """

    def __init__(self, dim: int):
        """Build the MLP for width ``dim`` (an ``int`` > 0)."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"adapter width must be a positive integer, got {dim!r}.")
        super().__init__(nn.Linear(dim, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))
        nn.init.zeros_(self[2].weight)
        nn.init.zeros_(self[2].bias)

    @property
    def dim(self) -> int:
        """Embedding width D."""
        return self[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt embeddings ``(..., D)`` (as given: callers pass normalised CLIP embeddings); the output has unit norm."""
        return nn.functional.normalize(x + super().forward(x), dim=-1)  # (..., D)


def adapter_state(adapter: ResidualAdapter) -> dict[str, np.ndarray]:
    """The adapter's tensors as float32 arrays keyed ``adapter.0.weight`` ... (the file layout).

    Examples:
        >>> adapter_state(ResidualAdapter(4))["adapter.0.weight"].shape
        (8, 4)
    """
    return {f"adapter.{k}": v.detach().float().cpu().numpy() for k, v in adapter.state_dict().items()}


def load_adapter_state(adapter: ResidualAdapter, state: dict[str, Any], what: str = "adapter") -> ResidualAdapter:
    """Load tensors keyed ``adapter.0.weight`` ... into ``adapter``; every key and shape is checked.

    Args:
        adapter: The module to fill.
        state: Arrays or tensors keyed as ``ADAPTER_KEYS`` (other keys are ignored).
        what: Name used in error messages (e.g. the file).

    Returns:
        The adapter.

    Raises:
        ValueError: a missing tensor, a wrong shape, or NaN / inf values.

    Examples:
        >>> a, b = ResidualAdapter(4), ResidualAdapter(4)
        >>> _ = load_adapter_state(b, adapter_state(a))
    """
    own = adapter.state_dict()
    missing = [k for k in ADAPTER_KEYS if k not in state]
    if missing:
        raise ValueError(f"{what}: missing adapter tensor(s) {missing} (expected {list(ADAPTER_KEYS)}).")
    sd = {}
    for k in ADAPTER_KEYS:
        v = torch.as_tensor(np.asarray(state[k]), dtype=torch.float32)
        key = k[len("adapter."):]
        if tuple(v.shape) != tuple(own[key].shape):
            raise ValueError(f"{what}: adapter tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[key].shape)} "
                             f"(an adapter for {adapter.dim}-d embeddings).")
        if not torch.isfinite(v).all():
            raise ValueError(f"{what}: adapter tensor {k} contains NaN or inf values.")
        sd[key] = v
    adapter.load_state_dict(sd)
    return adapter


def adapter_from_state(state: dict[str, Any], what: str = "adapter") -> ResidualAdapter:
    """A ``ResidualAdapter`` built for the width of ``state`` and loaded from it (see ``load_adapter_state``).

    Examples:
        >>> adapter_from_state(adapter_state(ResidualAdapter(4))).dim
        4
    """
    w = state.get("adapter.0.weight") if isinstance(state, dict) else None
    if w is None or np.ndim(w) != 2:
        raise ValueError(f"{what}: no 2-d 'adapter.0.weight' tensor to size the adapter from.")
    return load_adapter_state(ResidualAdapter(int(np.shape(w)[1])), state, what)
