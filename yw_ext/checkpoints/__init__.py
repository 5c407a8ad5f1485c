# yw_ext, AGPL-3.0 license
"""Checkpoints: every supported weights file -> a ready ``YWDetectionModel``, and back to a ``.pt``.

One entry, ``load_model(path)``, for any supported file:

- Ultralytics-format ``.pt``: yw_ext's own (folded ones included) and Ultralytics' ``yolov8*-world*.pt``
  (``ultralytics_pt``: ``load_pt``, ``from_ultralytics``, ``save_checkpoint``);
- official YOLO-World (MMYOLO) ``.pth``: v1, v2, v2.1, efficient / plain necks, XL, 768-d text, prompt-tuned and
  re-parameterised (``official``: ``read_official``, ``convert_official``, ``load_official``), read without running
  pickled code (``safe_pickle``: a restricted unpickler);
- yw_ext's safe ``.safetensors`` (tensors + JSON metadata, nothing pickled: ``safetensors_io``: ``save_safetensors``,
  ``load_safetensors``).

Modules, one concept each:

- ``errors``: ``CheckpointError`` and the all-problems-at-once report (``check_state_dict``).
- ``keymaps``: the explicit official -> yw_ext key maps (module tables, sub-key rules, reshapes, ignored keys).
- ``layout``: reading an official checkpoint's architecture (``detect_layout``, ``OfficialLayout``, ``model_cfg``).
- ``statemap``: applying the key map with name / shape checks and building the detector.
- ``text_tower``: the embedded CLIP text tower (``text_encoder_from_state``, ``hf_text_config``).
- ``folded``: re-parameterised official checkpoints -> a folded model.
- ``names``: class names (``names=...``, a checkpoint's ``meta`` classes, COCO's 80).
- ``official`` / ``ultralytics_pt`` / ``safetensors_io``: the file formats; ``cli``: ``yw convert`` (``convert_cli``).
- ``health``: the NaN / inf warning every loader gives (``warn_non_finite``).

Nothing in ``yw_ext.nn`` imports this package at import time (``YWDetectionModel.encode_text`` imports
``yw_ext.checkpoints.text_tower`` when it runs); this package imports ``yw_ext.nn``.

Examples:
    >>> from yw_ext.checkpoints import load_model
    >>> model = load_model("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth")  # doctest: +SKIP
    >>> model.names[0]  # doctest: +SKIP
    'person'
"""

from __future__ import annotations

import os
from pathlib import Path

from yw_ext.checkpoints.cli import convert_cli
from yw_ext.checkpoints.errors import CheckpointError, check_state_dict
from yw_ext.checkpoints.layout import OfficialLayout, detect_layout, is_official, model_cfg
from yw_ext.checkpoints.names import parse_names
from yw_ext.checkpoints.official import convert_official, load_official, read_official
from yw_ext.checkpoints.safe_pickle import safe_torch_load
from yw_ext.checkpoints.safetensors_io import load_safetensors, save_safetensors
from yw_ext.checkpoints.statemap import map_official_state_dict
from yw_ext.checkpoints.text_tower import hf_text_config, text_encoder_from_state
from yw_ext.checkpoints.ultralytics_pt import from_ultralytics, load_pt, save_checkpoint
from yw_ext.nn.model import YWDetectionModel

SUFFIXES = {".pt": "Ultralytics-format checkpoint (yw_ext's own, folded or not, or Ultralytics' yolov8*-world*.pt)",
            ".pth": "official YOLO-World (MMYOLO) checkpoint",
            ".safetensors": "yw_ext safetensors checkpoint (model.save('m.safetensors'), yw convert)"}
"""Supported file suffixes and what each is read as."""


def load_model(source: str | os.PathLike) -> YWDetectionModel:
    """Load any supported checkpoint file as a ready ``YWDetectionModel`` (float32, eval mode, vocabulary installed).

    ``.pt``: yw_ext's own (folded ones included) or Ultralytics' world weights (``load_pt``); ``.pth``: official
    YOLO-World, re-parameterised ones included (``load_official``, with its defaults: the file's own classes or
    COCO's 80, and its embedded CLIP text tower kept); ``.safetensors``: yw_ext's own (``load_safetensors``).

    Args:
        source: Path of the file.

    Returns:
        The model.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: an unsupported suffix, or a file that is not a loadable YOLO-World checkpoint.

    Examples:
        >>> model = load_model("yolov8s-worldv2.pt")  # doctest: +SKIP
        >>> model = load_model("l_stage2-b3e3dc3f.pth")  # doctest: +SKIP
        >>> model.set_classes(["person", "bus"])  # doctest: +SKIP
    """
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        supported = "; ".join(f"{s}: {what}" for s, what in SUFFIXES.items())
        raise CheckpointError(f"'{path}': unsupported checkpoint file type '{suffix}' (supported: {supported}).")
    loaders = {".pt": load_pt, ".pth": load_official, ".safetensors": load_safetensors}
    model, _ = loaders[suffix](path)
    model.task = "detect"
    return model.float().eval()


__all__ = [
    "CheckpointError",
    "OfficialLayout",
    "check_state_dict",
    "convert_cli",
    "convert_official",
    "detect_layout",
    "from_ultralytics",
    "hf_text_config",
    "is_official",
    "load_model",
    "load_official",
    "load_pt",
    "load_safetensors",
    "map_official_state_dict",
    "model_cfg",
    "parse_names",
    "read_official",
    "safe_torch_load",
    "save_checkpoint",
    "save_safetensors",
    "text_encoder_from_state",
]
