# yw_ext, AGPL-3.0 license
"""The CLIP text tower embedded in official checkpoints, kept on converted models as ``text_encoder_state``.

Official files carry Hugging Face ``CLIPTextModelWithProjection`` tensors under ``backbone.text_model.model.``; they
are checked by building a ``yw_ext.text.CLIPTextEncoder`` (open_clip, no ``transformers``) and stored on the model as
a plain dict ``{"format": "hf-clip-text", "config", "state_dict", "identity"}``, so ``set_classes([...])`` works
without a separate CLIP. ``text_encoder_from_state`` (``yw_ext.text.embedded``, re-exported here) turns that dict back
into an encoder; the encoder built while converting is put in its cache, so the model does not build it again.

This module imports nothing of ``yw_ext.nn``.

Examples:
    >>> enc = text_encoder_from_state(model.text_encoder_state)  # doctest: +SKIP
    >>> enc.encode(["person"]).shape  # doctest: +SKIP
    torch.Size([1, 512])
"""

from __future__ import annotations

from typing import Any

import torch

from yw_ext.checkpoints.errors import CheckpointError
from yw_ext.checkpoints.keymaps import HF_TEXT_PREFIX, count_indices
from yw_ext.text.embedded import remember_encoder, text_encoder_from_state

TEXT_STATE_FORMAT = "hf-clip-text"
"""``text_encoder_state["format"]`` of an embedded Hugging Face CLIP text tower."""

# Tensors whose shapes give the Hugging Face text config (their absence means it is not a HF CLIP text model).
_CONFIG_TENSORS = (
    "text_model.final_layer_norm.weight",
    "text_projection.weight",
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.encoder.layers.0.mlp.fc1.weight",
)


def hf_text_config(text_sd: dict[str, torch.Tensor], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Hugging Face ``CLIPTextConfig``-style dict for CLIP text tensors, inferred from their shapes.

    The number of attention heads is not stored in the tensors; OpenAI CLIP uses ``width // 64`` (8 for ViT-B/32,
    12 for ViT-L/14) and so does this function. ``overrides`` (e.g. ``{"num_attention_heads": 2}``) win.

    Raises:
        CheckpointError: tensors a Hugging Face CLIP text model has are missing.

    Examples:
        >>> cfg = hf_text_config(text_sd)  # doctest: +SKIP
        >>> cfg["hidden_size"], cfg["num_attention_heads"], cfg["projection_dim"]  # doctest: +SKIP
        (512, 8, 512)
    """
    absent = [k for k in _CONFIG_TENSORS if k not in text_sd]
    if absent:
        raise CheckpointError(f"the embedded text tower is not a Hugging Face CLIP text model: missing {absent}.")
    w = int(text_sd["text_model.final_layer_norm.weight"].shape[0])
    cfg = dict(
        model_type="clip_text_model",
        hidden_size=w,
        num_attention_heads=max(w // 64, 1),
        num_hidden_layers=count_indices(text_sd, "text_model.encoder.layers."),
        intermediate_size=int(text_sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        vocab_size=int(text_sd["text_model.embeddings.token_embedding.weight"].shape[0]),
        max_position_embeddings=int(text_sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        projection_dim=int(text_sd["text_projection.weight"].shape[0]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    cfg.update(overrides or {})
    return cfg


def text_state(text_sd: dict[str, torch.Tensor], overrides: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """Check an embedded HF text tower by building its encoder, and return the state to store on the model.

    Args:
        text_sd: The tower's tensors, Hugging Face names (``backbone.text_model.model.`` removed).
        overrides: Overrides for the inferred config (see ``hf_text_config``).
        source: For messages.

    Returns:
        ``{"format": "hf-clip-text", "config", "state_dict" (CPU, float32), "identity"}``; the encoder is cached.

    Raises:
        CheckpointError: the tower is not a loadable CLIP text model.

    Examples:
        >>> state = text_state(text_sd, None, "x.pth")  # doctest: +SKIP
        >>> state["config"]["projection_dim"]  # doctest: +SKIP
        512
    """
    from yw_ext.text.clip import CLIPTextEncoder

    cfg = hf_text_config(text_sd, overrides)
    sd = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
          for k, v in text_sd.items()}
    try:
        enc = CLIPTextEncoder.from_hf_state_dict(sd, cfg, source=f"{source} ({HF_TEXT_PREFIX}*)")
    except ValueError as e:
        raise CheckpointError(f"{source}: the embedded CLIP text tower cannot be loaded: {e}") from e
    remember_encoder(enc)
    return {"format": TEXT_STATE_FORMAT, "config": cfg, "state_dict": sd, "identity": enc.identity}


__all__ = ["TEXT_STATE_FORMAT", "hf_text_config", "text_encoder_from_state", "text_state"]
