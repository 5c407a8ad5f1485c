# yw_ext, AGPL-3.0 license
"""Top-10 operators of the folded model at K = 80 and 1203: ONNX Runtime's profiler and ``torch.profiler``.

Builds yw-v2-<scale> with random weights (``yw_ext.bench.randomize_``) and K random unit embeddings, exports the folded
ONNX with every class's score (``scores="full"``) and with the in-graph class reduction (``scores="max"``), and
profiles both in ONNX Runtime (kernel time per op type, after warm-up) and the folded eager model with its head in
both modes (self CPU time per op). Shares are robust to load from other processes; milliseconds are not.

Usage:
    python benchmarks/profile_ops.py --scale s --imgsz 640 --ks 80,1203 --runs 5
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")


def build(scale: str, imgsz: int, k: int, d: Path):
    """Folded eager model and its two ONNX files (full, max) for K random classes."""
    import torch
    import torch.nn.functional as F

    import yw_ext
    from yw_ext.bench import randomize_
    from yw_ext.bench.models import quiet

    torch.manual_seed(0)
    m = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
    randomize_(m.model, 0)
    emb = F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(1000 + k)), dim=-1)
    m.set_classes([f"c{i}" for i in range(k)], embeddings=emb)
    files = {}
    with quiet():
        for mode in ("full", "max"):
            files[mode] = m.export(format="onnx", imgsz=imgsz, batch=1, simplify=True, scores=mode,
                                   out=d / f"k{k}_{mode}.onnx")
    folded = copy.deepcopy(m.model).eval()
    folded.reparameterize()
    return folded.fuse(verbose=False), files


def ort_profile(path: str, x, runs: int, threads: int) -> tuple[float, list[tuple[str, float, int]]]:
    """ONNX Runtime: ms per run (kernel total) and the top-10 op types (ms per run, nodes)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.log_severity_level = threads, 3
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(path).with_suffix(""))
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for _ in range(2 + runs):
        s.run(None, {"images": x})
    events = json.load(open(s.end_profiling()))
    per, cnt = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per[e["args"]["op_name"]] += e["dur"] / 1000 / (2 + runs)
            cnt[e["args"]["op_name"]] += 1
    return sum(per.values()), [(op, t, cnt[op] // (2 + runs)) for op, t in per.most_common(10)]


def torch_profile(model, mode: str, x, runs: int) -> tuple[float, list[tuple[str, float, int]]]:
    """torch.profiler: ms per forward (self CPU total) and the top-10 ops (ms per forward, calls)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.model[-1].score_mode = mode
    with torch.inference_mode():
        for _ in range(2):
            model(x)
        with profile(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(runs):
                model(x)
    ev = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in ev) / 1000 / runs
    return total, [(e.key, e.self_cpu_time_total / 1000 / runs, e.count // runs) for e in ev[:10]]


def table(title: str, results: dict[str, tuple[float, list]]) -> str:
    """Markdown: one column block per variant, rank by rank (op, ms, share)."""
    names = list(results)
    out = [f"**{title}**", "", "| # | " + " | ".join(f"{n}: op | ms | %" for n in names) + " |",
           "|---|" + "---|---|---|" * len(names)]
    for i in range(10):
        cells = []
        for n in names:
            total, top = results[n]
            op, t, c = top[i] if i < len(top) else ("", 0.0, 0)
            cells.append(f"{op} ({c}) | {t:.1f} | {100 * t / total:.1f}" if op else " | | ")
        out.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    out.append("| total | " + " | ".join(f" | {results[n][0]:.1f} | 100" for n in names) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--ks", default="80,1203")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/profile_s640.md")
    a = ap.parse_args()
    import numpy as np
    import torch

    from yw_ext.core.io import atomic_write

    torch.set_num_threads(a.threads)
    x = np.random.default_rng(0).random((1, 3, a.imgsz, a.imgsz), dtype=np.float32)
    ort_res, pt_res = {}, {}
    with tempfile.TemporaryDirectory(prefix="yw_prof_") as td:
        for k in (int(v) for v in a.ks.split(",")):
            model, files = build(a.scale, a.imgsz, k, Path(td))
            for mode in ("full", "max"):
                ort_res[f"K={k} {mode}"] = ort_profile(files[mode], x, a.runs, a.threads)
                pt_res[f"K={k} {mode}"] = torch_profile(model, mode, torch.from_numpy(x), a.runs)
    load = os.getloadavg()
    md = (f"Operator profiles, {a.scale} at {a.imgsz}, batch 1, {a.threads} threads, {a.runs} runs after 2 warm-up "
          f"(load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end; ms are inflated by load, shares "
          f"are not). `python benchmarks/profile_ops.py --scale {a.scale} --imgsz {a.imgsz} --ks {a.ks} --runs "
          f"{a.runs}`\n\n" + table("ONNX Runtime (kernel time by op type; `full` = scores=\"full\", `max` = "
                                   "scores=\"max\")", ort_res)
          + "\n\n" + table("PyTorch eager, folded (self CPU time; head score_mode full / max)", pt_res) + "\n")
    atomic_write(a.out, lambda f: f.write(md), mode="w")
    print(md)


if __name__ == "__main__":
    main()
