"""Checkpoint loading and conversion into yw_ext models.

Two sources of weights:

* Ultralytics-format ``.pt`` files, both yw_ext's own (a pickled ``YWDetectionModel``) and Ultralytics'
  ``yolov8*-world*.pt`` (a pickled ``ultralytics.nn.tasks.WorldModel``), rebuilt as ``YWDetectionModel`` with a
  strict, shape-checked state-dict copy (``load_pt``, ``from_ultralytics``).
* Official YOLO-World (MMYOLO) ``.pth`` checkpoints, ``{'meta': ..., 'state_dict': ...}`` (``load_official``,
  ``convert_official``). The architecture is read from the tensors (``detect_layout``: neck kind, v1 text
  enhancer, head kind, scale, text width), the matching ``YWDetectionModel`` is built from yw_ext's YAMLs, and every
  detector tensor is copied through an explicit key map (``OFFICIAL_LAYERS_V2`` / ``OFFICIAL_LAYERS_V1`` for the
  modules, ``SUBKEY_RULES`` inside them) with shape checks; anything missing, unexpected or mis-shaped is listed in
  one ``CheckpointError``. The CLIP text tower the official files embed (Hugging Face ``CLIPTextModelWithProjection``
  tensors under ``backbone.text_model.model.``) is converted for ``yw_ext.text.CLIPTextEncoder`` (open_clip, no
  ``transformers``) and kept on the model as ``text_encoder_state``, so ``set_classes([...])`` works without a
  separate CLIP.

``convert_cli`` is the ``yw convert src.pth out.pt [names=...]`` command: it writes an Ultralytics-format
checkpoint atomically.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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
    _raise_problems(what, missing, unexpected, shapes)


def _raise_problems(what: str, missing: list[str], unexpected: list[str], shapes: list[str], hint: str = "") -> None:
    """One ``CheckpointError`` listing every problem (at most 50 of each kind), or nothing when there is none."""
    if missing or unexpected or shapes:
        lines = [f"{what}: the checkpoint does not match the architecture."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items[:50]) + (" ..." if len(items) > 50 else ""))
        if hint:
            lines.append(f"  {hint}")
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
            f"'{path}' holds a {type(model).__name__}, not a YOLO-World model; yw_ext loads yw_ext checkpoints, "
            "Ultralytics' yolov8*-world*.pt and official YOLO-World .pth files."
        )
    return model, ckpt


# ======================================================================================================================
# Official YOLO-World (MMYOLO) checkpoints
# ======================================================================================================================
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
    ),
}

# Tensors stored with another layout: (yw_ext key regex, what, transform). Applied to 0-d tensors only.
RESHAPES: tuple[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    (r"model\.\d+\.cv4\.\d+\.bias", "contrastive bias: 0-d officially, (1,) in Ultralytics", lambda t: t.reshape(1)),
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

# EfficientCSPLayerWithTwoConv's attn_block is a bare 3x3 conv + BN branch (VanillaSigmoidBlock, no text). It is
# built as a one-head C2fAttn whose text gate is held open: guide_fc = 0 so every similarity is 0, and the attention
# bias is large, so sigmoid(0 + bias) == 1.0 exactly in float32 and float16 and the block returns project_conv(x).
OPEN_GATE_BIAS = 1.0e4


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

    @property
    def family(self) -> str:
        """Human-readable family: v1, v2, v2-effneck, v2-plain-neck, with ``-rep`` when re-parameterised."""
        base = "v1" if self.dual else {"efficient": "v2-effneck", "plain": "v2-plain-neck"}.get(self.neck, "v2")
        return base + ("-rep" if "rep" in (self.neck, self.head) else "")

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


def _ignored_reason(key: str) -> str | None:
    """Why ``key`` is not a detector weight (``IGNORED_KEYS``), or None."""
    for prefix, reason in IGNORED_KEYS:
        if key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + "."):
            return reason
    return None


def _state_dict_of(ckpt: Any, source: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of an MMEngine checkpoint (a bare state dict is accepted too), ``module.`` prefix removed."""
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"{source}: expected an official YOLO-World checkpoint (a dict with 'meta' and 'state_dict'), got a "
            f"{type(ckpt).__name__}."
        )
    if isinstance(ckpt.get("model", ckpt.get("ema")), torch.nn.Module):
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


def _count(keys: list[str], prefix: str) -> int:
    """Number of distinct ``{prefix}{i}.`` indices among ``keys``."""
    return len({k[len(prefix):].split(".", 1)[0] for k in keys if k.startswith(prefix)})


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
    seg = sorted(k for k in keys if k.startswith(HEAD_PREFIX) and re.match(r".*(proto|seg|mask)", k[len(HEAD_PREFIX):]))
    if seg:
        raise CheckpointError(f"{source} is a YOLO-World segmentation checkpoint ({seg[:3]} ...); yw_ext converts "
                              "detection checkpoints only.")
    # ---- neck blocks, v1 text enhancer, head
    td0 = "neck.top_down_layers.0."
    if any(k.startswith(td0 + "attn_block.guide_convs.") or k == td0 + "attn_block.guide_weight" for k in keys):
        neck = "rep"
    elif td0 + "attn_block.guide_fc.weight" in sd:
        neck = "vlpan"
    elif any(k.startswith(td0 + "attn_block.project_conv.") for k in keys):
        neck = "efficient"
    elif any(k.startswith(td0) for k in keys):
        neck = "plain"
    else:
        raise CheckpointError(f"{source}: no '{td0}*' tensors; expected a YOLO-World PAFPN neck.")
    dual = any(k.startswith("neck.text_enhancer.") for k in keys)
    if HEAD_PREFIX + "cls_contrasts.0.conv.weight" in sd:
        head = "rep"
    elif HEAD_PREFIX + "cls_contrasts.0.norm.weight" in sd:
        head = "bn"
    else:
        head = "l2"
    # ---- scale: the stem width gives the widen factor, the CSP depths must agree with it
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
    n1 = _count(keys, IMAGE_PREFIX + "stage1.1.blocks.")
    n2 = _count(keys, IMAGE_PREFIX + "stage2.1.blocks.")
    if (n1, n2) != (d1, d2):
        raise CheckpointError(
            f"{source}: stem width {width} means scale '{scale}' with {d1} / {d2} CSP blocks in stages 1 / 2, but the "
            f"checkpoint has {n1} / {n2}: a non-standard depth that yw_ext's YAMLs do not describe."
        )
    # ---- text width D, cross-checked everywhere it shows
    cls_last = sd.get(HEAD_PREFIX + "cls_preds.0.2.weight")
    cls_first = sd.get(HEAD_PREFIX + "cls_preds.0.0.conv.weight")
    if cls_last is None or cls_first is None:
        raise CheckpointError(f"{source}: '{HEAD_PREFIX}cls_preds.0.{{0.conv,2}}.weight' missing.")
    dims = {f"{HEAD_PREFIX}cls_preds.0.2.weight (out channels)": int(cls_last.shape[0])}
    for key, axis in (
        (td0 + "attn_block.guide_fc.weight", 1),
        ("neck.text_enhancer.query.0.weight", 0),
        (HEAD_PREFIX + "cls_contrasts.0.norm.weight", 0),
        (HEAD_PREFIX + "cls_contrasts.0.conv.weight", 1),
        (HF_TEXT_PREFIX + "text_projection.weight", 0),
        ("embeddings", 1),
    ):
        if key in sd and sd[key].dim() > axis:
            dims[key] = int(sd[key].shape[axis])
    if len(set(dims.values())) != 1:
        raise CheckpointError(f"{source}: inconsistent text-embedding widths: {dims}.")
    embed_dim = next(iter(dims.values()))
    # The head's hidden classification width is max(in0, num_classes) officially; yw_ext's WorldDetect uses
    # max(in0, min(nc, 100)): build with the class count that reproduces it.
    hidden, in0 = int(cls_first.shape[0]), int(cls_first.shape[1])
    head_nc = hidden if hidden > in0 else min(80, in0)
    prompts = int(sd["embeddings"].shape[0]) if "embeddings" in sd and sd["embeddings"].dim() == 2 else 0
    folded = int(sd[HEAD_PREFIX + "cls_contrasts.0.conv.weight"].shape[0]) if head == "rep" else 0
    text = any(k.startswith(HF_TEXT_PREFIX) for k in keys)
    return OfficialLayout(neck, dual, head, scale, embed_dim, head_nc, text, prompts, folded)


def model_cfg(layout: OfficialLayout) -> dict[str, Any]:
    """The yw_ext model dict for ``layout``: the family YAML at its scale and text width, adjusted where needed.

    Adjustments (all expressible in the YAML, so ``model.yaml`` rebuilds the same network): the contrastive head
    kind (``WorldDetect`` ``with_bn``) follows the checkpoint; an official efficient neck is built as one-head
    ``C2fAttn`` layers whose gate is held open (see ``OPEN_GATE_BIAS``).

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
    return d


def map_official_state_dict(
    det_sd: dict[str, torch.Tensor], model: YWDetectionModel, layout: OfficialLayout, source: str = "<checkpoint>"
) -> dict[str, torch.Tensor]:
    """Rename and reshape official detector tensors into ``model``'s state dict, checking every name and shape.

    Args:
        det_sd: Official detector tensors (no text tower, no ignored keys).
        model: The yw_ext model built for ``layout`` (its own ``dfl.conv`` and, for an efficient neck, the open-gate
            tensors are taken from it / generated).
        layout: From ``detect_layout``.
        source: For messages.

    Returns:
        A complete state dict for ``model`` (``load_state_dict(strict=True)`` accepts it).

    Raises:
        CheckpointError: listing every official tensor that maps nowhere (unexpected), every model tensor that got no
            value (missing) and every shape mismatch (with both names), all at once.

    Examples:
        >>> sd = map_official_state_dict(det_sd, model, layout)  # doctest: +SKIP
        >>> model.load_state_dict(sd, strict=True)  # doctest: +SKIP
    """
    expected = model.state_dict()
    table = sorted(layout.layers, key=lambda r: -len(r[0]))  # longest prefix first
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected, shapes = [], []
    for key, t in det_sd.items():
        target = None
        for prefix, idx, kind in table:
            if key.startswith(prefix + "."):
                sub = key[len(prefix) + 1:]
                for pattern, template in SUBKEY_RULES[kind]:
                    m = re.fullmatch(pattern, sub)
                    if m:
                        target = f"model.{idx}." + m.expand(template)
                        break
                break
        if target is None or target not in expected:
            unexpected.append(key if target is None else f"{key} (-> {target}, which this architecture lacks)")
            continue
        if target in out:
            unexpected.append(f"{key} (-> {target}, already given by {origin[target]})")
            continue
        if t.dim() == 0:
            for pattern, _, fn in RESHAPES:
                if re.fullmatch(pattern, target):
                    t = fn(t)  # () -> (1,)
                    break
        if tuple(t.shape) != tuple(expected[target].shape):
            shapes.append(f"{key} -> {target}: checkpoint {tuple(t.shape)} vs model {tuple(expected[target].shape)}")
            continue
        out[target] = t
        origin[target] = key
    # Tensors with no official counterpart.
    for k, v in expected.items():
        if k.endswith(".dfl.conv.weight"):
            out[k] = v.clone()  # fixed arange(reg_max) of the DFL decoding (official: the non-persistent ``proj``)
    if layout.neck == "efficient":
        for m in model.model:
            if type(m).__name__ == "C2fAttn":
                p = f"model.{m.i}.attn."
                out[p + "gl.weight"] = torch.zeros_like(expected[p + "gl.weight"])  # (c, D): guide == 0
                out[p + "gl.bias"] = torch.zeros_like(expected[p + "gl.bias"])
                out[p + "bias"] = torch.full_like(expected[p + "bias"], OPEN_GATE_BIAS)  # sigmoid(...) == 1
    if layout.neck == "rep":  # placeholders: the folded guides replace the text path (see _convert_rep)
        for m in model.model:
            if type(m).__name__ == "C2fAttn":
                for k in (f"model.{m.i}.attn.gl.weight", f"model.{m.i}.attn.gl.bias"):
                    out[k] = torch.zeros_like(expected[k])
    if layout.head == "rep":  # placeholders: the folded K-output conv replaces the contrastive scalars
        for k in expected:
            if re.fullmatch(r"model\.\d+\.cv4\.\d+\.(bias|logit_scale)", k):
                out[k] = torch.zeros_like(expected[k])
    missing = sorted(k for k in expected if k not in out and not k.endswith("num_batches_tracked"))
    for k in expected:  # BatchNorm counters are not used in eval; keep the model's when a file lacks them
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = expected[k].clone()
    _raise_problems(
        f"{source} (official YOLO-World {layout.family}, scale {layout.scale}, {layout.embed_dim}-d text)",
        missing,
        sorted(unexpected),
        sorted(shapes),
        hint="Tensor names are listed as official name -> yw_ext name where both are known.",
    )
    return {k: out[k] for k in expected}


# ---------------------------------------------------------------------------------------------------- text tower
_ENCODERS: dict[str, Any] = {}  # identity -> CLIPTextEncoder built from an embedded text tower
_ENCODERS_MAX = 2
_ENCODERS_LOCK = threading.Lock()


def hf_text_config(text_sd: dict[str, torch.Tensor], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Hugging Face ``CLIPTextConfig``-style dict for CLIP text tensors, inferred from their shapes.

    The number of attention heads is not stored in the tensors; OpenAI CLIP uses ``width // 64`` (8 for ViT-B/32,
    12 for ViT-L/14) and so does this function. ``overrides`` (e.g. ``{"num_attention_heads": 2}``) win.

    Examples:
        >>> cfg = hf_text_config(text_sd)  # doctest: +SKIP
        >>> cfg["hidden_size"], cfg["num_attention_heads"], cfg["projection_dim"]  # doctest: +SKIP
        (512, 8, 512)
    """
    need = (
        "text_model.final_layer_norm.weight",
        "text_projection.weight",
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.0.mlp.fc1.weight",
    )
    absent = [k for k in need if k not in text_sd]
    if absent:
        raise CheckpointError(f"the embedded text tower is not a Hugging Face CLIP text model: missing {absent}.")
    w = int(text_sd["text_model.final_layer_norm.weight"].shape[0])
    cfg = dict(
        model_type="clip_text_model",
        hidden_size=w,
        num_attention_heads=max(w // 64, 1),
        num_hidden_layers=_count(list(text_sd), "text_model.encoder.layers."),
        intermediate_size=int(text_sd["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        vocab_size=int(text_sd["text_model.embeddings.token_embedding.weight"].shape[0]),
        max_position_embeddings=int(text_sd["text_model.embeddings.position_embedding.weight"].shape[0]),
        projection_dim=int(text_sd["text_projection.weight"].shape[0]),
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    cfg.update(overrides or {})
    return cfg


def text_encoder_from_state(state: dict[str, Any]):
    """The ``CLIPTextEncoder`` of a model's ``text_encoder_state``, built once per process (cached by identity).

    Args:
        state: ``{"format": "hf-clip-text", "config": {...}, "state_dict": {...}, "identity": str}`` as stored by
            ``convert_official`` on ``YWDetectionModel.text_encoder_state``.

    Returns:
        (yw_ext.text.CLIPTextEncoder): The encoder (CPU), shared between models with the same tower.

    Examples:
        >>> enc = text_encoder_from_state(model.text_encoder_state)  # doctest: +SKIP
        >>> enc.encode(["person"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """
    from yw_ext.text import CLIPTextEncoder

    if state.get("format") != "hf-clip-text":
        raise ValueError(f"unknown text_encoder_state format {state.get('format')!r} (expected 'hf-clip-text').")
    key = state.get("identity")
    with _ENCODERS_LOCK:
        if key and key in _ENCODERS:
            return _ENCODERS[key]
    enc = CLIPTextEncoder.from_hf_state_dict(state["state_dict"], state.get("config"), source="embedded text tower")
    with _ENCODERS_LOCK:
        while len(_ENCODERS) >= _ENCODERS_MAX:
            del _ENCODERS[next(iter(_ENCODERS))]
        _ENCODERS[enc.identity] = enc
        if key and key != enc.identity:
            _ENCODERS[key] = enc
    return enc


def _text_state(text_sd: dict[str, torch.Tensor], overrides: dict[str, Any] | None, source: str) -> dict[str, Any]:
    """Check the embedded HF text tower by building its encoder, and return the state to store on the model."""
    from yw_ext.text import CLIPTextEncoder

    cfg = hf_text_config(text_sd, overrides)
    sd = {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu()).contiguous()
          for k, v in text_sd.items()}
    try:
        enc = CLIPTextEncoder.from_hf_state_dict(sd, cfg, source=f"{source} ({HF_TEXT_PREFIX}*)")
    except ValueError as e:
        raise CheckpointError(f"{source}: the embedded CLIP text tower cannot be loaded: {e}") from e
    with _ENCODERS_LOCK:
        while len(_ENCODERS) >= _ENCODERS_MAX:
            del _ENCODERS[next(iter(_ENCODERS))]
        _ENCODERS[enc.identity] = enc
    return {"format": "hf-clip-text", "config": cfg, "state_dict": sd, "identity": enc.identity}


# ---------------------------------------------------------------------------------------------------- class names
def coco_names() -> list[str]:
    """The 80 COCO class names, from Ultralytics' ``coco.yaml`` (the vocabulary official models are evaluated on).

    Examples:
        >>> coco_names()[:3]
        ['person', 'bicycle', 'car']
    """
    from ultralytics.utils import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


def parse_names(names: Any) -> list[Any]:
    """Class names from a list, a comma-separated string, or a ``.txt`` (one per line) / ``.json`` file.

    JSON may hold a list of names, a list of synonym lists (the official ``class_texts`` format, e.g.
    ``[["person"], ["car", "automobile"]]``) or an ``{index: name}`` dict. A name in a ``.txt`` line may list synonyms
    separated by ``|`` (first = display name), as on the ``yw`` command line.

    Raises:
        FileNotFoundError: a ``.txt`` / ``.json`` path that does not exist.
        ValueError: an empty vocabulary or an unreadable file.

    Examples:
        >>> parse_names("person, bus")
        ['person', 'bus']
        >>> parse_names(["person", ["car", "automobile"]])
        ['person', ['car', 'automobile']]
    """

    def split_syn(s: str) -> Any:
        syn = [p.strip() for p in s.split("|") if p.strip()]
        return syn[0] if len(syn) == 1 else syn

    if isinstance(names, Path) or (isinstance(names, str) and names.strip().lower().endswith((".txt", ".json"))):
        path = Path(str(names).strip()).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"class-names file '{path}' does not exist.")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"class-names file '{path}' is not valid JSON: {e}") from e
            if isinstance(data, dict):
                data = [data[k] for k in sorted(data, key=lambda k: int(k) if str(k).isdigit() else str(k))]
            if not isinstance(data, list):
                raise ValueError(f"class-names file '{path}' must hold a JSON list (or an index -> name dict).")
            out = [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]
        else:
            out = [split_syn(line) for line in text.splitlines() if line.strip()]
    elif isinstance(names, str):
        out = [split_syn(s) for s in names.split(",") if s.strip()]
    elif isinstance(names, dict):
        out = [names[k] for k in sorted(names)]
    else:
        out = list(names)
    if not out:
        raise ValueError(f"no class names in {names!r}.")
    return out


META_NAMES_MAX = 100
"""Largest ``meta['dataset_meta']['classes']`` list used as the default vocabulary. Larger ones (LVIS 1203,
Objects365 365) are pre-training / evaluation sets rather than a deployment vocabulary: COCO's 80 are used instead,
as in Ultralytics' world weights. ``names=...`` overrides either."""


def _meta_names(ckpt: Any) -> list[str] | None:
    """Class names stored by MMEngine in ``meta['dataset_meta']['classes']`` (a fine-tune's classes), when usable."""
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    classes = meta.get("dataset_meta", {}).get("classes") if isinstance(meta, dict) and isinstance(
        meta.get("dataset_meta"), dict) else None
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) and c.strip() for c in classes):
        if len(set(classes)) == len(classes) and len(classes) <= META_NAMES_MAX:
            return list(classes)
    return None


# ---------------------------------------------------------------------------------------------------- conversion
def convert_official(
    ckpt: dict[str, Any],
    names: Any = None,
    text_config: dict[str, Any] | None = None,
    keep_text: bool = True,
    source: str = "<official checkpoint>",
) -> YWDetectionModel:
    """Convert an official YOLO-World checkpoint (already loaded) into a ``YWDetectionModel``.

    Args:
        ckpt: ``{'meta': ..., 'state_dict': ...}`` as ``torch.load`` returns it (or the bare state dict).
        names: Vocabulary to install (list, comma string, ``.txt`` / ``.json`` path). Default: the checkpoint's
            ``meta['dataset_meta']['classes']`` when present, else the 80 COCO names. For a re-parameterised
            checkpoint the names must match its folded prompts (80 -> COCO by default).
        text_config: Overrides for the embedded text tower's inferred Hugging Face config (e.g.
            ``{"num_attention_heads": 2}``; heads default to ``width // 64`` as in OpenAI CLIP).
        keep_text: Keep the embedded CLIP text tower on the model (``text_encoder_state``) so ``set_classes`` can
            encode new names without a separate CLIP.
        source: For messages.

    Returns:
        The model (float32, eval mode) with the vocabulary installed: encoded by the embedded text tower, taken
        from prompt-tuned embeddings, or (no text tower) by yw_ext's default CLIP when one is available.

    Raises:
        CheckpointError: not an official YOLO-World checkpoint, or any tensor missing / unexpected / mis-shaped.

    Examples:
        >>> ckpt = read_official("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth")  # doctest: +SKIP
        >>> model = convert_official(ckpt, names=["person", "bus"])  # doctest: +SKIP
    """
    from ultralytics.utils import LOGGER

    sd = _state_dict_of(ckpt, source)
    layout = detect_layout(sd, source)
    if "rep" in (layout.neck, layout.head):
        return _convert_rep(ckpt, sd, layout, names, source)
    # ---- split: detector / text tower / prompt tuning / ignored
    det_sd, text_sd, ignored = {}, {}, {}
    for k, v in sd.items():
        if k.startswith(HF_TEXT_PREFIX):
            text_sd[k[len(HF_TEXT_PREFIX):]] = v
        elif k.startswith(TEXT_PREFIX):
            ignored[k] = "a text backbone other than Hugging Face CLIP: not detector weights"
        elif k in PROMPT_KEYS or k.startswith(ADAPTER_PREFIX):
            pass  # used for the vocabulary below
        else:
            reason = _ignored_reason(k)
            if reason:
                ignored[k] = reason
            else:
                det_sd[k] = v
    if ignored:
        listed = "; ".join(f"{k} ({r})" for k, r in list(ignored.items())[:8])
        LOGGER.info(f"yw_ext: {source}: ignoring {len(ignored)} non-detector tensors: {listed}"
                    + (" ..." if len(ignored) > 8 else ""))
    model = YWDetectionModel(model_cfg(layout), verbose=False)
    model.load_state_dict(map_official_state_dict(det_sd, model, layout, source), strict=True)
    model = model.float().eval()
    enc = None
    if text_sd:
        state = _text_state(text_sd, text_config, source)
        if state["config"]["projection_dim"] != layout.embed_dim:
            raise CheckpointError(f"{source}: the text tower gives {state['config']['projection_dim']}-d embeddings, "
                                  f"the detector expects {layout.embed_dim}-d.")
        enc = text_encoder_from_state(state)
        if keep_text:
            model.text_encoder_state = state
    _install_vocabulary(model, ckpt, sd, layout, names, enc, source)
    return model


def _prompt_embeddings(sd: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    """The class embeddings a prompt-tuned SimpleYOLOWorldDetector feeds its neck and head, ``(N, D)``.

    With the MLP adapter: ``normalize(adapter(e) + e)``; without: ``e`` as stored (the head normalises it, the neck
    takes it as is), exactly as the official ``extract_feat``.
    """
    e = sd["embeddings"].detach().float()  # (N, D)
    adapter = {k[len(ADAPTER_PREFIX):]: v.float() for k, v in sd.items() if k.startswith(ADAPTER_PREFIX)}
    if not adapter:
        return e
    need = {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(adapter) != need:
        raise CheckpointError(
            f"{source}: unexpected prompt adapter tensors {sorted(adapter)} (expected {sorted(need)})."
        )
    h = torch.relu(e @ adapter["0.weight"].T + adapter["0.bias"])  # (N, 2D)
    return torch.nn.functional.normalize(h @ adapter["2.weight"].T + adapter["2.bias"] + e, dim=-1)  # (N, D)


def _install_vocabulary(
    model: YWDetectionModel, ckpt: Any, sd: dict, layout: OfficialLayout, names: Any, enc: Any, source: str
) -> None:
    """Give the converted model a vocabulary (names + embeddings) so it predicts right away."""
    from ultralytics.utils import LOGGER

    given = parse_names(names) if names is not None else None
    if layout.prompts:
        emb = _prompt_embeddings(sd, source)
        n = emb.shape[0]
        if given is None or len(given) == n:
            plain = [g if isinstance(g, str) else g[0] for g in (given or [])]
            default = _meta_names(ckpt) or (coco_names() if n == 80 else [str(i) for i in range(n)])
            vocab = plain or (default if len(default) == n else [str(i) for i in range(n)])
            model.set_vocabulary(vocab, emb, 1, None, "prompt-tuned-embeddings")
            return
        LOGGER.warning(f"yw_ext: {source}: {len(given)} names for {n} prompt-tuned embeddings; encoding the names "
                       "as text instead (the tuned prompts are not used).")
    vocab = given or _meta_names(ckpt) or coco_names()
    if enc is not None:
        model.set_classes(vocab, encoder=enc)
        return
    try:
        model.set_classes(vocab)  # yw_ext's default CLIP ($YW_CLIP or the clip package's cache)
    except (FileNotFoundError, ValueError) as e:
        from yw_ext.vocab import parse_classes

        plain, _ = parse_classes(vocab)
        model.set_vocabulary(plain, torch.zeros(len(plain), model.embed_dim), 1, None, None)
        LOGGER.warning(
            f"yw_ext: {source} has no text tower and no CLIP is available ({e}); the vocabulary {plain[:3]}... has "
            "zero embeddings. Call set_classes(names, embeddings=...) or set_classes(names, encoder=<CLIP>) before "
            "predicting."
        )


# Re-parameterised tensors (official tools/reparameterize_yoloworld.py, or re-parameterised fine-tuning).
REP_NECK_GUIDE_CONV = re.compile(r"(neck\.(?:top_down|bottom_up)_layers\.\d+)\.attn_block\.guide_convs\.(\d+)\.weight")
REP_NECK_GUIDE_MATRIX = re.compile(r"(neck\.(?:top_down|bottom_up)_layers\.\d+)\.attn_block\.guide_weight")
REP_HEAD_CONV = re.compile(r"bbox_head\.head_module\.cls_contrasts\.(\d+)\.conv\.(weight|bias)")


def _convert_rep(ckpt: Any, sd: dict, layout: OfficialLayout, names: Any, source: str) -> YWDetectionModel:
    """Re-parameterised official checkpoints -> a folded yw_ext model (``yw_ext.nn.rep`` modules), exactly.

    Official folded tensors (text embeddings ``E``, ``(N, D)``, baked in by the official tool or trained folded):

    * neck ``attn_block.guide_convs.{h}.weight`` ``(N, hc, 1, 1)``: head ``h``'s slice of ``guide = E @ W.T + b``;
      or ``attn_block.guide_weight`` ``(N, hc, heads)`` = the tool's ``guide.view(N, D // heads, heads)`` of the
      same ``(N, heads * hc)`` guide, read back with a reshape. -> ``RepC2fAttn.attn.set_guide(guide)``.
    * head ``cls_contrasts.{i}.norm`` (BatchNorm on the D-dim image embedding) + ``cls_contrasts.{i}.conv``
      ``(N, D, 1, 1)``: with the preceding ``cls_preds.{i}.2`` conv (hidden -> D) this is affine in the hidden
      features and folds (float64) into ``RepWorldDetect``'s single ``Conv2d(hidden, N)``.

    The class names come from ``names`` (N of them), else the checkpoint's ``meta`` classes, else COCO's 80 when
    N == 80.
    """
    try:
        from yw_ext.nn.rep import RepC2fAttn, RepWorldDetect
    except ImportError as e:  # pragma: no cover - rep.py ships with yw_ext
        raise CheckpointError(f"{source} is a re-parameterised official YOLO-World checkpoint; converting those needs "
                              f"yw_ext.nn.rep, which is not available here ({e}).") from e
    if layout.dual:
        raise CheckpointError(
            f"{source}: a re-parameterised v1 (image-pooling) checkpoint: its bottom-up guides depend on the image "
            "and cannot be folded (the official runtime cannot run it either)."
        )
    if layout.head != "rep" or layout.neck == "vlpan":
        raise CheckpointError(
            f"{source}: the head is {'' if layout.head == 'rep' else 'not '}re-parameterised but the neck is "
            f"{layout.neck}; yw_ext converts checkpoints folded throughout (official tool output, or re-parameterised "
            "fine-tuning with a folded or efficient neck)."
        )
    n = layout.folded_prompts
    det_sd, guides, head_convs, shapes = {}, {}, {}, []
    for k, v in sd.items():
        if k.startswith((TEXT_PREFIX, ADAPTER_PREFIX)) or k in PROMPT_KEYS or _ignored_reason(k):
            continue
        m = REP_NECK_GUIDE_CONV.fullmatch(k)
        if m:
            guides.setdefault(m.group(1), {})[int(m.group(2))] = v
            continue
        m = REP_NECK_GUIDE_MATRIX.fullmatch(k)
        if m:
            if v.dim() != 3 or v.shape[0] != n:
                shapes.append(f"{k}: {tuple(v.shape)}, expected ({n}, head channels, heads)")
            else:
                guides[m.group(1)] = v.reshape(n, -1)  # (N, hc, heads) -> (N, heads * hc): the tool's view undone
            continue
        m = REP_HEAD_CONV.fullmatch(k)
        if m:
            head_convs.setdefault(int(m.group(1)), {})[m.group(2)] = v
            continue
        det_sd[k] = v
    model = YWDetectionModel(model_cfg(layout), verbose=False)
    model.load_state_dict(map_official_state_dict(det_sd, model, layout, source), strict=True)
    model = model.float().eval()
    # ---- vocabulary (names only: the folded model has no text path)
    given = [g if isinstance(g, str) else g[0] for g in parse_names(names)] if names is not None else None
    meta = _meta_names(ckpt)
    vocab = given or (meta if meta and len(meta) == n else None) or (coco_names() if n == 80 else None)
    if vocab is None or len(vocab) != n:
        raise CheckpointError(f"{source}: this re-parameterised checkpoint has {n} classes folded in; pass their "
                              f"{n} names (names=... as a list, a comma string or a .txt/.json file)"
                              + (f", not {len(vocab)}." if vocab else "."))
    d = layout.embed_dim
    model.set_vocabulary(vocab, torch.zeros(n, d), 1, None, "folded-official-checkpoint")
    # ---- neck: official guide tensors -> RepC2fAttn
    layers = {prefix: idx for prefix, idx, kind in layout.layers if kind == "csp" and prefix.startswith("neck.")}
    if layout.neck == "rep":
        missing = sorted(set(layers) - set(guides))
        if missing:
            shapes.append(f"no guide_convs / guide_weight for {missing}")
        for prefix, guide in sorted(guides.items()):
            idx = layers.get(prefix)
            layer = model.model[idx] if idx is not None else None
            if layer is None or type(layer).__name__ != "C2fAttn":
                shapes.append(f"{prefix}.attn_block: guide tensors for a layer without attention")
                continue
            nh, hc = layer.attn.nh, layer.attn.hc
            if isinstance(guide, dict):  # guide_convs: one (N, hc, 1, 1) conv per head
                bad = [f"{prefix}.attn_block.guide_convs.{h}.weight: {tuple(w.shape)}, expected ({n}, {hc}, 1, 1)"
                       for h, w in sorted(guide.items()) if tuple(w.shape) != (n, hc, 1, 1)]
                if bad or sorted(guide) != list(range(nh)):
                    shapes += bad or [f"{prefix}.attn_block.guide_convs: heads {sorted(guide)}, expected 0..{nh - 1}"]
                    continue
                guide = torch.cat([guide[h].flatten(1) for h in range(nh)], 1)  # (N, nh * hc), head-major
            if tuple(guide.shape) != (n, nh * hc):
                shapes.append(f"{prefix}.attn_block.guide_weight: {tuple(guide.shape)} as (N, heads * hc), expected "
                              f"({n}, {nh * hc})")
                continue
            rep = RepC2fAttn.from_c2fattn(layer, torch.zeros(n, d))
            rep.attn.set_guide(guide.float())
            model.model[idx] = rep
    # ---- head: cls_preds[i][2] (hidden -> D), BatchNorm(D), folded conv (D -> N)  ->  one Conv2d(hidden, N)
    head = model.model[-1]
    rep_head = RepWorldDetect.from_world_detect(head, torch.zeros(n, d))
    for i, (branch, ctr) in enumerate(zip(head.cv3, head.cv4)):
        conv = head_convs.get(i, {})
        w2, b2 = conv.get("weight"), conv.get("bias")
        if w2 is None or b2 is None or tuple(w2.shape) != (n, d, 1, 1) or tuple(b2.shape) != (n,):
            shapes.append(f"{HEAD_PREFIX}cls_contrasts.{i}.conv.weight/bias: "
                          f"{None if w2 is None else tuple(w2.shape)} / {None if b2 is None else tuple(b2.shape)}, "
                          f"expected ({n}, {d}, 1, 1) / ({n},)")
            continue
        last, bn = branch[-1], ctr.norm
        a = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()  # (D,) BatchNorm scale
        w1 = a[:, None] * last.weight.double().flatten(1)  # (D, hidden): conv then BN
        b1 = a * (last.bias.double() - bn.running_mean.double()) + bn.bias.double()  # (D,)
        w2 = w2.double().flatten(1)  # (N, D)
        out = rep_head.cv3[i][-1]  # Conv2d(hidden, N)
        out.weight.data = (w2 @ w1).view(n, -1, 1, 1).to(out.weight.dtype)  # (N, hidden, 1, 1)
        out.bias.data = (w2 @ b1 + b2.double()).to(out.bias.dtype)  # (N,)
    extra = sorted(set(head_convs) - set(range(len(head.cv3))))
    if extra:
        shapes.append(f"{HEAD_PREFIX}cls_contrasts.{extra}.conv: more levels than the head has")
    _raise_problems(f"{source} (re-parameterised official YOLO-World, scale {layout.scale}, {n} folded classes)",
                    [], [], shapes)
    model.model[-1] = rep_head
    model.folded = True
    return model


# ---------------------------------------------------------------------------------------------------- files
def _hash_suffix(path: Path) -> str | None:
    """The SHA-256 prefix in an MMEngine-published file name (``name-<hex>.pth``), if any."""
    m = re.search(r"-([0-9a-f]{8,64})$", path.stem)
    return m.group(1) if m else None


def _verify_name_hash(path: Path) -> None:
    """Check the SHA-256 prefix in the file name: an error for known official files, a warning otherwise."""
    prefix = _hash_suffix(path)
    if prefix is None:
        return
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if digest.startswith(prefix):
        return
    from yw_ext import hub

    spec = hub.resolve_alias(path.name)
    msg = (f"'{path}': its SHA-256 starts with {digest[:len(prefix)]}, not with the {prefix} its official YOLO-World "
           "file name promises")
    if spec is not None and spec.source == "official":
        raise CheckpointError(f"{msg}: the file is damaged or incomplete. Download it again from {spec.url}.")
    from ultralytics.utils import LOGGER

    LOGGER.warning(f"yw_ext: {msg} (a renamed or re-saved file?).")


def read_official(path: str | Path) -> dict[str, Any]:
    """Read an official ``.pth`` file (tensors only when possible) after checking the hash in its name.

    Files that hold pickled Python objects besides tensors and plain containers (some MMEngine training checkpoints)
    are read with full unpickling and a warning: only convert files from sources you trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated / corrupt file, SHA-256 mismatch for a known official file name, not a dict.

    Examples:
        >>> ckpt = read_official("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth")  # doctest: +SKIP
        >>> sorted(ckpt)  # doctest: +SKIP
        ['meta', 'state_dict']
    """
    from ultralytics.utils import LOGGER

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    _verify_name_hash(path)
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "weights only load failed" not in str(e).lower() or "unsupported global" not in str(e).lower():
                raise
            LOGGER.warning(f"yw_ext: '{path}' holds pickled Python objects besides tensors; reading it with full "
                           "unpickling (only convert checkpoints from sources you trust).")
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError, AttributeError, ImportError) as e:
        raise CheckpointError(f"'{path}' is not a readable official YOLO-World checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' holds a {type(ckpt).__name__}, not an official YOLO-World checkpoint (a dict "
                              "with 'meta' and 'state_dict').")
    return ckpt


def load_official(
    path: str | Path, names: Any = None, text_config: dict[str, Any] | None = None, keep_text: bool = True
) -> tuple[YWDetectionModel, dict[str, Any]]:
    """Load and convert an official YOLO-World ``.pth`` file (``yw_ext.YOLOWorld("x.pth")`` goes through here).

    Args:
        path: The ``.pth`` file.
        names: Vocabulary (see ``convert_official``); default the checkpoint's classes or COCO's 80.
        text_config: Overrides for the embedded text tower's config (see ``hf_text_config``).
        keep_text: Keep the embedded CLIP text tower as the model's text encoder.

    Returns:
        (model in eval mode, an Ultralytics-style checkpoint dict describing the conversion).

    Examples:
        >>> model, ckpt = load_official("l_stage2-b3e3dc3f.pth")  # doctest: +SKIP
        >>> model.set_classes(["person", "bus"])  # encoded by the file's own CLIP text tower  # doctest: +SKIP
    """
    from ultralytics.utils import DEFAULT_CFG_DICT

    path = Path(path).expanduser()
    ckpt = read_official(path)
    model = convert_official(ckpt, names=names, text_config=text_config, keep_text=keep_text, source=f"'{path}'")
    model.pt_path = str(path)
    model.task = "detect"
    model.args = {**DEFAULT_CFG_DICT, "model": str(path), "task": "detect"}
    layout = detect_layout(_state_dict_of(ckpt, str(path)), str(path))
    info = {"source": str(path), "format": "official-mmyolo", "family": layout.family, "scale": layout.scale,
            "embed_dim": layout.embed_dim, "text_tower": layout.text_tower}
    return model, {"train_args": {}, "yw_converted_from": info}


def save_checkpoint(model: YWDetectionModel, path: str | Path, ckpt: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as an Ultralytics-format checkpoint (as ``Model.save`` does: float16 weights), atomically.

    The file is written under a temporary name in the destination folder and renamed into place when complete; on
    any error nothing is left at ``path``. The model itself is not modified (a copy is halved).

    Examples:
        >>> save_checkpoint(model, "converted.pt")  # doctest: +SKIP
        PosixPath('converted.pt')
    """
    from copy import deepcopy
    from datetime import datetime

    from ultralytics import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        **(ckpt or {}),
        "ema": None,
        "model": deepcopy(model).half(),  # the text tower (text_encoder_state) is a plain dict and stays float32
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    from yw_ext.prompts import atomic_torch_save

    return atomic_torch_save(payload, path)


def convert_cli(args: dict[str, Any]) -> Path:
    """``yw convert src.pth out.pt [names=...] [text=False]``: convert an official checkpoint to a yw_ext ``.pt``.

    The output is written to a temporary file in the destination folder and moved into place only when complete,
    so a failure never leaves a file (or a half-written one) at ``out``. The ``.pt`` loads with
    ``yw_ext.YOLOWorld(out)`` and keeps the vocabulary and (unless ``text=False``) the CLIP text tower.

    Args:
        args: ``src`` (also ``source`` / ``model``): the official ``.pth``; ``out`` (also ``output`` / ``dst``):
            the ``.pt`` to write (default: ``src`` with a ``.pt`` suffix); ``names``: vocabulary as a comma list or a
            ``.txt`` / ``.json`` file (default: the checkpoint's classes, else COCO's 80); ``text``: keep the text
            tower (default True); ``text_heads``: attention heads of the text tower (default ``width // 64``).

    Returns:
        The written path.

    Raises:
        ValueError: unknown or missing arguments; CheckpointError (a ValueError) for unconvertible checkpoints.
        FileNotFoundError: no such source file.

    Examples:
        >>> convert_cli({"src": "yolo_world_v2_s.pth", "out": "s.pt", "names": "person,bus"})  # doctest: +SKIP
        PosixPath('s.pt')
    """
    known = {"src", "source", "model", "out", "output", "dst", "names", "text", "text_heads"}
    args = dict(args)
    extra = sorted(set(args) - known)
    if extra:
        raise ValueError(f"yw convert: unknown arguments {extra}; use src=... out=... [names=...] [text=False].")
    src = next((args[k] for k in ("src", "source", "model") if args.get(k) is not None), None)
    if src is None:
        raise ValueError("yw convert: give the official checkpoint, e.g. yw convert src=x.pth out=x.pt.")
    src = Path(str(src)).expanduser()
    out = next((args[k] for k in ("out", "output", "dst") if args.get(k) is not None), None)
    out = Path(str(out)).expanduser() if out is not None else src.with_suffix(".pt")
    if out.suffix.lower() != ".pt":
        raise ValueError(f"yw convert: the output must be a .pt file, got '{out}'.")
    if out.resolve() == src.resolve():
        raise ValueError(f"yw convert: the output '{out}' would overwrite the source.")
    keep_text = args.get("text", True)
    if isinstance(keep_text, str):
        keep_text = keep_text.strip().lower() not in {"0", "false", "no", "off"}
    heads = args.get("text_heads")
    text_config = {"num_attention_heads": int(heads)} if heads is not None else None

    model, ckpt = load_official(src, names=args.get("names"), text_config=text_config, keep_text=bool(keep_text))
    save_checkpoint(model, out, ckpt)
    return out


__all__ = [
    "CheckpointError",
    "OfficialLayout",
    "check_state_dict",
    "convert_cli",
    "convert_official",
    "detect_layout",
    "from_ultralytics",
    "load_official",
    "is_official",
    "load_pt",
    "map_official_state_dict",
    "model_cfg",
    "parse_names",
    "read_official",
    "save_checkpoint",
    "text_encoder_from_state",
]
