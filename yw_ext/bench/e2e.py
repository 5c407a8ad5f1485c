# yw_ext, AGPL-3.0 license
"""End-to-end ``predict`` throughput (``yw bench e2e=True``): decoding, letterbox, forward, NMS and results.

Every backend predicts over the same images (COCO128's 128 images by default, streamed one at a time, batch 1,
``save=False``), interleaved round by round with its baseline, at each K:

- ``ultralytics``: ``ultralytics.YOLOWorld(<.pt>).predict(stream=True)``: the baseline;
- ``pt_eager``: yw_ext ``YOLOWorld.predict`` (text path, unfolded), against ``ultralytics``;
- ``pt_folded``: the same after ``reparameterize()`` (its head reduces over classes in ``predict``), against
  ``ultralytics``;
- ``ultralytics_onnx``: Ultralytics' own ONNX export of that ``.pt``, predicted by Ultralytics'
  ``DetectionPredictor`` (as ``ultralytics.YOLO(file)``), against ``ultralytics``;
- ``ort_autobackend``: yw_ext's folded ONNX (``scores="full"``) predicted through Ultralytics' ``AutoBackend``
  (``yw_ext.YOLOWorld(file).predict``), against ``ultralytics_onnx``;
- ``runtime``: ``yw_ext.runtime.Detector`` on yw_ext's folded ONNX with ``scores="max"``, one image per call,
  against ``ultralytics_onnx``.

A round's sample is the wall time of the whole pass over the images (images/s = images / time); the ratio is the
median of per-round ratios. The split (ms per image) is Ultralytics' own ``Results.speed`` (pre-process, inference,
post-process; image decoding is outside it) for the Ultralytics predictors and, for the runtime, the time in
``Detector.forward`` (inference), in ``Detector._postprocess`` and NMS (post-process), and the rest of ``predict``
(pre-process: decoding, letterbox, normalisation, box scaling).

Examples:
    >>> rows = run_e2e(BenchConfig(scales=["n"], imgsz=[64], ks=[3], e2e=True, e2e_images=2))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yw_ext.bench.config import BenchConfig
from yw_ext.bench.records import rounded, spread
from yw_ext.bench.timing import ratio_stats

E2E_BACKENDS = ("ultralytics", "pt_eager", "pt_folded", "ultralytics_onnx", "ort_autobackend", "runtime")
E2E_BASELINE = {"ultralytics": "ultralytics", "pt_eager": "ultralytics", "pt_folded": "ultralytics",
                "ultralytics_onnx": "ultralytics", "ort_autobackend": "ultralytics_onnx",
                "runtime": "ultralytics_onnx"}  # fmt: skip
COCO128_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "coco128" / "images" / "val2017"


def e2e_images(cfg: BenchConfig) -> list[Path]:
    """The first ``cfg.e2e_images`` images (sorted) of ``cfg.images`` (a folder, searched recursively).

    Raises:
        FileNotFoundError: no images there.
    """
    root = Path(cfg.images) if cfg.images else COCO128_DEFAULT
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    if not files:
        raise FileNotFoundError(f"yw bench e2e=True: no images under {root} (images=<folder>).")
    return files[: cfg.e2e_images]


class _Split:
    """Per-image pre-process / inference / post-process milliseconds over every pass (warm-up included; means)."""

    def __init__(self):
        self.pre, self.inf, self.post = [], [], []

    def add(self, pre: float, inf: float, post: float) -> None:
        self.pre.append(pre)
        self.inf.append(inf)
        self.post.append(post)

    def means(self) -> dict[str, float]:
        return {k: statistics.mean(v) for k, v in (("pre", self.pre), ("inf", self.inf), ("post", self.post)) if v}


def _ultralytics_exported(path: str) -> Any:
    """An exported file as ``ultralytics.YOLO(path, task="detect")`` loads it: a ``Model`` whose predictor is
    Ultralytics' ``DetectionPredictor`` (``ultralytics.YOLOWorld`` only takes ``.pt`` files)."""
    from yw_ext.seam import DetectionPredictor, Model

    class Exported(Model):
        @property
        def task_map(self) -> dict:
            return {"detect": {"predictor": DetectionPredictor}}

    return Exported(path, task="detect")


def _ultralytics_pass(model: Any, folder: Path, imgsz: int, split: _Split) -> Callable[[], None]:
    """One pass of ``model.predict(folder, stream=True)`` (Ultralytics' predictor), batch 1."""

    def run() -> None:
        for r in model.predict(str(folder), stream=True, save=False, verbose=False, imgsz=imgsz, batch=1):
            s = r.speed
            split.add(s["preprocess"], s["inference"], s["postprocess"])

    return run


def _runtime_pass(det: Any, files: list[Path], split: _Split) -> Callable[[], None]:
    """One pass of ``Detector.predict`` over ``files``, one image per call; forward / postprocess timed inside."""
    forward, post = det.forward, det._postprocess
    clock = {"inf": 0.0, "post": 0.0}

    def timed(fn: Callable, key: str) -> Callable:
        def call(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[key] += time.perf_counter() - t

        return call

    det.forward, det._postprocess = timed(forward, "inf"), timed(post, "post")

    def run() -> None:
        for f in files:
            clock["inf"] = clock["post"] = 0.0
            t = time.perf_counter()
            det.predict(str(f))
            total = time.perf_counter() - t
            split.add(1000 * (total - clock["inf"] - clock["post"]), 1000 * clock["inf"], 1000 * clock["post"])

    return run


def _passes(cfg: BenchConfig, scale: str, imgsz: int, k: int, tmp: Path, files: list[Path]) -> dict[str, Any]:
    """The predict passes of every e2e backend at K (same random weights and vocabulary), with their splits."""
    folder = tmp / "images"  # the selected images, linked: Ultralytics streams a folder
    folder.mkdir(exist_ok=True)
    for f in files:
        (folder / f.name).symlink_to(f.resolve())
    return _build_passes(cfg, scale, imgsz, k, tmp, files, folder)


def _build_passes(cfg: BenchConfig, scale: str, imgsz: int, k: int, tmp: Path, files: list[Path],
                  folder: Path) -> dict[str, Any]:
    """The predict passes of every e2e backend at K (same random weights and vocabulary), with their splits."""
    import torch.nn.functional as F
    import torch

    import yw_ext
    from yw_ext.bench.models import Group, quiet
    from yw_ext.runtime import Detector

    d = tmp / f"k{k}"
    d.mkdir(parents=True, exist_ok=True)
    emb = F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(cfg.seed + 1000 + k)), dim=-1)
    group = Group(cfg, scale, imgsz, 1, tmp)
    passes: dict[str, Any] = {}
    with quiet():
        m = group._models(k, emb, d)
        ekw = {"imgsz": imgsz, "batch": 1, "simplify": True, "verbose": False}
        folded = copy.deepcopy(m.ours)
        folded.reparameterize()
        models = {"ultralytics": m.ultralytics, "pt_eager": m.ours, "pt_folded": folded}
        models["ultralytics_onnx"] = _ultralytics_exported(str(Path(m.ultralytics.export(format="onnx", **ekw))))
        models["ort_autobackend"] = yw_ext.YOLOWorld(m.ours.export(format="onnx", out=d / "yw_full.onnx", **ekw))
        for b, model in models.items():
            split = _Split()
            passes[b] = (_ultralytics_pass(model, folder, imgsz, split), split)
        path = m.ours.export(format="onnx", scores="max", out=d / "yw_max.onnx", **ekw)  # the runtime's graph
        split = _Split()
        det = Detector(path, threads=cfg.threads)
        passes["runtime"] = (_runtime_pass(det, sorted(folder.iterdir()), split), split)
    return passes


def _rows_of_k(cfg: BenchConfig, base: dict, k: int, samples: dict[str, list[float]], splits: dict[str, _Split],
               n_images: int) -> list[dict]:
    """One ``e2e`` row per backend at K: images/s, ms per image, ratio against its baseline, the split."""
    rows = []
    for b in E2E_BACKENDS:
        if b not in samples:
            continue
        per_img = [1000 * t / n_images for t in samples[b]]
        med = statistics.median(per_img)
        sp = splits[b].means()
        row = {**base, "kind": "e2e", "K": k, "backend": b, "status": "ok", "baseline": E2E_BASELINE[b],
               "pairs": cfg.pairs, "reps": 1, "median_ms": rounded(med, 3), "p90_ms": rounded(max(per_img), 3),
               "throughput": rounded(1000 / med, 2), "throughput_unit": "images/s",
               "preprocess_ms": rounded(sp.get("pre"), 3), "inference_ms": rounded(sp.get("inf"), 3),
               "postprocess_ms": rounded(sp.get("post"), 3),
               "note": f"predict over {n_images} images, batch 1, streamed, save=False"}  # fmt: skip
        if E2E_BASELINE[b] in samples:
            row.update(spread(ratio_stats(samples[b], samples[E2E_BASELINE[b]]), 4))
        if "ultralytics" in samples:
            row["ratio_vs_ultralytics"] = rounded(ratio_stats(samples[b], samples["ultralytics"])["median"], 4)
        rows.append(row)
    return rows


def run_e2e(cfg: BenchConfig, env: dict[str, Any]) -> list[dict]:
    """Interleaved end-to-end ``predict`` passes of every e2e backend, per (scale, imgsz) and K; returns the rows.

    Examples:
        >>> rows = run_e2e(BenchConfig(scales=["n"], imgsz=[64], ks=[3], e2e=True, e2e_images=2), env)  # doctest: +SKIP
    """
    import tempfile

    from yw_ext.bench.timing import interleaved_rounds

    files = e2e_images(cfg)
    rows: list[dict] = []
    for scale in cfg.scales:
        for imgsz in cfg.imgsz:
            for k in cfg.ks:
                with tempfile.TemporaryDirectory(prefix="yw_e2e_") as td:
                    print(f"e2e {scale}/{imgsz}/K={k}: building ...", flush=True)
                    passes = _passes(cfg, scale, imgsz, k, Path(td), files)
                    order = {b: passes[b][0] for b in E2E_BACKENDS if b in passes}
                    print(f"e2e {scale}/{imgsz}/K={k}: {len(order)} backends x {len(files)} images, "
                          f"{cfg.warmup} warm-up + {cfg.pairs} rounds ...", flush=True)
                    for split in (p[1] for p in passes.values()):
                        split.__init__()
                    samples, _ = interleaved_rounds(order, cfg.pairs, cfg.warmup, 1, gap=cfg.gap)
                    base = {**env, "scale": scale, "imgsz": imgsz, "batch": 1}
                    rows += _rows_of_k(cfg, base, k, samples, {b: p[1] for b, p in passes.items()}, len(files))
    return rows


__all__ = ["E2E_BACKENDS", "E2E_BASELINE", "e2e_images", "run_e2e"]
