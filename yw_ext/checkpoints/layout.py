# yw_ext, AGPL-3.0 license
"""The architecture of an official YOLO-World checkpoint, read from its tensor names and shapes.

``detect_layout`` tells the neck kind (VL-PAN, efficient, plain, re-parameterised), v1's image-pooling text enhancer,
the head kind (BN / L2 contrastive, re-parameterised), the scale (N..XL, from the stem width, cross-checked with the
CSP depths) and the text width (512 / 768, cross-checked everywhere it shows); ``model_cfg`` turns that into the
yw_ext model dict the detector is built from.

Examples:
    >>> layout = OfficialLayout("vlpan", False, "bn", "l", 512, 80, True, 0, 0)
    >>> layout.family, layout.yaml
    ('v2', 'yw-v2.yaml')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from yw_ext.checkpoints.errors import CheckpointError
from yw_ext.checkpoints.safe_pickle import is_placeholder
from yw_ext.checkpoints.keymaps import (
    HEAD_PREFIX,
    HF_TEXT_PREFIX,
    IMAGE_PREFIX,
    OFFICIAL_LAYERS_V1,
    OFFICIAL_LAYERS_V2,
    count_indices,
)

# Official stem width (make_divisible(64 * widen, 8)) -> (scale, CSP blocks in stage 1, in stage 2).
OFFICIAL_SCALES: dict[int, tuple[str, int, int]] = {
    16: ("n", 1, 2),  # deepen 0.33, widen 0.25
    32: ("s", 1, 2),  # deepen 0.33, widen 0.50
    48: ("m", 2, 4),  # deepen 0.67, widen 0.75
    64: ("l", 3, 6),  # deepen 1.00, widen 1.00
    80: ("x", 3, 6),  # deepen 1.00, widen 1.25
    96: ("xl", 3, 6),  # deepen 1.00, widen 1.50 (the official XL config scales X to widen 1.5)
}

NECK_FIRST = "neck.top_down_layers.0."
"""The first neck block: its ``attn_block`` tells the neck kind."""

# Where the text width D shows in an official state dict: (tensor name, axis of D).
TEXT_WIDTH_AXES: tuple[tuple[str, int], ...] = (
    (NECK_FIRST + "attn_block.guide_fc.weight", 1),
    ("neck.text_enhancer.query.0.weight", 0),
    (HEAD_PREFIX + "cls_contrasts.0.norm.weight", 0),
    (HEAD_PREFIX + "cls_contrasts.0.conv.weight", 1),
    (HF_TEXT_PREFIX + "text_projection.weight", 0),
    ("embeddings", 1),
)


@dataclass(frozen=True)
class OfficialLayout:
    """The architecture of an official checkpoint, read from its tensor names and shapes.

    Attributes:
        neck: Neck blocks: ``"vlpan"`` (MaxSigmoidCSPLayerWithTwoConv, text-guided), ``"efficient"``
            (EfficientCSPLayerWithTwoConv: a text-free 3x3 conv branch), ``"plain"`` (CSPLayerWithTwoConv, no
            attn_block) or ``"rep"`` (re-parameterised guide convs / guide matrix).
        dual: v1's YOLOWorldDualPAFPN (image-pooling text enhancer between the top-down and bottom-up paths).
        head: ``"bn"`` (BNContrastiveHead, v2), ``"l2"`` (ContrastiveHead, v1) or ``"rep"``
            (RepBNContrastiveHead: BatchNorm + a K-output 1x1 conv).
        scale: ``n``, ``s``, ``m``, ``l``, ``x`` or ``xl``.
        embed_dim: Text-embedding width D (512 for CLIP ViT-B/32, 768 for ViT-L/14).
        head_nc: The class count the head's hidden width was built for (80 unless fine-tuned otherwise).
        text_tower: Hugging Face CLIP text weights are present.
        prompts: Number of prompt-tuned embeddings (SimpleYOLOWorldDetector), 0 if none.
        folded_prompts: Number of prompts folded into a re-parameterised head, 0 if not re-parameterised.
        seg: ``(nm, npr)`` of a YOLO-World-Seg checkpoint (mask coefficients, prototype hidden width); ``()`` for
            detection.

    Examples:
        >>> layout = OfficialLayout("vlpan", False, "bn", "l", 512, 80, True, 0, 0)
        >>> layout.family, layout.yaml
        ('v2', 'yw-v2.yaml')
    """

    neck: str
    dual: bool
    head: str
    scale: str
    embed_dim: int
    head_nc: int
    text_tower: bool
    prompts: int
    folded_prompts: int
    seg: tuple = ()

    @property
    def family(self) -> str:
        """Human-readable family: v1, v2, v2-effneck, v2-plain-neck, with ``-rep`` when re-parameterised."""
        base = "v1" if self.dual else {"efficient": "v2-effneck", "plain": "v2-plain-neck"}.get(self.neck, "v2")
        return base + ("-rep" if self.folded else "") + ("-seg" if self.seg else "")

    @property
    def folded(self) -> bool:
        """Re-parameterised (text embeddings folded into the neck and / or the head)."""
        return "rep" in (self.neck, self.head)

    @property
    def yaml(self) -> str:
        """The yw_ext YAML the model is built from (then adjusted by ``model_cfg``)."""
        if self.dual:
            return "yw-v1.yaml"
        return "yw-v2-effneck.yaml" if self.neck == "plain" else "yw-v2.yaml"

    @property
    def layers(self) -> tuple[tuple[str, int, str], ...]:
        """The module map of this layout (v1 indices are shifted by the text enhancer)."""
        return OFFICIAL_LAYERS_V1 if self.dual else OFFICIAL_LAYERS_V2


def state_dict_of(ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an MMEngine checkpoint (a bare state dict is accepted too), ``module.`` prefix removed.

    Raises:
        CheckpointError: not a dict, an Ultralytics-format checkpoint, or entries that are not tensors.

    Examples:
        >>> sorted(state_dict_of({"state_dict": {"module.a": torch.zeros(1)}}, "demo"))
        ['a']
    """
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{source}: expected an official YOLO-World checkpoint (a dict with 'meta' and 'state_dict'), got a "
            f"{type(ckpt).__name__}."
        )
    pickled = ckpt.get("model", ckpt.get("ema"))
    if isinstance(pickled, torch.nn.Module) or is_placeholder(pickled):  # a placeholder: read without unpickling it
        raise CheckpointError(f"{source} is an Ultralytics-format checkpoint (a pickled model), not an official "
                              "YOLO-World one: give it a .pt suffix and load it as such.")
    sd = ckpt.get("state_dict", ckpt)
    if not isinstance(sd, dict):
        raise CheckpointError(f"{source}: 'state_dict' is a {type(sd).__name__}, not a dict of tensors.")
    bad = sorted(str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{source}: 'state_dict' entries that are not tensors: {bad[:10]}")
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def is_official(ckpt: Any) -> bool:
    """Whether ``ckpt`` looks like an official YOLO-World checkpoint (image backbone and contrastive head tensors).

    Examples:
        >>> is_official({"meta": {}, "state_dict": {}})
        False
    """
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        return False
    keys = [k for k in sd if isinstance(k, str)]
    return any(k.startswith(IMAGE_PREFIX) for k in keys) and any(
        k.startswith(HEAD_PREFIX + "cls_contrasts.") for k in keys
    )


def _check_yolo_world(keys: list[str], source: str) -> None:
    """Refuse what is not an official YOLO-World detection checkpoint, saying what it is instead."""
    if not any(k.startswith(IMAGE_PREFIX) for k in keys):
        if any(k.startswith("backbone.stem.") for k in keys) and any(k.startswith(HEAD_PREFIX) for k in keys):
            raise CheckpointError(
                f"{source} is an MMYOLO checkpoint of a plain detector (e.g. YOLOv8: 'backbone.stem.*', no "
                "'backbone.image_model.*', no text path), not an official YOLO-World checkpoint. Use it with "
                "Ultralytics' YOLO, or a YOLO-World checkpoint with yw_ext."
            )
        raise CheckpointError(
            f"{source} is not an official YOLO-World checkpoint: no 'backbone.image_model.*' tensors (found "
            f"{len(keys)} tensors, e.g. {sorted(keys)[:5]})."
        )
    if not any(k.startswith(HEAD_PREFIX + "cls_contrasts.") for k in keys):
        raise CheckpointError(
            f"{source} has a YOLO backbone but no contrastive head ('{HEAD_PREFIX}cls_contrasts.*'): not an official "
            "YOLO-World detector."
        )


def _neck_kind(sd: dict[str, torch.Tensor], source: str) -> str:
    """``"rep"``, ``"vlpan"``, ``"efficient"`` or ``"plain"``, from the first neck block's ``attn_block``."""
    td0 = NECK_FIRST
    if any(k.startswith(td0 + "attn_block.guide_convs.") or k == td0 + "attn_block.guide_weight" for k in sd):
        return "rep"
    if td0 + "attn_block.guide_fc.weight" in sd:
        return "vlpan"
    if any(k.startswith(td0 + "attn_block.project_conv.") for k in sd):
        return "efficient"
    if any(k.startswith(td0) for k in sd):
        return "plain"
    raise CheckpointError(f"{source}: no '{td0}*' tensors; expected a YOLO-World PAFPN neck.")


def _head_kind(sd: dict[str, torch.Tensor]) -> str:
    """``"rep"`` (folded K-output conv), ``"bn"`` (BNContrastiveHead) or ``"l2"`` (ContrastiveHead)."""
    if HEAD_PREFIX + "cls_contrasts.0.conv.weight" in sd:
        return "rep"
    return "bn" if HEAD_PREFIX + "cls_contrasts.0.norm.weight" in sd else "l2"


def _scale(sd: dict[str, torch.Tensor], source: str) -> str:
    """The scale: the stem width gives the widen factor, the CSP depths of stages 1 and 2 must agree with it."""
    stem = sd.get(IMAGE_PREFIX + "stem.conv.weight")
    if stem is None or stem.dim() != 4:
        raise CheckpointError(f"{source}: '{IMAGE_PREFIX}stem.conv.weight' is missing or not a conv weight.")
    width = int(stem.shape[0])
    if width not in OFFICIAL_SCALES:
        raise CheckpointError(
            f"{source}: stem width {width} is not an official YOLO-World scale (stem widths "
            f"{ {w: s for w, (s, _, _) in OFFICIAL_SCALES.items()} })."
        )
    scale, d1, d2 = OFFICIAL_SCALES[width]
    n1 = count_indices(sd, IMAGE_PREFIX + "stage1.1.blocks.")
    n2 = count_indices(sd, IMAGE_PREFIX + "stage2.1.blocks.")
    if (n1, n2) != (d1, d2):
        raise CheckpointError(
            f"{source}: stem width {width} means scale '{scale}' with {d1} / {d2} CSP blocks in stages 1 / 2, but the "
            f"checkpoint has {n1} / {n2}: a non-standard depth that yw_ext's YAMLs do not describe."
        )
    return scale


def _text_width_and_head_nc(sd: dict[str, torch.Tensor], source: str) -> tuple[int, int]:
    """The text width D, cross-checked everywhere it shows, and the class count the head's hidden width implies."""
    cls_last = sd.get(HEAD_PREFIX + "cls_preds.0.2.weight")
    cls_first = sd.get(HEAD_PREFIX + "cls_preds.0.0.conv.weight")
    if cls_last is None or cls_first is None:
        raise CheckpointError(f"{source}: '{HEAD_PREFIX}cls_preds.0.{{0.conv,2}}.weight' missing.")
    dims = {f"{HEAD_PREFIX}cls_preds.0.2.weight (out channels)": int(cls_last.shape[0])}
    for key, axis in TEXT_WIDTH_AXES:
        if key in sd and sd[key].dim() > axis:
            dims[key] = int(sd[key].shape[axis])
    if len(set(dims.values())) != 1:
        raise CheckpointError(f"{source}: inconsistent text-embedding widths: {dims}.")
    # The head's hidden classification width is max(in0, num_classes) officially; yw_ext's WorldDetect uses
    # max(in0, min(nc, 100)): build with the class count that reproduces it.
    hidden, in0 = int(cls_first.shape[0]), int(cls_first.shape[1])
    return next(iter(dims.values())), (hidden if hidden > in0 else min(80, in0))


def detect_layout(sd: dict[str, torch.Tensor], source: str = "<checkpoint>") -> OfficialLayout:
    """Read the architecture of an official state dict from its tensor names and shapes.

    Args:
        sd: The official ``state_dict`` (``backbone.image_model.*``, ``neck.*``, ``bbox_head.head_module.*`` ...).
        source: Where it came from, for messages.

    Returns:
        The layout (family, scale, text width, ...).

    Raises:
        CheckpointError: not a YOLO-World checkpoint (e.g. a plain YOLOv8 in MMYOLO layout), a segmentation model,
            inconsistent text widths, or a non-standard scale.

    Examples:
        >>> layout = detect_layout(torch.load("yolo_world_v2_s.pth")["state_dict"])  # doctest: +SKIP
        >>> layout.family, layout.scale, layout.embed_dim  # doctest: +SKIP
        ('v2', 's', 512)
    """
    keys = list(sd)
    _check_yolo_world(keys, source)
    neck = _neck_kind(sd, source)
    dual = any(k.startswith("neck.text_enhancer.") for k in keys)
    head = _head_kind(sd)
    scale = _scale(sd, source)
    embed_dim, head_nc = _text_width_and_head_nc(sd, source)
    prompts = int(sd["embeddings"].shape[0]) if "embeddings" in sd and sd["embeddings"].dim() == 2 else 0
    folded = int(sd[HEAD_PREFIX + "cls_contrasts.0.conv.weight"].shape[0]) if head == "rep" else 0
    text = any(k.startswith(HF_TEXT_PREFIX) for k in keys)
    return OfficialLayout(neck, dual, head, scale, embed_dim, head_nc, text, prompts, folded, _seg(sd, source))


def _seg(sd: dict[str, torch.Tensor], source: str) -> tuple:
    """``(nm, npr)`` of a YOLO-World-Seg head (``seg_preds`` / ``proto_pred`` tensors), ``()`` without them."""
    coeff, proto = sd.get(HEAD_PREFIX + "seg_preds.0.2.weight"), sd.get(HEAD_PREFIX + "proto_pred.conv1.conv.weight")
    other = sorted(k for k in sd if k.startswith(HEAD_PREFIX) and re.match(r"(proto|seg|mask)", k[len(HEAD_PREFIX):]))
    if coeff is None and proto is None and not other:
        return ()
    if coeff is None or proto is None:
        raise CheckpointError(f"{source}: a segmentation head needs both '{HEAD_PREFIX}seg_preds.*' and "
                              f"'{HEAD_PREFIX}proto_pred.*' (found {other[:4]} ...).")
    return int(coeff.shape[0]), int(proto.shape[0])


def model_cfg(layout: OfficialLayout) -> dict[str, Any]:
    """The yw_ext model dict for ``layout``: the family YAML at its scale and text width, adjusted where needed.

    Adjustments (all expressible in the YAML, so ``model.yaml`` rebuilds the same network): the contrastive head
    kind (``WorldDetect`` ``with_bn``) follows the checkpoint; an official efficient neck is built as one-head
    ``C2fAttn`` layers whose gate is held open (see ``yw_ext.checkpoints.statemap.OPEN_GATE_BIAS``).

    Raises:
        CheckpointError: a layout no yw_ext YAML describes (a v1 dual neck with plain CSP blocks).

    Examples:
        >>> d = model_cfg(OfficialLayout("efficient", False, "bn", "n", 512, 80, False, 0, 0))
        >>> [a[3][2] for a in d["head"] if a[2] == "C2fAttn"]  # one head per neck block
        [1, 1, 1, 1]
    """
    from yw_ext.nn.build import load_model_cfg

    if layout.dual and layout.neck == "plain":
        raise CheckpointError("a v1 (dual, image-pooling) neck with plain CSP blocks has no yw_ext YAML.")
    d = load_model_cfg(layout.yaml, scale=layout.scale, embed_dim=layout.embed_dim)
    for layer in d["head"]:
        if layer[2] == "C2fAttn" and layout.neck == "efficient":
            layer[3][2] = 1  # args [c2, ec, nh, gc]: one head (the gate is constant)
        if layer[2] == "WorldDetect":
            layer[3][2] = layout.head != "l2"  # args [nc, embed, with_bn]
    d["nc"] = layout.head_nc
    if layout.seg:
        if layout.folded:
            raise CheckpointError("re-parameterised (folded) YOLO-World-Seg checkpoints are not supported; convert "
                                  "the unfolded seg checkpoint and call reparameterize().")
        d["segment"] = list(layout.seg)  # [nm, npr]: built as YWSegmentationModel (yw_ext.nn.seg)
    return d


__all__ = ["OFFICIAL_SCALES", "OfficialLayout", "detect_layout", "is_official", "model_cfg", "state_dict_of"]
