# yw_ext, AGPL-3.0 license
"""The whole benchmark run: GEMM ceiling, text measurements, every group, then the CSV, plots and Markdown table.

Examples:
    >>> rows = run(BenchConfig(scales=["n"], imgsz=[64], ks=[1, 3], pairs=1, out="/tmp/bench"))  # doctest: +SKIP
"""

from __future__ import annotations

import gc
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from yw_ext.bench.config import GEMM_N, SEG_BACKENDS, WEIGHTS_NOTE, BenchConfig
from yw_ext.bench.measure import measure_group
from yw_ext.bench.models import Group
from yw_ext.bench.records import environment, rounded, write_atomic, write_csv_atomic
from yw_ext.bench.report import format_e2e_table, format_table, plot_e2e, plot_latency_vs_k, plot_latency_vs_size
from yw_ext.bench.seg_models import add_seg_runners
from yw_ext.bench.text_bench import bench_text
from yw_ext.bench.timing import measure_gemm


def gemm_rows(cfg: BenchConfig, env: dict[str, Any]) -> list[dict]:
    """The standalone ``gemm`` rows (each engine's GFLOP/s, measured alone), printed as they come.

    Examples:
        >>> rows = gemm_rows(BenchConfig(gemm_runs=1), environment(1))  # doctest: +SKIP
    """
    rows = []
    for engine, rates in measure_gemm(GEMM_N, cfg.gemm_runs, 2, cfg.threads, cfg.device, cfg.gap).items():
        med = statistics.median(rates)
        rows.append({**env, "kind": "gemm", "backend": engine, "status": "ok", "pairs": cfg.gemm_runs, "reps": 1,
                     "median_ms": rounded(1000 * 2 * GEMM_N**3 / 1e9 / med, 2), "throughput": rounded(med, 1),
                     "throughput_unit": "GFLOP/s", "gemm_gflops": rounded(med, 1),
                     "note": f"{GEMM_N}x{GEMM_N} float32, alone; min..max {min(rates):.1f}..{max(rates):.1f}"})
        print(f"GEMM {GEMM_N}x{GEMM_N} float32, {engine}: {med:.1f} GFLOP/s (min {min(rates):.1f}, "
              f"max {max(rates):.1f})", flush=True)
    return rows


def group_rows(cfg: BenchConfig, env: dict[str, Any]) -> list[dict]:
    """Build and measure every (model size, image size, batch) group in turn, each in its own temporary folder.

    Examples:
        >>> rows = group_rows(BenchConfig(scales=["n"], imgsz=[64], ks=[1]), environment(1))  # doctest: +SKIP
    """
    rows: list[dict] = []
    for scale in cfg.scales:
        for imgsz in cfg.imgsz:
            for batch in cfg.batch:
                print(f"building {scale}/{imgsz}/b{batch}: K = {cfg.ks}, backends {cfg.backends} ...", flush=True)
                with tempfile.TemporaryDirectory(prefix="yw_bench_") as td:
                    group = Group(cfg, scale, imgsz, batch, Path(td))
                    if any(b in cfg.backends for b in SEG_BACKENDS):
                        group.builders.append(add_seg_runners)
                    group.build()
                    rows += measure_group(group, env)
                    del group
                    gc.collect()
    return rows


def write_outputs(cfg: BenchConfig, env: dict[str, Any], rows: list[dict], t0: float) -> str:
    """Write ``<out>/<stem>.csv``, the two latency plots and ``<stem>.md``; print the table; returns the Markdown.

    ``t0`` is the run's start (``time.perf_counter()``), for the elapsed time in the header.

    Examples:
        >>> md = write_outputs(BenchConfig(out="/tmp/b"), environment(1), [], time.perf_counter())  # doctest: +SKIP
    """
    out = Path(cfg.out)
    csv_path = write_csv_atomic(out / f"{cfg.stem}.csv", rows)
    if cfg.e2e:
        plots = [plot_e2e(rows, out / f"{cfg.stem}.png").name]
        table = format_e2e_table(rows)
    else:
        plots = [plot_latency_vs_k(rows, out / f"{cfg.stem}_latency_vs_k.png").name,
                 plot_latency_vs_size(rows, out / f"{cfg.stem}_latency_vs_size.png").name]
        table = format_table(rows)
    elapsed = time.perf_counter() - t0
    header = (f"yw_ext benchmark ({env['date']}, {env['cpu']}, {cfg.threads} threads, device {env['device']}, "
              f"torch {env['torch']}, ultralytics {env['ultralytics']}, onnxruntime {env['onnxruntime']}, "
              f"tensorrt {env['tensorrt'] or 'not installed'}; weights {WEIGHTS_NOTE}; {cfg.pairs} pairs; "
              f"{elapsed:.0f} s)")
    md = header + "\n\n" + table + "\n"
    write_atomic(out / f"{cfg.stem}.md", lambda f: f.write(md), mode="w")
    print("\n" + md)
    print(f"wrote {csv_path}, {', '.join(plots)}, {cfg.stem}.md in {out}")
    return md


def run(cfg: BenchConfig) -> list[dict]:
    """Run the whole suite; writes ``<out>/<stem>.csv``, ``<stem>_latency_vs_k.png``, ``<stem>_latency_vs_size.png``
    and ``<stem>.md``, prints the table, and returns the rows.

    Examples:
        >>> rows = run(BenchConfig(scales=["n"], imgsz=[64], ks=[1, 3], pairs=1, out="/tmp/bench"))  # doctest: +SKIP
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import torch

    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        env = environment(cfg.threads, cfg.device)
        if cfg.e2e:  # end-to-end predict throughput only (yw_ext.bench.e2e)
            from yw_ext.bench.e2e import run_e2e

            rows = run_e2e(cfg, env)
            write_outputs(cfg, env, rows, t0)
            return rows
        rows = gemm_rows(cfg, env)
        if cfg.text:
            rows += bench_text(cfg, env)
        rows += group_rows(cfg, env)
        write_outputs(cfg, env, rows, t0)
        return rows
    finally:
        torch.set_num_threads(old_threads)


__all__ = ["gemm_rows", "group_rows", "run", "write_outputs"]
