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
  * ``ort_fixed``: ``YOLOWorld.export(format="onnx")`` (the folded graph) in ONNX Runtime;
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

Weights are random (latency does not depend on weight values); BatchNorm statistics are randomised and all weights
rounded to float16-representable values, so Ultralytics' half-precision ``.pt`` round trip is exact.

Examples:
    >>> from yw_ext.bench import BenchConfig, run
    >>> rows = run(BenchConfig(scales=["n"], imgsz=[64], ks=[1, 3], pairs=1, out="/tmp/bench"))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import datetime as dt
import functools
import gc
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

WEIGHTS_NOTE = "random (latency does not depend on weight values)"
BACKENDS = ("ultralytics", "pt_eager", "pt_folded", "ultralytics_onnx", "ort_fixed", "ort_dynvocab", "trt_fp16",
            "trt_int8")  # fmt: skip
BASELINE = {"ultralytics": "ultralytics", "pt_eager": "ultralytics", "pt_folded": "ultralytics",
            "ultralytics_onnx": "ultralytics", "ort_fixed": "ultralytics_onnx", "ort_dynvocab": "ultralytics_onnx",
            "trt_fp16": "ultralytics", "trt_int8": "ultralytics"}  # fmt: skip
SCALE_ORDER = ("n", "s", "m", "l", "x", "xl")
COLUMNS = (
    "date", "yw_ext", "torch", "ultralytics", "onnxruntime", "tensorrt", "device", "cpu", "threads", "weights",
    "kind", "scale", "imgsz", "batch", "K", "backend", "status", "note", "pairs", "reps",
    "median_ms", "p90_ms", "throughput", "throughput_unit",
    "baseline", "ratio", "ratio_min", "ratio_max", "ratio_vs_ultralytics",
    "gflops", "achieved_gflops", "gemm_gflops", "gemm_fraction", "max_score_diff", "peak_rss_mb", "peak_delta_mb",
)  # fmt: skip
GEMM_N = 2048


# ================================================================================================ timing helpers
def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``.

    Examples:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str:
    """``module.__version__``, or ``""`` when it is not installed (never raises)."""
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return ""


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The environment columns of every row: date, versions, device, CPU, threads, weights note.

    Args:
        threads: CPU threads used by PyTorch and ONNX Runtime.
        device: ``"cpu"`` or a CUDA device string.

    Examples:
        >>> env = environment(2)
        >>> env["threads"], env["weights"].startswith("random")
        (2, True)
    """
    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - Python 3.9
        "yw_ext": _version("yw_ext"),
        "torch": torch.__version__,
        "ultralytics": _version("ultralytics"),
        "onnxruntime": _version("onnxruntime"),
        "tensorrt": _version("tensorrt"),
        "device": dev,
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores)",
        "threads": threads,
        "weights": WEIGHTS_NOTE,
    }


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
    """Call every runner ``rounds`` times (untimed): first-call allocations, lazy initialisation, caches."""
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


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place (``os.replace``).

    A crash or error leaves either the old file or the new one, never a half-written file.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
        >>> write_atomic(p, lambda t: t.write_text("ok")).read_text()
        'ok'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make results unreadable to others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_csv_atomic(path: str | Path, rows: Iterable[dict], columns: Sequence[str] = COLUMNS) -> Path:
    """Write ``rows`` (dicts; missing keys empty) as CSV with ``columns``, atomically.

    Examples:
        >>> import tempfile, pathlib
        >>> p = write_csv_atomic(pathlib.Path(tempfile.mkdtemp()) / "r.csv", [{"a": 1}], columns=("a", "b"))
        >>> p.read_text().splitlines()
        ['a,b', '1,']
    """
    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    return write_atomic(path, write)


def append_csv_atomic(path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Append ``rows`` to the CSV at ``path``: its rows so far and the new ones are rewritten atomically with
    ``columns`` (``write_csv_atomic``); a missing file is created.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = append_csv_atomic(p, [{"a": 1}], columns=("a", "b"))
        >>> append_csv_atomic(p, [{"b": 2}], columns=("a", "b")).read_text().splitlines()
        ['a,b', '1,', ',2']
    """
    path = Path(path)
    old: list[dict] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    return write_csv_atomic(path, old + list(rows), columns)


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
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g)
    b = torch.randn(n, n, generator=g)
    ad, bd = a.to(device), b.to(device)
    out = torch.empty(n, n, device=device)
    gflop = 2 * n**3 / 1e9
    runners = {"torch.mm": (lambda: torch.mm(ad, bd, out=out), gflop)}
    if _version("onnxruntime") and not str(device).startswith("cuda"):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("MatMul", ["A", "B"], ["C"])], "gemm",
            [helper.make_tensor_value_info(v, TensorProto.FLOAT, [n, n]) for v in "AB"],
            [helper.make_tensor_value_info("C", TensorProto.FLOAT, [n, n])])  # fmt: skip
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        proto.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
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
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else None
    samples, _ = interleaved_rounds({k: fn for k, (fn, _) in runners.items()}, runs, warmup, 1, sync, gap)
    return {k: [runners[k][1] / t for t in ts] for k, ts in samples.items()}


# ================================================================================================ configuration
@dataclasses.dataclass
class BenchConfig:
    """What to measure.

    Attributes:
        scales: Model sizes (``n``, ``s``, ``m``, ``l``, ``x``).
        imgsz: Image sizes.
        batch: Batch sizes.
        ks: Vocabulary sizes K.
        backends: Backends (``BACKENDS``); the baselines ``ultralytics`` and ``ultralytics_onnx`` are added when a
            backend compared with them is listed.
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
    """

    scales: list[str] = dataclasses.field(default_factory=lambda: ["n", "s"])
    imgsz: list[int] = dataclasses.field(default_factory=lambda: [640])
    batch: list[int] = dataclasses.field(default_factory=lambda: [1])
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 10, 80, 365, 1203])
    backends: list[str] = dataclasses.field(default_factory=lambda: list(BACKENDS))
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

    def __post_init__(self) -> None:
        """Normalise list arguments (``"1,80"``, ``(1, 80)``, ``80``) and check values."""
        self.scales = [str(s).lower() for s in _as_list(self.scales)]
        self.imgsz = [int(v) for v in _as_list(self.imgsz)]
        self.batch = [int(v) for v in _as_list(self.batch)]
        self.ks = sorted({int(v) for v in _as_list(self.ks)})
        self.backends = [str(b) for b in _as_list(self.backends)]
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; available: {', '.join(BACKENDS)}.")
        bad = [s for s in self.scales if s not in SCALE_ORDER]
        if bad:
            raise ValueError(f"unknown model size(s) {bad}; available: {', '.join(SCALE_ORDER)}.")
        for _ in range(2):  # every compared backend brings its baseline (and the ONNX baseline brings its own)
            self.backends += [BASELINE[b] for b in self.backends if BASELINE[b] not in self.backends]
        self.backends = [b for b in BACKENDS if b in self.backends]
        if not self.ks or min(self.ks) < 1 or not self.imgsz or not self.batch or not self.scales:
            raise ValueError("scales, imgsz, batch and ks need at least one value each, K >= 1.")
        if self.pairs < 1 or self.reps < 1 or self.warmup < 0 or self.threads < 1:
            raise ValueError("pairs, reps and threads must be >= 1, warmup >= 0.")
        self.text, self.memory, self.quick = _as_bool(self.text), _as_bool(self.memory), _as_bool(self.quick)

    @property
    def stem(self) -> str:
        """File stem of the outputs."""
        return self.name or ("bench_quick" if self.quick else "bench")


def _as_list(v: Any) -> list:
    """``"a,b"`` / ``("a", "b")`` / ``"a"`` / ``3`` -> list.

    Examples:
        >>> _as_list("1, 80,1203"), _as_list((1, 2)), _as_list(640)
        (['1', '80', '1203'], [1, 2], [640])
    """
    if v is None:
        return []
    if isinstance(v, str):
        return [s.strip() for s in v.split(",") if s.strip()]
    if isinstance(v, (list, tuple)):
        return list(v)
    return [v]


def _as_bool(v: Any) -> bool:
    """``True``/``"true"``/``1`` -> True, ``False``/``"false"``/``0`` -> False."""
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


# ================================================================================================ models
def randomize_(model: torch.nn.Module, seed: int = 0, fp16_exact: bool = True) -> torch.nn.Module:
    """Non-default BatchNorm statistics and head scalars, then (``fp16_exact``) every float tensor rounded to float16
    values.

    Rounding makes Ultralytics' half-precision ``.pt`` save / load exact, so both sides hold the very same weights.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if hasattr(m, "logit_scale") and isinstance(getattr(m, "bias", None), torch.nn.Parameter):
                m.bias.fill_(-1.0)
                m.logit_scale.fill_(1.0)
        if fp16_exact:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.copy_(t.half().float())
    return model


@contextlib.contextmanager
def _quiet():
    """Ultralytics' logger at WARNING (export chatter), restored afterwards."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def ort_session(path: str | Path, threads: int, device: str = "cpu"):
    """An ONNX Runtime session: ``threads`` intra-op threads, CUDA provider when ``device`` is CUDA and it exists."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # the dynamic-vocabulary default-input warning
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(str(path), so, providers=providers)


def _first(y: Any) -> torch.Tensor:
    """The decoded predictions ``(B, 4 + K, A)`` of a detection model's output."""
    while isinstance(y, (list, tuple)):
        y = y[0]
    return y


def _trt_status(device: str) -> str | None:
    """Why TensorRT cannot run here (None when it can)."""
    if not str(device).startswith("cuda"):
        return "no CUDA device selected (device=cpu)" if torch.cuda.is_available() else "no CUDA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not _version("tensorrt"):
        return "tensorrt package not installed"
    return None


@dataclasses.dataclass
class _Runner:
    """One timed variant: its call, a call returning its output, FLOPs and what the memory child needs."""

    fn: Callable[[], Any]
    output: Callable[[], np.ndarray]
    gflops: float
    mem: dict | None = None  # {"kind": "torch" | "onnx", "path": ..., ...} for the memory subprocess


class _Group:
    """All models of one (scale, imgsz, batch): every K and backend, built from the same random weights."""

    def __init__(self, cfg: BenchConfig, scale: str, imgsz: int, batch: int, tmp: Path):
        self.cfg, self.scale, self.imgsz, self.batch, self.tmp = cfg, scale, imgsz, batch, tmp
        self.runners: dict[tuple[str, int], _Runner] = {}
        self.status: dict[tuple[str, int | None], tuple[str, str]] = {}  # (backend, K or None) -> (status, note)
        self.mem_k = cfg.mem_k if cfg.mem_k in cfg.ks else max(cfg.ks)
        self.device = cfg.device
        g = torch.Generator().manual_seed(cfg.seed)
        self.x = torch.rand(batch, 3, imgsz, imgsz, generator=g)
        self.xd = self.x.to(self.device)
        self.xn = self.x.numpy()
        self.sync = torch.cuda.synchronize if str(self.device).startswith("cuda") else None
        self._dyn: Any = None  # the dynamic-vocabulary session, shared by every K

    # ---------------------------------------------------------------- building
    def build(self) -> None:
        """Build every (backend, K) runner; a backend that fails is recorded as an error and left out."""
        for k in self.cfg.ks:
            self._build_k(k)

    def _note(self, backend: str, k: int | None, status: str, note: str) -> None:
        self.status[(backend, k)] = (status, note)

    def _torch_runner(self, model: torch.nn.Module, gflops: float, name: str, k: int) -> _Runner:
        model = model.to(self.device).eval()
        x = self.xd

        def fn() -> Any:
            with torch.inference_mode():
                return model(x)

        mem = None
        if k == self.mem_k and self.cfg.memory:
            path = self.tmp / f"{name}_k{k}.pt"
            torch.save(model, path)
            mem = {"kind": "torch", "path": str(path)}
        return _Runner(fn, lambda: _first(fn()).float().cpu().numpy(), gflops, mem)

    def _onnx_runner(self, path: str | Path, gflops: float, feeds: dict, k: int, session: Any = None) -> _Runner:
        sess = session or ort_session(path, self.cfg.threads, self.device)

        def fn() -> Any:
            return sess.run(None, feeds)

        mem = None
        if k == self.mem_k and self.cfg.memory:
            mem = {"kind": "onnx", "path": str(path), "feeds": {n: list(v.shape) for n, v in feeds.items()}}
        return _Runner(fn, lambda: np.asarray(fn()[0]), gflops, mem)

    def _attempt(self, backend: str, k: int, make: Callable[[], _Runner]) -> None:
        if backend not in self.cfg.backends:
            return
        try:
            self.runners[(backend, k)] = make()
            self._note(backend, k, "ok", "")
        except ImportError as e:  # e.g. onnxruntime not installed
            self._note(backend, k, "skipped", f"{type(e).__name__}: {e}"[:300])
        except Exception as e:  # noqa: BLE001 - recorded in the CSV, the run goes on
            self._note(backend, k, "error", f"{type(e).__name__}: {e}"[:300])

    def _build_k(self, k: int) -> None:
        from ultralytics import YOLOWorld as UltralyticsYOLOWorld
        from ultralytics.utils.torch_utils import get_flops

        import yw_ext

        cfg, scale, imgsz, batch = self.cfg, self.scale, self.imgsz, self.batch
        d = self.tmp / f"k{k}"
        d.mkdir(parents=True, exist_ok=True)
        emb = F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(cfg.seed + 1000 + k)), dim=-1)
        names = [f"class{i}" for i in range(k)]
        with _quiet():
            torch.manual_seed(cfg.seed)
            ul = UltralyticsYOLOWorld(f"yolov8{scale}-worldv2.yaml")
            randomize_(ul.model, cfg.seed)
            ul.model.txt_feats = emb[None].clone()
            ul.model.model[-1].nc = k
            ul.model.names = dict(enumerate(names))
            pt = d / f"yolov8{scale}-worldv2.pt"
            ul.save(pt)
            ul = UltralyticsYOLOWorld(str(pt))  # as a user loads it; the fp16 round trip is exact (randomize_)
            ours = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
            ours.model.load_state_dict(ul.model.state_dict(), strict=True)
            ours.set_classes(names, embeddings=emb)
            ul_fused = copy.deepcopy(ul.model).eval().fuse(verbose=False)
            eager = copy.deepcopy(ours.model).eval().fuse(verbose=False)
            folded = copy.deepcopy(ours.model).eval()
            folded.reparameterize()
            folded = folded.fuse(verbose=False)
            gf_text = float(get_flops(copy.deepcopy(ul_fused), imgsz))
            gf_folded = float(get_flops(copy.deepcopy(folded), imgsz))
            ekw = {"imgsz": imgsz, "batch": batch, "simplify": True, "verbose": False}

            self._attempt("ultralytics", k, lambda: self._torch_runner(ul_fused, gf_text, "ultralytics", k))
            self._attempt("pt_eager", k, lambda: self._torch_runner(eager, gf_text, "pt_eager", k))
            self._attempt("pt_folded", k, lambda: self._torch_runner(folded, gf_folded, "pt_folded", k))
            feeds = {"images": self.xn}
            self._attempt("ultralytics_onnx", k, lambda: self._onnx_runner(
                str(Path(ul.export(format="onnx", **ekw)).resolve()), gf_text, feeds, k))
            self._attempt("ort_fixed", k, lambda: self._onnx_runner(
                ours.export(format="onnx", out=d / "yw_fixed.onnx", **ekw), gf_folded, feeds, k))
            if "ort_dynvocab" in cfg.backends:
                self._attempt("ort_dynvocab", k, lambda: self._dyn_runner(ours, emb, gf_text, k, ekw))
            self._trt(ours, gf_folded, k, d, ekw)

    def _dyn_runner(self, ours: Any, emb: torch.Tensor, gflops: float, k: int, ekw: dict) -> _Runner:
        if self._dyn is None:  # one file serves every K
            try:
                path = ours.export(format="onnx", dynamic_vocab=True, out=self.tmp / "yw_dynvocab.onnx", **ekw)
                self._dyn = (path, ort_session(path, self.cfg.threads, self.device))
            except Exception as e:  # noqa: BLE001 - recorded per K, not retried for the other K
                self._dyn = e
        if isinstance(self._dyn, Exception):
            raise self._dyn
        path, sess = self._dyn
        txt = emb[None].numpy().astype(np.float32)  # (1, K, D): one vocabulary, broadcast to the batch in the graph
        feeds = {"images": self.xn, "txt_feats": txt}
        return self._onnx_runner(path, gflops, feeds, k, session=sess)

    def _trt(self, ours: Any, gflops: float, k: int, d: Path, ekw: dict) -> None:
        for backend, q in (("trt_fp16", 16), ("trt_int8", 8)):
            if backend not in self.cfg.backends:
                continue
            why = _trt_status(self.device)
            if why is None and q == 8 and not self.cfg.data:
                why = "INT8 calibration needs data=<dataset.yaml>"
            if why is not None:
                self._note(backend, None, "skipped", why)
                continue

            def make(q: int = q, backend: str = backend) -> _Runner:
                from yw_ext.runtime.trt import TRTBackend

                kw = {**ekw, "device": self.device}
                if q == 8:
                    kw["data"] = self.cfg.data
                path = ours.export(format="engine", quantize=q, out=d / f"{backend}.engine", **kw)
                eng = TRTBackend(path, device=torch.device(self.device).index or 0)
                feeds = {"images": self.xn}
                return _Runner(lambda: eng.run(feeds), lambda: np.asarray(eng.run(feeds)), gflops, None)

            self._attempt(backend, k, make)

    # ---------------------------------------------------------------- measuring
    def measure(self, env: dict) -> list[dict]:
        """Parity check, interleaved timing, K growth, memory; returns the rows of this group."""
        cfg = self.cfg
        base = {**env, "scale": self.scale, "imgsz": self.imgsz, "batch": self.batch}
        rows: list[dict] = []
        diffs = {}
        for k in cfg.ks:  # outputs vs the Ultralytics baseline's (also a first warm-up call)
            outs = {}
            for b, kk in list(self.runners):
                if kk == k:
                    try:
                        outs[b] = self.runners[(b, k)].output()
                    except Exception as e:  # noqa: BLE001 - recorded, the run goes on without it
                        del self.runners[(b, k)]
                        self._note(b, k, "error", f"{type(e).__name__}: {e}"[:300])
            ref = outs.get("ultralytics")
            for b, y in outs.items():
                if ref is not None:
                    diffs[(b, k)] = float(np.abs(y[:, 4:] - ref[:, 4:]).max()) if y.shape == ref.shape else float("nan")
        gemms = gemm_runners(GEMM_N, cfg.threads, self.device)
        order: dict[Hashable, Callable[[], Any]] = {("gemm", name): fn for name, (fn, _) in gemms.items()}
        for k in cfg.ks:
            for b in BACKENDS:
                if (b, k) in self.runners:
                    order[(b, k)] = self.runners[(b, k)].fn
        print(f"  timing {self.scale}/{self.imgsz}/b{self.batch}: {len(order) - len(gemms)} variants + GEMM, "
              f"{cfg.warmup} warm-up + {cfg.pairs} rounds x {cfg.reps} reps ...", flush=True)
        samples, _ = interleaved_rounds(order, cfg.pairs, cfg.warmup, cfg.reps, self.sync, cfg.gap)
        gemm_rates = [max(gemms[name][1] / samples[("gemm", name)][i] for name in gemms) for i in range(cfg.pairs)]
        gemm_med = statistics.median(gemm_rates)  # per round: the faster GEMM engine
        mem = self._memory()
        for k in cfg.ks:
            for b in BACKENDS:
                if b not in cfg.backends:
                    continue
                st = self.status.get((b, k)) or self.status.get((b, None))
                if st is None:
                    continue
                row = {**base, "kind": "latency", "K": k, "backend": b, "status": st[0], "note": st[1],
                       "baseline": BASELINE[b]}
                if (b, k) not in self.runners:
                    rows.append(row)
                    continue
                r = self.runners[(b, k)]
                per_img = [1000 * t / self.batch for t in samples[(b, k)]]
                med = statistics.median(per_img)
                row.update(pairs=cfg.pairs, reps=cfg.reps, median_ms=_r(med, 3), p90_ms=_r(percentile(per_img, 90), 3),
                           throughput=_r(1000 / med, 2), throughput_unit="images/s")
                base_key = (BASELINE[b], k)
                if base_key in samples:
                    s = ratio_stats(samples[(b, k)], samples[base_key])
                    row.update(ratio=_r(s["median"], 4), ratio_min=_r(s["min"], 4), ratio_max=_r(s["max"], 4))
                if ("ultralytics", k) in samples:
                    s_ul = ratio_stats(samples[(b, k)], samples[("ultralytics", k)])
                    row["ratio_vs_ultralytics"] = _r(s_ul["median"], 4)
                if r.gflops > 0:
                    frac = [r.gflops * self.batch / t / g for t, g in zip(samples[(b, k)], gemm_rates)]
                    row.update(gflops=_r(r.gflops, 3), achieved_gflops=_r(r.gflops / (med / 1000), 2),
                               gemm_gflops=_r(gemm_med, 1), gemm_fraction=_r(statistics.median(frac), 4))
                else:
                    row["gemm_gflops"] = _r(gemm_med, 1)
                if (b, k) in diffs:
                    row["max_score_diff"] = f"{diffs[(b, k)]:.2e}"
                if (b, k) in mem:
                    m = mem[(b, k)]
                    if "error" in m:
                        row["note"] = (row["note"] + "; " if row["note"] else "") + f"memory: {m['error']}"[:200]
                    else:
                        row.update(peak_rss_mb=_r(m["peak_mb"], 1), peak_delta_mb=_r(m["peak_mb"] - m["rss0_mb"], 1))
                rows.append(row)
        ref = cfg.ref_k if cfg.ref_k in cfg.ks else (80 if 80 in cfg.ks else min(cfg.ks))
        for b in BACKENDS:
            for k in cfg.ks:
                if k == ref or (b, k) not in samples or (b, ref) not in samples:
                    continue
                s = ratio_stats(samples[(b, k)], samples[(b, ref)])
                rows.append({**base, "kind": "k_growth", "K": k, "backend": b, "status": "ok",
                             "note": f"latency at K={k} / at K={ref}", "pairs": cfg.pairs, "reps": cfg.reps,
                             "baseline": f"K={ref}", "ratio": _r(s["median"], 4), "ratio_min": _r(s["min"], 4),
                             "ratio_max": _r(s["max"], 4)})
        return rows

    def _memory(self) -> dict[tuple[str, int], dict]:
        """Peak memory of each backend at ``mem_k``, each in a fresh subprocess."""
        out: dict[tuple[str, int], dict] = {}
        if not self.cfg.memory:
            return out
        for (b, k), r in self.runners.items():
            if k != self.mem_k:
                continue
            if str(self.device).startswith("cuda"):
                out[(b, k)] = {"error": "peak memory is measured for CPU runs only"}
            elif r.mem is None:
                out[(b, k)] = {"error": "not measured for this backend"}
            else:
                spec = {**r.mem, "threads": self.cfg.threads, "input": list(self.xn.shape), "runs": 3}
                out[(b, k)] = memory_in_subprocess(spec)
        return out


def _r(v: float, nd: int) -> float | str:
    """``round(v, nd)``, ``""`` for NaN."""
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


# ================================================================================================ memory
def _proc_mb(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def memory_child(spec_json: str) -> dict:
    """Run inside the memory subprocess: load one model, reset the peak, run it, print peak and start RSS (JSON).

    ``spec``: ``{"kind": "torch" | "onnx", "path", "threads", "input": [B, 3, H, W], "runs", "feeds"?}``.
    """
    spec = json.loads(spec_json)
    x = np.random.default_rng(0).random(spec["input"], dtype=np.float32)
    if spec["kind"] == "onnx":
        sess = ort_session(spec["path"], spec["threads"])
        feeds = {"images": x}
        for name, shape in spec.get("feeds", {}).items():
            if name != "images":
                v = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
                feeds[name] = v / np.linalg.norm(v, axis=-1, keepdims=True)

        def run() -> None:
            sess.run(None, feeds)
    else:
        torch.set_num_threads(spec["threads"])
        model = torch.load(spec["path"], weights_only=False, map_location="cpu").eval()
        xt = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                model(xt)

    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    rss0 = _proc_mb("VmRSS")
    for _ in range(int(spec.get("runs", 3))):
        run()
    out = {"rss0_mb": rss0, "peak_mb": _proc_mb("VmHWM")}
    print("YW_MEMORY " + json.dumps(out), flush=True)
    return out


def memory_in_subprocess(spec: dict, timeout: float = 300) -> dict:
    """``memory_child`` in a fresh Python process; ``{"error": ...}`` where it cannot run (e.g. no ``/proc``)."""
    if not Path("/proc/self/clear_refs").exists():
        return {"error": "needs Linux /proc/self/clear_refs"}
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(spec["threads"])}
    code = "import sys; from yw_ext.bench import memory_child; memory_child(sys.argv[1])"
    try:
        p = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith("YW_MEMORY "):
            return json.loads(line[len("YW_MEMORY "):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
    return {"error": tail[0][:200]}


# ================================================================================================ text
def lvis_names() -> list[str]:
    """The 1203 LVIS class names from Ultralytics' ``cfg/datasets/lvis.yaml``, in class order.

    Examples:
        >>> len(lvis_names())
        1203
    """
    from ultralytics.utils import ROOT as UL_ROOT
    from ultralytics.utils import YAML

    names = YAML.load(UL_ROOT / "cfg" / "datasets" / "lvis.yaml")["names"]
    return [names[i] for i in sorted(names)]


def random_clip_state_dict(kind: str = "vit-b-32", seed: int = 0, vision: bool = False) -> dict[str, torch.Tensor]:
    """The text tower (OpenAI state-dict layout, 512-d output) of a random-weight CLIP built with open_clip, no
    download: ``"vit-b-32"`` size (width 512, 12 layers, 8 heads) or ``"tiny"`` (width 64, 2 layers, 1 head).

    ``vision=True`` keeps an image tower too: a tiny ViT (224 px, patch 32, width 64, 2 layers, 1 head, which is
    what OpenAI-layout loaders infer from width 64), for image prompts.

    Examples:
        >>> sd = random_clip_state_dict("tiny")
        >>> sd["text_projection"].shape, any(k.startswith("visual.") for k in sd)
        (torch.Size([64, 512]), False)
        >>> random_clip_state_dict("tiny", vision=True)["visual.proj"].shape
        torch.Size([64, 512])
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    width, layers, heads = {"tiny": (64, 2, 1), "vit-b-32": (512, 12, 8)}[kind]
    torch.manual_seed(seed)
    vcfg = (CLIPVisionCfg(layers=2, width=64, head_width=64, patch_size=32, image_size=224) if vision
            else CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=32))  # fmt: skip
    model = CLIP(512, vision_cfg=vcfg, text_cfg=CLIPTextCfg(width=width, layers=layers, heads=heads), quick_gelu=True,
                 cast_dtype=torch.float32)
    return {k: v for k, v in model.state_dict().items() if vision or not k.startswith("visual.")}


def save_random_clip(path: str | Path, kind: str = "tiny", seed: int = 0, vision: bool = False) -> Path:
    """Save ``random_clip_state_dict(kind, seed, vision)`` to ``path`` (loadable as ``$YW_CLIP`` / ``load_clip``)."""
    torch.save(random_clip_state_dict(kind, seed, vision), path)
    return Path(path)


def random_text_encoder(kind: str = "vit-b-32", seed: int = 0):
    """A random-weight CLIP text encoder built with open_clip (no download): ``"vit-b-32"`` size or ``"tiny"``.

    Examples:
        >>> enc = random_text_encoder("tiny")
        >>> enc.encode(["a dog"]).shape
        torch.Size([1, 512])
    """
    from yw_ext.text import CLIPTextEncoder

    return CLIPTextEncoder.from_openai_state_dict(random_clip_state_dict(kind, seed),
                                                  source=f"random {kind} (open_clip)")


def link_coco128(coco128: str | Path, root: str | Path, n: int, labelled_only: bool = True) -> Path:
    """A dataset YAML (train = val) over the first ``n`` COCO128 train images, linked (never copied) into ``root``.

    Images go to ``root/images/train``, their label files (where they exist) to ``root/labels/train``; the class
    names are COCO128's. ``labelled_only=False`` counts images without a label file among the first ``n`` too.

    Returns:
        ``root/data.yaml``.
    """
    from ultralytics.utils import YAML

    coco128, root = Path(coco128), Path(root)
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True, exist_ok=True)
    labels = coco128 / "labels" / "train2017"
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    if labelled_only:
        images = [p for p in images if (labels / f"{p.stem}.txt").is_file()]
    for im in images[:n]:
        (root / "images" / "train" / im.name).symlink_to(im)
        lb = labels / f"{im.stem}.txt"
        if lb.is_file():
            (root / "labels" / "train" / lb.name).symlink_to(lb)
    names = YAML.load(coco128 / "coco128.yaml")["names"]
    YAML.save(root / "data.yaml", {"path": str(root), "train": "images/train", "val": "images/train", "names": names})
    return root / "data.yaml"


def text_encoder(spec: str = "auto", device: str = "cpu"):
    """The encoder of the text measurements: ``"auto"`` = ``$YW_CLIP`` if set else random ``"vit-b-32"``."""
    from yw_ext.text import load_clip

    if spec == "auto":
        spec = "yw_clip" if os.environ.get("YW_CLIP") else "vit-b-32"
    if spec in {"vit-b-32", "tiny"}:
        return random_text_encoder(spec).to(device), f"random {spec} text tower (open_clip)"
    enc = load_clip(None if spec == "yw_clip" else spec, device=device)
    return enc, f"CLIP {enc.source}"


def bench_text(cfg: BenchConfig, env: dict) -> list[dict]:
    """Text-encoder throughput, embedding-cache hit cost and ``set_classes`` (LVIS 1203) cold vs cached.

    Each pair: an uncached encode (throughput), an empty-cache and a filled-cache ``encode_texts``, and an uncached
    and a cached ``YOLOWorld.set_classes``; ratios are medians of the per-pair ratios.
    """
    import yw_ext
    from yw_ext.text import EmbeddingCache, encode_texts

    names = lvis_names()
    enc, label = text_encoder(cfg.encoder, cfg.device)
    model = yw_ext.YOLOWorld(f"yw-v2-{cfg.scales[0]}.yaml")
    sync = torch.cuda.synchronize if str(cfg.device).startswith("cuda") else None
    print(f"text: {label}, {len(names)} LVIS names, {cfg.text_pairs} pairs ...", flush=True)
    encode_texts(enc, names[:64], cache=False)  # warm-up: tokenizer, allocator
    enc_t, cold_t, warm_t, set_cold, set_warm = [], [], [], [], []
    for _ in range(cfg.text_pairs):
        enc_t.append(timed(lambda: encode_texts(enc, names, cache=False), sync))
        with tempfile.TemporaryDirectory(prefix="yw_bench_cache_") as d:
            enc_cached = functools.partial(encode_texts, enc, names, cache=EmbeddingCache(d))
            cold_t.append(timed(enc_cached, sync))  # empty cache
            warm_t.append(timed(enc_cached, sync))  # every name cached
        with tempfile.TemporaryDirectory(prefix="yw_bench_cache_") as d:
            set_cached = functools.partial(model.set_classes, names, encoder=enc, cache=EmbeddingCache(d))
            set_cold.append(timed(set_cached, sync))
            set_warm.append(timed(set_cached, sync))
    base = {**env, "scale": cfg.scales[0], "K": len(names), "status": "ok", "pairs": cfg.text_pairs, "reps": 1}
    med = statistics.median(enc_t)
    rows = [{**base, "kind": "text_encoder", "backend": label, "note": "encode_texts(cache=False), LVIS names",
             "median_ms": _r(1000 * med, 2), "p90_ms": _r(1000 * percentile(enc_t, 90), 2),
             "throughput": _r(len(names) / med, 1), "throughput_unit": "prompts/s"}]
    for kind, cold, warm, what in (("embedding_cache", cold_t, warm_t, "encode_texts"),
                                   ("set_classes", set_cold, set_warm, "YOLOWorld.set_classes")):
        s = ratio_stats(warm, cold)
        rows.append({**base, "kind": kind, "backend": "uncached", "note": f"{what}, empty cache ({label})",
                     "median_ms": _r(1000 * statistics.median(cold), 2), "p90_ms": _r(1000 * percentile(cold, 90), 2)})
        rows.append({**base, "kind": kind, "backend": "cached", "note": f"{what}, every name in the cache ({label})",
                     "median_ms": _r(1000 * statistics.median(warm), 3), "p90_ms": _r(1000 * percentile(warm, 90), 3),
                     "baseline": "uncached", "ratio": _r(s["median"], 5), "ratio_min": _r(s["min"], 5),
                     "ratio_max": _r(s["max"], 5)})
    return rows


# ================================================================================================ report
def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "" if v in ("", None) else fmt.format(float(v))


def format_table(rows: Sequence[dict]) -> str:
    """Markdown tables of the latency, K-growth, GEMM and text rows.

    Examples:
        >>> format_table([]).splitlines()[0][:39]
        '| model | imgsz | batch | K | backend |'
    """
    head = ("| model | imgsz | batch | K | backend | ms/img median | p90 | img/s | ratio [min-max] | vs | GFLOP/s | "
            "of GEMM | peak MB (+run) | status |")
    out = [head, "|" + "---|" * 14]
    for r in rows:
        if r.get("kind") != "latency":
            continue
        ratio = f"{float(r['ratio']):.2f} [{float(r['ratio_min']):.2f}-{float(r['ratio_max']):.2f}]" \
            if r.get("ratio") not in ("", None) else ""
        mem = f"{float(r['peak_rss_mb']):.0f} (+{float(r['peak_delta_mb']):.0f})" \
            if r.get("peak_rss_mb") not in ("", None) else ""
        frac = f"{100 * float(r['gemm_fraction']):.0f}%" if r.get("gemm_fraction") not in ("", None) else ""
        status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('note', '')}"
        out.append(f"| {r['scale']} | {r['imgsz']} | {r['batch']} | {r['K']} | {r['backend']} | "
                   f"{_f(r.get('median_ms'))} | {_f(r.get('p90_ms'))} | {_f(r.get('throughput'))} | {ratio} | "
                   f"{r.get('baseline', '') if ratio else ''} | {_f(r.get('achieved_gflops'))} | {frac} | {mem} | "
                   f"{status} |")
    growth = [r for r in rows if r.get("kind") == "k_growth"]
    if growth:
        out += ["", "| model | imgsz | batch | backend | K | latency / latency at | ratio [min-max] |",
                "|" + "---|" * 7]
        for r in growth:
            out.append(f"| {r['scale']} | {r['imgsz']} | {r['batch']} | {r['backend']} | {r['K']} | {r['baseline']} | "
                       f"{float(r['ratio']):.2f} [{float(r['ratio_min']):.2f}-{float(r['ratio_max']):.2f}] |")
    other = [r for r in rows if r.get("kind") in {"gemm", "text_encoder", "embedding_cache", "set_classes"}]
    if other:
        out += ["", "| measurement | what | median ms | throughput | ratio [min-max] | note |", "|" + "---|" * 6]
        for r in other:
            thr = f"{_f(r.get('throughput'))} {r.get('throughput_unit', '')}".strip()
            ratio = f"{float(r['ratio']):.4f} [{float(r['ratio_min']):.4f}-{float(r['ratio_max']):.4f}] vs " \
                    f"{r['baseline']}" if r.get("ratio") not in ("", None) else ""
            out.append(f"| {r['kind']} | {r['backend']} | {_f(r.get('median_ms'), '{:.2f}')} | {thr} | {ratio} | "
                       f"{r.get('note', '')} |")
    return "\n".join(out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _latency_axis(ax: Any, title: str) -> None:
    """The y label, title, grid and legend of one latency panel."""
    ax.set_ylabel("ms per image (median)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_latency_figure(fig: Any, axes: Any, measured: bool, path: str | Path, title: str) -> Path:
    """Title the figure (a note in the first panel when nothing was ``measured``), write it as PNG atomically, close
    it."""
    if not measured:
        axes[0][0].text(0.5, 0.5, "no latency measured", ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = write_atomic(path, lambda t: fig.savefig(t, dpi=110, format="png"))
    _plt().close(fig)
    return p


def plot_latency_vs_k(rows: Sequence[dict], path: str | Path) -> Path:
    """Median ms/image vs K (log axis), one line per backend, one panel per model size / image size / batch."""
    plt = _plt()
    lat = [r for r in rows if r.get("kind") == "latency" and r.get("median_ms") not in ("", None)]
    groups = sorted({(r["scale"], r["imgsz"], r["batch"]) for r in lat},
                    key=lambda g: (SCALE_ORDER.index(g[0]) if g[0] in SCALE_ORDER else 99, g[1], g[2]))
    n = max(1, len(groups))
    fig, axes = plt.subplots(1, n, figsize=(max(6.4, 5.2 * n), 4.4), squeeze=False)
    for ax, (scale, imgsz, batch) in zip(axes[0], groups):
        sel = [r for r in lat if (r["scale"], r["imgsz"], r["batch"]) == (scale, imgsz, batch)]
        ks = sorted({int(r["K"]) for r in sel})
        for b in BACKENDS:
            pts = sorted((int(r["K"]), float(r["median_ms"])) for r in sel if r["backend"] == b)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1.5 if "ultralytics" in b else 1.2,
                        ls="--" if b.startswith("ultralytics") else "-", label=b)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("vocabulary size K")
        _latency_axis(ax, f"{scale} / {imgsz} px / batch {batch}")
    return _save_latency_figure(fig, axes, bool(groups), path,
                                "Latency vs vocabulary size K\n(medians; the CSV's ratios come from interleaved pairs)")


def plot_latency_vs_size(rows: Sequence[dict], path: str | Path, ks: Sequence[int] | None = None) -> Path:
    """Median ms/image vs model size, one line per backend; one panel per image size / batch / K (default: K = 80
    when measured, and the largest K)."""
    plt = _plt()
    lat = [r for r in rows if r.get("kind") == "latency" and r.get("median_ms") not in ("", None)]
    have = sorted({int(r["K"]) for r in lat})
    if ks is None:
        ks = sorted({80 if 80 in have else have[0], have[-1]}) if have else []
    panels = sorted({(int(r["imgsz"]), int(r["batch"]), int(r["K"])) for r in lat if int(r["K"]) in ks})
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(max(6.4, 5.2 * n), 4.4), squeeze=False)
    for ax, (imgsz, batch, k) in zip(axes[0], panels):
        here = [r for r in lat if (int(r["imgsz"]), int(r["batch"]), int(r["K"])) == (imgsz, batch, k)]
        scales = [s for s in SCALE_ORDER if any(r["scale"] == s for r in here)]
        for b in BACKENDS:
            pts = {r["scale"]: float(r["median_ms"]) for r in here if r["backend"] == b}
            if pts:
                xs = [i for i, s in enumerate(scales) if s in pts]
                ax.plot(xs, [pts[scales[i]] for i in xs], marker="o", ls="--" if b.startswith("ultralytics") else "-",
                        label=b)
        ax.set_xticks(range(len(scales)))
        ax.set_xticklabels([f"yw-v2-{s}" for s in scales])
        ax.set_xlim(-0.5, max(0.5, len(scales) - 0.5))
        _latency_axis(ax, f"K = {k}, {imgsz} px, batch {batch}")
    return _save_latency_figure(fig, axes, bool(panels), path,
                                "Latency vs model size (each size timed in its own group)")


# ================================================================================================ runner
def run(cfg: BenchConfig) -> list[dict]:
    """Run the whole suite; writes ``<out>/<stem>.csv``, ``<stem>_latency_vs_k.png``, ``<stem>_latency_vs_size.png``
    and ``<stem>.md``, prints the table, and returns the rows."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    t0 = time.perf_counter()
    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        env = environment(cfg.threads, cfg.device)
        rows: list[dict] = []
        for engine, rates in measure_gemm(GEMM_N, cfg.gemm_runs, 2, cfg.threads, cfg.device, cfg.gap).items():
            med = statistics.median(rates)
            rows.append({**env, "kind": "gemm", "backend": engine, "status": "ok", "pairs": cfg.gemm_runs, "reps": 1,
                         "median_ms": _r(1000 * 2 * GEMM_N**3 / 1e9 / med, 2), "throughput": _r(med, 1),
                         "throughput_unit": "GFLOP/s", "gemm_gflops": _r(med, 1),
                         "note": f"{GEMM_N}x{GEMM_N} float32, alone; min..max {min(rates):.1f}..{max(rates):.1f}"})
            print(f"GEMM {GEMM_N}x{GEMM_N} float32, {engine}: {med:.1f} GFLOP/s (min {min(rates):.1f}, "
                  f"max {max(rates):.1f})", flush=True)
        if cfg.text:
            rows += bench_text(cfg, env)
        for scale in cfg.scales:
            for imgsz in cfg.imgsz:
                for batch in cfg.batch:
                    print(f"building {scale}/{imgsz}/b{batch}: K = {cfg.ks}, backends {cfg.backends} ...", flush=True)
                    with tempfile.TemporaryDirectory(prefix="yw_bench_") as td:
                        group = _Group(cfg, scale, imgsz, batch, Path(td))
                        group.build()
                        rows += group.measure(env)
                        del group
                        gc.collect()
        out = Path(cfg.out)
        csv_path = write_csv_atomic(out / f"{cfg.stem}.csv", rows)
        plot_latency_vs_k(rows, out / f"{cfg.stem}_latency_vs_k.png")
        plot_latency_vs_size(rows, out / f"{cfg.stem}_latency_vs_size.png")
        table = format_table(rows)
        elapsed = time.perf_counter() - t0
        header = (f"yw_ext benchmark ({env['date']}, {env['cpu']}, {cfg.threads} threads, device {env['device']}, "
                  f"torch {env['torch']}, ultralytics {env['ultralytics']}, onnxruntime {env['onnxruntime']}, "
                  f"tensorrt {env['tensorrt'] or 'not installed'}; weights {WEIGHTS_NOTE}; {cfg.pairs} pairs; "
                  f"{elapsed:.0f} s)")
        write_atomic(out / f"{cfg.stem}.md", lambda t: t.write_text(header + "\n\n" + table + "\n"))
        print("\n" + header + "\n\n" + table + "\n")
        print(f"wrote {csv_path}, {cfg.stem}_latency_vs_k.png, {cfg.stem}_latency_vs_size.png, {cfg.stem}.md "
              f"in {out}")
        return rows
    finally:
        torch.set_num_threads(old_threads)


def parse(argv: Sequence[str] | None = None) -> BenchConfig:
    """Command-line options of ``benchmarks/run.py`` -> ``BenchConfig``.

    Examples:
        >>> parse(["--quick"]).ks
        [1, 80, 1203]
        >>> parse(["--scales", "s", "--imgsz", "640", "--ks", "80,1203"]).scales
        ['s']
    """
    d = BenchConfig()
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description="yw_ext benchmark suite (see yw_ext.bench).")
    ap.add_argument("--quick", action="store_true", help="n at 320, K 1/80/1203, 3 pairs (< 3 min on 2 cores)")
    ap.add_argument("--scales", help=f"model sizes, comma-separated (default {','.join(d.scales)})")
    ap.add_argument("--imgsz", help="image sizes (default 640)")
    ap.add_argument("--batch", help="batch sizes (default 1)")
    ap.add_argument("--ks", help="vocabulary sizes (default 1,10,80,365,1203)")
    ap.add_argument("--backends", help=f"default all: {','.join(BACKENDS)}")
    ap.add_argument("--pairs", type=int, help="timed rounds (default 10)")
    ap.add_argument("--warmup", type=int, help="untimed rounds (default 2)")
    ap.add_argument("--gap", type=float, help="seconds of idle before each timed sample (default 0.05)")
    ap.add_argument("--reps", type=int, help="back-to-back calls per sample, the fastest counts (default 2)")
    ap.add_argument("--threads", type=int, help="CPU threads (default min(2, cores))")
    ap.add_argument("--device", help="cpu (default) or cuda[:i]")
    ap.add_argument("--encoder", help="auto (default: $YW_CLIP or random vit-b-32), vit-b-32, tiny, or a CLIP path")
    ap.add_argument("--text-pairs", type=int, dest="text_pairs", help="pairs of the text measurements (default 4)")
    ap.add_argument("--no-text", dest="text", action="store_false", default=None, help="skip the text measurements")
    ap.add_argument("--no-memory", dest="memory", action="store_false", default=None, help="skip peak memory")
    ap.add_argument("--mem-k", type=int, dest="mem_k", help="K of the memory measurement (default: largest)")
    ap.add_argument("--ref-k", type=int, dest="ref_k", help="reference K of the growth ratios (default 80)")
    ap.add_argument("--data", help="calibration dataset YAML (TensorRT INT8)")
    ap.add_argument("--out", help="output folder (default benchmarks/results)")
    ap.add_argument("--name", help="output file stem (default bench / bench_quick)")
    a = vars(ap.parse_args(argv))
    quick = a.pop("quick")
    kw = {k: v for k, v in a.items() if v is not None}
    return quick_config(**kw) if quick else BenchConfig(**kw)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """``benchmarks/run.py`` entry point."""
    return run(parse(argv))


def cli(tokens: Sequence[str]) -> list[dict]:
    """``yw bench key=value ...``: the ``BenchConfig`` fields as keys, ``quick=True`` for the quick preset.

    Examples:
        >>> cli(["quick=True", "scales=n", "ks=1,3", "imgsz=64", "out=/tmp/b"])  # doctest: +SKIP
    """
    from yw_ext.cli import parse_args

    args = parse_args(list(tokens))
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise SystemExit(f"yw bench: unknown argument(s) {unknown}; use {', '.join(sorted(fields))}.")
    for k in ("out", "name", "encoder", "device", "data"):  # keep as given
        if k in args and args[k] is not None:
            args[k] = str(args[k])
    quick = _as_bool(args.pop("quick", False))
    return run(quick_config(**args) if quick else BenchConfig(**args))


if __name__ == "__main__":
    main()
