"""Checkpoint loading and conversion into yw_ext models.

Today: Ultralytics-format ``.pt`` files, both yw_ext's own (a pickled ``YWDetectionModel``) and Ultralytics'
``yolov8*-world*.pt`` (a pickled ``ultralytics.nn.tasks.WorldModel``), which are rebuilt as ``YWDetectionModel``
with a strict, shape-checked state-dict copy. Official MMYOLO ``.pth`` checkpoints get a clear error until their
converter (explicit key map) lands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yw_ext.nn.model import YWDetectionModel


class CheckpointError(ValueError):
    """A checkpoint that yw_ext cannot load, with the reason."""


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``CheckpointError`` listing every missing, unexpected and mis-shaped tensor.

    Examples:
        >>> check_state_dict({"a": torch.zeros(2)}, {"a": torch.ones(2)}, "demo")
    """
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(given)
        if tuple(given[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not match the architecture."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:50]) + (" ..." if len(items) > 50 else ""))
        raise CheckpointError("\n".join(lines))


def from_ultralytics(world_model: torch.nn.Module) -> YWDetectionModel:
    """Rebuild an Ultralytics ``WorldModel`` (e.g. from ``yolov8s-worldv2.pt``) as a ``YWDetectionModel``.

    The architecture comes from the model's own ``yaml`` dict; every tensor is copied with a strict check. The
    class names and stored text embeddings (the checkpoint's vocabulary) are kept.

    Args:
        world_model: An ``ultralytics.nn.tasks.WorldModel`` instance.

    Returns:
        A ``YWDetectionModel`` in eval mode with identical weights and vocabulary.

    Examples:
        >>> from ultralytics.nn.tasks import WorldModel
        >>> up = WorldModel("yolov8s-worldv2.yaml", verbose=False)
        >>> m = from_ultralytics(up)
    """
    d = dict(world_model.yaml)
    model = YWDetectionModel(d, ch=d.get("channels", 3), verbose=False)
    sd = world_model.state_dict()
    check_state_dict(model.state_dict(), sd, "Ultralytics WorldModel")
    model.load_state_dict(sd, strict=True)
    names = world_model.names
    names = list(names.values()) if isinstance(names, dict) else list(names)
    tf = getattr(world_model, "txt_feats", None)
    if tf is not None and tf.shape[-1] == model.embed_dim:
        k = tf.shape[-2]
        if len(names) != k:  # Ultralytics keeps names and txt_feats separately; the embeddings are what runs
            from ultralytics.utils import LOGGER

            LOGGER.warning(f"yw_ext: checkpoint has {len(names)} names for {k} text embeddings; naming classes 0..{k - 1}.")
            names = [str(i) for i in range(k)]
        model.set_vocabulary(names, tf.reshape(-1, tf.shape[-1]).float(), 1, None, "ultralytics-checkpoint")
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
        CheckpointError: not a YOLO-World checkpoint (e.g. a plain YOLOv8 detector), or damaged.

    Examples:
        >>> model, ckpt = load_pt("yolov8s-worldv2.pt")  # doctest: +SKIP
    """
    from ultralytics.nn.tasks import WorldModel, load_checkpoint

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
            f"'{path}' holds a {type(model).__name__}, not a YOLO-World model; yw_ext loads yw_ext checkpoints and "
            "Ultralytics' yolov8*-world*.pt."
        )
    return model, ckpt


def official_not_supported(path: str | Path) -> CheckpointError:
    """The error for official MMYOLO ``.pth`` checkpoints until their converter lands."""
    return CheckpointError(
        f"'{path}' is an official YOLO-World (MMYOLO) .pth checkpoint. Converting those is not available in this "
        "version of yw_ext yet. Use the Ultralytics-migrated weights instead: yw_ext.YOLOWorld('l') (or "
        "'yolov8l-worldv2.pt'), or a yw_ext/Ultralytics .pt."
    )
