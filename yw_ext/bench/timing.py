# yw_ext, AGPL-3.0 license
"""The timing loop: interleaved rounds, pairwise ratios, percentiles, ONNX Runtime sessions and the GEMM ceiling.

Every runner of a group runs once per round (the order reversed every other round) after warm-up rounds, so that
``ratio_stats`` pairs measurements taken seconds apart, never two separately timed medians.

Examples:
    >>> samples, _ = interleaved_rounds({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=1)
    >>> ratio_stats(samples["a"], samples["b"])["n"]
    3
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from yw_ext.bench.config import GEMM_N
from yw_ext.bench.records import version_of


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None,
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds taken by one call of ``fn`` (``sync()`` before stopping the clock, e.g. ``torch.cuda.synchronize``).

    ``clock`` is wall time by default; ``time.thread_time`` times the calling thread's CPU time instead.

    Examples:
        >>> timed(lambda: None) >= 0
        True
    """
    t = clock()
    fn()
    if sync is not None:
        sync()
    return clock() - t


def warm_up(runners: dict[Hashable, Callable[[], Any]], rounds: int) -> None:
    """Call every runner ``rounds`` times (untimed): first-call allocations, lazy initialisation, caches.

    Examples:
        >>> calls = []
        >>> warm_up({"a": lambda: calls.append("a")}, 2)
        >>> calls
        ['a', 'a']
    """
    for _ in range(rounds):
        for fn in runners.values():
            fn()


def interleaved_rounds(
    runners: dict[Hashable, Callable[[], Any]],
    rounds: int,
    warmup: int = 1,
    reps: int = 1,
    sync: Callable[[], None] | None = None,
    gap: float = 0.0,
    rotate: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[dict[Hashable, list[float]], dict[Hashable, list[float]]]:
    """Time every runner once per round (A B C ... then ... C B A), after ``warmup`` untimed rounds.

    Each round gives each runner one sample, the fastest of ``reps`` back-to-back calls (which filters bursts of load
    from other processes without separating the variants in time). Samples are index-aligned across runners, so
    ``ratio_stats`` pairs measurements taken seconds apart, never two separately timed medians.

    ``gap`` seconds of sleep before each sample let the previous runner's worker threads stop spinning: ONNX Runtime's
    intra-op pool and PyTorch's OpenMP threads busy-wait for a while after a call, and on a 2-core machine that steals
    the next runner's cores (measured here: 2-3x slower ONNX Runtime sessions and 2x slower PyTorch right after
    another runtime, none with a 50 ms gap). A deployment runs one model at a time and never pays this.

    Args:
        runners: name -> zero-argument callable.
        rounds: timed rounds (= pairs for every ratio).
        warmup: untimed rounds first.
        reps: calls per sample.
        sync: called before each clock stop (e.g. ``torch.cuda.synchronize``).
        gap: seconds to sleep before each sample.
        rotate: rotate the order by one runner per round (A B C, B C A, C A B, ...) instead of reversing it.
        clock: the clock of ``timed`` (``time.thread_time``: the calling thread's CPU time).

    Returns:
        ``(samples, calls)``: per runner, the ``rounds`` per-round samples and all ``rounds * reps`` call times, in
        seconds.

    Examples:
        >>> s, c = interleaved_rounds({"a": lambda: None, "b": lambda: None}, rounds=3, warmup=0, reps=2)
        >>> len(s["a"]), len(c["b"])
        (3, 6)
    """
    warm_up(runners, warmup)
    names = list(runners)
    samples: dict[Hashable, list[float]] = {n: [] for n in names}
    calls: dict[Hashable, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        if rotate:
            i = r % max(1, len(names))
            order = names[i:] + names[:i]
        else:
            order = names if r % 2 == 0 else names[::-1]
        for n in order:
            if gap > 0:
                time.sleep(gap)
            ts = [timed(runners[n], sync, clock) for _ in range(max(1, reps))]
            calls[n].extend(ts)
            samples[n].append(min(ts))
    return samples, calls


def ratio_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Median and min..max spread of the pairwise ratios ``a[i] / b[i]``.

    Examples:
        >>> ratio_stats([2.0, 3.0, 4.0], [1.0, 1.0, 2.0])
        {'median': 2.0, 'min': 2.0, 'max': 3.0, 'n': 3}
    """
    r = [x / y for x, y in zip(a, b) if y > 0]
    if not r:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": statistics.median(r), "min": min(r), "max": max(r), "n": len(r)}


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation) of ``values``.

    Examples:
        >>> percentile([1.0, 2.0, 3.0, 4.0, 5.0], 90)
        4.6
    """
    return float(np.percentile(np.asarray(values, dtype=float), q))


def cuda_sync(device: str) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for a CUDA ``device`` (the clock must wait for the GPU), else None.

    Examples:
        >>> cuda_sync("cpu") is None
        True
    """
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.synchronize


def ort_session(path: str | Path | bytes, threads: int, device: str = "cpu") -> Any:
    """An ONNX Runtime session: ``threads`` intra-op threads, CUDA provider when ``device`` is CUDA and it exists.

    Args:
        path: The ``.onnx`` file, or a serialized model (``bytes``).
        threads: Intra-op threads (one inter-op thread).
        device: ``"cpu"`` or ``"cuda[:i]"``.

    Examples:
        >>> sess = ort_session("yw_fixed.onnx", threads=2)  # doctest: +SKIP
        >>> sess.get_providers()  # doctest: +SKIP
        ['CPUExecutionProvider']
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the dynamic-vocabulary default-input warning
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), so, providers=providers)


def _matmul_model(n: int) -> bytes:
    """A serialized ONNX model computing ``C = A @ B`` for float32 ``n x n`` matrices (opset 17)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "AB"],
        [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


def gemm_runners(n: int = GEMM_N, threads: int = 1, device: str = "cpu") -> dict[str, tuple[Callable[[], Any], float]]:
    """Float32 ``n x n`` matrix products and their GFLOP count (``2 n^3 / 1e9``): ``torch.mm`` and, when ONNX Runtime
    is installed, its ``MatMul`` (MLAS).

    Both are measured because either can be far from the machine's peak: on the AMD EPYC machines of this project
    ``torch.mm`` ran at ~210 GFLOP/s and ONNX Runtime's MatMul (and a large PyTorch 3x3 convolution) at ~450-480.
    The ceiling is the faster of the two.

    Examples:
        >>> r = gemm_runners(64)
        >>> sorted(r), round(r["torch.mm"][1], 6)
        (['onnxruntime.MatMul', 'torch.mm'], 0.000524)
    """
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    ad, bd = a.to(device), b.to(device)
    out = torch.empty(n, n, device=device)
    gflop = 2 * n**3 / 1e9
    runners = {"torch.mm": (lambda: torch.mm(ad, bd, out=out), gflop)}
    if version_of("onnxruntime") and not str(device).startswith("cuda"):
        sess = ort_session(_matmul_model(n), threads)
        feeds = {"A": a.numpy(), "B": b.numpy()}
        runners["onnxruntime.MatMul"] = (lambda: sess.run(None, feeds), gflop)
    return runners


def measure_gemm(n: int = GEMM_N, runs: int = 10, warmup: int = 2, threads: int = 1, device: str = "cpu",
                 gap: float = 0.0) -> dict[str, list[float]]:
    """GFLOP/s of ``runs`` interleaved timed GEMMs per engine (``gemm_runners``) after ``warmup`` untimed ones.

    Examples:
        >>> rates = measure_gemm(128, runs=3, warmup=1)
        >>> len(rates["torch.mm"]), min(rates["torch.mm"]) > 0
        (3, True)
    """
    runners = gemm_runners(n, threads, device)
    samples, _ = interleaved_rounds({k: fn for k, (fn, _) in runners.items()}, runs, warmup, 1, cuda_sync(device), gap)
    return {k: [runners[k][1] / t for t in ts] for k, ts in samples.items()}


__all__ = ["cuda_sync", "gemm_runners", "interleaved_rounds", "measure_gemm", "ort_session", "percentile",
           "ratio_stats", "timed", "warm_up"]  # fmt: skip
