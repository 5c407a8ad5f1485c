"""Benchmark RepVL-PAN re-parameterisation: original (text path) vs folded yw_ext models, PyTorch and ONNX Runtime.

For one scale and image size, four models are built from the same random weights: original and folded, each with a
K = 80 and a K = 1203 vocabulary (random unit embeddings). Each is run in PyTorch eager and as an ONNX model
(``torch.onnx.export`` opset 17, slimmed with onnxslim when available) in ONNX Runtime on the CPU.

Timing follows ``docs/performance-notes.md``: separately timed medians of two variants are not comparable on a shared
machine, so after a warm-up every round runs all four variants of a backend back to back (order reversed every other
round), and the reported figures are medians of per-round ratios with their spread (min..max). Each variant's sample
in a round is the fastest of ``--reps`` consecutive runs, which filters out bursts of load from other processes on a
shared machine without separating the variants in time. ``--clock cpu`` (with ``--threads 1``) times with the
calling thread's CPU time instead of wall time: on a machine shared with other jobs it is much less disturbed by
time spent descheduled (ONNX Runtime with one intra-op thread runs in the calling thread). The ratios:

* ``folded_k80 / original_k80``: the price of folding at a COCO-size vocabulary (expected <= 1.02);
* ``folded_k1203 / folded_k80``: how the folded model grows with the vocabulary (target <= 1.3);
* ``original_k1203 / original_k80``: the same for the original, for comparison;
* ``folded_k1203 / original_k1203``.

Parameters and GFLOPs (``ultralytics.utils.torch_utils.get_flops``, THOP: counts convolutions and linear layers, not
the original model's text matmuls) are recorded too. Results go to ``benchmarks/results/rep.csv`` and ``rep.png``
(both written atomically).

Examples:
    Full run (s at 640, 10 rounds; several minutes on 2 cores)::

        YOLO_OFFLINE=1 python benchmarks/bench_rep.py

    Less disturbed by other jobs on a shared machine (one thread, CPU time)::

        YOLO_OFFLINE=1 python benchmarks/bench_rep.py --threads 1 --clock cpu --out benchmarks/results/rep_cpu1.csv

    Quick smoke run::

        YOLO_OFFLINE=1 python benchmarks/bench_rep.py --quick --out /tmp/rep.csv
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import RESULTS, environment, interleaved_rounds, ort_session, ratio_stats, write_atomic, write_csv_atomic
from yw_ext.nn.model import YWDetectionModel
from yw_ext.nn.rep import reparameterize

VARIANTS = ("original_k80", "folded_k80", "original_k1203", "folded_k1203")
RATIOS = (
    ("folded_k80", "original_k80"),
    ("folded_k1203", "folded_k80"),
    ("original_k1203", "original_k80"),
    ("folded_k1203", "original_k1203"),
)


def build_models(scale: str, ks: tuple[int, ...], seed: int = 0) -> dict[str, YWDetectionModel]:
    """Original and folded models with the same random weights for each vocabulary size K, Conv+BN fused.

    Fused as Ultralytics' predictor (``AutoBackend``) and exporter fuse them before inference.

    Examples:
        >>> models = build_models("n", (3,))  # doctest: +SKIP
        >>> sorted(models)  # doctest: +SKIP
        ['folded_k3', 'original_k3']
    """
    torch.manual_seed(seed)
    base = YWDetectionModel(f"yw-v2-{scale}.yaml", verbose=False).eval()
    models = {}
    for k in ks:
        emb = F.normalize(torch.randn(k, base.embed_dim, generator=torch.Generator().manual_seed(seed + k)), dim=-1)
        m = copy.deepcopy(base)
        m.set_classes([f"class{i}" for i in range(k)], embeddings=emb)
        f = copy.deepcopy(m)
        reparameterize(f)
        models[f"original_k{k}"] = m.fuse(verbose=False)
        models[f"folded_k{k}"] = f.fuse(verbose=False)
    return models


def export_onnx(model: torch.nn.Module, imgsz: int, path: Path) -> Path:
    """Export with ``torch.onnx.export`` (TorchScript path, opset 17), slimmed with onnxslim when it is installed."""
    import onnx

    model = copy.deepcopy(model).eval()
    model.model[-1].export = True  # the head returns decoded predictions only
    x = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad():
        torch.onnx.export(
            model, x, str(path), opset_version=17, input_names=["images"], output_names=["output0"], dynamo=False
        )
    try:
        import onnxslim

        onnx.save(onnxslim.slim(onnx.load(str(path))), str(path))
    except ImportError:
        pass
    return path


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Bar charts: per-backend ratio medians with min..max spread, and per-variant median latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = [r for r in rows if r["kind"] == "ratio"]
    lat = [r for r in rows if r["kind"] == "latency_ms"]
    backends = sorted({r["backend"] for r in ratios})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    ax = axes[0]
    names = [f"{a}/{b}" for a, b in RATIOS]
    w = 0.8 / max(1, len(backends))
    for j, be in enumerate(backends):
        sel = {r["name"]: r for r in ratios if r["backend"] == be}
        xs = [i + j * w for i in range(len(names))]
        med = [sel[n]["value"] for n in names]
        lo = [m - sel[n]["spread_min"] for n, m in zip(names, med)]
        hi = [sel[n]["spread_max"] - m for n, m in zip(names, med)]
        err = [lo, hi]
        ax.bar(xs, med, w, yerr=err, capsize=3, label=be)
        for x, m, top in zip(xs, med, (sel[n]["spread_max"] for n in names)):
            ax.text(x, top + 0.03, f"{m:.2f}", ha="center", fontsize=7)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.axhline(1.3, color="r", lw=0.6, ls="--", label="target 1.3 (folded K=1203/K=80)")
    ax.set_xticks([i + w * (len(backends) - 1) / 2 for i in range(len(names))])
    ax.set_xticklabels([n.replace("/", "\n/ ") for n in names], fontsize=7)
    ax.set_ylabel("median of per-round latency ratios")
    ax.set_title("Ratios (bars: min..max over rounds)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    ax = axes[1]
    for j, be in enumerate(backends):
        sel = {r["name"]: r for r in lat if r["backend"] == be}
        xs = [i + j * w for i in range(len(VARIANTS))]
        ax.bar(xs, [sel[v]["value"] for v in VARIANTS], w, label=be)
    ax.set_xticks([i + w * (len(backends) - 1) / 2 for i in range(len(VARIANTS))])
    ax.set_xticklabels(VARIANTS, fontsize=8)
    ax.set_ylabel("median latency, ms (compare only within a run)")
    ax.set_title("Latency (same run)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the benchmark and write the CSV and PNG; returns the rows."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="s")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--rounds", type=int, default=10, help="timed rounds (each runs every variant once)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="runs per sample; a sample is the fastest of them")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: thread CPU time (needs --threads 1)")
    ap.add_argument("--backends", default="torch,onnxruntime")
    ap.add_argument("--quick", action="store_true", help="n at 320, 3 rounds, 1 warm-up (smoke test)")
    ap.add_argument("--out", default=str(RESULTS / "rep.csv"))
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.imgsz, args.rounds, args.warmup, args.reps = "n", 320, 3, 1, 1
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    from yw_ext.seam import get_flops

    env = environment(args.threads)
    ort_version = env["onnxruntime"]  # "" when not installed
    backends = [b for b in args.backends.split(",") if b and (b != "onnxruntime" or ort_version)]
    print(f"building {args.scale} models (K = 80, 1203), original and folded ...", flush=True)
    models = build_models(args.scale, (80, 1203))
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # sanity: the folded models give the same boxes and class logits
        for k in (80, 1203):
            (ya, pa), (yb, pb) = models[f"original_k{k}"](x), models[f"folded_k{k}"](x)
            box, logit = (ya[:, :4] - yb[:, :4]).abs().max().item(), (pa["scores"] - pb["scores"]).abs().max().item()
            print(f"K={k}: original vs folded: max |box diff| = {box:.2e} px, max |logit diff| = {logit:.2e}")
            assert box < 1e-2 and logit < 1e-3, (box, logit)

    meta = {
        **{k: env[k] for k in ("date", "torch", "ultralytics", "onnxruntime")},
        "device": f"CPU {env['cpu']}",
        "threads": args.threads,
        "scale": args.scale,
        "imgsz": args.imgsz,
        "rounds": args.rounds,
        "reps": args.reps,
        "clock": args.clock,
        "env": " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("MALLOC_", "OMP_", "MKL_"))),
    }
    rows: list[dict] = []

    def row(kind, backend, name, value, lo="", hi="", n="", unit=""):
        rows.append({**meta, "kind": kind, "backend": backend, "name": name, "value": value, "spread_min": lo,
                     "spread_max": hi, "n": n, "unit": unit})  # fmt: skip

    for v in VARIANTS:
        m = models[v]
        row("params", "torch", v, sum(p.numel() for p in m.parameters()), unit="count")
        row("gflops", "torch", v, round(get_flops(copy.deepcopy(m), args.imgsz), 3), unit="GFLOPs (THOP)")

    with tempfile.TemporaryDirectory(prefix="bench_rep_") as tmp:
        for be in backends:
            if be == "torch":

                def runner(m):
                    def run():
                        with torch.inference_mode():
                            m(x)

                    return run

                runners = {v: runner(models[v]) for v in VARIANTS}
            elif be == "onnxruntime":
                runners = {}
                xn = x.numpy()
                for v in VARIANTS:
                    print(f"exporting {v} to ONNX ...", flush=True)
                    sess = ort_session(export_onnx(models[v], args.imgsz, Path(tmp) / f"{v}.onnx"), args.threads)
                    runners[v] = (lambda s: (lambda: s.run(None, {"images": xn})))(sess)
            else:
                raise ValueError(f"unknown backend {be!r}")
            print(f"timing {be}: {args.warmup} warm-up + {args.rounds} rounds x {len(runners)} variants x {args.reps} "
                  "reps ...", flush=True)  # fmt: skip
            times, _ = interleaved_rounds(runners, args.rounds, args.warmup, args.reps, clock=clock)
            for v in VARIANTS:
                row("latency_ms", be, v, round(1000 * statistics.median(times[v]), 2),
                    round(1000 * min(times[v]), 2), round(1000 * max(times[v]), 2), len(times[v]), "ms")  # fmt: skip
            for a, b in RATIOS:
                s = ratio_stats(times[a], times[b])
                row("ratio", be, f"{a}/{b}", round(s["median"], 4), round(s["min"], 4), round(s["max"], 4), s["n"], "x")

    out = Path(args.out)
    write_csv_atomic(out, rows, columns=list(rows[0]))
    title = (
        f"yw_ext RepVL-PAN: {args.scale} @ {args.imgsz}, {args.threads} thread(s), {args.clock} clock, "
        f"{meta['device']}\ntorch {meta['torch']}, ultralytics {meta['ultralytics']}, onnxruntime {ort_version}, "
        f"{meta['date']}"
    )
    plot(rows, out.with_suffix(".png"), title)
    print(f"\n{'kind':<11}{'backend':<13}{'name':<32}{'value':>10}  spread")
    for r in rows:
        spread = f"{r['spread_min']}..{r['spread_max']}" if r["spread_min"] != "" else ""
        print(f"{r['kind']:<11}{r['backend']:<13}{r['name']:<32}{r['value']:>10}  {spread}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return rows


if __name__ == "__main__":
    main()
