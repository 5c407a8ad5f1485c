"""ONNX Runtime static INT8 quantisation of a folded (fixed-vocabulary) detector, calibrated on real images.

``model.export(format="onnx", quantize=8, data="coco128.yaml")`` exports the FP32 folded graph and quantises it with
Ultralytics' ``onnx_int8_quantize`` (ONNX Runtime ``quantize_static``, QDQ, only Conv / Gemm / MatMul nodes
quantised: one INT8 scale over box pixels and class probabilities would round every score to 0). Calibration batches
are letterboxed with the inference pre-processing (``yw_ext.export.calib``). ``benchmarks/bench_export.py`` reports
its CPU latency against the FP32 file and how far its scores move.

Examples:
    >>> quantize_onnx_static("best.onnx", "best_int8.onnx", data="coco128.yaml")  # doctest: +SKIP
    'best_int8.onnx'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quantize_onnx_static(
    src: str | Path, dst: str | Path, data: Any, n_images: int = 128, per_channel: bool = False
) -> str:
    """Quantise ``src`` (a fixed-vocabulary yw_ext ONNX) to ``dst`` with calibration images from ``data``.

    Args:
        src: FP32 ONNX (one ``images`` input).
        dst: INT8 ONNX to write.
        data: Calibration images: dataset YAML, folder, or list (see ``yw_ext.export.calib``).
        n_images: Most calibration images.
        per_channel: Per-channel weight scales (more accurate, slightly slower on some CPUs).

    Returns:
        ``dst``.

    Raises:
        ValueError: no calibration images; a run-time-vocabulary graph (two inputs).
    """
    import onnx

    from yw_ext import seam
    from yw_ext.export.calib import calibration_batches
    from yw_ext.export.onnx_io import add_metadata, load_metadata, save_onnx
    from yw_ext.export.tensorrt import onnx_inputs

    inputs = onnx_inputs(src)
    if list(inputs) != ["images"]:
        raise ValueError(f"INT8 quantisation here is for fixed-vocabulary graphs with one input; {src} has {list(inputs)}.")
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
    if per_channel:
        from onnxruntime.quantization import quantize_static

        graph = onnx.load(str(src)).graph
        exclude = [n.name for n in graph.node if n.op_type not in {"Conv", "Gemm", "MatMul"}]
        quantize_static(str(src), str(dst), seam.onnx_calibration_reader(batches, lambda x: x),
                        nodes_to_exclude=exclude, per_channel=True)
    else:
        seam.onnx_int8_quantize(str(src), str(dst), batches, lambda x: x)
    proto = onnx.load(str(dst))
    add_metadata(proto, {**meta, "quantize": 8, "calibration_images": len(batches) * b})
    save_onnx(proto, dst)
    return str(dst)


__all__ = ["quantize_onnx_static"]
