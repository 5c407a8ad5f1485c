# yw_ext, AGPL-3.0 license
"""Ultralytics-format ``.pt`` checkpoints: read (yw_ext's own and Ultralytics' world weights) and write.

yw_ext's own files pickle a ``YWDetectionModel`` (folded ones included); Ultralytics' ``yolov8*-world*.pt`` pickle an
Ultralytics ``WorldModel``, rebuilt here as a ``YWDetectionModel`` with a strict, shape-checked state-dict copy.
Every Ultralytics name comes from ``yw_ext.seam``.

Examples:
    >>> model, ckpt = load_pt("yolov8s-worldv2.pt")  # doctest: +SKIP
    >>> save_checkpoint(model, "copy.pt", ckpt)  # doctest: +SKIP
    PosixPath('copy.pt')
"""

from __future__ import annotations

from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from yw_ext.checkpoints.errors import CheckpointError, check_state_dict
from yw_ext.checkpoints.health import warn_non_finite
from yw_ext.core.io import atomic_write
from yw_ext.core.log import LOGGER
from yw_ext.nn.model import YWDetectionModel


def _names_list(names: Any) -> list[str]:
    """Ultralytics ``names`` (``{i: name}`` or a list) as a list."""
    return list(names.values()) if isinstance(names, dict) else list(names)


def from_ultralytics(world_model: torch.nn.Module) -> YWDetectionModel:
    """Rebuild an Ultralytics ``WorldModel`` (e.g. from ``yolov8s-worldv2.pt``) as a ``YWDetectionModel``.

    The architecture comes from the model's own ``yaml`` dict; every tensor is copied with a strict check. The
    class names and stored text embeddings (the checkpoint's vocabulary) are kept.

    Args:
        world_model: An Ultralytics ``WorldModel`` instance (``yw_ext.seam.WorldModel``).

    Returns:
        A ``YWDetectionModel`` in eval mode with identical weights and vocabulary.

    Raises:
        CheckpointError: the weights do not match the architecture its ``yaml`` describes.

    Examples:
        >>> from yw_ext.seam import WorldModel
        >>> up = WorldModel("yolov8s-worldv2.yaml", verbose=False)  # doctest: +SKIP
        >>> m = from_ultralytics(up)  # doctest: +SKIP
    """
    d = dict(world_model.yaml)
    model = YWDetectionModel(d, ch=d.get("channels", 3), verbose=False)
    sd = world_model.state_dict()
    check_state_dict(model.state_dict(), sd, "Ultralytics WorldModel")
    model.load_state_dict(sd, strict=True)
    names = _names_list(world_model.names)
    tf = getattr(world_model, "txt_feats", None)  # (1, K, D) or (K, D)
    if tf is not None and tf.shape[-1] == model.embed_dim:
        k = tf.shape[-2]
        if len(names) != k:  # Ultralytics keeps names and txt_feats separately; the embeddings are what runs
            LOGGER.warning(
                f"yw_ext: checkpoint has {len(names)} names for {k} text embeddings; naming classes 0..{k - 1}."
            )
            names = [str(i) for i in range(k)]
        emb = tf.reshape(-1, tf.shape[-1]).float()  # (..., K, D) -> (K, D)
        model.set_vocabulary(names, emb, 1, None, "ultralytics-checkpoint")
    else:
        model.names = dict(enumerate(names))
    for attr in ("args", "task", "pt_path", "stride"):
        if hasattr(world_model, attr):
            setattr(model, attr, getattr(world_model, attr))
    return model.float().eval()


def load_pt(path: str | Path) -> tuple[YWDetectionModel, dict[str, Any]]:
    """Load an Ultralytics-format ``.pt`` (yw_ext's own or Ultralytics' world checkpoints) as a yw_ext model.

    Args:
        path: The ``.pt`` file.

    Returns:
        (model in eval mode, checkpoint dict).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a YOLO-World checkpoint (e.g. a plain YOLOv8 detector), or damaged.

    Examples:
        >>> model, ckpt = load_pt("yolov8s-worldv2.pt")  # doctest: +SKIP
    """
    from yw_ext.seam import WorldModel, load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    try:
        model, ckpt = load_checkpoint(str(path))
    except (TypeError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"'{path}' is not a readable Ultralytics checkpoint (truncated or corrupt?): {e}") from e
    if isinstance(model, WorldModel):
        model = from_ultralytics(model)
        model.pt_path = str(path)
    elif not isinstance(model, YWDetectionModel):
        raise CheckpointError(
            f"'{path}' holds a {type(model).__name__}, not a YOLO-World model; yw_ext loads yw_ext checkpoints, "
            "Ultralytics' yolov8*-world*.pt and official YOLO-World .pth files."
        )
    warn_non_finite(model, f"'{path}'")
    return model, ckpt


def save_checkpoint(model: YWDetectionModel, path: str | Path, ckpt: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an Ultralytics-format checkpoint (as ``Model.save`` does: float16 weights), atomically.

    The file is written under a temporary name in the destination folder and renamed into place when complete; on
    any error nothing is left at ``path``. The model itself is not modified (a copy is halved).

    Args:
        model: The model to save.
        path: The ``.pt`` to write (its folder is created).
        ckpt: Extra checkpoint entries (e.g. ``train_args``, ``yw_converted_from``).

    Returns:
        ``path`` as a ``Path``.

    Examples:
        >>> save_checkpoint(model, "converted.pt")  # doctest: +SKIP
        PosixPath('converted.pt')
    """
    from yw_ext.seam import ULTRALYTICS_VERSION

    payload = {
        **(ckpt or {}),
        "ema": None,
        "model": deepcopy(model).half(),  # the text tower (text_encoder_state) is a plain dict and stays float32
        "date": datetime.now().astimezone().isoformat(),
        "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


__all__ = ["from_ultralytics", "load_pt", "save_checkpoint"]
