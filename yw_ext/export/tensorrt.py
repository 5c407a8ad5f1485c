"""TensorRT engines (FP32 / FP16 / INT8) with optimisation profiles for the batch and for the prompt count K.

Ultralytics' exporter writes the ONNX (``yw_ext.export.onnx.YWExporter``); the engine is built here with the TensorRT
Python API because Ultralytics' ``onnx2engine`` gives every input an image-shaped profile (a ``txt_feats`` input
``(1 or B, K, D)`` would get ``K`` in ``[3, 3]``). The build is split so that everything but the build itself runs
(and is tested) without a GPU:

1. ``check_engine_request``: argument checks before any work (precision, calibration data, the K range of a
   dynamic-vocabulary engine: ``prompts=(min, opt, max)`` is required, TensorRT tunes kernels for it and the engine
   refuses other K);
2. ``prepare_onnx_for_tensorrt``: the ONNX as TensorRT must see it (the default-vocabulary initializer removed, so
   ``txt_feats`` is a real input; opset and plugin checks);
3. ``engine_build_args``: a pure function from the ONNX inputs and the request to optimisation profiles, builder
   flags and the workspace;
4. ``build_engine``: TensorRT (GPU): parse, profiles, FP16 / INT8 (an entropy calibrator over letterboxed COCO128
   batches from ``yw_ext.export.calib``, fed in exactly the shapes the calibration profile declares; TensorRT >= 11,
   which dropped the precision flags and implicit INT8, goes through Ultralytics' ModelOpt path for fixed
   vocabularies, and refuses FP16 / INT8 dynamic-vocabulary engines, whose ``txt_feats`` ModelOpt would leave
   uncalibrated), build, and write ``<4-byte length><JSON metadata><engine>`` as Ultralytics does, so
   ``ultralytics.YOLO("x.engine")`` reads fixed-vocabulary engines and ``yw_ext.runtime.Detector`` reads both.

Supported TensorRT: 10.x (the ``tensorrt`` extra pins ``>=10,<11``: the version whose builder flags and entropy
calibrator this module drives); 8.6 still works for FP32 / FP16 (the runtime guards names added in 10); 11 for
FP32 engines and fixed-vocabulary FP16 / INT8 (ModelOpt, ``nvidia-modelopt[onnx]``).

Engines with dynamic batch: images ``(B, 3, H, W)`` get ``B`` in ``[1, batch]`` and, with ``dynamic=True``, ``H, W``
in ``[32, 2 * imgsz]`` (Ultralytics' range), optimum at ``imgsz``; ``txt_feats`` ``(1 or B, K, D)`` gets its first
dim in ``[1, batch]`` (optimum 1: one vocabulary for the batch) and K in ``prompts``. A fixed-batch export declares
``txt_feats`` ``(1, K, D)`` (broadcast to the B images in the graph): only K gets a range. Anchors are computed in
the graph for dynamic sizes, so boxes do not depend on the batch (the folded fixed-vocabulary graph has no text
tensor to broadcast over the batch).

Examples:
    >>> inputs = {"images": ["batch", 3, "height", "width"], "txt_feats": ["text_batch", "prompts", 512]}
    >>> a = engine_build_args(inputs, batch=4, imgsz=640, dynamic=True, prompts=(1, 80, 1203))
    >>> a["profiles"][0]["txt_feats"]
    ((1, 1, 512), (1, 80, 512), (4, 1203, 512))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from yw_ext.core.io import atomic_write

TXT_INPUT = "txt_feats"


@dataclass
class EngineRequest:
    """Checked TensorRT build request (see ``check_engine_request``)."""

    dynamic_vocab: bool
    precision: int | None  # None (FP32), 16 or 8
    prompts: tuple[int, int, int] | None  # K range (min, opt, max) for txt_feats
    calib_count: int = 0


def _prompt_range(prompts: Any, max_prompts: int) -> tuple[int, int, int]:
    """``prompts`` as ``(min, opt, max)``; an int n means ``(1, n, n)``."""
    if isinstance(prompts, (int, np.integer)) and not isinstance(prompts, bool):
        rng = (1, int(prompts), int(prompts))
    elif isinstance(prompts, str):
        rng = tuple(int(v) for v in prompts.replace("(", "").replace(")", "").split(","))
    else:
        rng = tuple(int(v) for v in prompts)
    if len(rng) != 3 or not 1 <= rng[0] <= rng[1] <= rng[2]:
        raise ValueError(f"prompts must be (min, opt, max) with 1 <= min <= opt <= max, got {prompts!r}.")
    if rng[2] > max_prompts:
        raise ValueError(f"prompts max {rng[2]} exceeds max_prompts={max_prompts} (yw_ext.vocab.MAX_PROMPTS).")
    return rng


def check_engine_request(
    model: Any = None,
    dynamic_vocab: bool = False,
    quantize: Any = None,
    data: Any = None,
    prompts: Any = None,
    max_prompts: int = 4096,
) -> EngineRequest:
    """Check a TensorRT export request before anything is built (and before the GPU check).

    Raises:
        ValueError: unsupported precision; INT8 without calibration images; a dynamic-vocabulary engine without the
            ``txt_feats`` profile range ``prompts=(min, opt, max)``; a range above ``max_prompts``.

    Examples:
        >>> check_engine_request(dynamic_vocab=True, prompts=(1, 80, 1203)).prompts
        (1, 80, 1203)
    """
    if quantize not in (None, 16, 8):
        raise ValueError(f"TensorRT engines are FP32, FP16 (quantize=16) or INT8 (quantize=8), not {quantize!r}.")
    count = 0
    if quantize == 8:
        from yw_ext.export.calib import check_calibration_source

        count = check_calibration_source(data)
    rng = None
    if dynamic_vocab:
        if prompts is None:
            raise ValueError(
                "dynamic_vocab=True with format='engine' needs the optimisation profile of the txt_feats input: pass "
                "prompts=(min, opt, max), the range of K (classes x synonyms) the engine must accept, e.g. "
                "prompts=(1, 80, 1203). TensorRT tunes kernels for that range and rejects K outside it."
            )
        rng = _prompt_range(prompts, max_prompts)
    elif prompts is not None:
        raise ValueError("prompts= is the K range of dynamic-vocabulary engines; add dynamic_vocab=True or drop it.")
    return EngineRequest(dynamic_vocab=bool(dynamic_vocab), precision=quantize, prompts=rng, calib_count=count)


def require_gpu() -> None:
    """Raise a clear error unless a CUDA GPU and the ``tensorrt`` package are available."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError(
            "TensorRT export needs an NVIDIA GPU with CUDA, and none is available here (torch.cuda.is_available() is "
            "False). Export format='onnx' (with the same dynamic / dynamic_vocab / nms options) and build the engine "
            "on the target machine: yw_ext.export.tensorrt.onnx_to_engine(onnx_file, ...)."
        )
    try:
        import tensorrt  # noqa: F401
    except ImportError as e:
        raise RuntimeError("TensorRT export needs the `tensorrt` package (pip install tensorrt, matching your CUDA; "
                           "or the yw_ext 'tensorrt' extra).") from e


def check_precision_path(trt_version: str, request: EngineRequest) -> bool:
    """Whether the build goes through ModelOpt (TensorRT >= 11 with FP16 / INT8); refuse what that path cannot do.

    TensorRT 11 builds strongly typed networks only: reduced precision is baked into the ONNX by NVIDIA ModelOpt
    (``yw_ext.seam.modelopt_quantize_onnx``, Ultralytics' helper). That helper calibrates the graph's first input
    only, so a dynamic-vocabulary graph's ``txt_feats`` (and the text path behind it) would be converted or
    quantised from no data at all. Such requests are refused here, before any work.

    Raises:
        ValueError: a dynamic-vocabulary FP16 / INT8 engine on TensorRT >= 11.

    Examples:
        >>> check_precision_path("10.13.0", EngineRequest(True, 8, (1, 80, 1203)))
        False
        >>> check_precision_path("11.4.0", EngineRequest(False, 16, None))
        True
    """
    major = int(str(trt_version).split(".", 1)[0])
    modelopt = major >= 11 and request.precision in (8, 16)
    if modelopt and request.dynamic_vocab:
        raise ValueError(
            f"TensorRT {trt_version} builds FP16 / INT8 only from ONNX graphs converted by NVIDIA ModelOpt, which "
            "calibrates the images input only and would leave the txt_feats input of a dynamic-vocabulary engine "
            "uncalibrated. Build this engine with TensorRT 10 (pip install 'tensorrt>=10,<11', the yw_ext "
            "'tensorrt' extra), or as FP32 (no quantize / half), or export a fixed vocabulary (dynamic_vocab=False)."
        )
    return modelopt


def onnx_inputs(proto_or_path: Any, include_defaults: bool = False) -> dict[str, list]:
    """Graph inputs that are not initializers: ``{name: dims}`` (ints, or strings for dynamic dims).

    ``include_defaults=True`` also lists inputs that have a default value (an initializer of the same name, as the
    ``txt_feats`` of dynamic-vocabulary files).

    Examples:
        >>> onnx_inputs("model.onnx")  # doctest: +SKIP
        {'images': ['batch', 3, 'height', 'width']}
    """
    import onnx

    proto = onnx.load(str(proto_or_path), load_external_data=False) if isinstance(proto_or_path, (str, Path)) \
        else proto_or_path
    inits = set() if include_defaults else {i.name for i in proto.graph.initializer}
    out = {}
    for i in proto.graph.input:
        if i.name in inits:
            continue
        out[i.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                       for d in i.type.tensor_type.shape.dim]
    return out


def prepare_onnx_for_tensorrt(src: str | Path, dst: str | Path | None = None) -> dict[str, Any]:
    """Write the ONNX that TensorRT builds from and describe it.

    - Inputs with a stored default (``txt_feats`` of dynamic-vocabulary files) lose the default: TensorRT treats
      initializers as weights, so the input would be frozen to the default vocabulary. The default is returned
      (INT8 calibration feeds it).
    - Checks: opset >= 17; ``EfficientNMS_TRT`` nodes are reported (they need TensorRT's plugin library).

    Args:
        src: ONNX from ``YWExporter``.
        dst: Where to write the prepared file (default: overwrite ``src``).

    Returns:
        ``{"path", "inputs" (onnx_inputs), "defaults" {name: array}, "opset", "plugins" [op types],
        "metadata" {key: str}}``.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 17:
        raise ValueError(f"{src}: opset {opset} < 17; re-export with opset>=17.")
    inputs = {i.name for i in proto.graph.input}
    defaults = {}
    keep = []
    for init in proto.graph.initializer:
        if init.name in inputs:
            defaults[init.name] = numpy_helper.to_array(init)
        else:
            keep.append(init)
    if defaults:
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(keep)
    plugins = sorted({n.op_type for n in proto.graph.node if n.op_type.endswith("_TRT")})
    out = Path(dst or src)
    onnx.save(proto, str(out))
    return {
        "path": str(out),
        "inputs": onnx_inputs(proto),
        "defaults": defaults,
        "opset": opset,
        "plugins": plugins,
        "metadata": {p.key: p.value for p in proto.metadata_props},
    }


def _is_dyn(d: Any) -> bool:
    return not isinstance(d, (int, np.integer)) or int(d) <= 0


def engine_build_args(
    inputs: dict[str, Sequence],
    batch: int = 1,
    imgsz: int | Sequence[int] = 640,
    dynamic: bool = False,
    prompts: Sequence[int] | None = None,
    precision: int | None = None,
    workspace: float | None = None,
    stride: int = 32,
) -> dict[str, Any]:
    """Optimisation profiles and builder settings for an ONNX's inputs (pure function; no TensorRT needed).

    Args:
        inputs: ``onnx_inputs`` of the prepared ONNX.
        batch: Largest batch (the optimum too).
        imgsz: Export image size (the optimum).
        dynamic: Whether image height / width are dynamic (range ``[32, 2 * imgsz]``, Ultralytics' choice).
        prompts: ``(min, opt, max)`` K range for ``txt_feats`` (required when it has a dynamic K).
        precision: None (FP32), 16 or 8.
        workspace: Workspace limit in GiB (None: TensorRT's default).
        stride: Model stride (image ranges are rounded to it).

    Returns:
        ``{"profiles": [{input: (min, opt, max)}], "flags": [...], "workspace_bytes": int | None,
        "calibration_shapes": {input: shape}}``.

    Raises:
        ValueError: a dynamic input dimension without a profile (e.g. ``txt_feats`` without ``prompts``), or one
            this function does not know; a static ``txt_feats`` batch that is neither 1 nor the images' batch.

    Examples:
        >>> engine_build_args({"images": [1, 3, 640, 640]})["profiles"]
        [{}]
        >>> engine_build_args({"images": ["batch", 3, 640, 640]}, batch=8, precision=16)["profiles"][0]["images"]
        ((1, 3, 640, 640), (8, 3, 640, 640), (8, 3, 640, 640))
    """
    h, w = (int(imgsz), int(imgsz)) if isinstance(imgsz, (int, np.integer)) else (int(imgsz[0]), int(imgsz[1]))
    batch = max(1, int(batch))
    profile: dict[str, tuple] = {}
    calib: dict[str, tuple] = {}
    img = inputs.get("images")
    img_batch = (1, batch, batch) if not img or _is_dyn(img[0]) else (int(img[0]),) * 3  # (min, opt, max)
    for name, dims in inputs.items():
        if name == TXT_INPUT:
            if len(dims) != 3 or _is_dyn(dims[2]):
                raise ValueError(f"{TXT_INPUT} must be (B, K, D) with a static D, got {dims}.")
            d = int(dims[2])
            if _is_dyn(dims[1]) and prompts is None:
                raise ValueError(
                    f"input {TXT_INPUT} has a dynamic prompt count K but no optimisation profile for it: pass "
                    "prompts=(min, opt, max), e.g. (1, 80, 1203)."
                )
            kmin, kopt, kmax = (int(dims[1]),) * 3 if not _is_dyn(dims[1]) else tuple(int(v) for v in prompts)
            if _is_dyn(dims[0]):  # 1 (broadcast) or the images' batch
                b0 = (1, 1, img_batch[2])
            elif int(dims[0]) == 1 or int(dims[0]) == img_batch[0] == img_batch[2]:
                b0 = (int(dims[0]),) * 3
            else:
                raise ValueError(f"{TXT_INPUT} {dims}: its batch is neither 1 nor the images' batch (images {img}).")
            shapes = tuple((b0[i], (kmin, kopt, kmax)[i], d) for i in range(3))
            if any(_is_dyn(v) for v in dims):
                profile[name] = shapes
            calib[name] = (1 if _is_dyn(dims[0]) else int(dims[0]), kopt, d)
        elif name == "images":
            if len(dims) != 4:
                raise ValueError(f"images must be (B, 3, H, W), got {dims}.")
            c = int(dims[1])
            bmin, bopt, bmax = img_batch
            if _is_dyn(dims[2]) or _is_dyn(dims[3]):
                if not dynamic:
                    raise ValueError("images has dynamic height / width: export with dynamic=True for this engine.")
                lo = (max(32, stride), max(32, stride))
                hi = (2 * h, 2 * w)
                opt = (h, w)
            else:
                lo = opt = hi = (int(dims[2]), int(dims[3]))
            shapes = ((bmin, c, *lo), (bopt, c, *opt), (bmax, c, *hi))
            if any(_is_dyn(v) for v in dims):
                profile[name] = shapes
            calib[name] = (bopt, c, *opt)
        elif any(_is_dyn(v) for v in dims):
            raise ValueError(f"no optimisation profile rule for dynamic input {name} {dims}.")
    flags = []
    if precision == 16:
        flags = ["FP16"]
    elif precision == 8:
        flags = ["INT8", "FP16"]  # unquantised layers may take FP16
    elif precision is not None:
        raise ValueError(f"precision must be None, 16 or 8, got {precision!r}.")
    return {
        "profiles": [profile],
        "flags": flags,
        "workspace_bytes": int(workspace * (1 << 30)) if workspace else None,
        "calibration_shapes": calib,
    }


def engine_metadata(onnx_meta: dict[str, str], request: EngineRequest) -> dict[str, Any]:
    """The JSON metadata header of the engine: the ONNX's metadata as Python values, plus the K range.

    Examples:
        >>> m = engine_metadata({"names": "{0: 'a'}", "stride": "32"}, EngineRequest(True, 16, (1, 80, 1203)))
        >>> m["names"], m["prompts"], m["precision"]
        ({0: 'a'}, [1, 80, 1203], 16)
    """
    from yw_ext.runtime.detector import parse_metadata

    meta = parse_metadata(onnx_meta)
    meta["precision"] = request.precision or 32
    if request.prompts:
        meta["prompts"] = list(request.prompts)
        meta["max_prompts"] = int(request.prompts[2])
    return meta


def write_engine_file(path: str | Path, engine: bytes, metadata: dict[str, Any]) -> None:
    """``<int32 little-endian length><JSON metadata><serialized engine>`` (Ultralytics' ``.engine`` layout), atomically.

    Examples:
        >>> import os, tempfile
        >>> from yw_ext.runtime.trt import read_engine_file
        >>> p = os.path.join(tempfile.mkdtemp(), "x.engine")
        >>> write_engine_file(p, b"ENGINE", {"stride": 32})
        >>> read_engine_file(p)
        ({'stride': 32}, b'ENGINE')
    """
    meta = json.dumps(metadata, default=str).encode()

    def write(f) -> None:
        f.write(len(meta).to_bytes(4, byteorder="little", signed=True))
        f.write(meta)
        f.write(engine)

    atomic_write(path, write)


def calibration_feeds(shapes: dict[str, tuple], defaults: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The constant calibration inputs besides the images: ``txt_feats`` in its declared calibration shape.

    TensorRT calibrates at the calibration shapes (the profile's optimum, ``engine_build_args``), so every buffer
    handed to it must hold exactly that many elements: a ``(1, K_opt, D)`` ``txt_feats`` is built from the stored
    ``(1, P, D)`` vocabulary by repeating its prompts (``K_opt > P``) or taking the first ``K_opt`` (``K_opt < P``),
    and repeated over the declared text batch.

    Raises:
        ValueError: the ONNX stores no vocabulary (``default_vocab=False``), or its width is not the declared one.

    Examples:
        >>> d = {"txt_feats": np.arange(6, dtype=np.float32).reshape(1, 3, 2)}
        >>> calibration_feeds({"images": (1, 3, 64, 64), "txt_feats": (1, 5, 2)}, d)["txt_feats"][0, :, 0]
        array([0., 2., 4., 0., 2.], dtype=float32)
    """
    if TXT_INPUT not in shapes:
        return {}
    if TXT_INPUT not in defaults:
        raise ValueError("INT8 calibration of a dynamic-vocabulary engine needs the vocabulary stored in the ONNX "
                         "(export with default_vocab=True after set_classes).")
    tb, k, d = (int(v) for v in shapes[TXT_INPUT])
    v = np.asarray(defaults[TXT_INPUT], np.float32).reshape(-1, np.shape(defaults[TXT_INPUT])[-1])  # (P, D)
    if v.shape[1] != d or not len(v):
        raise ValueError(f"stored {TXT_INPUT} {np.shape(defaults[TXT_INPUT])} does not fit the declared calibration "
                         f"shape {(tb, k, d)}.")
    rows = v[np.arange(k) % len(v)]  # (K_opt, D)
    return {TXT_INPUT: np.array(np.broadcast_to(rows[None], (tb, k, d)))}  # (tb, K_opt, D), a writable copy


def _use_timing_cache(config: Any, path: str | Path | None) -> None:
    """Load a TensorRT timing cache from ``path`` (an empty one when absent or from another TensorRT / GPU)."""
    if path is None:
        return
    blob = Path(path).read_bytes() if Path(path).is_file() else b""
    if not config.set_timing_cache(config.create_timing_cache(blob), False):  # a mismatching cache: start afresh
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _configure(trt: Any, builder: Any, config: Any, args: dict, modelopt: bool, opt_level: int | None) -> Any:
    """Optimisation profile, precision flags and optimisation level; returns the profile (or None)."""
    profile = None
    if args["profiles"][0]:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in args["profiles"][0].items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    if not modelopt:
        if "FP16" in args["flags"]:
            config.set_flag(trt.BuilderFlag.FP16)
        if "INT8" in args["flags"]:
            config.set_flag(trt.BuilderFlag.INT8)
    if opt_level is not None:
        config.builder_optimization_level = int(opt_level)  # TensorRT >= 8.6; lower builds faster, runs slower
    return profile


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    request: EngineRequest,
    imgsz: int | Sequence[int] = 640,
    batch: int = 1,
    dynamic: bool = False,
    workspace: float | None = None,
    data: Any = None,
    calib_images: int = 512,
    verbose: bool = False,
    timing_cache: str | Path | None = None,
    opt_level: int | None = None,
) -> str:
    """Build a TensorRT engine from a yw_ext ONNX (needs a CUDA GPU and ``tensorrt``).

    Args:
        onnx_path: ONNX written by ``YWExporter`` (prepared here, in place).
        engine_path: Output ``.engine`` (written atomically: complete or not at all).
        request: From ``check_engine_request``.
        imgsz: Export size.
        batch: Largest batch of the profile.
        dynamic: Dynamic image sizes.
        workspace: Workspace limit (GiB).
        data: INT8 calibration images (see ``yw_ext.export.calib``).
        calib_images: Most calibration images.
        verbose: TensorRT verbose logging.
        timing_cache: A TensorRT timing cache file, read if present and written back (atomically) after the build:
            later builds of similar graphs skip the kernel timings already made.
        opt_level: ``builder_optimization_level`` (TensorRT's default 3 when None; 0-1 build much faster).

    Returns:
        The engine path.

    Raises:
        RuntimeError: no GPU / tensorrt, ONNX parse failure, build failure.
        ValueError: a dynamic-vocabulary FP16 / INT8 engine on TensorRT >= 11 (``check_precision_path``).

    Examples:
        >>> req = check_engine_request(dynamic_vocab=True, quantize=16, prompts=(1, 80, 1203))
        >>> build_engine("m_dynvocab.onnx", "m.engine", req, imgsz=640, batch=4)  # doctest: +SKIP
        'm.engine'
    """
    require_gpu()
    import tensorrt as trt

    modelopt = check_precision_path(trt.__version__, request)
    major = int(trt.__version__.split(".", 1)[0])
    prep = prepare_onnx_for_tensorrt(onnx_path)
    args = engine_build_args(prep["inputs"], batch=batch, imgsz=imgsz, dynamic=dynamic, prompts=request.prompts,
                             precision=request.precision, workspace=workspace)
    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT
    builder = trt.Builder(logger)
    network = builder.create_network(0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    config = builder.create_builder_config()
    if args["workspace_bytes"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, args["workspace_bytes"])
    onnx_file = _modelopt_onnx(prep["path"], request, args, data, imgsz, dynamic, calib_images) if modelopt \
        else prep["path"]
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_file}: {errors}")
    profile = _configure(trt, builder, config, args, modelopt, opt_level)
    if "INT8" in args["flags"] and not modelopt:
        from yw_ext.export.calib import calibration_batches

        shapes = args["calibration_shapes"]
        batches = calibration_batches(data, shapes["images"][2:], batch=shapes["images"][0], n_images=calib_images)
        config.int8_calibrator = _calibrator(trt, batches, shapes, calibration_feeds(shapes, prep["defaults"]))
        if profile is not None and major < 10:  # deprecated in 10 (the first profile calibrates)
            config.set_calibration_profile(profile)
    _use_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above).")
    if timing_cache is not None:
        atomic_write(timing_cache, lambda f: f.write(bytes(config.get_timing_cache().serialize())))
    write_engine_file(engine_path, bytes(serialized), engine_metadata(prep["metadata"], request))
    return str(engine_path)


def _modelopt_onnx(onnx_file: str, request: EngineRequest, args: dict, data: Any, imgsz: Any, dynamic: bool,
                   calib_images: int) -> str:
    """TensorRT >= 11: the ONNX with FP16 / INT8 baked in by ModelOpt (fixed vocabularies: one input)."""
    from yw_ext.seam import modelopt_quantize_onnx

    loader = None
    if request.precision == 8:
        import torch

        from yw_ext.export.calib import calibration_batches

        loader = [{"img": torch.from_numpy((x * 255).round().astype(np.uint8))}
                  for x in calibration_batches(data, imgsz, batch=8, n_images=calib_images)]
    shape = args["calibration_shapes"]["images"]
    return modelopt_quantize_onnx(onnx_file, request.precision, loader, shape, bool(dynamic))


def onnx_to_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    quantize: int | None = None,
    prompts: Any = None,
    data: Any = None,
    batch: int = 1,
    workspace: float | None = None,
    calib_images: int = 512,
    timing_cache: str | Path | None = None,
    opt_level: int | None = None,
) -> str:
    """Build an engine from an ONNX that ``YOLOWorld.export(format="onnx", ...)`` wrote (on the GPU machine).

    The image size and ``dynamic`` come from the ONNX (its metadata and input shapes); a ``txt_feats`` input means a
    dynamic-vocabulary engine (``prompts`` required). The engine is written atomically next to the ONNX by default.
    ``timing_cache`` / ``opt_level``: see ``build_engine``.

    Examples:
        >>> onnx_to_engine("best_dynvocab.onnx", quantize=16, prompts=(1, 80, 1203), batch=4)  # doctest: +SKIP
        'best_dynvocab.engine'
    """
    import shutil

    from yw_ext.export import Staging
    from yw_ext.export.onnx_io import load_metadata
    from yw_ext.runtime.detector import parse_metadata

    src = Path(onnx_path)
    info_inputs = onnx_inputs(src, include_defaults=True)
    dynamic_vocab = TXT_INPUT in info_inputs
    request = check_engine_request(dynamic_vocab=dynamic_vocab, quantize=quantize, data=data, prompts=prompts)
    require_gpu()
    meta = parse_metadata(load_metadata(src))
    dims = info_inputs["images"]
    dynamic = any(_is_dyn(d) for d in dims[2:])
    imgsz = meta.get("imgsz") or [int(dims[2]), int(dims[3])]
    dst = Path(engine_path) if engine_path else src.with_suffix(".engine")
    with Staging(dst) as tmp:  # the prepared ONNX copy (and ModelOpt's files) live and die here
        work = tmp / src.name
        shutil.copyfile(src, work)
        build_engine(work, dst, request, imgsz=imgsz, batch=batch, dynamic=dynamic, workspace=workspace, data=data,
                     calib_images=calib_images, timing_cache=timing_cache, opt_level=opt_level)
    return str(dst)


def _calibrator(trt: Any, batches: Any, shapes: dict[str, tuple], feeds: dict[str, np.ndarray],
                device: str = "cuda") -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` (images) and the constant ``feeds`` (``txt_feats``).

    Every buffer handed to TensorRT has exactly its declared calibration shape (``shapes``): TensorRT reads that
    many elements whatever the buffer holds, so a mismatch is an error here, not an out-of-bounds read there.
    """
    import torch

    want = {n: tuple(int(v) for v in s) for n, s in shapes.items()}
    for name, x in feeds.items():
        if tuple(x.shape) != want.get(name):
            raise ValueError(f"calibration input {name} has shape {tuple(x.shape)}, declared {want.get(name)}.")
    const = {n: torch.from_numpy(np.array(x, np.float32)).to(device) for n, x in feeds.items()}

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = iter(batches)
            self.keep: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return want["images"][0]  # what every batch holds (calibration_batches fills short ones)

        def get_batch(self, names):
            try:
                x = np.ascontiguousarray(next(self.batches), np.float32)
            except StopIteration:
                return None
            if tuple(x.shape) != want["images"]:
                raise ValueError(f"calibration batch {tuple(x.shape)} != declared images {want['images']}.")
            self.keep = {"images": torch.from_numpy(x).to(device), **const}
            unknown = [n for n in names if n not in self.keep]
            if unknown:
                raise ValueError(f"no calibration data for engine inputs {unknown}.")
            return [int(self.keep[n].data_ptr()) for n in names]

        def read_calibration_cache(self):
            return None

        def write_calibration_cache(self, cache):
            return None

    return Calibrator()


__all__ = ["EngineRequest", "check_engine_request", "check_precision_path", "require_gpu", "onnx_inputs",
           "prepare_onnx_for_tensorrt", "engine_build_args", "engine_metadata", "write_engine_file",
           "calibration_feeds", "build_engine", "onnx_to_engine"]
