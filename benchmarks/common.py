# yw_ext, AGPL-3.0 license
"""Shared timing helpers for the scripts in ``benchmarks/``: warm-up, interleaved rounds, median of pairwise ratios,
environment columns, atomic CSV / file writes, GEMM ceiling, plots.

They live in ``yw_ext.bench`` (so that ``yw bench`` has them in an installed package) and are re-exported here.
New scripts should use them instead of their own copies; the method is described in ``benchmarks/README.md``.

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
    cpu_name,
    environment,
    gemm_runners,
    interleaved_rounds,
    lvis_names,
    measure_gemm,
    percentile,
    plot_latency_vs_k,
    plot_latency_vs_size,
    random_text_encoder,
    randomize_,
    ratio_stats,
    timed,
    warm_up,
    write_atomic,
    write_csv_atomic,
)

RESULTS = ROOT / "benchmarks" / "results"

__all__ = [
    "COLUMNS", "RESULTS", "ROOT", "WEIGHTS_NOTE", "cpu_name", "environment", "gemm_runners", "interleaved_rounds",
    "lvis_names", "measure_gemm", "percentile", "plot_latency_vs_k", "plot_latency_vs_size", "random_text_encoder",
    "randomize_", "ratio_stats", "timed", "warm_up", "write_atomic", "write_csv_atomic",
]  # fmt: skip
