"""ONNX Runtime static INT8 quantisation of a folded (fixed-vocabulary) detector, calibrated on real images.

``model.export(format="onnx", quantize=8, data="coco128.yaml")`` exports the FP32 folded graph and quantises it with
ONNX Runtime's ``quantize_static`` (QDQ, MinMax calibration on letterboxed images, ``yw_ext.export.calib``).

Placement (``placement=``) decides whether INT8 pays off on a CPU:

- ``"body"`` (default): every node of the backbone and neck is quantised (Conv, SiLU's Sigmoid and Mul, Add,
  Concat, MaxPool, Resize, Split, ...), U8 activations, S8 per-channel weights. Each Conv then sits between a
  DequantizeLinear and a QuantizeLinear, the pattern ONNX Runtime fuses into ``QLinearConv`` (and SiLU into
  ``QLinearSigmoid`` / ``QLinearMul``), so the network runs in integers end to end. The head's last convs (those
  with no Conv after them but the DFL's fixed 1x16 conv) and the decoding after them stay float
  (``head_tail_nodes``): one INT8 scale over box pixels and class probabilities would round every score to 0.
- ``"conv"``: Ultralytics' ``onnx_int8_quantize`` (only Conv / Gemm / MatMul nodes, S8 activations, per-tensor).
  The conv outputs feed float SiLUs; ONNX Runtime fused only 7 of the 72 convs of s at 640 into ``QLinearConv`` and
  ran the other 65 in FP32 on dequantised inputs, with 131 QuantizeLinear and 346 DequantizeLinear nodes on top:
  1.37x *slower* than FP32 (``benchmarks/README.md``, INT8 section). Kept for comparison.

On x86 CPUs ONNX Runtime's U8S8 integer kernels need VNNI (``avx512_vnni``, ``avx_vnni`` or AMX) to beat FP32;
``quantize=8`` warns on CPUs without it (``int8_cpu_note``).

Examples:
    >>> quantize_onnx_static("best.onnx", "best_int8.onnx", data="coco128.yaml")  # doctest: +SKIP
    'best_int8.onnx'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""x86 CPU flags with which ONNX Runtime's U8S8 kernels (``QLinearConv``) are expected to beat FP32."""


def int8_cpu_note(cpuinfo: str | None = None) -> str | None:
    """Why INT8 is expected to be slower than FP32 on this x86 CPU (no VNNI), or None (VNNI, or not x86 / unknown).

    Args:
        cpuinfo: ``/proc/cpuinfo`` text (read when None; other systems: None).

    Examples:
        >>> int8_cpu_note("flags : fpu avx2 avx512f avx512_vnni") is None
        True
        >>> "VNNI" in int8_cpu_note("flags : fpu avx2 fma")
        True
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[-1].split())
    if not flags or not flags & {"avx2", "avx", "sse4_2"}:  # not x86 (ARM has its own integer dot products)
        return None
    if flags & set(INT8_CPU_FLAGS):
        return None
    return ("this CPU has no VNNI (avx512_vnni / avx_vnni / amx_int8): ONNX Runtime's INT8 convolutions are expected "
            "to run no faster, and possibly slower, than FP32 here. Keep the FP32 file on this machine, or deploy the "
            "INT8 file on a CPU with VNNI.")


def head_tail_nodes(graph) -> set[str]:
    """Names of the head's last convs and of every node after them (left float by ``placement="body"``).

    The head's last convs are the Conv nodes after which no other Conv runs, except the DFL's fixed ``(1, 16, 1, 1)``
    conv; from there on the graph decodes boxes (pixels) and class scores. A MatMul / Gemm with constant weights
    counts as a conv (``scores="max"`` graphs compute the class branches' last 1x1 convs as MatMuls).
    """
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dims = {t.name: list(t.dims) for t in graph.initializer}
    dfl = {n.name for n in graph.node if n.op_type == "Conv" and len(n.input) > 1 and dims.get(n.input[1], [0])[:2]
           == [1, 16]}

    def after(node) -> list:
        seen, stack, out = set(), [node], []
        while stack:
            m = stack.pop()
            if m.name in seen:
                continue
            seen.add(m.name)
            out.append(m)
            for o in m.output:
                stack += consumers.get(o, [])
        return out

    def conv_like(m) -> bool:  # a Conv, or a MatMul / Gemm with constant weights (a scores="max" head's 1x1 conv)
        return m.name not in dfl and (m.op_type == "Conv" or (m.op_type in ("MatMul", "Gemm") and m.input[1] in dims))

    tail: set[str] = set()
    for n in graph.node:
        if conv_like(n) and n.name not in tail:
            later = after(n)
            if not any(conv_like(m) and m is not n for m in later):
                tail |= {m.name for m in later}
    return tail


def quantize_onnx_static(
    src: str | Path, dst: str | Path, data: Any, n_images: int = 128, per_channel: bool = True,
    placement: str = "body",
) -> str:
    """Quantise ``src`` (a fixed-vocabulary yw_ext ONNX) to ``dst`` with calibration images from ``data``.

    Args:
        src: FP32 ONNX (one ``images`` input).
        dst: INT8 ONNX to write.
        data: Calibration images: dataset YAML, folder, or list (see ``yw_ext.export.calib``).
        n_images: Most calibration images.
        per_channel: Per-channel weight scales (``placement="body"``).
        placement: ``"body"`` (everything but the head's decoding, fused into ``QLinearConv``; default) or
            ``"conv"`` (Ultralytics' Conv-only placement; slower than FP32, see the module notes).

    Returns:
        ``dst``.

    Raises:
        ValueError: no calibration images; a run-time-vocabulary graph (two inputs); an unknown placement.
    """
    import warnings

    import onnx

    from yw_ext import seam
    from yw_ext.export.calib import calibration_batches
    from yw_ext.export.onnx_io import add_metadata, load_metadata, save_onnx
    from yw_ext.export.tensorrt import onnx_inputs

    if placement not in {"body", "conv"}:
        raise ValueError(f"placement must be 'body' or 'conv', got {placement!r}.")
    inputs = onnx_inputs(src)
    if list(inputs) != ["images"]:
        raise ValueError(f"INT8 quantisation here is for fixed-vocabulary graphs with one input; {src} has {list(inputs)}.")
    note = int8_cpu_note()
    if note:
        warnings.warn(f"quantize=8: {note}", stacklevel=3)
    dims = inputs["images"]
    b = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
    hw = [d if isinstance(d, int) and d > 0 else None for d in dims[2:]]
    meta = load_metadata(src)
    if None in hw:
        from yw_ext.runtime.detector import parse_metadata

        size = parse_metadata(meta).get("imgsz", 640)
    else:
        size = hw
    batches = list(calibration_batches(data, size, batch=b, n_images=n_images))
    if placement == "body":
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        tail = sorted(head_tail_nodes(onnx.load(str(src)).graph))
        quantize_static(str(src), str(dst), seam.onnx_calibration_reader(batches, lambda x: x),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=per_channel, nodes_to_exclude=tail)
    else:
        seam.onnx_int8_quantize(str(src), str(dst), batches, lambda x: x)
    proto = onnx.load(str(dst))
    add_metadata(proto, {**meta, "quantize": 8, "calibration_images": len(batches) * b,
                         "int8_placement": placement})
    save_onnx(proto, dst)
    return str(dst)


__all__ = ["INT8_CPU_FLAGS", "head_tail_nodes", "int8_cpu_note", "quantize_onnx_static"]
