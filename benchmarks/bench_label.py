# yw_ext, AGPL-3.0 license
"""Benchmark: ``yw label`` (``yw_ext.scale.detect_dataset`` on a local Dask cluster) vs the plain single-process
predict loop, over the 128 COCO128 val images, on this machine's CPUs.

Variants, interleaved round by round (``interleaved_rounds``: A B C, then C B A, ...) after one untimed warm-up round:

- ``predict_loop``: one process, ``Detector(model, threads=CPUs)``, ``predict(path)`` image by image (decode,
  letterbox, ONNX Runtime, NMS): what a user writes without an engine;
- ``label_cold``: ``detect_dataset(..., workers=CPUs)``: starts a ``LocalCluster`` on 127.0.0.1 (one single-threaded
  worker process per CPU), loads the model on each worker, writes Parquet, closes the cluster: ``yw label`` as run
  from the command line, start-up included (Python start-up excluded);
- ``label_warm``: the same on an already running cluster (``scheduler=client``): the engine's steady-state overhead.

Every variant uses the same random-weight ONNX export (run-time vocabulary, dynamic batch) and the same 3-class
vocabulary (shipped as embeddings). Throughput is images/s; the ratio is the median of pairwise ratios to
``predict_loop`` (target >= 0.9). The 1-minute load average before and after is recorded: other processes on a shared
machine change the figures. Results are appended to ``benchmarks/results/label.csv`` (atomically).

Examples:
    python benchmarks/bench_label.py
    python benchmarks/bench_label.py --scale s --imgsz 640 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from common import COCO128, RESULTS, append_csv_atomic, environment, interleaved_rounds, randomize_, ratio_stats

COLUMNS = ("date", "yw_ext", "onnxruntime", "dask", "cpu", "threads", "weights", "scale", "imgsz", "images",
           "variant", "rounds", "median_s", "images_per_s", "ratio_vs_loop", "ratio_min", "ratio_max",
           "load1_before", "load1_after", "note")  # fmt: skip


def _model(scale: str, imgsz: int, folder: Path):
    """A random-weight yw-v2 export with a run-time vocabulary and dynamic batch / size; the (3, 512) embeddings."""
    import numpy as np
    import torch

    import yw_ext

    torch.manual_seed(0)
    model = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
    randomize_(model.model, 0)
    emb = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    model.set_classes(["person", "car", "dog"], embeddings=emb)
    f = model.export(format="onnx", dynamic_vocab=True, dynamic=True, imgsz=imgsz, verbose=False,
                     out=folder / "model.onnx")
    return Path(f), emb


def main(args: argparse.Namespace) -> list[dict]:
    from distributed import Client, LocalCluster

    import dask
    from yw_ext.runtime import Detector
    from yw_ext.scale import detect_dataset

    cpus = os.cpu_count() or 1
    images = sorted((COCO128 / "images" / "val2017").glob("*.jpg"))
    tmp = Path(tempfile.mkdtemp(prefix="yw_bench_label_"))
    onnx, emb = _model(args.scale, args.imgsz, tmp)
    names = ["person", "car", "dog"]
    det = Detector(onnx, threads=cpus).set_classes(names, embeddings=emb)
    counter = iter(range(10**6))
    kw = dict(classes=names, embeddings=emb, imgsz=args.imgsz, batch=args.batch, partition_size=args.partition,
              progress=False)
    load_before = os.getloadavg()[0]
    with LocalCluster(n_workers=cpus, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        runners = {
            "predict_loop": lambda: [det.predict(str(p), imgsz=args.imgsz) for p in images],
            "label_cold": lambda: detect_dataset(images, onnx, tmp / f"out{next(counter)}", workers=cpus, **kw),
            "label_warm": lambda: detect_dataset(images, onnx, tmp / f"out{next(counter)}", scheduler=client,
                                                 model_threads=1, **kw),
        }
        samples, _ = interleaved_rounds(runners, rounds=args.rounds, warmup=1, gap=0.2)
    load_after = os.getloadavg()[0]
    shutil.rmtree(tmp, ignore_errors=True)
    env = environment(cpus)
    rows = []
    for name, s in samples.items():
        r = ratio_stats(samples["predict_loop"], s)  # loop time / variant time = throughput ratio
        med = sorted(s)[len(s) // 2]
        rows.append({**{k: env.get(k) for k in ("date", "yw_ext", "onnxruntime", "cpu", "threads", "weights")},
                     "dask": dask.__version__, "scale": args.scale, "imgsz": args.imgsz, "images": len(images),
                     "variant": name, "rounds": len(s), "median_s": round(med, 3),
                     "images_per_s": round(len(images) / med, 2), "ratio_vs_loop": round(r["median"], 3),
                     "ratio_min": round(r["min"], 3), "ratio_max": round(r["max"], 3),
                     "load1_before": load_before, "load1_after": load_after,
                     "note": "shared machine: other processes ran during the measurement"})
        print(f"{name:13s} {rows[-1]['images_per_s']:7.2f} img/s  ratio vs loop {r['median']:.3f} "
              f"({r['min']:.3f}..{r['max']:.3f})")
    out = append_csv_atomic(RESULTS / args.out, rows, columns=COLUMNS)
    print(f"load average (1 min) {load_before:.2f} -> {load_after:.2f}; wrote {out}")
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", default="n")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--partition", type=int, default=16, help="images per partition")
    p.add_argument("--out", default="label.csv")
    main(p.parse_args())
