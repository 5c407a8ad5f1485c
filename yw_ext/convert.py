# yw_ext, AGPL-3.0 license
"""Compatibility module: the checkpoint code lives in ``yw_ext.checkpoints``; its public names are re-exported here.

Old imports such as ``from yw_ext.convert import convert_official, load_pt`` keep working. New code imports from
``yw_ext.checkpoints`` (``load_model`` loads any supported file) or its modules.

Examples:
    >>> from yw_ext.convert import CheckpointError
    >>> from yw_ext.checkpoints import CheckpointError as Same
    >>> CheckpointError is Same
    True
"""

from yw_ext.checkpoints import *  # noqa: F403 (the public names of the checkpoint package)
from yw_ext.checkpoints import __all__ as _CHECKPOINTS_ALL
from yw_ext.checkpoints.folded import REP_HEAD_CONV, REP_NECK_GUIDE_CONV, REP_NECK_GUIDE_MATRIX
from yw_ext.checkpoints.keymaps import (
    ADAPTER_PREFIX,
    HEAD_PREFIX,
    HF_TEXT_PREFIX,
    IGNORED_KEYS,
    IMAGE_PREFIX,
    NECK_PREFIX,
    OFFICIAL_BACKBONE,
    OFFICIAL_LAYERS_V1,
    OFFICIAL_LAYERS_V2,
    PROMPT_KEYS,
    RESHAPES,
    SUBKEY_RULES,
    TEXT_PREFIX,
)
from yw_ext.checkpoints.layout import OFFICIAL_SCALES
from yw_ext.checkpoints.names import META_NAMES_MAX, coco_names
from yw_ext.checkpoints.statemap import OPEN_GATE_BIAS

__all__ = [
    *_CHECKPOINTS_ALL,
    "ADAPTER_PREFIX",
    "HEAD_PREFIX",
    "HF_TEXT_PREFIX",
    "IGNORED_KEYS",
    "IMAGE_PREFIX",
    "META_NAMES_MAX",
    "NECK_PREFIX",
    "OFFICIAL_BACKBONE",
    "OFFICIAL_LAYERS_V1",
    "OFFICIAL_LAYERS_V2",
    "OFFICIAL_SCALES",
    "OPEN_GATE_BIAS",
    "PROMPT_KEYS",
    "REP_HEAD_CONV",
    "REP_NECK_GUIDE_CONV",
    "REP_NECK_GUIDE_MATRIX",
    "RESHAPES",
    "SUBKEY_RULES",
    "TEXT_PREFIX",
    "coco_names",
]
