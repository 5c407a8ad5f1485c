"""YOLO-World-Seg: the YOLO-World detector plus a mask branch (prototypes + per-anchor mask coefficients).

``WorldSegment`` is Ultralytics' ``WorldDetect`` (box branch ``cv2``, embedding branch ``cv3``, contrastive ``cv4``)
plus what Ultralytics' ``Segment`` adds to ``Detect``: a ``Proto`` on the P3 features (``nm`` prototypes at stride 4)
and, per level, a Conv3x3-Conv3x3-Conv1x1 branch giving ``nm`` mask coefficients per anchor (``cv5``, since
``WorldDetect`` already uses ``cv4``). These are the official ``proto_pred`` and ``seg_preds`` modules (the official
prototype upsampling is nearest-neighbour: an identity ``ConvTranspose2d`` reproduces it).

Ultralytics' ``parse_model`` knows no such head, so a seg YAML (a detection YAML with ``segment: [nm, npr]``) is
built by the parser with its ``WorldDetect`` head, and ``YWSegmentationModel`` then swaps in a ``WorldSegment``
that takes over the built branches (``swap_in_segment_head``), the way the folded modules are swapped in.

Outputs follow Ultralytics' ``Segment``: training ``{"boxes", "scores", "feats", "mask_coefficient", "proto"}``;
eval ``((y, proto), preds)`` with ``y`` ``(B, 4 + K + nm, A)``; export ``(y, proto)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from yw_ext.nn.model import YWDetectionModel
from yw_ext.nn.prompt_model import copy_network
from yw_ext.nn.rep import RepWorldDetect
from yw_ext.seam import (
    BNContrastiveHead,
    Conv,
    Proto,
    WorldDetect,
    default_head_style,
    initialize_weights,
    v8SegmentationLoss,
)

SEG_KEY = "segment"
"""Model-YAML key marking a segmentation model: ``[nm, npr]`` (mask coefficients, prototype hidden width)."""

MASK_BRANCH = ("proto", "cv5")
"""Attribute names of the seg head's mask branch (everything else is the detector)."""


def is_seg_cfg(cfg: Any) -> bool:
    """True for a model dict with the ``segment`` key (a YOLO-World-Seg YAML).

    Examples:
        >>> is_seg_cfg({"segment": [32, 256]}), is_seg_cfg({"nc": 80})
        (True, False)
    """
    return isinstance(cfg, dict) and bool(cfg.get(SEG_KEY))


def with_masks(out: Any, mc: torch.Tensor, proto: torch.Tensor) -> Any:
    """Add mask coefficients ``(B, nm, A)`` and prototypes to a detection head's output, in ``Segment``'s layout.

    Training dict -> the dict with ``mask_coefficient`` and ``proto``; export ``y`` -> ``(cat(y, mc), proto)``;
    eval ``(y, preds)`` -> ``((cat(y, mc), proto), preds)``, ``y`` becoming ``(B, 4 + P + nm, A)``.
    """
    if isinstance(out, dict):
        return {**out, "mask_coefficient": mc, "proto": proto}
    if isinstance(out, torch.Tensor):
        return torch.cat((out, mc), 1), proto
    y, preds = out
    return (torch.cat((y, mc), 1), proto), {**preds, "mask_coefficient": mc, "proto": proto}


class WorldSegment(WorldDetect):
    """``WorldDetect`` with Ultralytics' ``Proto`` and per-level mask-coefficient branches.

    Args:
        nc: Prompt channels the head is built with (80; the vocabulary changes it).
        embed: Text-embedding width D.
        with_bn: BatchNorm contrastive head (v2) or plain L2 one (v1).
        nm: Mask coefficients per anchor (= number of prototypes).
        npr: Prototype hidden width (not scaled by the model width, as officially).
        reg_max: DFL bins.
        ch: Input channels per level (P3, P4, P5).

    Examples:
        >>> h = WorldSegment(80, 512, True, ch=(64, 128, 256)).eval()
        >>> x = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
        >>> h.nc = 3  # K = 3 prompts; normally set by the model's install_vocabulary / head_prompts
        >>> (y, proto), _ = h(x, torch.randn(1, 3, 512))
        >>> tuple(y.shape), tuple(proto.shape)  # (B, 4 + K + nm, A), (B, nm, 2 H3, 2 W3)
        ((1, 39, 84), (1, 32, 16, 16))
    """

    def __init__(self, nc: int = 80, embed: int = 512, with_bn: bool = False, nm: int = 32, npr: int = 256,
                 reg_max: int = 16, ch: tuple[int, ...] = ()):  # fmt: skip
        """Build the detection branches (``WorldDetect``) and the mask branch (``proto``, ``cv5``)."""
        super().__init__(nc, embed, with_bn, reg_max=reg_max, ch=ch)
        self.nm, self.npr = int(nm), int(npr)
        self.proto = Proto(ch[0], self.npr, self.nm)
        c5 = max(ch[0] // 4, self.nm)  # official seg_preds hidden width: max(C0 // 4, 32)
        self.cv5 = nn.ModuleList(nn.Sequential(Conv(x, c5, 3), Conv(c5, c5, 3), nn.Conv2d(c5, self.nm, 1)) for x in ch)

    def mask_outputs(self, x: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask coefficients ``(B, nm, A)`` and prototypes ``(B, nm, 2 H3, 2 W3)`` of the level features ``x``."""
        bs = x[0].shape[0]
        mc = torch.cat([self.cv5[i](x[i]).view(bs, self.nm, -1) for i in range(self.nl)], 2)  # (B, nm, A)
        return mc, self.proto(x[0])

    def forward(self, x: list[torch.Tensor], text: torch.Tensor) -> Any:
        """Detection as ``WorldDetect`` plus mask coefficients and prototypes (layout of Ultralytics' ``Segment``)."""
        mc, proto = self.mask_outputs(x)  # before WorldDetect.forward reassigns the list's items
        return with_masks(super().forward(x, text), mc, proto)

    def fold(self, text: torch.Tensor) -> RepWorldSegment:
        """This head with the prompts ``text`` ``(P, D)`` folded in (``yw_ext.nn.rep.reparameterize`` calls it)."""
        return RepWorldSegment.from_world_segment(self, text)


class RepWorldSegment(RepWorldDetect):
    """A ``WorldSegment`` with its vocabulary folded in: ``RepWorldDetect`` plus the unchanged mask branch.

    Always outputs every prompt score (``score_mode`` stays ``"full"``: the best-class rows of ``"max"`` carry no
    mask coefficients). Outputs as ``WorldSegment``.

    Examples:
        >>> ws = WorldSegment(80, 512, True, ch=(64, 128, 256)).eval()
        >>> ws.stride = torch.tensor([8.0, 16.0, 32.0])
        >>> rep = RepWorldSegment.from_world_segment(ws, torch.randn(3, 512)).eval()
        >>> x = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
        >>> tuple(rep(x)[0][0].shape)  # (B, 4 + P + nm, A)
        (1, 39, 84)
    """

    def __init__(self, nc: int, hidden: int, embed: int = 512, with_bn: bool = True, nm: int = 32, npr: int = 256,
                 reg_max: int = 16, ch: tuple[int, ...] = ()):  # fmt: skip
        """Build with zero folded classifiers and a fresh mask branch (``from_world_segment`` fills both)."""
        super().__init__(nc, hidden, embed, with_bn, reg_max, ch)
        self.nm, self.npr = int(nm), int(npr)
        self.proto = Proto(ch[0], self.npr, self.nm)
        c5 = max(ch[0] // 4, self.nm)
        self.cv5 = nn.ModuleList(nn.Sequential(Conv(x, c5, 3), Conv(c5, c5, 3), nn.Conv2d(c5, self.nm, 1)) for x in ch)

    mask_outputs = WorldSegment.mask_outputs

    def forward(self, x: list[torch.Tensor]) -> Any:
        """``RepWorldDetect``'s detection (all prompt scores) plus mask coefficients and prototypes."""
        self.score_mode = "full"
        mc, proto = self.mask_outputs(x)
        return with_masks(super().forward(x), mc, proto)

    @classmethod
    @torch.no_grad()
    def from_world_segment(cls, head: WorldSegment, text: torch.Tensor) -> RepWorldSegment:
        """Fold the detection part as ``RepWorldDetect.from_world_detect``; the mask branch is the same object."""
        rep = super().from_world_detect(head, text)
        rep.proto, rep.cv5, rep.nm, rep.npr = head.proto, head.cv5, head.nm, head.npr
        return rep.train(head.training)


def swap_in_segment_head(model: nn.Module, nm: int = 32, npr: int = 256) -> WorldSegment:
    """Replace the built ``WorldDetect`` (last layer of ``model.model``) by a ``WorldSegment`` owning its branches.

    The detection tensors are the same objects afterwards (``cv2``, ``cv3``, ``cv4``, ``dfl``, stride); ``proto`` and
    ``cv5`` are new, with Ultralytics' BatchNorm settings.

    Raises:
        TypeError: the last layer is not a plain ``WorldDetect``.

    Examples:
        >>> head = swap_in_segment_head(YWDetectionModel("yw-v2-n.yaml", verbose=False))
        >>> type(head).__name__
        'WorldSegment'
    """
    old = model.model[-1]
    if type(old) is not WorldDetect:
        raise TypeError(f"a seg head replaces a WorldDetect head, found {type(old).__name__}.")
    ch = tuple(seq[0].conv.in_channels for seq in old.cv2)
    embed = old.cv3[0][-1].out_channels
    with_bn = isinstance(old.cv4[0], BNContrastiveHead)
    new = WorldSegment(old.nc, embed, with_bn, nm, npr, old.reg_max, ch).to(next(old.parameters()).device)
    initialize_weights(new)
    for k in ("cv2", "cv3", "cv4", "dfl"):
        setattr(new, k, getattr(old, k))
    for k in ("stride", "f", "i", "type", "np", "legacy", "format", "max_det", "xyxy", "agnostic_nms", "dynamic",
              "export", "shape", "anchors", "strides"):  # fmt: skip
        if k in vars(old) or hasattr(type(old), k):
            setattr(new, k, getattr(old, k))
    new.type = f"{WorldSegment.__module__}.WorldSegment"
    new.train(old.training)
    model.model[-1] = new
    return new


class YWSegmentationModel(YWDetectionModel):
    """YOLO-World-Seg: ``YWDetectionModel`` with a ``WorldSegment`` head and the segmentation loss.

    Built from a seg YAML (``yw-v2-seg-s.yaml``: the detection YAML plus ``segment: [nm, npr]``). The vocabulary,
    synonyms (max over a class's prompts), ``set_classes`` and the text routing are the detection model's.

    Examples:
        >>> m = YWSegmentationModel("yw-v2-seg-n.yaml", verbose=False).eval()
        >>> m.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> (y, proto), _ = m(torch.zeros(1, 3, 64, 64))
        >>> tuple(y.shape), tuple(proto.shape)  # (B, 4 + K + 32, A), (B, 32, H / 4, W / 4)
        ((1, 38, 84), (1, 32, 16, 16))
    """

    def __init__(self, cfg: str | dict = "yw-v2-seg-s.yaml", ch: int = 3, nc: int | None = None, verbose: bool = True):
        """Build the detector with Ultralytics' parser, then swap its head for ``WorldSegment``."""
        from yw_ext.nn.build import load_model_cfg

        d = load_model_cfg(cfg)
        if not is_seg_cfg(d):
            raise ValueError(f"{d.get('yaml_file', 'this model YAML')} is a detection YAML (no '{SEG_KEY}:' key); "
                             "use a seg YAML such as 'yw-v2-seg-s.yaml'.")
        super().__init__(d, ch=ch, nc=nc, verbose=False)
        nm, npr = (list(d[SEG_KEY]) + [256])[:2]
        with default_head_style():  # as the detector's build: the same seed gives the same mask branch
            swap_in_segment_head(self, int(nm), int(npr))
        self.task = "segment"
        if verbose:
            self.info()

    def mask_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the mask branch (``model.<head>.proto.``, ``model.<head>.cv5.``).

        Examples:
            >>> YWSegmentationModel("yw-v2-seg-n.yaml", verbose=False).mask_prefixes()
            ('model.22.proto.', 'model.22.cv5.')
        """
        return tuple(f"model.{len(self.model) - 1}.{k}." for k in MASK_BRANCH)

    def detector_part(self) -> YWDetectionModel:
        """This model without its mask branch: a ``YWDetectionModel`` holding bitwise copies of the detector tensors.

        Built from this model's YAML without the ``segment`` key (the network ``YOLOWorld.to_seg`` starts from), fused
        when this model is, on its device and dtype, with its encoder states and vocabulary; this model is not
        modified. Prompt tuning trains against it (the class scores do not depend on the mask branch).

        Examples:
            >>> m = YWSegmentationModel("yw-v2-seg-n.yaml", verbose=False)
            >>> type(m.detector_part().model[-1]).__name__
            'WorldDetect'
        """
        prefixes = self.mask_prefixes()
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}
        det = copy_network(YWDetectionModel, self, state)
        det.yaml.pop(SEG_KEY, None)
        det.task = "detect"
        if self.vocab is not None:
            det.install_vocabulary(self.vocab)
        return det

    def init_criterion(self):
        """Ultralytics' segmentation loss (box, seg, cls, dfl)."""
        return v8SegmentationLoss(self)

    def _max_over_prompts(self, out: Any) -> Any:
        """Reduce the score channels over each class's G prompts; mask coefficients and prototypes pass through."""
        if isinstance(out, dict):
            return super()._max_over_prompts(out)
        g, nm = self.prompts_per_class, self.model[-1].nm

        def reduce_y(t: torch.Tensor) -> torch.Tensor:
            b, c, a = t.shape  # (B, 4 + K * G + nm, A)
            p = c - 4 - nm
            s = t[:, 4:4 + p].view(b, p // g, g, a).amax(2)  # (B, K, A)
            return torch.cat((t[:, :4], s, t[:, 4 + p:]), 1)  # (B, 4 + K + nm, A)

        if isinstance(out, tuple) and isinstance(out[1], dict):  # ((y, proto), preds)
            (y, proto), preds = out
            return (reduce_y(y), proto), super()._max_over_prompts(preds)
        y, proto = out  # export: (y, proto)
        return reduce_y(y), proto
