# yw_ext, AGPL-3.0 license
"""The folded head alone in ONNX Runtime, ``scores="max"``: class reduction in the conv layout vs the matmul layout.

Exports ``RepWorldDetect`` (random weights, the s-scale head: inputs ``(1, 128, 80, 80)``, ``(1, 256, 40, 40)``,
``(1, 512, 20, 20)``, class-branch width 128) twice per K, in export mode with ``score_mode = "max"``:

* ``conv``: each level's last 1x1 conv as a Conv, then ``ReduceMax`` / ``ArgMax`` over axis 1 of ``(1, K, H * W)``
  (the graph before ``yw_ext.nn.rep._matmul_max``; reproduced by giving the head ``nn.Conv2d`` subclasses, which
  ``_matmul_max`` does not take);
* ``matmul``: the current export graph (MatMul over ``(1, H * W, C + 1)``, ``grouped_max`` over the last axis).

Both files are checked for equal rows, then timed interleaved (medians; wall and process CPU time, no thread
spinning so that CPU time counts work only). The whole head runs (box branch, 3x3 convs, DFL, decoding), so the
difference is the class reduction's.

Usage:
    python benchmarks/head_ops.py --ks 80,1203 --threads 1,2 --runs 15
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def export_head(k: int, layout: str, path: Path, imgsz: int = 640) -> dict:
    """Write the head for K classes in ``layout`` (``"conv"`` / ``"matmul"``) to ``path``; returns its feeds."""
    import torch

    from yw_ext.nn.rep import RepWorldDetect

    class Conv(torch.nn.Conv2d):  # not exactly nn.Conv2d: _matmul_max leaves it a Conv (the "conv" layout)
        pass

    class Wrap(torch.nn.Module):
        def __init__(self, head):
            super().__init__()
            self.head = head

        def forward(self, a, b, c):
            return self.head([a, b, c])

    torch.manual_seed(0)
    head = RepWorldDetect(nc=k, hidden=128, embed=512, with_bn=True, ch=(128, 256, 512)).eval()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    for branch in head.cv3:
        torch.nn.init.normal_(branch[-1].weight, std=0.3)
        torch.nn.init.normal_(branch[-1].bias, std=0.3)
    head.score_mode, head.export = "max", True
    xs = tuple(torch.randn(1, c, imgsz // s, imgsz // s) for c, s in ((128, 8), (256, 16), (512, 32)))
    for branch in head.cv3 if layout == "conv" else ():  # after every random draw: the same weights and inputs
        old = branch[-1]
        branch[-1] = Conv(old.in_channels, old.out_channels, 1)
        branch[-1].load_state_dict(old.state_dict())
    torch.onnx.export(Wrap(head), xs, str(path), input_names=["a", "b", "c"], opset_version=17, dynamo=False)
    return {n: x.numpy() for n, x in zip("abc", xs)}


def time_pair(files: dict[str, Path], feeds: dict, threads: int, runs: int) -> dict[str, tuple[float, float]]:
    """Interleaved medians ``{layout: (wall ms, CPU ms)}``; raises if the two graphs' rows differ."""
    import numpy as np
    import onnxruntime as ort

    sessions = {}
    for name, f in files.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.log_severity_level = threads, 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sessions[name] = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    a, b = (s.run(None, feeds)[0] for s in sessions.values())  # (1, 6, A)
    if not (np.array_equal(a[:, :4], b[:, :4]) and np.array_equal(a[:, 5], b[:, 5])
            and np.abs(a[:, 4] - b[:, 4]).max() <= 1e-6):
        raise AssertionError("the two layouts disagree")
    wall = {n: [] for n in sessions}
    cpu = {n: [] for n in sessions}
    order = list(sessions)
    for r in range(runs):
        for n in order if r % 2 == 0 else order[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            sessions[n].run(None, feeds)
            wall[n].append((time.perf_counter() - w0) * 1e3)
            cpu[n].append((time.process_time() - c0) * 1e3)
    return {n: (float(np.median(wall[n])), float(np.median(cpu[n]))) for n in sessions}


def main() -> None:
    """Print one row per (K, threads): conv vs matmul layout, wall and CPU ms."""
    import warnings

    warnings.filterwarnings("ignore")  # the legacy exporter's deprecation and constant-folding notes
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ks", default="80,1203")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--imgsz", type=int, default=640)
    args = ap.parse_args()
    print("| K | threads | conv: wall / CPU ms | matmul: wall / CPU ms |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(v) for v in args.ks.split(",")):
            files = {lay: Path(tmp) / f"head_{lay}_{k}.onnx" for lay in ("conv", "matmul")}
            feeds = {}
            for lay, f in files.items():
                feeds = export_head(k, lay, f, args.imgsz)
            for t in (int(v) for v in args.threads.split(",")):
                r = time_pair(files, feeds, t, args.runs)
                print(f"| {k} | {t} | {r['conv'][0]:.1f} / {r['conv'][1]:.1f} | {r['matmul'][0]:.1f} / "
                      f"{r['matmul'][1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
