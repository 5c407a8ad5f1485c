# yw_ext, AGPL-3.0 license
"""yw_ext benchmark suite: every backend side by side with Ultralytics' YOLO-World on the same weights.

A thin script over ``yw_ext.bench`` (the same code as ``yw bench key=value ...``); see ``benchmarks/README.md`` for
the method and the latest results.

Examples:
    python benchmarks/run.py --quick                                   # n, 320 px, K 1/80/1203: < 3 min on 2 cores
    python benchmarks/run.py                                           # n and s, 640 px, K 1/10/80/365/1203
    python benchmarks/run.py --scales s --imgsz 640 --ks 80,1203 --pairs 10 --name bench_s640
    python benchmarks/run.py --scales n,s,m --batch 1,4 --backends pt_folded,ort_fixed
    python benchmarks/run.py --seg --backends pt_folded,ort_fixed --scales s --ks 80,1203 --no-text  # seg vs det, YOLOE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

from yw_ext.bench import main

if __name__ == "__main__":
    os.chdir(ROOT)  # default output folder benchmarks/results
    main()
