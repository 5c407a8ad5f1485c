"""Benchmark exported detectors on the CPU: yw_ext's ONNX (fixed and run-time vocabulary) vs PyTorch eager vs
Ultralytics' own ONNX export of the same weights; optionally ONNX Runtime static INT8 vs FP32.

One random-weight model per run (``s`` at 640, batch 1 by default). For each vocabulary size K (80 and 1203), the
same weights and the same K unit embeddings go into:

* ``ult_onnx``: ``ultralytics.YOLOWorld("yolov8s-worldv2.yaml")`` with that state dict and vocabulary, exported by
  Ultralytics (``format="onnx"``, simplified): the reference of every ratio;
* ``yw_fixed``: ``YOLOWorld.export(format="onnx")``, the folded graph (vocabulary in the weights);
* ``yw_dynvocab``: ``YOLOWorld.export(format="onnx", dynamic_vocab=True)``, fed the K embeddings as ``txt_feats``;
* ``pt_eager``: the yw_ext PyTorch model (text path, Conv+BN fused as Ultralytics' predictor fuses it);
* ``pt_folded``: the folded PyTorch model, fused.

Timing follows ``docs/performance-notes.md``: all variants run in every round (order rotated every round), each
round's sample is the fastest of ``--reps`` back-to-back calls, and the figures are medians of per-round ratios to
``ult_onnx`` with their min..max spread. Latency medians are listed too, for orientation only. ``--int8`` adds the
static INT8 model (``yw_ext.export.quant``, calibrated on ``--calib`` COCO128 images) against its FP32 source at
K = 80, in the same interleaved way, and how far its class scores move on ``--score-images`` COCO128 images
(random weights: the movement says how INT8 rounds this graph, not what it does to a trained model's mAP).

Results: ``benchmarks/results/export.csv`` (written atomically) with versions, CPU, threads and settings.

Examples:
    Full run (several minutes on 2 cores)::

        YOLO_OFFLINE=1 python benchmarks/bench_export.py --rounds 15 --int8

    Quick smoke run::

        YOLO_OFFLINE=1 python benchmarks/bench_export.py --quick --out /tmp/export.csv
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import (COCO128, RESULTS, environment, interleaved_rounds, ort_session, randomize_, ratio_stats,
                    write_csv_atomic)  # fmt: skip

REFERENCE = "ult_onnx"


@contextlib.contextmanager
def cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def image(imgsz: int) -> np.ndarray:
    """bus.jpg letterboxed to ``imgsz`` (1, 3, imgsz, imgsz) float32."""
    from yw_ext.runtime.ops import letterbox, load_image, preprocess
    from yw_ext.seam import ASSETS

    return preprocess([letterbox(load_image(ASSETS / "bus.jpg"), imgsz)[0]])


def build(scale: str, k: int, imgsz: int, tmp: Path, seed: int = 0):
    """Ultralytics and yw_ext models with the same weights and K embeddings, and their exports."""
    import yw_ext
    from yw_ext.seam import UltralyticsYOLOWorld as UYOLOWorld

    torch.manual_seed(seed)
    ul = UYOLOWorld(f"yolov8{scale}-worldv2.yaml")
    randomize_(ul.model, seed, fp16_exact=False)  # BatchNorm statistics, head scalars, attention biases only
    emb = F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(seed + k)), dim=-1)
    names = [f"class{i}" for i in range(k)]
    ul.model.txt_feats = emb[None]
    ul.model.model[-1].nc = k
    ul.model.names = dict(enumerate(names))
    ours = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
    ours.model.load_state_dict(ul.model.state_dict(), strict=True)
    ours.set_classes(names, embeddings=emb)
    d = tmp / f"k{k}"
    d.mkdir()
    kw = dict(imgsz=imgsz, verbose=False)
    with cwd(d):
        f_ult = str((d / ul.export(format="onnx", simplify=True, **kw)).resolve())
    files = {
        "ult_onnx": f_ult,
        "yw_fixed": ours.export(format="onnx", out=d / "yw_fixed.onnx", **kw),
        "yw_dynvocab": ours.export(format="onnx", dynamic_vocab=True, out=d / "yw_dynvocab.onnx", **kw),
    }
    eager = copy.deepcopy(ours.model).eval().fuse(verbose=False)
    folded = copy.deepcopy(ours.model).eval()
    folded.reparameterize()
    folded = folded.fuse(verbose=False)
    return ours, emb, files, eager, folded


def check_parity(sessions: dict, x: np.ndarray, emb: torch.Tensor, eager) -> dict[str, float]:
    """Max |score| difference of every ONNX variant vs the PyTorch model (sanity: they compute the same)."""
    with torch.no_grad():
        ref = eager(torch.from_numpy(x))[0].numpy()
    out = {}
    for n, s in sessions.items():
        feeds = {"images": x}
        if n == "yw_dynvocab":
            feeds["txt_feats"] = emb[None].numpy()
        y = s.run(None, feeds)[0]
        out[n] = float(np.abs(y[:, 4:] - ref[:, 4:]).max())
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--ks", default="80,1203", help="vocabulary sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--int8", action="store_true", help="also ONNX Runtime static INT8 vs FP32 (needs COCO128)")
    ap.add_argument("--calib", type=int, default=64, help="INT8 calibration images")
    ap.add_argument("--score-images", type=int, default=16, help="COCO128 images for the INT8 score movement")
    ap.add_argument("--quick", action="store_true", help="n at 320, K = 80 and 300, 4 rounds")
    ap.add_argument("--out", default=str(RESULTS / "export.csv"))
    a = ap.parse_args(argv)
    if a.quick:
        a.scale, a.imgsz, a.ks, a.rounds, a.warmup, a.reps = "n", 320, "80,300", 4, 1, 1
        a.calib, a.score_images = 8, 4
    torch.set_num_threads(a.threads)
    import logging

    import onnx

    from yw_ext.core.log import LOGGER

    LOGGER.setLevel(logging.WARNING)  # export chatter
    ks = [int(v) for v in a.ks.split(",")]
    x = image(a.imgsz)
    rows: list[dict] = []
    env = environment(a.threads)
    base = {
        **{k: env[k] for k in ("date", "yw_ext", "torch", "ultralytics", "onnxruntime")}, "onnx": onnx.__version__,
        "device": f"CPU {env['cpu']}", "threads": a.threads,
        "scale": a.scale, "imgsz": a.imgsz, "batch": 1, "rounds": a.rounds, "reps": a.reps,
    }  # fmt: skip

    def row(kind: str, k, name: str, value, lo="", hi="", n="", unit=""):
        rows.append({**base, "kind": kind, "K": k, "name": name, "value": value, "spread_min": lo, "spread_max": hi,
                     "n": n, "unit": unit})

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for k in ks:
            ours, emb, files, eager, folded = build(a.scale, k, a.imgsz, tmp)
            sessions = {n: ort_session(f, a.threads) for n, f in files.items()}
            for n, err in check_parity(sessions, x, emb, eager).items():
                row("max_abs_score_diff_vs_pytorch", k, n, f"{err:.2e}", unit="score")
            txt = emb[None].numpy()
            xt = torch.from_numpy(x)

            def ort_runner(name: str):
                s, feeds = sessions[name], {"images": x}
                if name == "yw_dynvocab":
                    feeds["txt_feats"] = txt
                return lambda: s.run(None, feeds)

            def pt_runner(model):
                def run():
                    with torch.inference_mode():
                        model(xt)
                return run

            runners = {n: ort_runner(n) for n in files}
            runners["pt_eager"] = pt_runner(eager)
            runners["pt_folded"] = pt_runner(folded)
            print(f"K={k}: timing {list(runners)} ({a.rounds} rounds x {a.reps} reps)...", flush=True)
            times, _ = interleaved_rounds(runners, a.rounds, a.warmup, a.reps, rotate=True)  # order rotated
            for n, t in times.items():
                row("latency_median", k, n, f"{1000 * statistics.median(t):.1f}", f"{1000 * min(t):.1f}",
                    f"{1000 * max(t):.1f}", len(t), "ms")
            for n in times:
                if n != REFERENCE:
                    s = ratio_stats(times[n], times[REFERENCE])
                    row("ratio", k, f"{n}/{REFERENCE}", f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}",
                        s["n"])
            s = ratio_stats(times[REFERENCE], times["pt_eager"])
            row("ratio", k, f"{REFERENCE}/pt_eager", f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", s["n"])
            s = ratio_stats(times["yw_fixed"], times["pt_eager"])
            row("ratio", k, "yw_fixed/pt_eager", f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", s["n"])
            if a.int8 and k == ks[0]:
                int8_rows(a, ours, files["yw_fixed"], tmp / f"k{k}", x, row, k)
            del sessions, runners
    out = Path(a.out)
    write_csv_atomic(out, rows, columns=list(rows[0]))
    for r in rows:
        if r["kind"] in {"ratio", "latency_median", "int8_ratio", "int8_scores", "max_abs_score_diff_vs_pytorch"}:
            spread = f" [{r['spread_min']}..{r['spread_max']}]" if r["spread_min"] != "" else ""
            print(f"{r['kind']:>30}  K={r['K']:<5} {r['name']:<28} {r['value']}{spread} {r['unit']}")
    print(f"wrote {out}")
    return rows


def int8_rows(a, ours, f32: str, d: Path, x: np.ndarray, row, k: int) -> None:
    """INT8 vs FP32 (interleaved) and score movement on COCO128 images."""
    from yw_ext.export.calib import calibration_batches

    yaml = COCO128 / "coco128.yaml"
    if not yaml.is_file():
        print(f"--int8: skipped, no COCO128 at {COCO128}")
        return
    t = time.perf_counter()
    f8 = ours.export(format="onnx", quantize=8, data=str(yaml), calib_images=a.calib, imgsz=a.imgsz, verbose=False,
                     out=d / "yw_fixed_int8.onnx")
    row("int8_export_seconds", k, "yw_fixed_int8", f"{time.perf_counter() - t:.1f}", unit="s")
    s32, s8 = ort_session(f32, a.threads), ort_session(f8, a.threads)
    runners = {"fp32": lambda: s32.run(None, {"images": x}), "int8": lambda: s8.run(None, {"images": x})}
    times, _ = interleaved_rounds(runners, a.rounds, a.warmup, a.reps, rotate=True)
    s = ratio_stats(times["int8"], times["fp32"])
    row("int8_ratio", k, "int8/fp32", f"{s['median']:.3f}", f"{s['min']:.3f}", f"{s['max']:.3f}", s["n"])
    for n, tt in times.items():
        row("latency_median", k, f"onnx_{n}", f"{1000 * statistics.median(tt):.1f}", f"{1000 * min(tt):.1f}",
            f"{1000 * max(tt):.1f}", len(tt), "ms")
    diffs, top = [], []
    for xb in calibration_batches(yaml, a.imgsz, batch=1, n_images=a.score_images, split="train"):
        y32, y8 = s32.run(None, {"images": xb})[0], s8.run(None, {"images": xb})[0]
        d_ = np.abs(y32[:, 4:] - y8[:, 4:])
        diffs.append(d_)
        best = y32[:, 4:].max(1)  # (1, A) best class score per anchor
        idx = np.argsort(-best[0])[:100]
        top.append(np.abs(best[0, idx] - y8[:, 4:].max(1)[0, idx]))
    d_all, t_all = np.concatenate([v.ravel() for v in diffs]), np.concatenate(top)
    row("int8_scores", k, "max_abs_diff", f"{d_all.max():.4f}", unit="score")
    row("int8_scores", k, "mean_abs_diff", f"{d_all.mean():.5f}", unit="score")
    row("int8_scores", k, "mean_abs_diff_top100_anchors", f"{t_all.mean():.4f}", unit="score")


if __name__ == "__main__":
    main()
