# yw_ext, AGPL-3.0 license
"""Benchmark: training step time of yw_ext's trainer vs Ultralytics' ``WorldTrainer`` on the same data and settings.

Both trainers are set up side by side in one process (their own ``_setup_train``: model, dataloader, optimizer, EMA)
on the same COCO128 images (linked into a temporary dataset, never copied), the same arguments and the same
precomputed text embeddings: Ultralytics hard-codes ``clip:ViT-B/32``, which cannot load offline, so a subclass here
(and only here) overrides its ``generate_text_embeddings`` and drops its CLIP-loading ``set_classes`` callback; yw_ext's
trainer gets the same table through its ``encode``. Models: ``yolov8{s}-worldv2.yaml`` (Ultralytics ``WorldModel``) vs
``yw-v2-{s}.yaml`` (same architecture), random weights.

One training step = next batch from the trainer's dataloader + ``preprocess_batch`` + forward/loss + backward +
``optimizer_step`` (gradient clipping, optimizer, EMA update). Steps are interleaved A/B (order alternating), the first
``--warmup`` pairs are dropped, and the median of the pairwise ratios yw_ext / Ultralytics is reported (target
<= 1.05). Results go to ``benchmarks/results/train.csv`` (appended, written atomically) with versions, device and
threads.

Examples:
    python benchmarks/bench_train.py
    python benchmarks/bench_train.py --pairs 20 --imgsz 320 --batch 8 --scale s
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import COCO128, RESULTS, append_csv_atomic, link_coco128

COLUMNS = ("date", "yw_ext", "ultralytics", "torch", "device", "threads", "scale", "imgsz", "batch", "images", "pairs",
           "yw_ms", "ultralytics_ms", "ratio_median", "ratio_min", "ratio_max")  # fmt: skip


def text_table(names: list[str], dim: int = 512, seed: int = 0) -> dict[str, torch.Tensor]:
    """The same L2-normalised random embedding per text for both trainers."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(len(names), dim, generator=g), dim=-1)
    return dict(zip(names, emb))


def make_trainers(table: dict[str, torch.Tensor]):
    """Trainer subclasses fed from ``table`` instead of a CLIP model (benchmark only)."""
    from yw_ext.engine.trainer import YWTrainer
    from yw_ext.seam import resolve
    from yw_ext.seam import world_set_classes_callback as on_pretrain_routine_end

    WorldTrainer = resolve("ultralytics.models.yolo.world.train:WorldTrainer")  # the baseline (not in the seam)

    class UltralyticsWorld(WorldTrainer):
        def get_model(self, cfg=None, weights=None, verbose=True):
            model = super().get_model(cfg, weights, verbose)
            hooks = self.callbacks["on_pretrain_routine_end"]
            if on_pretrain_routine_end in hooks:
                hooks.remove(on_pretrain_routine_end)  # it would load clip:ViT-B/32 for the EMA (no validation here)
            return model

        def generate_text_embeddings(self, texts, batch, cache_dir):
            return {t: table[t].to(self.device) for t in texts}

    class YWFromTable(YWTrainer):
        def encode(self, texts):
            self.text_encoder_id = "benchmark-table"
            return torch.stack([table[t] for t in texts]).to(self.device)

    return YWFromTable, UltralyticsWorld


def step(trainer, it, seed: int) -> float:
    """One timed training step of ``trainer`` (batch from its loader iterator ``it``); returns seconds.

    The random generators are seeded with ``seed`` first, so both trainers of a pair load the same images with the
    same augmentation and text sampling (same workload; workers=0 loads in this process).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    batch = next(it)
    batch = trainer.preprocess_batch(batch)
    loss, _ = trainer.model(batch)
    loss.sum().backward()
    trainer.optimizer_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize(trainer.device)
    return time.perf_counter() - t0


def forever(loader):
    """Endless iterator over a dataloader."""
    while True:
        yield from loader


def main() -> None:
    """Set up both trainers, time interleaved steps, print and record the ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(COCO128))
    ap.add_argument("--scale", default="n")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (Ultralytics uses cpu_count - 1)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(RESULTS / "train.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import yw_ext
    from yw_ext.core.log import LOGGER
    from yw_ext.seam import ULTRALYTICS_VERSION, YAML

    with tempfile.TemporaryDirectory(prefix="yw_bench_train_") as d:
        d = Path(d)
        data = link_coco128(args.coco128, d / "data", args.images, labelled_only=False)
        table = text_table(list(YAML.load(data)["names"].values()))
        yw_cls, ul_cls = make_trainers(table)
        common = dict(data=str(data), epochs=1, imgsz=args.imgsz, batch=args.batch, workers=0, device=args.device,
                      plots=False, val=False, verbose=False, project=str(d / "runs"), exist_ok=True, close_mosaic=0)  # fmt: skip
        trainers = {
            "yw_ext": yw_cls(overrides=dict(model=f"yw-v2-{args.scale}.yaml", name="yw", **common)),
            "ultralytics": ul_cls(overrides=dict(model=f"yolov8{args.scale}-worldv2.yaml", name="ul", **common)),
        }
        level = LOGGER.level
        LOGGER.setLevel(40)
        try:
            for t in trainers.values():
                t._setup_train()
                t._model_train()
        finally:
            LOGGER.setLevel(level)
        torch.set_num_threads(args.threads)  # Ultralytics' select_device resets CPU threads to cpu_count - 1
        iters = {k: forever(t.train_loader) for k, t in trainers.items()}
        times: dict[str, list[float]] = {k: [] for k in trainers}
        for p in range(args.warmup + args.pairs):
            order = ["yw_ext", "ultralytics"] if p % 2 == 0 else ["ultralytics", "yw_ext"]
            for k in order:
                times[k].append(step(trainers[k], iters[k], seed=p))
        yw, ul = times["yw_ext"][args.warmup :], times["ultralytics"][args.warmup :]
    ratios = [a / b for a, b in zip(yw, ul)]
    row = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"), yw_ext=yw_ext.__version__,
        ultralytics=ULTRALYTICS_VERSION, torch=torch.__version__,
        device=torch.cuda.get_device_name() if args.device not in {"cpu", "mps"} else f"cpu ({os.cpu_count()} cores)",
        threads=torch.get_num_threads(), scale=args.scale, imgsz=args.imgsz, batch=args.batch, images=args.images,
        pairs=args.pairs, yw_ms=round(statistics.median(yw) * 1e3, 1), ultralytics_ms=round(statistics.median(ul) * 1e3, 1),
        ratio_median=round(statistics.median(ratios), 4), ratio_min=round(min(ratios), 4), ratio_max=round(max(ratios), 4),
    )  # fmt: skip
    append_csv_atomic(args.csv, [row], COLUMNS)
    print(f"train step ({args.scale}, imgsz {args.imgsz}, batch {args.batch}, {row['threads']} threads, {row['device']}): "
          f"yw_ext {row['yw_ms']} ms vs Ultralytics WorldTrainer {row['ultralytics_ms']} ms; median ratio "
          f"{row['ratio_median']} (min {row['ratio_min']}, max {row['ratio_max']}, {args.pairs} pairs) -> {args.csv}")  # fmt: skip


if __name__ == "__main__":
    main()
