# yw_ext, AGPL-3.0 license
"""Measuring one group (``models.Group``): output parity, interleaved timing with the GEMM ceiling, K growth, memory.

``measure_group`` returns the group's CSV rows: one ``latency`` row per (K, backend) (ratios are medians of per-round
ratios against the backend's baseline), one ``k_growth`` row per (backend, K other than the reference K) and one
``seg_vs_det`` row per (yw_ext seg backend, K).

Examples:
    >>> rows = measure_group(group, environment(2))  # doctest: +SKIP
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from yw_ext.bench.config import BACKENDS, BASELINE, GEMM_N, PARITY_REF, REDUCED, SEG_VS_DET
from yw_ext.bench.memory import memory_in_subprocess
from yw_ext.bench.models import Group
from yw_ext.bench.records import rounded, spread
from yw_ext.bench.timing import gemm_runners, interleaved_rounds, percentile, ratio_stats

Samples = dict[Hashable, list[float]]


def output_diffs(group: Group) -> dict[tuple[str, int], float]:
    """Largest class-score difference of each runner's output vs the Ultralytics baseline's at the same K (or the
    reference of ``PARITY_REF``; none for a backend whose reference is None).

    This is also each runner's first (warm-up) call; a runner whose call fails is removed and recorded as an error.

    Examples:
        >>> output_diffs(group)[("ort_fixed", 80)] < 1e-3  # doctest: +SKIP
        True
    """
    diffs = {}
    for k in group.cfg.ks:
        outs = {}
        for b, kk in list(group.runners):
            if kk == k:
                try:
                    outs[b] = group.runners[(b, k)].output()
                except Exception as e:  # noqa: BLE001 - recorded, the run goes on without it
                    del group.runners[(b, k)]
                    group.note(b, k, "error", f"{type(e).__name__}: {e}"[:300])
        for b, y in outs.items():
            ref = outs.get(PARITY_REF.get(b, "ultralytics"))
            if ref is not None:
                diffs[(b, k)] = score_diff(y, ref, b in REDUCED)
    return diffs


def score_diff(y: np.ndarray, ref: np.ndarray, reduced: bool = False) -> float:
    """Largest class-score difference of an output ``y`` to the reference ``ref`` ``(B, 4 + K, A)``.

    ``reduced``: ``y`` is ``(B, 6, A)`` (each anchor's best score, ``scores="max"``). A seg output
    ``(B, 4 + K + nm, A)`` is compared on its K score channels with a detection reference. NaN when the shapes do not
    match.

    Examples:
        >>> ref = np.zeros((1, 6, 5)); seg = np.zeros((1, 38, 5)); seg[:, 4, 0] = 0.5
        >>> score_diff(seg, ref), score_diff(np.zeros((1, 6, 4)), ref)
        (0.5, nan)
    """
    if reduced and y.ndim == 3 and y.shape[1] == 6 and y.shape[2] == ref.shape[2]:  # best score only
        return float(np.abs(y[:, 4] - ref[:, 4:].max(1)).max())
    if y.ndim == 3 and y.shape[0] == ref.shape[0] and y.shape[2] == ref.shape[2] and y.shape[1] >= ref.shape[1]:
        return float(np.abs(y[:, 4:ref.shape[1]] - ref[:, 4:]).max())  # seg: the mask coefficients come after
    return float("nan")


def group_memory(group: Group) -> dict[tuple[str, int], dict]:
    """Peak memory of each backend at the group's ``mem_k``, each in a fresh subprocess (CPU runs only).

    Examples:
        >>> group_memory(group)[("ort_fixed", 1203)]["peak_mb"] > 0  # doctest: +SKIP
        True
    """
    out: dict[tuple[str, int], dict] = {}
    if not group.cfg.memory:
        return out
    for (b, k), r in group.runners.items():
        if k != group.mem_k:
            continue
        if str(group.device).startswith("cuda"):
            out[(b, k)] = {"error": "peak memory is measured for CPU runs only"}
        elif r.mem is None:
            out[(b, k)] = {"error": "not measured for this backend"}
        else:
            spec = {**r.mem, "threads": group.cfg.threads, "input": list(group.xn.shape), "runs": 3}
            out[(b, k)] = memory_in_subprocess(spec)
    return out


def time_group(group: Group) -> tuple[Samples, list[float]]:
    """Every runner of the group and the GEMMs, interleaved: per-round samples and per-round GEMM ceilings (GFLOP/s,
    the faster engine of each round).

    Examples:
        >>> samples, gemm_rates = time_group(group)  # doctest: +SKIP
    """
    cfg = group.cfg
    gemms = gemm_runners(GEMM_N, cfg.threads, group.device)
    order: dict[Hashable, Callable[[], Any]] = {("gemm", name): fn for name, (fn, _) in gemms.items()}
    for k in cfg.ks:
        for b in BACKENDS:
            if (b, k) in group.runners:
                order[(b, k)] = group.runners[(b, k)].fn
    print(f"  timing {group.scale}/{group.imgsz}/b{group.batch}: {len(order) - len(gemms)} variants + GEMM, "
          f"{cfg.warmup} warm-up + {cfg.pairs} rounds x {cfg.reps} reps ...", flush=True)
    samples, _ = interleaved_rounds(order, cfg.pairs, cfg.warmup, cfg.reps, group.sync, cfg.gap)
    gemm_rates = [max(gemms[name][1] / samples[("gemm", name)][i] for name in gemms) for i in range(cfg.pairs)]
    return samples, gemm_rates


def _timing_cells(group: Group, b: str, k: int, samples: Samples, gemm_rates: list[float]) -> dict[str, Any]:
    """The timing, ratio and FLOP-rate cells of a measured (backend, K)."""
    cfg, gflops = group.cfg, group.runners[(b, k)].gflops
    per_img = [1000 * t / group.batch for t in samples[(b, k)]]
    med = statistics.median(per_img)
    gemm_med = statistics.median(gemm_rates)
    row: dict[str, Any] = dict(pairs=cfg.pairs, reps=cfg.reps, median_ms=rounded(med, 3),
                               p90_ms=rounded(percentile(per_img, 90), 3), throughput=rounded(1000 / med, 2),
                               throughput_unit="images/s", gemm_gflops=rounded(gemm_med, 1))  # fmt: skip
    if (BASELINE[b], k) in samples:
        row.update(spread(ratio_stats(samples[(b, k)], samples[(BASELINE[b], k)]), 4))
    if ("ultralytics", k) in samples:
        row["ratio_vs_ultralytics"] = rounded(ratio_stats(samples[(b, k)], samples[("ultralytics", k)])["median"], 4)
    if gflops > 0:
        frac = [gflops * group.batch / t / g for t, g in zip(samples[(b, k)], gemm_rates)]
        row.update(gflops=rounded(gflops, 3), achieved_gflops=rounded(gflops / (med / 1000), 2),
                   gemm_fraction=rounded(statistics.median(frac), 4))
    return row


def _memory_cells(row: dict[str, Any], m: dict) -> dict[str, Any]:
    """The peak-memory cells of a row (or the memory error appended to its note)."""
    if "error" in m:
        return {"note": (row["note"] + "; " if row["note"] else "") + f"memory: {m['error']}"[:200]}
    return {"peak_rss_mb": rounded(m["peak_mb"], 1), "peak_delta_mb": rounded(m["peak_mb"] - m["rss0_mb"], 1)}


def growth_rows(group: Group, base: dict[str, Any], samples: Samples) -> list[dict]:
    """``k_growth`` rows: per backend, latency at K / latency at the reference K (per-round ratios).

    Examples:
        >>> [r["baseline"] for r in growth_rows(group, {}, samples)][:1]  # doctest: +SKIP
        ['K=80']
    """
    cfg, rows = group.cfg, []
    ref = cfg.ref_k if cfg.ref_k in cfg.ks else (80 if 80 in cfg.ks else min(cfg.ks))
    for b in BACKENDS:
        for k in cfg.ks:
            if k == ref or (b, k) not in samples or (b, ref) not in samples:
                continue
            s = ratio_stats(samples[(b, k)], samples[(b, ref)])
            rows.append({**base, "kind": "k_growth", "K": k, "backend": b, "status": "ok",
                         "note": f"latency at K={k} / at K={ref}", "pairs": cfg.pairs, "reps": cfg.reps,
                         "baseline": f"K={ref}", **spread(s, 4)})  # fmt: skip
    return rows


def seg_rows(group: Group, base: dict[str, Any], samples: Samples) -> list[dict]:
    """``seg_vs_det`` rows: per K, each yw_ext seg backend's latency / its detection counterpart's (``SEG_VS_DET``,
    per-round ratios).

    Examples:
        >>> [r["baseline"] for r in seg_rows(group, {}, samples)][:1]  # doctest: +SKIP
        ['pt_folded']
    """
    cfg, rows = group.cfg, []
    for b, det in SEG_VS_DET.items():
        for k in cfg.ks:
            if (b, k) in samples and (det, k) in samples:
                s = ratio_stats(samples[(b, k)], samples[(det, k)])
                rows.append({**base, "kind": "seg_vs_det", "K": k, "backend": b, "status": "ok",
                             "note": f"seg latency / {det} (detection, same scale and runtime)", "pairs": cfg.pairs,
                             "reps": cfg.reps, "baseline": det, **spread(s, 4)})  # fmt: skip
    return rows


def measure_group(group: Group, env: dict[str, Any]) -> list[dict]:
    """Parity check, interleaved timing, memory and K growth of a built group; returns its rows.

    Args:
        group: A built ``Group``.
        env: The environment columns (``records.environment``).

    Examples:
        >>> rows = measure_group(group, environment(2))  # doctest: +SKIP
    """
    cfg = group.cfg
    base = {**env, "scale": group.scale, "imgsz": group.imgsz, "batch": group.batch}
    diffs = output_diffs(group)
    samples, gemm_rates = time_group(group)
    mem = group_memory(group)
    rows: list[dict] = []
    for k in cfg.ks:
        for b in (b for b in BACKENDS if b in cfg.backends):
            st = group.status.get((b, k)) or group.status.get((b, None))
            if st is None:
                continue
            row = {**base, "kind": "latency", "K": k, "backend": b, "status": st[0], "note": st[1],
                   "baseline": BASELINE[b]}  # fmt: skip
            if (b, k) in group.runners:
                row.update(_timing_cells(group, b, k, samples, gemm_rates))
                if (b, k) in diffs:
                    row["max_score_diff"] = f"{diffs[(b, k)]:.2e}"
                if (b, k) in mem:
                    row.update(_memory_cells(row, mem[(b, k)]))
            rows.append(row)
    return rows + growth_rows(group, base, samples) + seg_rows(group, base, samples)


__all__ = ["group_memory", "growth_rows", "measure_group", "output_diffs", "score_diff", "seg_rows", "time_group"]
