"""Export and deployment: ONNX (fixed or run-time vocabulary, NMS in the graph), TensorRT, OpenVINO, INT8, CLIP text.

``YOLOWorld.export(...)`` calls ``export_model``. It never changes the user's model: it works on a deep copy, folds a
fixed vocabulary into that copy's weights (``yw_ext.nn.rep.reparameterize``; a folded model is a plain Ultralytics
``Detect`` graph of convolutions), and hands it to Ultralytics' ``Exporter`` (``yw_ext.export.onnx.YWExporter``,
whose ONNX writer adds the yw_ext inputs, NMS and metadata). Every artifact is written in a temporary folder next to
its destination and moved into place (``os.replace``) only once complete: an error leaves no half-written file.

Arguments (besides Ultralytics' ``format``, ``imgsz``, ``dynamic``, ``batch``, ``simplify``, ``opset``, ``nms``,
``conf``, ``iou``, ``max_det``, ``agnostic_nms``, ``quantize`` / ``half`` / ``int8``, ``data``, ``workspace``,
``device``):

- ``dynamic_vocab=True``: keep the text path; a second input ``txt_feats``, P prompts up to ``max_prompts`` (default
  ``yw_ext.vocab.MAX_PROMPTS``): ``(1, P, D)`` with a fixed ``batch=B`` (one vocabulary, broadcast to the B images in
  the graph), ``(1 or B, P, D)`` with ``dynamic=True`` (1: broadcast; B: a vocabulary per image); the model's
  vocabulary is the input's default value (``default_vocab=False`` to drop it).
- ``out=``: destination path (default: next to the weights, as Ultralytics; ``<stem>_dynvocab.onnx`` for
  run-time vocabularies).
- ``nms=True``: ``(B, max_det, 6)`` output; ``trt_nms="efficient"`` uses TensorRT's ``EfficientNMS_TRT`` plugin.
- ``scores="max"`` / ``"full"``: reduce over classes inside the graph (each anchor's best logit and class, one
  sigmoid; raw output ``(B, 6, A)``, the same NMS detections as ``multi_label=False``) or keep every class's score
  (``(B, 4 + K, A)``). Default: ``"max"`` with ``nms=True``, ``"full"`` without (Ultralytics' raw layout);
  ``yw_ext.runtime.Detector`` reads both (``ExportOptions.scores``).
- TensorRT (``format="engine"``): ``prompts=(min, opt, max)`` (the K range of a dynamic-vocabulary engine; required),
  ``calib_images=`` (INT8 calibration image count, default 512); see ``yw_ext.export.tensorrt``.

Examples:
    >>> import yw_ext
    >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")  # doctest: +SKIP
    >>> model.set_classes(["person", "bus"])  # doctest: +SKIP
    >>> model.export(format="onnx", dynamic=True)  # fixed vocabulary, folded  # doctest: +SKIP
    >>> model.export(format="onnx", dynamic_vocab=True, nms=True)  # run-time vocabulary  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from yw_ext.core.log import LOGGER  # Ultralytics' logger (the same object), looked up without importing it

YW_EXPORT_KEYS = ("dynamic_vocab", "default_vocab", "max_prompts", "trt_nms", "out", "prompts", "calib_images", "chunk",
                  "scores")
FORMAT_ALIASES = {"tensorrt": "engine", "trt": "engine", "ov": "openvino"}


def precision(kwargs: dict) -> int | str | None:
    """The export precision from ``quantize`` or the legacy ``int8`` / ``half`` flags: 8, 16, other, or None.

    Examples:
        >>> precision({"int8": True}), precision({"half": True}), precision({"quantize": "fp16"}), precision({})
        (8, 16, 16, None)
    """
    q = kwargs.get("quantize")
    if q is None:
        if kwargs.get("int8"):
            return 8
        if kwargs.get("half"):
            return 16
        return None
    aliases = {"int8": 8, "8": 8, "fp16": 16, "16": 16, "half": 16, "fp32": None, "32": None}
    q = aliases.get(str(q).lower(), q)
    return None if q == 32 else q


def _is_v1(model) -> bool:
    from yw_ext.seam import ImagePoolingAttn

    return any(isinstance(m, ImagePoolingAttn) for m in model.modules())


def default_destination(model, fmt: str, dynamic_vocab: bool, quantize: Any = None) -> Path:
    """Where Ultralytics would write ``fmt`` for this model (next to its weights, or the YAML's name in the cwd).

    Examples:
        >>> class M: pt_path = "runs/w/best.pt"
        >>> default_destination(M(), "onnx", True).as_posix()
        'runs/w/best_dynvocab.onnx'
    """
    from yw_ext.seam import export_formats

    src = Path(getattr(model, "pt_path", None) or getattr(model, "yaml_file", None)
               or (getattr(model, "yaml", None) or {}).get("yaml_file", "") or "yw_ext.pt")
    if src.suffix in {".yaml", ".yml"}:
        src = Path(src.name)
    stem = src.stem + ("_dynvocab" if dynamic_vocab else "") + ("_int8" if quantize == 8 and fmt == "onnx" else "")
    suffix = dict(zip(export_formats()["Argument"], export_formats()["Suffix"])).get(fmt, f".{fmt}")
    return src.with_name(stem + suffix)


def move_into_place(src: Path, dst: Path) -> None:
    """``os.replace`` a finished file or folder from a ``Staging`` folder onto ``dst`` (a folder replaces a folder).

    Single files written by yw_ext itself go through ``yw_ext.core.io.atomic_write``; this moves what a writer that
    takes only a path (Ultralytics' exporter, ``torch.onnx``, TensorRT, OpenVINO) produced in the staging folder.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(src, dst)


class _PathsInLogs(logging.Filter):
    """Show the destination folder instead of the staging folder in Ultralytics' export messages."""

    def __init__(self, staging: Path, dst_dir: Path):
        super().__init__()
        self.old, self.new = str(staging), str(dst_dir)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and self.old in record.msg:
            record.msg = record.msg.replace(self.old, self.new)
        return True


class Staging:
    """A temporary folder next to ``dst``; removed on exit, with everything in it (including on errors).

    For writers that take a path and may write several files (Ultralytics' exporter writes a ``.pt`` copy, the ONNX,
    OpenVINO folders, ...); the finished artifact is moved onto ``dst`` with ``move_into_place``. Export messages
    show the destination folder instead of the staging folder.
    """

    def __init__(self, dst: Path):
        dst.parent.mkdir(parents=True, exist_ok=True)
        self.dst_dir = dst.parent
        self.dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))

    def __enter__(self) -> Path:
        self.filter = _PathsInLogs(self.dir, self.dst_dir)
        LOGGER.addFilter(self.filter)
        return self.dir

    def __exit__(self, *exc) -> None:
        LOGGER.removeFilter(self.filter)
        shutil.rmtree(self.dir, ignore_errors=True)


def export_model(yolo, **kwargs: Any) -> str:
    """Export a ``yw_ext.YOLOWorld`` (see the module docstring for the arguments); returns the artifact's path.

    Raises:
        ValueError: bad arguments (dynamic_vocab with a folded model or a format other than onnx / engine, INT8
            without calibration data, a dynamic-vocabulary engine without ``prompts=``, ...).
        RuntimeError: no vocabulary to fold; TensorRT requested without a CUDA GPU or the ``tensorrt`` package.

    Examples:
        >>> import torch, yw_ext
        >>> model = yw_ext.YOLOWorld("yw-v2-n.yaml")
        >>> _ = model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> export_model(model, format="onnx", imgsz=320, out="n.onnx")  # doctest: +SKIP
        'n.onnx'
        >>> export_model(model, format="engine", dynamic_vocab=True, prompts=(1, 80, 1203), quantize=16)  # doctest: +SKIP
        'yw-v2-n_dynvocab.engine'
    """
    from yw_ext import seam, vocab
    from yw_ext.export.onnx import ExportOptions, YWExporter
    from yw_ext.nn.rep import reparameterize

    seam.check_is_pytorch_model(yolo)
    yw = {k: kwargs.pop(k) for k in YW_EXPORT_KEYS if k in kwargs}
    fmt = str(kwargs.get("format", seam.DEFAULT_CFG_DICT["format"])).lower()
    fmt = kwargs["format"] = FORMAT_ALIASES.get(fmt, fmt)
    q = precision(kwargs)
    dynamic_vocab = bool(yw.get("dynamic_vocab", False))
    src = yolo.model
    if dynamic_vocab:
        if getattr(src, "folded", False):
            raise ValueError("dynamic_vocab=True needs the text path, but this model is re-parameterised (its "
                             "vocabulary is folded into its weights). Export the unfolded checkpoint.")
        if fmt not in {"onnx", "engine"}:
            raise ValueError(f"dynamic_vocab=True is available for format='onnx' and 'engine', not {fmt!r}.")
    if fmt == "onnx" and q == 8 and dynamic_vocab:
        raise ValueError("INT8 ONNX export is for fixed vocabularies (the folded graph); drop dynamic_vocab=True.")
    trt_args = None
    if fmt == "engine":  # every argument is checked before the (GPU-only) build
        from yw_ext.export import tensorrt as trt_export

        trt_args = trt_export.check_engine_request(src, dynamic_vocab=dynamic_vocab, quantize=q,
                                                   data=kwargs.get("data"), prompts=yw.get("prompts"),
                                                   max_prompts=yw.get("max_prompts", vocab.MAX_PROMPTS))
        trt_export.require_gpu()
    if q == 8 and fmt == "onnx":
        from yw_ext.export.calib import check_calibration_source

        check_calibration_source(kwargs.get("data"))

    model = copy.deepcopy(src)
    if not dynamic_vocab and not getattr(model, "folded", False):
        from yw_ext.nn.rep import DEFAULT_CHUNK

        reparameterize(model, partial_v1=_is_v1(model), chunk=int(yw.get("chunk") or DEFAULT_CHUNK))  # needs a vocab
    dst = Path(yw["out"]) if yw.get("out") else default_destination(src, fmt, dynamic_vocab, q)
    opts = ExportOptions(
        dynamic_vocab=dynamic_vocab,
        default_vocab=bool(yw.get("default_vocab", True)),
        max_prompts=int(yw.get("max_prompts", vocab.MAX_PROMPTS)),
        trt_nms=str(yw.get("trt_nms", "onnx")),
        scores=yw.get("scores"),
    )
    custom = {"imgsz": src.args["imgsz"] if isinstance(getattr(src, "args", None), dict) and "imgsz" in src.args
              else 640, "batch": 1, "data": None, "device": None, "verbose": False}
    args = {**yolo.overrides, **custom, **kwargs, "mode": "export"}
    for k in ("int8", "half"):
        args.pop(k, None)
    args["quantize"] = q
    with Staging(dst) as tmp:
        stem = dst.name[: -len("_openvino_model")] if fmt == "openvino" and dst.name.endswith("_openvino_model") \
            else dst.stem
        model.pt_path = str(tmp / f"{stem}.pt")  # Ultralytics names its outputs after this file
        if fmt == "engine":
            onnx_args = {**args, "format": "onnx", "quantize": None}
            f_onnx = YWExporter(overrides=onnx_args, _callbacks=yolo.callbacks, options=opts)(model=model)
            f = trt_export.build_engine(f_onnx, Path(tmp) / f"{stem}.engine", trt_args, imgsz=args["imgsz"],
                                        batch=args.get("batch", 1), dynamic=bool(args.get("dynamic")),
                                        workspace=args.get("workspace"), data=args.get("data"),
                                        calib_images=int(yw.get("calib_images", 512)))
        elif fmt == "onnx" and q == 8:
            from yw_ext.export.quant import quantize_onnx_static

            f_fp32 = YWExporter(overrides={**args, "quantize": None}, _callbacks=yolo.callbacks,
                                options=opts)(model=model)
            f = quantize_onnx_static(f_fp32, Path(tmp) / f"{stem}.int8.onnx", data=args.get("data"),
                                     n_images=int(yw.get("calib_images", 128)))
        else:
            f = YWExporter(overrides=args, _callbacks=yolo.callbacks, options=opts)(model=model)
        if not f:
            raise RuntimeError(f"export to {fmt!r} produced nothing.")
        move_into_place(Path(f), dst)
    return str(dst)


__all__ = ["Staging", "YW_EXPORT_KEYS", "default_destination", "export_model", "move_into_place", "precision"]
