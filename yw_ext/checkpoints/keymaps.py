# yw_ext, AGPL-3.0 license
"""Explicit key maps of official YOLO-World (MMYOLO) checkpoints: official tensor name -> yw_ext tensor name.

An official ``state_dict`` is read in three parts: the detector (``backbone.image_model.*``, ``neck.*``,
``bbox_head.head_module.*``), the CLIP text tower (``backbone.text_model.model.*``, Hugging Face names) and, for
prompt tuning, ``embeddings`` / ``adapter.*``. Detector tensors are renamed in two steps:

1. the module: ``OFFICIAL_LAYERS_V2`` (v2, v2.1, efficient / plain / re-parameterised necks, XL, 768-d text) or
   ``OFFICIAL_LAYERS_V1`` (v1's dual PAFPN, whose text enhancer shifts the later layer indices) give the yw_ext layer
   index and the module kind;
2. inside the module: ``SUBKEY_RULES[kind]`` (regex -> template, matched in order with ``re.fullmatch``).

``RESHAPES`` lists the tensors stored with another layout. Nothing here guesses: a name no rule covers maps to None,
and the caller reports it (``yw_ext.checkpoints.statemap``). Torch-free.

YOLO-World-Seg checkpoints add ``seg_preds.*`` (-> ``WorldSegment.cv5``) and ``proto_pred.conv{1,2,3}`` (->
``Proto.cv{1,2,3}``) under the head; Ultralytics' ``Proto.upsample`` (a ConvTranspose) has no official counterpart
(the official prototype upsampling is nearest-neighbour) and is generated as its identity
(``yw_ext.checkpoints.statemap``).

Examples:
    >>> official_target("neck.top_down_layers.0.attn_block.guide_fc.weight", OFFICIAL_LAYERS_V2)
    'model.12.attn.gl.weight'
    >>> official_target("bbox_head.head_module.cls_contrasts.2.bias", OFFICIAL_LAYERS_V1)
    'model.23.cv4.2.bias'
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

IMAGE_PREFIX = "backbone.image_model."
TEXT_PREFIX = "backbone.text_model."
HF_TEXT_PREFIX = "backbone.text_model.model."  # + Hugging Face CLIPTextModelWithProjection key names
NECK_PREFIX = "neck."
HEAD_PREFIX = "bbox_head.head_module."
PROMPT_KEYS = ("embeddings",)  # SimpleYOLOWorldDetector (prompt tuning): (N, D) class embeddings
ADAPTER_PREFIX = "adapter."  # SimpleYOLOWorldDetector(use_mlp_adapter=True): Linear(D, 2D), ReLU, Linear(2D, D)

# Tensors of an official state dict that are not detector weights, with the reason they are left out.
IGNORED_KEYS: tuple[tuple[str, str], ...] = (
    ("data_preprocessor.", "image pre-processing buffers (mean 0, std 255, BGR->RGB): the Ultralytics predictor "
                           "does the same /255 RGB normalisation"),
    (HEAD_PREFIX + "proj", "the DFL projection arange(reg_max): the yw_ext head keeps its own fixed dfl.conv"),
)

# Official module -> yw_ext layer, as (official module prefix, layer index in the yw_ext YAML, module kind). The kind
# selects the renaming rules inside the module (SUBKEY_RULES). Backbone rows are shared by every family.
OFFICIAL_BACKBONE: tuple[tuple[str, int, str], ...] = (
    ("backbone.image_model.stem", 0, "conv"),  # ConvModule -> Conv
    ("backbone.image_model.stage1.0", 1, "conv"),
    ("backbone.image_model.stage1.1", 2, "csp"),  # CSPLayerWithTwoConv -> C2f
    ("backbone.image_model.stage2.0", 3, "conv"),
    ("backbone.image_model.stage2.1", 4, "csp"),
    ("backbone.image_model.stage3.0", 5, "conv"),
    ("backbone.image_model.stage3.1", 6, "csp"),
    ("backbone.image_model.stage4.0", 7, "conv"),
    ("backbone.image_model.stage4.1", 8, "csp"),
    ("backbone.image_model.stage4.2", 9, "sppf"),  # SPPFBottleneck -> SPPF
)
# v2 (YOLOWorldPAFPN; also the efficient / plain necks): yw-v2.yaml, yw-v2-effneck.yaml.
OFFICIAL_LAYERS_V2: tuple[tuple[str, int, str], ...] = OFFICIAL_BACKBONE + (
    ("neck.top_down_layers.0", 12, "csp"),  # (Max-sigmoid | Efficient)CSPLayerWithTwoConv -> C2fAttn / C2f
    ("neck.top_down_layers.1", 15, "csp"),
    ("neck.downsample_layers.0", 16, "conv"),
    ("neck.bottom_up_layers.0", 18, "csp"),
    ("neck.downsample_layers.1", 19, "conv"),
    ("neck.bottom_up_layers.1", 21, "csp"),
    ("bbox_head.head_module", 22, "head"),  # YOLOWorldHeadModule -> WorldDetect
)
# v1 (YOLOWorldDualPAFPN): yw-v1.yaml. The image-pooling text enhancer is layer 16, shifting everything after it.
OFFICIAL_LAYERS_V1: tuple[tuple[str, int, str], ...] = OFFICIAL_BACKBONE + (
    ("neck.top_down_layers.0", 12, "csp"),
    ("neck.top_down_layers.1", 15, "csp"),
    ("neck.text_enhancer", 16, "pool_attn"),  # ImagePoolingAttentionModule -> ImagePoolingAttn
    ("neck.downsample_layers.0", 17, "conv"),
    ("neck.bottom_up_layers.0", 19, "csp"),
    ("neck.downsample_layers.1", 20, "conv"),
    ("neck.bottom_up_layers.1", 22, "csp"),
    ("bbox_head.head_module", 23, "head"),
)

# Renaming inside a module: (official sub-key regex, yw_ext sub-key template), matched in order with re.fullmatch.
# ConvModule's ``conv`` / ``bn`` keep their names (``.conv.weight``, ``.bn.{weight,bias,running_mean,...}``).
SUBKEY_RULES: dict[str, tuple[tuple[str, str], ...]] = {
    "conv": ((r"(conv|bn)\.(.+)", r"\1.\2"),),
    "csp": (
        (r"main_conv\.(.+)", r"cv1.\1"),
        (r"final_conv\.(.+)", r"cv2.\1"),
        (r"blocks\.(\d+)\.conv1\.(.+)", r"m.\1.cv1.\2"),  # DarknetBottleneck -> Bottleneck
        (r"blocks\.(\d+)\.conv2\.(.+)", r"m.\1.cv2.\2"),
        (r"attn_block\.guide_fc\.(weight|bias)", r"attn.gl.\1"),  # MaxSigmoidAttnBlock
        (r"attn_block\.embed_conv\.(.+)", r"attn.ec.\1"),
        (r"attn_block\.project_conv\.(.+)", r"attn.proj_conv.\1"),  # also EfficientCSPLayer's VanillaSigmoidBlock
        (r"attn_block\.bias", r"attn.bias"),
    ),
    "sppf": ((r"conv1\.(.+)", r"cv1.\1"), (r"conv2\.(.+)", r"cv2.\1")),
    "pool_attn": (
        (r"projections\.(\d+)\.conv\.(weight|bias)", r"projections.\1.\2"),  # ConvModule without norm -> Conv2d
        (r"(query|key|value)\.([01])\.(weight|bias)", r"\1.\2.\3"),  # Sequential(LayerNorm, Linear)
        (r"proj\.(weight|bias)", r"proj.\1"),
    ),
    "head": (
        (r"reg_preds\.(\d+)\.(.+)", r"cv2.\1.\2"),  # box branch
        (r"cls_preds\.(\d+)\.(.+)", r"cv3.\1.\2"),  # class-embedding branch
        (r"cls_contrasts\.(\d+)\.(.+)", r"cv4.\1.\2"),  # (BN)ContrastiveHead
        (r"seg_preds\.(\d+)\.(.+)", r"cv5.\1.\2"),  # YOLO-World-Seg mask coefficients (ConvModule x2, Conv2d)
        (r"proto_pred\.conv([123])\.(conv|bn)\.(.+)", r"proto.cv\1.\2.\3"),  # prototypes -> Ultralytics Proto
    ),
}

# Tensors stored with another layout: (yw_ext key regex, what, transform). Applied to 0-d tensors only.
RESHAPES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    (r"model\.\d+\.cv4\.\d+\.bias", "contrastive bias: 0-d officially, (1,) in Ultralytics", lambda t: t.reshape(1)),
)


def ignored_reason(key: str) -> str | None:
    """Why ``key`` is not a detector weight (``IGNORED_KEYS``), or None.

    Examples:
        >>> ignored_reason("bbox_head.head_module.proj") is not None, ignored_reason("neck.x") is None
        (True, True)
    """
    for prefix, reason in IGNORED_KEYS:
        if key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return reason
    return None


def official_target(key: str, layers: Iterable[tuple[str, int, str]]) -> str | None:
    """The yw_ext name of the official detector tensor ``key`` under the module map ``layers``, or None.

    The longest matching module prefix wins; inside it the first ``SUBKEY_RULES`` rule of its kind that matches.

    Examples:
        >>> official_target("backbone.image_model.stage1.1.blocks.0.conv2.bn.weight", OFFICIAL_LAYERS_V2)
        'model.2.m.0.cv2.bn.weight'
        >>> official_target("neck.nowhere.weight", OFFICIAL_LAYERS_V2) is None
        True
    """
    for prefix, idx, kind in sorted(layers, key=lambda r: -len(r[0])):  # longest prefix first
        if key.startswith(prefix + "."):
            sub = key[len(prefix) + 1:]
            for pattern, template in SUBKEY_RULES[kind]:
                m = re.fullmatch(pattern, sub)
                if m:
                    return f"model.{idx}." + m.expand(template)
            return None
    return None


def stored_layout(target: str, t: Any) -> Any:
    """``t`` in the layout yw_ext stores ``target`` with (``RESHAPES``: only 0-d tensors are reshaped).

    Examples:
        >>> import torch
        >>> stored_layout("model.22.cv4.0.bias", torch.tensor(-10.0)).shape
        torch.Size([1])
    """
    if t.dim() == 0:
        for pattern, _, fn in RESHAPES:
            if re.fullmatch(pattern, target):
                return fn(t)  # () -> (1,)
    return t


def count_indices(keys: Iterable[str], prefix: str) -> int:
    """Number of distinct ``{prefix}{i}.`` indices among ``keys`` (blocks, layers, heads).

    Examples:
        >>> count_indices(["a.0.w", "a.0.b", "a.1.w", "b.0.w"], "a.")
        2
    """
    return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})


__all__ = [
    "ADAPTER_PREFIX",
    "HEAD_PREFIX",
    "HF_TEXT_PREFIX",
    "IGNORED_KEYS",
    "IMAGE_PREFIX",
    "NECK_PREFIX",
    "OFFICIAL_BACKBONE",
    "OFFICIAL_LAYERS_V1",
    "OFFICIAL_LAYERS_V2",
    "PROMPT_KEYS",
    "RESHAPES",
    "SUBKEY_RULES",
    "TEXT_PREFIX",
    "count_indices",
    "ignored_reason",
    "official_target",
    "stored_layout",
]
