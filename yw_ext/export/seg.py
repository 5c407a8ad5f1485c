"""ONNX export of YOLO-World-Seg models: boxes, scores, mask coefficients and prototypes as graph outputs.

Two outputs, as Ultralytics' segmentation ONNX: ``output0`` ``(B, 4 + K + nm, A)`` (xywh boxes in input pixels,
sigmoid scores, ``nm`` mask coefficients per anchor) and ``output1`` ``(B, nm, H / 4, W / 4)`` (prototypes). A
fixed vocabulary is folded into a copy first (``reparameterize``; one input ``images``); ``dynamic_vocab=True``
keeps the text path with a second input ``txt_feats`` ``(1 or B, P, D)`` whose P is a graph dimension (no synonym
max in the graph, as for detection). Masks of a detection ``i`` are ``sigmoid(coeff_i @ protos)`` cropped to its
box (Ultralytics' ``process_mask``). The file is written atomically.

``nms=True`` puts ``BatchedNMS`` in the graph (Ultralytics' predict NMS: best class per box, class-aware, ``score >
conf``, IoU ``> iou`` suppressed): ``output0`` becomes ``(B, max_det, 6 + nm)`` rows ``[x1, y1, x2, y2, score, class,
nm coefficients of that box]`` (zero-padded, by decreasing score; Ultralytics' end-to-end seg layout), ``output1``
stays the prototypes. ``format="openvino"`` converts that ONNX with OpenVINO (``export_seg_openvino``);
``format="engine"`` builds it with ``yw_ext.export.tensorrt`` (``yw_ext.export.export_seg_engine``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from yw_ext.export.graph import BatchedNMS, DynamicVocabDetect
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
    """images (+ ``txt_feats``) -> (predictions with mask coefficients, prototypes), or (NMS rows, prototypes).

    Args:
        model: A prepared seg model (head in export mode).
        dynamic_vocab: Take ``txt_feats`` as a second input.
        nms: ``BatchedNMS`` with ``extra = nm`` (the kept boxes' mask coefficients follow each row), or None.
    """

    def __init__(self, model: nn.Module, dynamic_vocab: bool, nms: BatchedNMS | None = None):
        """Wrap a prepared seg model (head in export mode)."""
        super().__init__()
        self.model, self.dynamic_vocab, self.nms = model, dynamic_vocab, nms

    def forward(self, images: torch.Tensor, txt_feats: torch.Tensor | None = None):
        """``images`` ``(B, 3, H, W)`` in [0, 1]; ``txt_feats`` ``(1 or B, P, D)`` for dynamic vocabularies."""
        y, proto = self.model.predict(images, txt_feats=txt_feats) if self.dynamic_vocab else self.model(images)
        if self.nms is None:
            return y, proto  # (B, 4 + K + nm, A) xywh, (B, nm, h, w)
        xy, wh = y[:, :2], y[:, 2:4] / 2
        y = torch.cat((xy - wh, xy + wh, y[:, 4:]), 1)  # (B, 4 + K + nm, A) xyxy, as BatchedNMS takes
        return self.nms(y), proto  # (B, max_det, 6 + nm), (B, nm, h, w)


def make_seg_nms(nm: int, conf: float | None = 0.25, iou: float = 0.7, max_det: int = 300,
                 agnostic: bool = False) -> BatchedNMS:  # fmt: skip
    """The in-graph NMS of a seg export: ``BatchedNMS`` carrying each kept box's ``nm`` mask coefficients.

    Examples:
        >>> make_seg_nms(32, conf=0.5).extra
        32
    """
    return BatchedNMS(conf=0.25 if conf is None else conf, iou=iou, max_det=max_det, agnostic=agnostic, extra=nm)


def seg_metadata(model: nn.Module, head: nn.Module, hw: tuple[int, int], dynamic_vocab: bool, batch: int,
                 nms: BatchedNMS | None) -> dict[str, Any]:  # fmt: skip
    """Metadata of a seg ONNX: the detection export's vocabulary entries plus ``task``, ``nm``, ``end2end``."""
    from yw_ext.export.onnx import ExportOptions, vocab_metadata

    meta = {"task": "segment", "names": dict(model.names), "nm": int(head.nm), "stride": int(max(head.stride)),
            "imgsz": list(hw), "batch": int(batch), "scores": "full", "end2end": nms is not None}
    meta.update(vocab_metadata(model, ExportOptions(dynamic_vocab=dynamic_vocab)))
    if nms is not None:
        meta["nms"] = {"conf": nms.conf, "iou": nms.iou, "max_det": nms.max_det, "agnostic": nms.agnostic}
    return meta


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
                    dynamic: bool = False, dynamic_vocab: bool = False, opset: int = 17,
                    nms: bool | BatchedNMS = False) -> Path:  # fmt: skip
    """Write a seg model as ONNX with outputs ``output0`` (boxes, scores, mask coefficients) and ``output1``
    (prototypes).

    Args:
        model: A ``YWSegmentationModel`` with a vocabulary (folded or not).
        out: Destination ``.onnx`` path (written atomically).
        imgsz: Input size (int or (H, W), multiples of 32).
        batch: Example batch size (the batch axis is dynamic with ``dynamic=True``).
        dynamic: Dynamic batch and image size.
        dynamic_vocab: Keep the text path: a second input ``txt_feats`` ``(1 or B, P, D)``, P dynamic (the model's
            vocabulary is its default value).
        opset: ONNX opset.
        nms: NMS in the graph: True (Ultralytics' defaults: conf 0.25, iou 0.7, max_det 300) or a ``BatchedNMS``
            from ``make_seg_nms``; ``output0`` is then ``(B, max_det, 6 + nm)``.

    Returns:
        The written path.

    Examples:
        >>> seg = YOLOWorld("yw-v2-seg-n.yaml")
        >>> seg.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> export_seg_onnx(seg.model, "seg.onnx", imgsz=320)  # doctest: +SKIP
        >>> export_seg_onnx(seg.model, "seg_nms.onnx", imgsz=320, nms=make_seg_nms(32, conf=0.4))  # doctest: +SKIP
    """
    import onnx

    from yw_ext.export.onnx import TXT_INPUT, _add_default_input

    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(imgsz)
    if h % 32 or w % 32:
        raise ValueError(f"imgsz must be a multiple of 32, got {(h, w)}.")
    m = prepare_seg_model(model, dynamic_vocab, dynamic)
    head = m.model[-1]
    nms = make_seg_nms(int(head.nm)) if nms is True else (nms or None)
    graph = SegExportGraph(m, dynamic_vocab, nms)
    images = torch.zeros(batch, 3, h, w)
    names, inputs, axes = ["images"], (images,), {}
    if dynamic:
        axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output1": {0: "batch", 2: "proto_h", 3: "proto_w"},
                "output0": {0: "batch"} if nms else {0: "batch", 2: "anchors"}}
    if dynamic_vocab:
        names.append(TXT_INPUT)
        inputs = (images, m.txt_feats.float())  # (1, P, D)
        if not nms:
            axes.setdefault("output0", {})[1] = "outputs"  # 4 + P + nm
        axes[TXT_INPUT] = {1: "prompts", **({0: "vocab_batch"} if dynamic else {})}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.staging.onnx")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*aten::index.*")  # NMS gather indices are never negative
            torch2onnx(graph, inputs, str(tmp), opset=opset, input_names=names, output_names=list(SEG_OUTPUTS),
                       dynamic=axes or None)
        proto = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    if dynamic_vocab and getattr(model, "vocab_set", True):
        _add_default_input(proto, TXT_INPUT, m.txt_feats.detach().float().cpu().numpy())
    cap_ir_version(proto)
    add_metadata(proto, seg_metadata(model, head, (h, w), dynamic_vocab, batch, nms))
    return save_onnx(proto, out)


SEG_NMS_KEYS = ("nms", "conf", "iou", "max_det", "agnostic_nms")
SEG_IGNORED = {"device": None, "simplify": None, "verbose": None, "half": False, "int8": False}
"""Options a seg export accepts and ignores (None: any value; False: only a false value)."""


def seg_nms_from_args(nm: int, kwargs: dict[str, Any]) -> BatchedNMS | None:
    """``make_seg_nms`` from Ultralytics' export arguments (``nms``, ``conf``, ``iou``, ``max_det``, ``agnostic_nms``),
    popped from ``kwargs``; None without ``nms=True``.

    Examples:
        >>> seg_nms_from_args(32, {"nms": True, "conf": 0.4}).conf, seg_nms_from_args(32, {"conf": 0.4})
        (0.4, None)
    """
    a = {k: kwargs.pop(k) for k in SEG_NMS_KEYS if k in kwargs}
    if not a.get("nms"):
        return None
    return make_seg_nms(nm, a.get("conf"), 0.7 if a.get("iou") is None else a["iou"], int(a.get("max_det") or 300),
                        bool(a.get("agnostic_nms")))


def export_seg_openvino(onnx_file: str | Path, out_dir: str | Path, half: bool = False) -> Path:
    """Convert a seg ONNX (``export_seg_onnx``) to an OpenVINO folder as Ultralytics lays it out: ``<name>.xml`` /
    ``.bin`` and ``metadata.yaml`` (the ONNX's metadata), with Ultralytics' ``rt_info``. Writes into ``out_dir``
    (a staging folder: ``export_yolo_seg`` moves it into place).

    Examples:
        >>> export_seg_openvino("seg.onnx", "seg_openvino_model")  # doctest: +SKIP
    """
    import openvino as ov
    import yaml

    from yw_ext.export.onnx_io import load_metadata
    from yw_ext.runtime.detector import parse_metadata

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = parse_metadata(load_metadata(str(onnx_file)))
    net = ov.convert_model(str(onnx_file))
    net.set_rt_info("YOLO", ["model_info", "model_type"])
    net.set_rt_info(True, ["model_info", "reverse_input_channels"])
    net.set_rt_info(114, ["model_info", "pad_value"])
    net.set_rt_info([255.0], ["model_info", "scale_values"])
    net.set_rt_info([str(v).replace(" ", "_") for v in dict(meta.get("names") or {}).values()],
                    ["model_info", "labels"])  # fmt: skip
    ov.save_model(net, str(out_dir / (Path(onnx_file).stem + ".xml")), compress_to_fp16=bool(half))
    (out_dir / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return out_dir


SEG_FORMATS = {"onnx": ".onnx", "openvino": "_openvino_model", "engine": ".engine"}


def _seg_destination(yolo: Any, fmt: str, dynamic_vocab: bool, out: str | Path | None) -> Path:
    """``out``, or next to the weights: ``<stem>[_dynvocab].onnx`` / ``_openvino_model`` / ``.engine``."""
    if out is not None:
        return Path(out)
    stem = Path(str(getattr(yolo, "ckpt_path", None) or yolo.model_name or "yw-seg")).with_suffix("")
    return stem.with_name(stem.name + ("_dynvocab" if dynamic_vocab else "") + SEG_FORMATS[fmt])


def export_yolo_seg(yolo: Any, format: str = "onnx", imgsz: Any = 640, batch: int = 1, dynamic: bool = False,
                    dynamic_vocab: bool = False, opset: int | None = None, out: str | Path | None = None,
                    **kwargs: Any) -> str:  # fmt: skip
    """``YOLOWorld.export`` for a seg model: ONNX (``export_seg_onnx``; NMS in the graph on ``nms=True``), OpenVINO
    (that ONNX converted, ``export_seg_openvino``) or a TensorRT engine (that ONNX through
    ``yw_ext.export.tensorrt.build_engine``, as detection; ``prompts=`` for run-time vocabularies, ``half`` / ``int8``
    / ``quantize``, ``data``, ``workspace``, ``calib_images``).

    Raises:
        NotImplementedError: another format, or an option the seg export does not support.
        ValueError / RuntimeError: as ``yw_ext.export.tensorrt.check_engine_request`` / ``require_gpu`` (engines).

    Examples:
        >>> YOLOWorld("seg.pt").export(format="onnx", dynamic_vocab=True)  # doctest: +SKIP
        'seg_dynvocab.onnx'
        >>> YOLOWorld("seg.pt").export(format="onnx", nms=True, conf=0.3, max_det=100)  # doctest: +SKIP
        'seg.onnx'
        >>> YOLOWorld("seg.pt").export(format="engine", half=True, nms=True)  # doctest: +SKIP
        'seg.engine'
    """
    from yw_ext.export import FORMAT_ALIASES, precision

    fmt = FORMAT_ALIASES.get(str(format).lower(), str(format).lower())
    if fmt not in SEG_FORMATS:
        raise NotImplementedError(f"YOLO-World-Seg models export to {sorted(SEG_FORMATS)}, not '{format}'.")
    nms = seg_nms_from_args(int(yolo.model.model[-1].nm), kwargs)
    q = precision(kwargs)
    trt = {k: kwargs.pop(k) for k in ("prompts", "data", "workspace", "calib_images", "max_prompts", "quantize")
           if k in kwargs}  # fmt: skip
    ok = {**SEG_IGNORED, **({"half": None, "int8": None} if fmt != "onnx" else {})}
    bad = {k: v for k, v in kwargs.items() if k not in ok or (v and ok[k] is not None)}
    if fmt != "engine":  # TensorRT options elsewhere; ONNX FP32 only; OpenVINO FP32 / FP16
        bad.update({k: v for k, v in trt.items() if k != "quantize"})
        if q is not None and (fmt == "onnx" or q != 16):
            bad["quantize"] = q
    if bad:
        raise NotImplementedError(f"seg {fmt} export does not support {sorted(bad)} "
                                  "(supported: imgsz, batch, dynamic, dynamic_vocab, opset, out, nms, conf, iou, "
                                  "max_det, agnostic_nms; half for openvino; half / int8 / quantize, data, prompts, "
                                  "workspace, calib_images for engine).")
    dst = _seg_destination(yolo, fmt, dynamic_vocab, out)
    if fmt == "onnx":
        return str(export_seg_onnx(yolo.model, dst, imgsz, batch, dynamic, dynamic_vocab, opset or 17, nms or False))
    return _export_seg_via_onnx(yolo, fmt, dst, q, trt, imgsz=imgsz, batch=batch, dynamic=dynamic,
                                dynamic_vocab=dynamic_vocab, opset=opset or 17, nms=nms or False)


def _export_seg_via_onnx(yolo: Any, fmt: str, dst: Path, q: Any, trt: dict[str, Any], **onnx_kw: Any) -> str:
    """OpenVINO folder or TensorRT engine at ``dst`` from a seg ONNX written in a staging folder next to it."""
    from yw_ext.export import Staging, move_into_place

    request = None
    if fmt == "engine":  # every argument is checked before the (GPU-only) build, as for detection
        from yw_ext import vocab
        from yw_ext.export import tensorrt as T

        request = T.check_engine_request(yolo.model, dynamic_vocab=onnx_kw["dynamic_vocab"], quantize=q,
                                         data=trt.get("data"), prompts=trt.get("prompts"),
                                         max_prompts=int(trt.get("max_prompts") or vocab.MAX_PROMPTS))
        T.require_gpu()
    with Staging(dst) as tmp:
        stem = dst.name[: -len("_openvino_model")] if dst.name.endswith("_openvino_model") else dst.stem
        f = export_seg_onnx(yolo.model, tmp / f"{stem}.onnx", **onnx_kw)
        if fmt == "openvino":
            res = export_seg_openvino(f, tmp / dst.name, half=q == 16)
        else:
            res = T.build_engine(f, tmp / f"{stem}.engine", request, imgsz=onnx_kw["imgsz"], batch=onnx_kw["batch"],
                                 dynamic=onnx_kw["dynamic"], workspace=trt.get("workspace"), data=trt.get("data"),
                                 calib_images=int(trt.get("calib_images") or 512))
        move_into_place(Path(res), dst)
    return str(dst)
