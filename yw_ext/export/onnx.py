"""ONNX export of yw_ext detectors through Ultralytics' ``Exporter``, with a fixed or a run-time vocabulary.

``YWExporter`` is Ultralytics' ``Exporter`` (argument checks, device, model copy, ``fuse``, export flags on the
``Detect`` head, dry run, the metadata dict that ``AutoBackend`` reads) with its ONNX writer replaced by
``write_onnx``, which adds what yw_ext needs:

- a second input ``txt_feats`` with a dynamic prompt count P for ``dynamic_vocab=True`` (the graph keeps the text
  path; ``yw_ext.export.graph.make_vocab_dynamic``): ``(1, P, D)`` for a fixed batch B (one vocabulary, broadcast to
  the B images inside the graph), ``(1 or B, P, D)`` with ``dynamic=True`` (``text_batch`` is its own dim: 1 is
  broadcast, B gives each image its own vocabulary). The model's current vocabulary is stored as the input's default
  value (an ONNX initializer with the input's name), so the file also runs where only ``images`` is fed
  (``ultralytics.YOLO(file)``) with that vocabulary;
- ``nms=True`` as ``yw_ext.export.graph.BatchedNMS`` (dynamic batch, dynamic K) or, for TensorRT,
  ``trt_nms="efficient"`` (``EfficientNMS_TRT`` plugin);
- ``dynamic=True``: batch, height and width dynamic (as Ultralytics); for YOLO-World v1 (image-pooling attention,
  which Ultralytics does not export) the batch only, its adaptive max pools written as explicit slices;
- opset >= 17, onnxslim, IR version <= 10, Ultralytics' metadata plus yw_ext keys (``yw_ext`` version, ``vocab``
  ``"fixed"`` / ``"dynamic"``, ``embed_dim``, ``max_prompts``, ``prompts_per_class``, ``class_prompts``,
  ``text_encoder``), all written as ``str(value)`` like Ultralytics' own keys.

The caller (``yw_ext.export.export_model``) has already folded a fixed vocabulary into the weights
(``reparameterize``) on a copy, and points ``model.pt_path`` into a temporary folder, so every file this writes is
moved into place only when complete.

Examples:
    >>> from yw_ext.export import export_model  # doctest: +SKIP
    >>> export_model(model, format="onnx", dynamic=True, dynamic_vocab=True, imgsz=640)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yw_ext.export.graph import BatchedNMS, EfficientNMS, ExportGraph, make_pooling_exportable, make_vocab_dynamic
from yw_ext.export.onnx_io import add_metadata, cap_ir_version, read_metadata, slim
from yw_ext.seam import LOGGER, Exporter, best_onnx_opset, colorstr, torch2onnx, try_export

MIN_OPSET = 17
TXT_INPUT = "txt_feats"


@dataclass
class ExportOptions:
    """yw_ext export options that Ultralytics' config does not know.

    Attributes:
        dynamic_vocab: Export the text path with a ``txt_feats`` input (dynamic K).
        default_vocab: Store the model's vocabulary as the default value of ``txt_feats`` (dynamic_vocab only).
        max_prompts: Largest P the runtime accepts (recorded in the metadata; ``yw_ext.vocab.MAX_PROMPTS``).
        trt_nms: NMS implementation when ``nms=True``: ``"onnx"`` (``NonMaxSuppression``, runs everywhere) or
            ``"efficient"`` (TensorRT's ``EfficientNMS_TRT`` plugin; TensorRT only).
        scores: ``"max"``: the graph keeps each anchor's best class only, reduced over the classifier's logits inside
            the graph (max and argmax over the prompts, one sigmoid per anchor, ``yw_ext.nn.rep.reduce_scores``);
            raw output ``(B, 6, A)`` ``[x, y, w, h, score, class]`` (class = prompt index for run-time
            vocabularies), or the NMS rows. ``"full"``: every class's score, ``(B, 4 + K, A)`` (Ultralytics'
            layout; for ``multi_label`` NMS or per-class scores). None: ``"max"`` with ``nms=True`` (the same
            detections, the default ONNX NMS), else ``"full"`` (Ultralytics' ``AutoBackend`` reads raw outputs as
            ``4 + K`` channels). ``trt_nms="efficient"`` needs ``"full"`` (the plugin scores every class).
        extra_metadata: More metadata entries.
    """

    dynamic_vocab: bool = False
    default_vocab: bool = True
    max_prompts: int = 4096
    trt_nms: str = "onnx"
    scores: str | None = None
    extra_metadata: dict | None = None

    def score_mode(self, nms: bool) -> str:
        """The resolved ``scores`` for a graph with (``nms=True``) or without in-graph NMS.

        Examples:
            >>> ExportOptions().score_mode(True), ExportOptions().score_mode(False)
            ('max', 'full')
            >>> ExportOptions(trt_nms="efficient").score_mode(True), ExportOptions(scores="max").score_mode(False)
            ('full', 'max')
        """
        mode = self.scores if self.scores is not None else ("max" if nms and self.trt_nms == "onnx" else "full")
        if mode not in {"max", "full"}:
            raise ValueError(f"scores must be 'max' or 'full', got {mode!r}.")
        if mode == "max" and nms and self.trt_nms == "efficient":
            raise ValueError("trt_nms='efficient' needs scores='full' (TensorRT's EfficientNMS scores every class).")
        return mode


def vocab_metadata(model: torch.nn.Module, opts: ExportOptions) -> dict[str, Any]:
    """yw_ext metadata entries describing the vocabulary of ``model`` for the exported graph.

    Fixed vocabulary: ``names`` are the K class names (the graph takes the max over each class's prompts).
    Dynamic vocabulary: the graph scores the P prompts it is given; ``names`` name the P prompts of the default
    vocabulary (a class's name for each of its prompts), ``default_classes`` its K class names.
    """
    from yw_ext import __version__

    v = getattr(model, "vocab", None)  # the installed yw_ext.vocab.Vocabulary (None: a placeholder / foreign model)
    g = v.prompts_per_class if v is not None else 1
    names = dict(model.names)
    meta = {
        "yw_ext": __version__,
        "vocab": "dynamic" if opts.dynamic_vocab else "fixed",
        "embed_dim": int(getattr(model, "embed_dim", 512)),
        "prompts_per_class": g,
        "text_encoder": v.text_encoder_id if v is not None else None,
    }
    if v is not None:
        meta["class_sources"] = list(v.sources)
        if v.image_encoder_id:
            meta["image_encoder"] = v.image_encoder_id
        if v.prompts is not None:
            meta["class_prompts"] = v.class_prompts
    if opts.dynamic_vocab:
        meta["max_prompts"] = int(opts.max_prompts)
        meta["default_classes"] = [names[i] for i in range(len(names))]
        meta["names"] = {p: names[p // g] for p in range(len(names) * g)}  # prompt-level names of the default vocab
        meta["default_vocab"] = bool(opts.default_vocab and getattr(model, "vocab_set", True))
    return meta


def _specialised_dims(proto, dynamic: dict[str, dict[int, str]]) -> list[str]:
    """Dynamic dims of graph inputs / outputs that the simplifier turned into constants (``["txt_feats[0]=2"]``).

    onnxslim's shape inference unifies dims that meet in a broadcast: a dynamic ``txt_feats`` batch next to a fixed
    image batch B was taken to *be* B, and the broadcast (``Expand``) dropped as a no-op, so the graph only ran with B
    text rows. A graph whose dynamic dim became a constant may rely on that size anywhere, so it is not used.
    """
    out = []
    for v in (*proto.graph.input, *proto.graph.output):
        dims = v.type.tensor_type.shape.dim
        out += [f"{v.name}[{a}]={dims[a].dim_value}" for a in dynamic.get(v.name, {})
                if a < len(dims) and dims[a].HasField("dim_value")]
    return out


def _name_dims(proto, dynamic: dict[str, dict[int, str]]) -> None:
    """Put back the requested names of dynamic dims on graph inputs and outputs.

    onnxslim's shape inference may rename ``txt_feats``'s first dim to the images' ``batch`` (they broadcast); they
    are different dims (1 or B), and TensorRT reads equal names as equal sizes.
    """
    for v in (*proto.graph.input, *proto.graph.output):
        for axis, name in dynamic.get(v.name, {}).items():
            dim = v.type.tensor_type.shape.dim[axis]
            dim.Clear()
            dim.dim_param = name


def _add_default_input(proto, name: str, value: np.ndarray) -> None:
    """Give graph input ``name`` a default value (an initializer with the same name; ONNX IR >= 4)."""
    from onnx import numpy_helper

    if name not in {i.name for i in proto.graph.input}:
        raise ValueError(f"graph has no input {name!r}.")
    proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))


def _make_nms(args: Any, opts: ExportOptions) -> torch.nn.Module | None:
    """The in-graph NMS ``args.nms`` asks for (``BatchedNMS``, or ``EfficientNMS`` with ``trt_nms="efficient"``)."""
    if not args.nms:
        return None
    if opts.trt_nms not in {"onnx", "efficient"}:
        raise ValueError(f"trt_nms must be 'onnx' or 'efficient', got {opts.trt_nms!r}.")
    kw = {"conf": 0.25 if args.conf is None else args.conf, "iou": args.iou, "max_det": args.max_det,
          "agnostic": bool(args.agnostic_nms)}
    if opts.trt_nms == "efficient":
        return EfficientNMS(**kw)
    return BatchedNMS(**kw, reduced=opts.score_mode(True) == "max")


def _set_score_mode(model: torch.nn.Module, mode: str, dynamic_vocab: bool) -> None:
    """Put the head of the export copy ``model`` in ``score_mode`` ``mode`` (``"max"``: ``(B, 6, A)`` outputs).

    A fixed graph's classes are ``prompts_per_class`` consecutive prompts (class = best prompt // G); a run-time
    vocabulary's graph scores prompts (the runtime maps prompts to classes).
    """
    head = model.model[-1]
    head.score_mode = mode
    head.score_groups = 1 if dynamic_vocab else int(getattr(model, "prompts_per_class", 1) or 1)


def _graph_io(
    model: torch.nn.Module, im: torch.Tensor, args: Any, opts: ExportOptions, hw_dynamic: bool
) -> tuple[tuple, list[str], dict[str, dict[int, str]]]:
    """Example inputs, input names and dynamic axes ``{name: {axis: dim name}}`` of the exported graph."""
    inputs, names = (im,), ["images"]
    dynamic: dict[str, dict[int, str]] = {}
    if args.dynamic:
        dynamic["images"] = {0: "batch", 2: "height", 3: "width"} if hw_dynamic else {0: "batch"}
    out_dims = {0: "batch"} if args.dynamic else {}
    if opts.dynamic_vocab:
        txt = model.txt_feats.detach().to(im.device, im.dtype)  # (1, P, D): the model's vocabulary as the example
        inputs, names = (im, txt), ["images", TXT_INPUT]
        # fixed batch B: (1, P, D), one vocabulary broadcast to the B images in the graph (YWDetectionModel.predict
        # expands it); a dynamic text batch next to a fixed image batch is unified with B by onnxslim, which then
        # drops the broadcast (see _specialised_dims)
        dynamic[TXT_INPUT] = {0: "text_batch", 1: "prompts"} if args.dynamic else {1: "prompts"}
        if not args.nms and opts.score_mode(False) == "full":
            out_dims[1] = "outputs"  # 4 + P (6 with scores="max")
    if not args.nms and hw_dynamic:
        out_dims[2] = "anchors"
    if out_dims:
        dynamic["output0"] = out_dims
    return inputs, names, dynamic


def _load_simplified(f: str | Path, dynamic: dict[str, dict[int, str]], prefix: str):
    """The traced file slimmed by onnxslim, or as traced when slimming made a dynamic dim constant."""
    import onnx

    proto = slim(onnx.load(str(f)), prefix)
    fixed = _specialised_dims(proto, dynamic)
    if fixed:
        LOGGER.warning(f"{prefix} onnxslim made dynamic dims {fixed} constant; keeping the unsimplified graph.")
        return onnx.load(str(f))
    _name_dims(proto, dynamic)
    return proto


def _finish(proto, model: torch.nn.Module, args: Any, metadata: dict[str, Any], opts: ExportOptions,
            hw_dynamic: bool, prefix: str):
    """Default vocabulary, metadata, IR version and FP16 conversion of the traced (and slimmed) graph."""
    if opts.dynamic_vocab and opts.default_vocab and getattr(model, "vocab_set", True):
        _add_default_input(proto, TXT_INPUT, model.txt_feats.detach().float().cpu().numpy())
    meta = dict(metadata)
    if args.dynamic and not hw_dynamic:  # predictors must letterbox to the fixed size (Ultralytics reads args.dynamic)
        meta["args"] = {**meta.get("args", {}), "dynamic": False}
    meta.update(vocab_metadata(model, opts))
    meta["scores"] = opts.score_mode(bool(args.nms))
    meta.update(opts.extra_metadata or {})
    add_metadata(proto, meta)
    cap_ir_version(proto)
    if args.quantize == 16:
        from onnxruntime.transformers import float16

        LOGGER.info(f"{prefix} converting to FP16...")
        proto = float16.convert_float_to_float16(proto, keep_io_types=True)
    return proto


def write_onnx(
    model: torch.nn.Module,
    im: torch.Tensor,
    f: str | Path,
    args: Any,
    metadata: dict[str, Any],
    opts: ExportOptions,
    prefix: str = colorstr("ONNX:"),
) -> str:
    """Trace ``model`` (prepared by Ultralytics' exporter) to ONNX at ``f``.

    Args:
        model: Fused ``YWDetectionModel`` whose head is in export mode.
        im: Example images ``(B, 3, H, W)``.
        f: Output path.
        args: Ultralytics export arguments (``dynamic``, ``simplify``, ``opset``, ``nms``, ``conf``, ``iou``,
            ``max_det``, ``agnostic_nms``, ``quantize``).
        metadata: Ultralytics' metadata dict (names, stride, imgsz, task, args, ...).
        opts: yw_ext options.
        prefix: Log prefix.

    Returns:
        The path written.

    Examples:
        >>> write_onnx(exporter.model, exporter.im, "m.onnx", exporter.args, exporter.metadata,
        ...            ExportOptions(dynamic_vocab=True))  # doctest: +SKIP
        'm.onnx'
    """
    import onnx

    opset = int(args.opset or max(MIN_OPSET, best_onnx_opset(onnx)))
    if opset < MIN_OPSET:
        raise ValueError(f"yw_ext exports need opset >= {MIN_OPSET}, got opset={opset}.")
    nms = _make_nms(args, opts)
    if opts.dynamic_vocab:
        make_vocab_dynamic(model)
    _set_score_mode(model, opts.score_mode(bool(args.nms)), opts.dynamic_vocab)
    graph = ExportGraph(model, nms=nms, dynamic_vocab=opts.dynamic_vocab).eval()
    # YOLO-World v1's image-pooling attention (adaptive max pooling) exports only for a known image size: the
    # pools become explicit slices (also for a fixed size: the exporter takes only sizes that divide the input's),
    # and only the batch is dynamic
    v1_pools = make_pooling_exportable(model)
    hw_dynamic = bool(args.dynamic) and not v1_pools
    if args.dynamic and not hw_dynamic:
        LOGGER.info(f"{prefix} YOLO-World v1 (ImagePoolingAttn): dynamic batch, fixed image size {list(im.shape[2:])}")
    inputs, names, dynamic = _graph_io(model, im, args, opts, hw_dynamic)
    LOGGER.info(f"\n{prefix} starting export with onnx {onnx.__version__} opset {opset}...")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*aten::index.*")  # our indices are never negative
        torch2onnx(graph, inputs, str(f), opset=opset, input_names=names, output_names=["output0"],
                   dynamic=dynamic or None)
    proto = _load_simplified(f, dynamic, prefix) if args.simplify else onnx.load(str(f))
    proto = _finish(proto, model, args, metadata, opts, hw_dynamic, prefix)
    onnx.save(proto, str(f))  # f is in the export's staging folder (yw_ext.export.export_model)
    return str(f)


class YWExporter(Exporter):
    """Ultralytics' ``Exporter`` whose ONNX step is ``write_onnx`` (also used by its TensorRT path).

    Args:
        overrides: Ultralytics export arguments.
        _callbacks: Ultralytics callbacks.
        options: yw_ext ``ExportOptions``.

    Examples:
        >>> exporter = YWExporter(overrides={"format": "onnx", "imgsz": 640}, options=ExportOptions())  # doctest: +SKIP
        >>> exporter(model=folded_copy)  # doctest: +SKIP
    """

    def __init__(self, overrides: dict | None = None, _callbacks: dict | None = None,
                 options: ExportOptions | None = None):
        """Store the yw_ext options next to Ultralytics' arguments."""
        super().__init__(overrides=overrides, _callbacks=_callbacks)
        self.yw = options or ExportOptions()

    @try_export
    def export_onnx(self, prefix=colorstr("ONNX:")):  # noqa: B008
        """Write the ONNX graph (fixed or run-time vocabulary, optional NMS) next to ``self.file``."""
        return write_onnx(self.model, self.im, self.file.with_suffix(".onnx"), self.args, self.metadata, self.yw,
                          prefix=prefix)


__all__ = ["ExportOptions", "YWExporter", "write_onnx", "vocab_metadata", "add_metadata", "read_metadata",
           "MIN_OPSET", "TXT_INPUT"]
