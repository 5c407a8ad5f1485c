# yw_ext, AGPL-3.0 license
"""Benchmark suite: yw_ext backends side by side with Ultralytics' YOLO-World on the same weights, in the same run.

``python benchmarks/run.py [--quick]`` and ``yw bench [quick=True] key=value ...`` both run ``run(BenchConfig)``.

What is measured (one CSV row per measurement, see ``COLUMNS``):

- ``latency``: ms per image (median and p90 over the timed rounds after warm-up; a round's sample is the faster of
  ``reps`` back-to-back calls), throughput (images/s at that batch), for every model size x image size x batch x
  vocabulary size K x backend:

  * ``ultralytics``: ``ultralytics.YOLOWorld`` (its ``WorldModel``, loaded from a saved ``.pt``, Conv+BN fused as its
    predictor fuses it) with the same state dict and the same ``txt_feats`` as the yw_ext models: the baseline;
  * ``ultralytics_onnx``: Ultralytics' own ONNX export of that ``.pt`` (``YOLOWorld(pt).export(format="onnx")``):
    the baseline of the ONNX Runtime rows;
  * ``pt_eager``: the yw_ext model with its text path (unfolded), fused;
  * ``pt_folded``: the same after ``reparameterize()`` (RepVL-PAN folding), fused;
  * ``pt_folded_max``: the same with the head reducing over classes (``score_mode = "max"``, as ``predict`` runs
    it): ``(B, 6, A)`` best score and class per anchor;
  * ``ort_fixed``: ``YOLOWorld.export(format="onnx")`` (the folded graph) in ONNX Runtime;
  * ``ort_max``: ``YOLOWorld.export(format="onnx", scores="max")`` (the graph reduces over classes; the runtime's
    graph) in ONNX Runtime;
  * ``ort_dynvocab``: ``YOLOWorld.export(format="onnx", dynamic_vocab=True)`` fed the K embeddings as ``txt_feats``
    (one file per model size / image size / batch serves every K);
  * ``trt_fp16`` / ``trt_int8``: TensorRT engines from ``YOLOWorld.export(format="engine")`` when a CUDA GPU and the
    ``tensorrt`` package are present (INT8 also needs ``data=`` calibration images); otherwise recorded as skipped.

  Every runner of one model size / image size / batch group (all K, all backends, and the GEMMs) runs once per
  round, the order reversed every other round, after warm-up rounds, with ``gap`` seconds of idle before each
  sample (other runtimes' spinning worker threads would otherwise steal the cores). The ``ratio`` column is the
  median of the per-round ratios backend / baseline (``ultralytics`` for PyTorch and TensorRT rows,
  ``ultralytics_onnx`` for ONNX Runtime rows), with its min..max spread: never a ratio of two separately timed
  medians. ``ratio_vs_ultralytics`` is the same against the PyTorch baseline for every row. Outputs are checked
  against the baseline's (``max_score_diff``).
- ``k_growth``: per backend, latency at K / latency at the reference K (80 when measured), per-round ratios.
- ``gemm``: a 2048 x 2048 float32 matrix product in GFLOP/s, with ``torch.mm`` and with ONNX Runtime's MatMul
  (the faster is the machine's practical compute ceiling: on AMD EPYC ``torch.mm`` reaches only about half of what
  ONNX Runtime and PyTorch's own convolutions reach), measured alone at the start and inside every round;
  ``achieved_gflops`` = model FLOPs (``ultralytics.utils.torch_utils.get_flops``: THOP, counts convolutions and
  linear layers, not the text matmuls of unfolded models) / latency, and ``gemm_fraction`` = median of the
  per-round (model rate / ceiling of that round).
- peak memory per backend (at one K per group, ``mem_k``): each backend runs in a fresh subprocess; ``peak_rss_mb``
  is the process's peak resident set while running (Linux ``VmHWM``, reset after loading), ``peak_delta_mb`` that
  peak minus the resident set before the first run (the inference working memory).
- ``text_encoder``: CLIP text encoding throughput (prompts/s, the 1203 LVIS class names, no cache);
  ``embedding_cache``: ``encode_texts`` on a filled cache vs an empty one (interleaved pairs);
  ``set_classes``: ``YOLOWorld.set_classes`` with the 1203 LVIS names (Ultralytics' ``lvis.yaml``), cached vs
  uncached (interleaved pairs). The encoder is ``$YW_CLIP`` when set, else a random CLIP text tower of ViT-B/32 size
  built with open_clip (``encoder="vit-b-32"``; ``"tiny"`` for smoke tests).

Weights are random (latency does not depend on weight values); BatchNorm statistics, head scalars and attention
biases are randomised (``randomize_``) and all weights rounded to float16-representable values, so Ultralytics'
half-precision ``.pt`` round trip is exact.

Modules (one concept each; every name is re-exported here):

- ``config``: backends, baselines, CSV columns, ``BenchConfig``, ``quick_config`` (torch-free);
- ``records``: environment columns, rounding, atomic CSV / file writes (``yw_ext.core.io.atomic_write``);
- ``timing``: ``interleaved_rounds``, ``ratio_stats``, percentiles, ONNX Runtime sessions, the GEMM ceiling;
- ``models``: ``randomize_`` and the models / runners of one group (``Group``);
- ``seg_models``: the seg runners (``--seg``: yw_ext's YOLO-World-Seg and Ultralytics' YOLOE-seg);
- ``measure``: parity, interleaved timing, memory, K growth and seg-vs-det ratios of a group; ``memory``: the
  peak-memory subprocess;
- ``text_bench``: the text measurements; ``tiny_clip``: random-weight CLIPs (also the tests' tiny CLIP);
  ``data``: LVIS names, COCO128 subsets;
- ``e2e`` (``e2e=True``, ``yw_ext.bench.e2e``): end-to-end ``predict`` throughput over COCO128 and its
  pre-process / inference / post-process split, per backend against Ultralytics' predictors.
- ``report``: Markdown tables and plots; ``suite``: ``run``; ``command``: ``benchmarks/run.py`` and ``yw bench``.

Examples:
    >>> from yw_ext.bench import BenchConfig, run
    >>> rows = run(BenchConfig(scales=["n"], imgsz=[64], ks=[1, 3], pairs=1, out="/tmp/bench"))  # doctest: +SKIP
"""

from yw_ext.bench.command import cli, config_from_args, main, parse
from yw_ext.bench.config import (
    BACKENDS,
    BASELINE,
    COLUMNS,
    DEFAULT_BACKENDS,
    GEMM_N,
    QUICK,
    REDUCED,
    SCALE_ORDER,
    SEG_BACKENDS,
    SEG_VS_DET,
    WEIGHTS_NOTE,
    BenchConfig,
    quick_config,
)
from yw_ext.bench.data import link_coco128, lvis_names
from yw_ext.bench.e2e import E2E_BACKENDS, E2E_BASELINE, run_e2e
from yw_ext.bench.measure import measure_group
from yw_ext.bench.memory import memory_child, memory_in_subprocess, proc_mb
from yw_ext.bench.models import Group, Runner, randomize_
from yw_ext.bench.records import append_csv_atomic, cpu_name, environment, write_atomic, write_csv_atomic
from yw_ext.bench.report import format_e2e_table, format_table, plot_e2e, plot_latency_vs_k, plot_latency_vs_size
from yw_ext.bench.seg_models import add_seg_runners, yoloe_seg, yw_seg
from yw_ext.bench.suite import run
from yw_ext.bench.text_bench import bench_text, text_encoder
from yw_ext.bench.timing import (
    gemm_runners,
    interleaved_rounds,
    measure_gemm,
    ort_session,
    percentile,
    ratio_stats,
    timed,
    warm_up,
)
from yw_ext.bench.tiny_clip import random_clip, random_clip_state_dict, random_text_encoder, save_random_clip

__all__ = [
    "BACKENDS", "BASELINE", "COLUMNS", "DEFAULT_BACKENDS", "SEG_BACKENDS", "SEG_VS_DET", "add_seg_runners",
    "yoloe_seg", "yw_seg", "E2E_BACKENDS", "E2E_BASELINE", "GEMM_N", "REDUCED", "QUICK", "SCALE_ORDER",
    "WEIGHTS_NOTE", "BenchConfig", "Group", "format_e2e_table", "plot_e2e", "run_e2e",
    "Runner", "append_csv_atomic", "bench_text", "cli", "config_from_args", "cpu_name", "environment",
    "format_table", "gemm_runners", "interleaved_rounds", "link_coco128", "lvis_names", "main", "measure_gemm",
    "measure_group", "memory_child", "memory_in_subprocess", "ort_session", "parse", "percentile",
    "plot_latency_vs_k", "plot_latency_vs_size", "proc_mb", "quick_config", "random_clip", "random_clip_state_dict",
    "random_text_encoder", "randomize_", "ratio_stats", "run", "save_random_clip", "text_encoder", "timed",
    "warm_up", "write_atomic", "write_csv_atomic",
]  # fmt: skip
