"""ONNX export of YOLO-World-Seg models: boxes, scores, mask coefficients and prototypes as graph outputs.

Two outputs, as Ultralytics' segmentation ONNX: ``output0`` ``(B, 4 + K + nm, A)`` (xywh boxes in input pixels,
sigmoid scores, ``nm`` mask coefficients per anchor) and ``output1`` ``(B, nm, H / 4, W / 4)`` (prototypes). A
fixed vocabulary is folded into a copy first (``reparameterize``; one input ``images``); ``dynamic_vocab=True``
keeps the text path with a second input ``txt_feats`` ``(1 or B, P, D)`` whose P is a graph dimension (no synonym
max in the graph, as for detection). Masks of a detection ``i`` are ``sigmoid(coeff_i @ protos)`` cropped to its
box (Ultralytics' ``process_mask``). The file is written atomically. Not (yet) covered here: NMS in the graph,
TensorRT / OpenVINO for seg models.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yw_ext.export.graph import DynamicVocabDetect
from yw_ext.export.onnx_io import add_metadata, cap_ir_version, save_onnx
from yw_ext.nn.seg import WorldSegment, with_masks
from yw_ext.seam import Detect, torch2onnx

SEG_OUTPUTS = ("output0", "output1")
"""Output names: predictions with mask coefficients, prototypes."""


class DynamicVocabSegment(DynamicVocabDetect):
    """``WorldSegment`` for export with the prompt count P kept a graph dimension (``DynamicVocabDetect`` + masks)."""

    mask_outputs = WorldSegment.mask_outputs

    def forward(self, x: list[torch.Tensor], text: torch.Tensor) -> Any:
        """``(y, protos)`` in export mode (``y`` ``(B, 4 + P + nm, A)``), else as ``WorldSegment``."""
        self.score_mode = "full"
        mc, proto = self.mask_outputs(x)
        return with_masks(super().forward(x, text), mc, proto)


class SegExportGraph(nn.Module):
    """images (+ ``txt_feats``) -> (predictions with mask coefficients, prototypes)."""

    def __init__(self, model: nn.Module, dynamic_vocab: bool):
        """Wrap a prepared seg model (head in export mode)."""
        super().__init__()
        self.model, self.dynamic_vocab = model, dynamic_vocab

    def forward(self, images: torch.Tensor, txt_feats: torch.Tensor | None = None):
        """``images`` ``(B, 3, H, W)`` in [0, 1]; ``txt_feats`` ``(1 or B, P, D)`` for dynamic vocabularies."""
        y, proto = self.model.predict(images, txt_feats=txt_feats) if self.dynamic_vocab else self.model(images)
        return y, proto


def prepare_seg_model(model: nn.Module, dynamic_vocab: bool, dynamic: bool) -> nn.Module:
    """An export copy of ``model``: folded (fixed vocabulary) or with a ``DynamicVocabSegment`` head, export mode.

    Raises:
        TypeError: not a seg model.
        RuntimeError: a fixed-vocabulary export of a model without vocabulary (see ``reparameterize``).
    """
    from yw_ext.nn.seg import YWSegmentationModel

    if not isinstance(model, YWSegmentationModel):
        raise TypeError(f"export_seg_onnx needs a YOLO-World-Seg model, got {type(model).__name__}.")
    m = copy.deepcopy(model).float().eval()
    if dynamic_vocab:
        if getattr(m, "folded", False):
            raise TypeError("dynamic_vocab needs the text path; this seg model is re-parameterised (folded).")
        m.model[-1] = DynamicVocabSegment.from_head(m.model[-1])
    elif not getattr(m, "folded", False):
        m.reparameterize()
    for p in m.parameters():
        p.requires_grad_(False)
    for mod in m.modules():
        if isinstance(mod, Detect):
            mod.export, mod.format, mod.dynamic = True, "onnx", bool(dynamic)
    return m


def export_seg_onnx(model: nn.Module, out: str | Path, imgsz: int | tuple[int, int] = 640, batch: int = 1,
                    dynamic: bool = False, dynamic_vocab: bool = False, opset: int = 17) -> Path:  # fmt: skip
    """Write a seg model as ONNX with outputs ``output0`` (boxes, scores, mask coefficients) and ``output1``
    (prototypes).

    Args:
        model: A ``YWSegmentationModel`` with a vocabulary (folded or not).
        out: Destination ``.onnx`` path (written atomically).
        imgsz: Input size (int or (H, W), multiples of 32).
        batch: Example batch size (the batch axis is dynamic with ``dynamic=True``).
        dynamic: Dynamic batch and image size.
        dynamic_vocab: Keep the text path: a second input ``txt_feats`` ``(1 or B, P, D)``, P dynamic.
        opset: ONNX opset.

    Returns:
        The written path.

    Examples:
        >>> seg = YOLOWorld("yw-v2-seg-n.yaml")
        >>> seg.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> export_seg_onnx(seg.model, "seg.onnx", imgsz=320)  # doctest: +SKIP
    """
    import onnx

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    if h % 32 or w % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {(h, w)}.")
    m = prepare_seg_model(model, dynamic_vocab, dynamic)
    graph = SegExportGraph(m, dynamic_vocab)
    images = torch.zeros(batch, 3, h, w)
    names, inputs, axes = ["images"], (images,), {}
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"},
                "output1": {0: "batch", 2: "proto_h", 3: "proto_w"}}
    if dynamic_vocab:
        txt = m.txt_feats.float()  # (1, P, D)
        names.append("txt_feats")
        inputs = (images, txt)
        axes.setdefault("output0", {})[1] = "outputs"  # 4 + P + nm
        axes["txt_feats"] = {1: "prompts", **({0: "vocab_batch"} if dynamic else {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.staging.onnx")
    try:
        torch2onnx(graph, inputs, str(tmp), opset=opset, input_names=names, output_names=list(SEG_OUTPUTS),
                   dynamic=axes or None)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    cap_ir_version(proto)
    head = m.model[-1]
    add_metadata(proto, {"task": "segment", "names": dict(model.names), "nm": int(head.nm),
                         "stride": int(max(head.stride)), "imgsz": [h, w], "vocab": "dynamic" if dynamic_vocab else "fixed",
                         "prompts_per_class": int(getattr(model, "prompts_per_class", 1)),
                         "embed_dim": int(getattr(model, "embed_dim", 512))})  # fmt: skip
    return save_onnx(proto, out)


def export_yolo_seg(yolo: Any, format: str = "onnx", imgsz: Any = 640, batch: int = 1, dynamic: bool = False,
                    dynamic_vocab: bool = False, opset: int | None = None, out: str | Path | None = None,
                    **kwargs: Any) -> str:  # fmt: skip
    """``YOLOWorld.export`` for a seg model: ONNX only (``export_seg_onnx``); other formats and options refuse.

    Raises:
        NotImplementedError: a format other than ONNX, or an option the seg export does not support yet (``nms``...).

    Examples:
        >>> YOLOWorld("seg.pt").export(format="onnx", dynamic_vocab=True)  # doctest: +SKIP
        'seg_dynvocab.onnx'
    """
    if str(format).lower() != "onnx":
        raise NotImplementedError(f"YOLO-World-Seg models export to ONNX only for now (format='onnx'), not '{format}'.")
    ignored = {"device": None, "simplify": None, "verbose": None, "half": False, "int8": False, "nms": False}
    bad = {k: v for k, v in kwargs.items() if k not in ignored or (v and ignored[k] is not None)}
    if bad:
        raise NotImplementedError(f"seg ONNX export does not support {sorted(bad)} yet (supported: imgsz, batch, "
                                  "dynamic, dynamic_vocab, opset, out).")
    if out is None:
        stem = Path(str(getattr(yolo, "ckpt_path", None) or yolo.model_name or "yw-seg")).with_suffix("")
        out = stem.with_name(stem.name + ("_dynvocab" if dynamic_vocab else "") + ".onnx")
    return str(export_seg_onnx(yolo.model, out, imgsz, batch, dynamic, dynamic_vocab, opset or 17))
