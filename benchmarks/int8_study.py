# yw_ext, AGPL-3.0 license
"""CPU INT8 (ONNX Runtime static quantisation) vs FP32 of the folded graph, same runtime, side by side.

Exports yw-v2-<scale> (random weights, K random classes) as the folded FP32 ONNX, quantises it with
``yw_ext.export.quant.quantize_onnx_static`` in both placements (``body``: the default, everything but the head's
decoding, fused into QLinearConv; ``conv``: Ultralytics' Conv-only placement, the previous default), calibrated on
COCO128 images, then times FP32 / INT8 sessions interleaved (2 threads, 50 ms idle gap, fastest of 2 calls per round,
median of per-round ratios), reports the score / box drift against FP32 on a real image, the op types ONNX Runtime
actually runs (after its QDQ fusions) and the kernel-time profile of each INT8 file.

Usage:
    python benchmarks/int8_study.py --scale s --imgsz 640 --k 80 --rounds 8 --name int8_s640
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
COCO128 = ROOT.parent / "shared" / "data" / "coco128"


def session(path: str, threads: int, profile: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    if profile:
        so.enable_profiling, so.profile_file_prefix = True, str(Path(path).with_suffix(""))
    else:
        so.optimized_model_filepath = str(path) + ".opt.onnx"
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def build(a, td: Path) -> dict[str, str]:
    """FP32 folded ONNX and its two INT8 quantisations (body, conv)."""
    import torch
    import torch.nn.functional as F

    import yw_ext
    from yw_ext.bench import randomize_
    from yw_ext.bench.models import quiet
    from yw_ext.export.quant import quantize_onnx_static

    torch.manual_seed(0)
    m = yw_ext.YOLOWorld(f"yw-v2-{a.scale}.yaml")
    randomize_(m.model, 0)
    emb = F.normalize(torch.randn(a.k, 512, generator=torch.Generator().manual_seed(1000 + a.k)), dim=-1)
    m.set_classes([f"c{i}" for i in range(a.k)], embeddings=emb)
    with quiet():
        files = {"fp32": m.export(format="onnx", imgsz=a.imgsz, batch=1, out=td / "fp32.onnx", verbose=False)}
    calib = str(COCO128 / "images" / "val2017")
    for placement in ("body", "conv"):
        files[f"int8_{placement}"] = quantize_onnx_static(files["fp32"], td / f"int8_{placement}.onnx", calib,
                                                          n_images=a.calib, placement=placement)
    return files


def interleaved(sess: dict, x, rounds: int) -> dict[str, list[float]]:
    """Per-round samples (fastest of 2 calls after a 50 ms gap), order reversed every other round, 1 warm-up."""
    samples = collections.defaultdict(list)
    order = list(sess)
    for r in range(rounds + 1):
        for k in order if r % 2 == 0 else order[::-1]:
            best = float("inf")
            for _ in range(2):
                time.sleep(0.05)
                t = time.perf_counter()
                sess[k].run(None, {"images": x})
                best = min(best, time.perf_counter() - t)
            if r:
                samples[k].append(best)
    return samples


def kernel_profile(path: str, x, threads: int) -> str:
    """Top-6 op types by ONNX Runtime kernel time."""
    s = session(path, threads, profile=True)
    for _ in range(3):
        s.run(None, {"images": x})
    per = collections.Counter()
    for e in json.load(open(s.end_profiling())):
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["args"]["op_name"]] += e["dur"]
    tot = sum(per.values())
    return ", ".join(f"{op} {100 * d / tot:.0f}%" for op, d in per.most_common(6))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--k", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="int8_s640")
    a = ap.parse_args()
    import numpy as np
    import onnx

    from yw_ext.bench import environment, write_csv_atomic
    from yw_ext.core.io import atomic_write
    from yw_ext.export.calib import calibration_batches
    from yw_ext.export.quant import int8_cpu_note

    files = build(a, Path(tempfile.mkdtemp(prefix="yw_int8_")))
    x = next(iter(calibration_batches([str(COCO128 / "images" / "val2017" / "000000000139.jpg")], a.imgsz, batch=1)))
    sess = {k: session(p, a.threads) for k, p in files.items()}
    ops = {k: collections.Counter(n.op_type for n in onnx.load(p + ".opt.onnx").graph.node) for k, p in files.items()}
    outs = {k: s.run(None, {"images": x})[0] for k, s in sess.items()}
    samples = interleaved(sess, x, a.rounds)
    env, load = environment(a.threads), os.getloadavg()
    rows, lines = [], []
    for k in sess:
        rat = [u / v for u, v in zip(samples[k], samples["fp32"])]
        o = ops[k]
        row = {**env, "kind": "int8", "scale": a.scale, "imgsz": a.imgsz, "batch": 1, "K": a.k, "backend": k,
               "status": "ok", "pairs": a.rounds, "reps": 2,
               "median_ms": round(1000 * statistics.median(samples[k]), 2),
               "baseline": "fp32", "ratio": round(statistics.median(rat), 4), "ratio_min": round(min(rat), 4),
               "ratio_max": round(max(rat), 4),
               "max_score_diff": f"{np.abs(outs[k][:, 4:] - outs['fp32'][:, 4:]).max():.2e}",
               "note": (f"box drift {np.abs(outs[k][:, :4] - outs['fp32'][:, :4]).max():.2f} px; ORT runs Conv "
                        f"{o['Conv']} QLinearConv {o['QLinearConv']} QuantizeLinear {o['QuantizeLinear']} "
                        f"DequantizeLinear {o['DequantizeLinear']}; profile: "
                        f"{kernel_profile(files[k], x, a.threads) if k != 'fp32' else '-'}; load {load[0]:.1f}")}
        rows.append(row)
        lines.append(f"| {k} | {row['median_ms']} | {row['ratio']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}] "
                     f"| {row['max_score_diff']} | {row['note']} |")
    write_csv_atomic(ROOT / "benchmarks" / "results" / f"{a.name}.csv", rows)
    md = (f"INT8 vs FP32, ONNX Runtime {env['onnxruntime']}, {env['cpu']}, {a.threads} threads, {a.scale} at "
          f"{a.imgsz}, K = {a.k}, {a.rounds} interleaved rounds; CPU INT8 note: {int8_cpu_note() or 'VNNI present'}. "
          f"`python benchmarks/int8_study.py --scale {a.scale} --imgsz {a.imgsz} --k {a.k} --rounds {a.rounds}`\n\n"
          "| file | median ms | vs FP32 [min-max] | max score drift | notes |\n|---|---|---|---|---|\n"
          + "\n".join(lines) + "\n")
    atomic_write(ROOT / "benchmarks" / "results" / f"{a.name}.md", lambda f: f.write(md), mode="w")
    print(md)


if __name__ == "__main__":
    main()
