# yw_ext, AGPL-3.0 license
"""What the benchmark suite measures: backends and their baselines, CSV columns, ``BenchConfig`` and the quick preset.

Torch-free (standard library only).

Examples:
    >>> quick_config().ks
    [1, 80, 1203]
    >>> BASELINE["ort_fixed"]
    'ultralytics_onnx'
    >>> SEG_VS_DET["ort_seg"]
    'ort_fixed'
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

WEIGHTS_NOTE = "random (latency does not depend on weight values)"
BACKENDS = ("ultralytics", "pt_eager", "pt_folded", "pt_folded_max", "ultralytics_onnx", "ort_fixed", "ort_max",
            "ort_dynvocab", "trt_fp16", "trt_int8", "yoloe_seg", "pt_seg", "yoloe_seg_onnx", "ort_seg")  # fmt: skip
SEG_BACKENDS = ("yoloe_seg", "pt_seg", "yoloe_seg_onnx", "ort_seg")
"""Segmentation backends (``seg=True`` / ``--seg`` adds them; not in the default run): yw_ext's YOLO-World-Seg, folded,
in PyTorch and ONNX Runtime, and Ultralytics' YOLOE-seg of the same scale (``yoloe-v8<scale>-seg.yaml``)."""
DEFAULT_BACKENDS = tuple(b for b in BACKENDS if b not in SEG_BACKENDS)
BASELINE = {"ultralytics": "ultralytics", "pt_eager": "ultralytics", "pt_folded": "ultralytics",
            "pt_folded_max": "ultralytics", "ultralytics_onnx": "ultralytics", "ort_fixed": "ultralytics_onnx",
            "ort_max": "ultralytics_onnx", "ort_dynvocab": "ultralytics_onnx", "trt_fp16": "ultralytics",
            "trt_int8": "ultralytics", "yoloe_seg": "yoloe_seg", "pt_seg": "yoloe_seg",
            "yoloe_seg_onnx": "yoloe_seg", "ort_seg": "yoloe_seg_onnx"}  # fmt: skip
SEG_VS_DET = {"pt_seg": "pt_folded", "ort_seg": "ort_fixed"}
"""``seg_vs_det`` rows: each yw_ext seg backend against the detection backend of the same scale and runtime."""
PARITY_REF = {"yoloe_seg": None, "yoloe_seg_onnx": "yoloe_seg"}
"""Whose output ``max_score_diff`` compares a backend with (default ``ultralytics``; None: not compared, another
network). Seg outputs ``(B, 4 + K + nm, A)`` are compared on their class-score channels with a detection reference."""
REDUCED = ("pt_folded_max", "ort_max")
"""Backends whose output is each anchor's best class only, ``(B, 6, A)`` (``scores="max"``, see ``yw_ext.nn.rep``)."""
SCALE_ORDER = ("n", "s", "m", "l", "x", "xl")
COLUMNS = (
    "date", "yw_ext", "torch", "ultralytics", "onnxruntime", "tensorrt", "device", "cpu", "threads", "weights",
    "kind", "scale", "imgsz", "batch", "K", "backend", "status", "note", "pairs", "reps",
    "median_ms", "p90_ms", "throughput", "throughput_unit",
    "baseline", "ratio", "ratio_min", "ratio_max", "ratio_vs_ultralytics",
    "gflops", "achieved_gflops", "gemm_gflops", "gemm_fraction", "max_score_diff", "peak_rss_mb", "peak_delta_mb",
    "preprocess_ms", "inference_ms", "postprocess_ms",
)  # fmt: skip
GEMM_N = 2048


@dataclasses.dataclass
class BenchConfig:
    """What to measure.

    Attributes:
        scales: Model sizes (``n``, ``s``, ``m``, ``l``, ``x``).
        imgsz: Image sizes.
        batch: Batch sizes.
        ks: Vocabulary sizes K.
        backends: Backends (``BACKENDS``; default ``DEFAULT_BACKENDS``, no seg); each listed backend brings its
            baseline (``BASELINE``) and a seg backend its detection counterpart (``SEG_VS_DET``).
        pairs: Timed rounds per group (each gives one pair for every ratio).
        warmup: Untimed rounds first.
        reps: Back-to-back calls per sample (the fastest counts: the first call after the idle ``gap`` wakes the
            runtime's worker threads).
        threads: CPU threads for PyTorch and ONNX Runtime.
        device: ``"cpu"`` or ``"cuda[:i]"`` (PyTorch and TensorRT; ONNX Runtime uses CUDA when its provider exists).
        text: Measure the text encoder, the embedding cache and ``set_classes`` (1203 LVIS names).
        text_pairs: Cold/warm pairs of the text measurements.
        encoder: ``"auto"`` (``$YW_CLIP`` if set, else ``"vit-b-32"``), ``"vit-b-32"`` / ``"tiny"`` (random open_clip
            text towers), or a CLIP path.
        memory: Measure peak memory per backend (fresh subprocess per backend).
        mem_k: K of the memory measurement (default: the largest K).
        ref_k: Reference K of the ``k_growth`` rows (default 80 when measured, else the smallest K).
        gemm_runs: Timed GEMMs of the standalone GEMM rows.
        gap: Seconds of idle before each timed sample (lets other runtimes' spinning threads stop, see
            ``interleaved_rounds``).
        data: Calibration dataset YAML for TensorRT INT8.
        out: Output folder (CSV, PNGs, Markdown table).
        name: File stem of the outputs (default ``bench`` / ``bench_quick``).
        quick: Set by ``quick_config``; recorded in the output names.
        seed: Random seed of weights, embeddings and inputs.
        seg: Add the segmentation backends ``SEG_BACKENDS`` (seg vs det and yw_ext vs YOLOE-seg rows).
        e2e: Measure end-to-end ``predict`` throughput instead (``yw_ext.bench.e2e``; stem ``bench_e2e``).
        e2e_images: Images of the e2e passes (the first, sorted, of ``images``).
        images: Image folder of the e2e passes (default ``../shared/data/coco128/images/val2017``).

    Examples:
        >>> c = BenchConfig(ks="80, 1", backends=["ort_fixed"])
        >>> c.ks, c.backends, c.stem
        ([1, 80], ['ultralytics', 'ultralytics_onnx', 'ort_fixed'], 'bench')
    """

    scales: list[str] = dataclasses.field(default_factory=lambda: ["n", "s"])
    imgsz: list[int] = dataclasses.field(default_factory=lambda: [640])
    batch: list[int] = dataclasses.field(default_factory=lambda: [1])
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 10, 80, 365, 1203])
    backends: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_BACKENDS))
    pairs: int = 10
    warmup: int = 2
    reps: int = 2
    threads: int = dataclasses.field(default_factory=lambda: max(1, min(2, os.cpu_count() or 1)))
    device: str = "cpu"
    text: bool = True
    text_pairs: int = 4
    encoder: str = "auto"
    memory: bool = True
    mem_k: int | None = None
    ref_k: int | None = None
    gemm_runs: int = 10
    gap: float = 0.05
    data: str | None = None
    out: str = "benchmarks/results"
    name: str | None = None
    quick: bool = False
    seed: int = 0
    seg: bool = False
    e2e: bool = False
    e2e_images: int = 128
    images: str | None = None

    def __post_init__(self) -> None:
        """Normalise list arguments (``"1,80"``, ``(1, 80)``, ``80``) and check values."""
        self.scales = [str(s).lower() for s in as_list(self.scales)]
        self.imgsz = [int(v) for v in as_list(self.imgsz)]
        self.batch = [int(v) for v in as_list(self.batch)]
        self.ks = sorted({int(v) for v in as_list(self.ks)})
        self.backends = [str(b) for b in as_list(self.backends)]
        self.seg = as_bool(self.seg)
        if self.seg:
            self.backends += [b for b in SEG_BACKENDS if b not in self.backends]
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; available: {', '.join(BACKENDS)}.")
        bad = [s for s in self.scales if s not in SCALE_ORDER]
        if bad:
            raise ValueError(f"unknown model size(s) {bad}; available: {', '.join(SCALE_ORDER)}.")
        self.backends += [d for b, d in SEG_VS_DET.items() if b in self.backends and d not in self.backends]
        for _ in range(2):  # every compared backend brings its baseline (and the ONNX baseline brings its own)
            self.backends += [BASELINE[b] for b in self.backends if BASELINE[b] not in self.backends]
        self.backends = [b for b in BACKENDS if b in self.backends]
        if not self.ks or min(self.ks) < 1 or not self.imgsz or not self.batch or not self.scales:
            raise ValueError("scales, imgsz, batch and ks need at least one value each, K >= 1.")
        if self.pairs < 1 or self.reps < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError("pairs, reps and threads must be >= 1, warmup >= 0.")
        self.text, self.memory, self.quick = as_bool(self.text), as_bool(self.memory), as_bool(self.quick)
        self.e2e = as_bool(self.e2e)
        if self.e2e_images < 1:
            raise ValueError("e2e_images must be >= 1.")

    @property
    def stem(self) -> str:
        """File stem of the outputs.

        Examples:
            >>> BenchConfig(quick=True).stem, BenchConfig(name="s640").stem
            ('bench_quick', 's640')
        """
        return self.name or ("bench_e2e" if self.e2e else "bench_quick" if self.quick else "bench")


def as_list(v: Any) -> list:
    """``"a,b"`` / ``("a", "b")`` / ``"a"`` / ``3`` -> list.

    Examples:
        >>> as_list("1, 80,1203"), as_list((1, 2)), as_list(640)
        (['1', '80', '1203'], [1, 2], [640])
    """
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def as_bool(v: Any) -> bool:
    """``True``/``"true"``/``1`` -> True, ``False``/``"false"``/``0`` -> False.

    Examples:
        >>> as_bool("Yes"), as_bool("0"), as_bool(1)
        (True, False, True)
    """
    if isinstance(v, str):
        return v.strip().lower() in {"1", "true", "yes", "on"}
    return bool(v)


QUICK = {"scales": ["n"], "imgsz": [320], "batch": [1], "ks": [1, 80, 1203], "pairs": 3, "warmup": 1, "reps": 2,
         "text_pairs": 2, "gemm_runs": 5}


def quick_config(**overrides: Any) -> BenchConfig:
    """The ``--quick`` configuration (n at 320, batch 1, K 1 / 80 / 1203, 3 pairs): under 3 minutes on 2 CPU cores.

    Examples:
        >>> c = quick_config()
        >>> c.scales, c.imgsz, c.ks, c.pairs, c.stem
        (['n'], [320], [1, 80, 1203], 3, 'bench_quick')
    """
    return BenchConfig(**{**QUICK, "quick": True, **overrides})


__all__ = ["BACKENDS", "BASELINE", "COLUMNS", "DEFAULT_BACKENDS", "REDUCED", "GEMM_N", "QUICK", "SCALE_ORDER",
           "PARITY_REF", "SEG_BACKENDS", "SEG_VS_DET", "WEIGHTS_NOTE",
           "BenchConfig",
           "as_bool", "as_list", "quick_config"]  # fmt: skip
