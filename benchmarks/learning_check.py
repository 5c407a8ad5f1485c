# yw_ext, AGPL-3.0 license
"""Learning check: from random weights, yw_ext's trainer must drive training-set mAP50 clearly up on a few images.

A handful of COCO128 train images are linked (symlinks, no copies) into a temporary dataset used for training and
validation. The model is built from a YAML (random weights); text embeddings come from ``YW_CLIP`` or, by default, a
random tiny CLIP text tower saved to a temporary file (random text embeddings are still distinct per class, which is
all a closed-set check needs). mAP50 is measured before and after training and written to
``benchmarks/results/learning_check.csv`` (atomically) with the environment.

Examples:
    python benchmarks/learning_check.py
    python benchmarks/learning_check.py --images 8 --epochs 300 --imgsz 192 --model yw-v2-s.yaml
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import torch

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import COCO128, RESULTS, append_csv_atomic, link_coco128, save_random_clip

COLUMNS = ("date", "ultralytics", "torch", "device", "threads", "model", "images", "epochs", "imgsz", "batch",
           "clip", "map50_before", "map50_after", "map_after", "train_s")  # fmt: skip


# A memorisation check: no augmentation, so the training images are exactly what is validated.
NO_AUGMENT = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, erasing=0.0)


def main() -> None:
    """Parse arguments, train, print and record mAP50 before / after."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(COCO128))
    ap.add_argument("--model", default="yw-v2-n.yaml")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr0", type=float, default=0.003)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(RESULTS / "learning_check.csv"))
    args = ap.parse_args()

    import yw_ext
    from yw_ext.seam import ULTRALYTICS_VERSION

    with tempfile.TemporaryDirectory(prefix="yw_learning_") as d:
        d = Path(d)
        user_clip = os.environ.get("YW_CLIP")
        os.environ["YW_CLIP"] = user_clip or str(save_random_clip(d / "random_clip.pt", "tiny"))
        os.environ.setdefault("YW_CACHE_DIR", str(d / "emb"))
        data = link_coco128(args.coco128, d / "data", args.images)
        common = dict(imgsz=args.imgsz, batch=args.batch, plots=False, device=args.device, verbose=False)

        model = yw_ext.YOLOWorld(args.model)
        before = model.val(data=str(data), project=str(d / "runs"), name="before", **common).box.map50
        t0 = time.perf_counter()
        metrics = model.train(
            data=str(data), epochs=args.epochs, workers=0, optimizer="AdamW", lr0=args.lr0, warmup_epochs=0,
            mosaic=0.0, close_mosaic=0, val=False, project=str(d / "runs"), name="train", **NO_AUGMENT, **common,
        )  # fmt: skip
        train_s = time.perf_counter() - t0
        best = yw_ext.YOLOWorld(str(model.trainer.best))
        after = best.val(data=str(data), project=str(d / "runs"), name="after", **common)
        row = dict(
            date=datetime.datetime.now().isoformat(timespec="seconds"), ultralytics=ULTRALYTICS_VERSION,
            torch=torch.__version__, device=args.device, threads=torch.get_num_threads(), model=args.model,
            images=args.images, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
            clip=user_clip or "random tiny CLIP",
            map50_before=round(float(before), 4), map50_after=round(float(after.box.map50), 4),
            map_after=round(float(after.box.map), 4), train_s=round(train_s, 1),
        )  # fmt: skip
        del metrics
    append_csv_atomic(args.csv, [row], COLUMNS)
    print(f"\nlearning check: mAP50 {row['map50_before']:.3f} -> {row['map50_after']:.3f} "
          f"(mAP50-95 {row['map_after']:.3f}) after {args.epochs} epochs on {args.images} images at {args.imgsz} px, "
          f"{row['train_s']:.0f} s; written to {args.csv}")  # fmt: skip


if __name__ == "__main__":
    main()
