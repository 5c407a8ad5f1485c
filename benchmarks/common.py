# yw_ext, AGPL-3.0 license
"""Shared helpers for the scripts in ``benchmarks/``: warm-up, interleaved rounds, median of pairwise ratios,
environment columns, atomic CSV / file writes (and appends), ONNX Runtime sessions, GEMM ceiling, plots, random
weights and CLIP text towers, COCO128 subsets linked into a temporary dataset.

They live in ``yw_ext.bench`` (so that ``yw bench`` has them in an installed package) and are re-exported here.
Every script here imports them rather than keeping its own copy; the method is described in ``benchmarks/README.md``.

Examples:
    >>> from common import interleaved_rounds, ratio_stats
    >>> samples, _ = interleaved_rounds({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=1, gap=0.0)
    >>> ratio_stats(samples["a"], samples["b"])["n"]
    3
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from yw_ext.bench import (
    COLUMNS,
    WEIGHTS_NOTE,
    append_csv_atomic,
    cpu_name,
    environment,
    gemm_runners,
    interleaved_rounds,
    link_coco128,
    lvis_names,
    measure_gemm,
    ort_session,
    percentile,
    plot_latency_vs_k,
    plot_latency_vs_size,
    proc_mb,
    random_clip_state_dict,
    random_text_encoder,
    randomize_,
    ratio_stats,
    save_random_clip,
    timed,
    warm_up,
    write_atomic,
    write_csv_atomic,
)

RESULTS = ROOT / "benchmarks" / "results"
COCO128 = ROOT.parent / "shared" / "data" / "coco128"

__all__ = [
    "COCO128", "COLUMNS", "RESULTS", "ROOT", "WEIGHTS_NOTE", "append_csv_atomic", "cpu_name", "environment",
    "gemm_runners", "interleaved_rounds", "link_coco128", "lvis_names", "measure_gemm", "ort_session", "percentile",
    "plot_latency_vs_k", "plot_latency_vs_size", "proc_mb", "random_clip_state_dict", "random_text_encoder",
    "randomize_", "ratio_stats", "save_random_clip", "timed", "warm_up", "write_atomic", "write_csv_atomic",
]  # fmt: skip
