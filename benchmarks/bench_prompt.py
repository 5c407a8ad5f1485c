# yw_ext, AGPL-3.0 license
"""Cost of a prompt-tuning step against a full fine-tuning step on the same batch (time and peak memory).

Both steps are ``zero_grad`` + loss (forward) + backward + AdamW step on the same fixed batch of COCO128 images
(linked into a temporary folder, never copied) with the same 80 class embeddings:

- full fine-tuning: every detector weight trains, the model in train mode (``YWTrainer``'s set-up: the batch's
  embeddings given as ``txt_feats``);
- prompt tuning: ``yw_ext.engine.prompt_trainer.PromptTuningModel`` (detector frozen and in eval mode, backbone
  under ``no_grad``, only the 80 x 512 embeddings train).

Time: interleaved A/B pairs in one process (order alternating pair to pair, after warm-up steps), reported as the
median of the pairwise ratios prompt / full (target <= 0.75). Peak memory: each variant runs in its own subprocess;
on CPU the peak resident set size during the steps (Linux ``VmHWM`` reset through ``/proc/self/clear_refs`` before
the steps, minus ``VmRSS`` at that point), on CUDA ``torch.cuda.max_memory_allocated``. Results are appended to
``benchmarks/results/prompt.csv`` (written atomically) with the versions, device and thread count.

Examples:
    python benchmarks/bench_prompt.py
    python benchmarks/bench_prompt.py --model yw-v2-s.yaml --imgsz 320 --batch 8 --pairs 15 --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import COCO128, RESULTS, append_csv_atomic, cpu_name, interleaved_rounds, link_coco128, proc_mb

COLUMNS = ("date", "ultralytics", "torch", "device", "cpu", "threads", "model", "imgsz", "batch", "classes", "pairs",
           "full_ms", "prompt_ms", "ratio_median", "ratio_p25", "ratio_p75", "full_peak_mb", "prompt_peak_mb",
           "memory_ratio", "memory_method")  # fmt: skip


# --------------------------------------------------------------------------------------------------------- set-up
def linked_batch(coco128: Path, root: Path, n: int, imgsz: int) -> dict:
    """A collated batch of the first ``n`` labelled COCO128 images (linked into ``root``), letterboxed to ``imgsz``."""
    from yw_ext.seam import YAML, build_yolo_dataset, get_cfg

    link_coco128(coco128, root, n)
    names = YAML.load(Path(coco128) / "coco128.yaml")["names"]
    data = {"names": names, "nc": len(names), "channels": 3}
    # Ultralytics' YOLODataset, evaluation mode: no augmentation, letterboxed to imgsz, every image
    ds = build_yolo_dataset(get_cfg(overrides=dict(imgsz=imgsz)), str(root / "images" / "train"), n, data,
                            mode="val", fraction=1.0)  # fmt: skip
    batch = ds.collate_fn([ds[i] for i in range(len(ds))])
    batch["img"] = batch["img"].float() / 255
    return batch


def make_steps(model_cfg: str, batch: dict, device: str, seed: int = 0) -> dict:
    """Build the two training set-ups; returns ``{"full": step_fn, "prompt": step_fn}`` (each one optimiser step)."""
    from yw_ext.engine.prompt_trainer import PromptTuningModel
    from yw_ext.engine.trainer import class_criterion
    from yw_ext.nn.model import YWDetectionModel
    from yw_ext.seam import get_cfg

    torch.manual_seed(seed)
    k = 80
    names = [f"class{i}" for i in range(k)]
    emb = torch.nn.functional.normalize(torch.randn(k, 512), dim=-1)  # (K, D)
    batch = {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in batch.items()}
    hyp = get_cfg()

    detector = YWDetectionModel(model_cfg, verbose=False)
    detector.set_vocabulary(names, emb, 1)

    full = YWDetectionModel(model_cfg, verbose=False)  # same weights as the detector, all trainable
    full.load_state_dict(detector.state_dict())
    full.set_vocabulary(names, emb, 1)
    full = full.to(device).train()
    full.requires_grad_(True)
    for n, p in full.named_parameters():
        if ".dfl" in n:
            p.requires_grad_(False)  # Ultralytics always freezes the DFL projection
    full.args = hyp
    full.criterion = class_criterion(full, k)
    full_batch = {**batch, "txt_feats": emb.to(device)[None].expand(batch["img"].shape[0], -1, -1)}  # (B, K, D)
    full_opt = torch.optim.AdamW([p for p in full.parameters() if p.requires_grad], lr=1e-4, weight_decay=5e-4)

    prompt = PromptTuningModel.from_detector(detector, emb, names).to(device)
    prompt.args = hyp
    prompt.criterion = class_criterion(prompt, k)
    prompt.train()
    prompt_opt = torch.optim.AdamW(prompt.prompt.parameters(), lr=2e-3, weight_decay=0.0)

    def step(model, opt, b):
        def run():
            opt.zero_grad(set_to_none=True)
            loss, _ = model.loss(b)
            loss.sum().backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        return run

    return {"full": step(full, full_opt, full_batch), "prompt": step(prompt, prompt_opt, batch)}


# --------------------------------------------------------------------------------------------------------- memory
def _status(key: str) -> int:
    """A ``/proc/self/status`` value in bytes (``VmRSS``, ``VmHWM``); 0 where unavailable."""
    try:
        return int(proc_mb(key) * 2**20)
    except OSError:
        return 0


def memory_child(args: argparse.Namespace) -> None:
    """Subprocess entry: peak memory of ``args.memory_child`` steps; prints one JSON line."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="yw_bench_prompt_mem_") as d:
        batch = linked_batch(Path(args.coco128), Path(d), args.batch, args.imgsz)
        run = make_steps(args.model, batch, args.device)[args.memory_child]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            for _ in range(3):
                run()
            peak, method = torch.cuda.max_memory_allocated() - base, "cuda max_memory_allocated - allocated before"
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (the peak RSS) to the current RSS
                method = "VmHWM (reset) - VmRSS before the steps"
            except OSError:
                method = "ru_maxrss - VmRSS before the steps (peak not reset: includes set-up)"
            base = _status("VmRSS")
            for _ in range(3):
                run()
            peak = _status("VmHWM") - base
    print(json.dumps({"peak_mb": peak / 2**20, "method": method}))


def measure_memory(args: argparse.Namespace, variant: str) -> dict:
    """Run ``memory_child`` for ``variant`` in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--memory-child", variant, "--model", args.model, "--imgsz", str(args.imgsz),
           "--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device,
           "--coco128", args.coco128]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "YOLO_VERBOSE": "False"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Parse arguments, time interleaved pairs, measure memory, print and record."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(COCO128))
    ap.add_argument("--model", default="yw-v2-n.yaml")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(RESULTS / "prompt.csv"))
    ap.add_argument("--memory-child", choices=("full", "prompt"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(args)

    from yw_ext.seam import ULTRALYTICS_VERSION

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="yw_bench_prompt_") as d:
        batch = linked_batch(Path(args.coco128), Path(d), args.batch, args.imgsz)
    steps = make_steps(args.model, batch, args.device)
    times, _ = interleaved_rounds(steps, args.pairs, args.warmup)  # full, prompt / prompt, full / ...
    ratios = sorted(p / f for p, f in zip(times["prompt"], times["full"]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    del steps
    mem = {v: measure_memory(args, v) for v in ("full", "prompt")}
    row = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), ultralytics=ULTRALYTICS_VERSION,
        torch=torch.__version__, device=args.device, cpu=cpu_name(), threads=args.threads, model=args.model,
        imgsz=args.imgsz, batch=args.batch, classes=80, pairs=args.pairs,
        full_ms=round(1000 * statistics.median(times["full"]), 1),
        prompt_ms=round(1000 * statistics.median(times["prompt"]), 1),
        ratio_median=round(statistics.median(ratios), 3), ratio_p25=round(q[0], 3), ratio_p75=round(q[2], 3),
        full_peak_mb=round(mem["full"]["peak_mb"], 1), prompt_peak_mb=round(mem["prompt"]["peak_mb"], 1),
        memory_ratio=round(mem["prompt"]["peak_mb"] / max(mem["full"]["peak_mb"], 1e-9), 3),
        memory_method=mem["full"]["method"],
    )  # fmt: skip
    append_csv_atomic(args.csv, [row], COLUMNS)
    verdict = "OK" if row["ratio_median"] <= 0.75 else "ABOVE TARGET"
    print(f"\n{args.model} {args.imgsz}px batch {args.batch}, {args.device}, {args.threads} thread(s), "
          f"{args.pairs} pairs:")
    print(f"  full fine-tuning step {row['full_ms']} ms, prompt-tuning step {row['prompt_ms']} ms (medians)")
    print(f"  prompt / full = {row['ratio_median']} (median of pairwise ratios; IQR {row['ratio_p25']}-"
          f"{row['ratio_p75']}; target <= 0.75: {verdict})")
    print(f"  peak memory of the steps: full {row['full_peak_mb']} MB, prompt {row['prompt_peak_mb']} MB "
          f"({row['memory_ratio']}x; {row['memory_method']})")
    print(f"  written to {args.csv}")


if __name__ == "__main__":
    main()
