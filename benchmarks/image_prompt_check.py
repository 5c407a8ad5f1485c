# yw_ext, AGPL-3.0 license
"""Image-prompt learning check: training the image adapter must raise image-prompt mAP on a few COCO128 images.

Steps, on a handful of COCO128 train images linked (symlinks, no copies) into a temporary dataset (train = val):

1. a detector is trained from random weights on the class texts, as ``learning_check.py`` does (or ``--detector``
   loads one);
2. text-prompt mAP50, and image-prompt mAP50 with raw CLIP image embeddings (``val(image_prompts=32)``: each class's
   prompt averages up to 32 training crops) are measured;
3. the image adapter is trained (``train(mode="image_prompt")``: frozen detector, frozen CLIP image tower);
4. image-prompt mAP50 is measured again, now through the adapter.

The CLIP is ``YW_CLIP`` (it needs an image tower) or, by default, a random tiny CLIP with an image tower. With random
CLIP weights the raw image embeddings have nothing in common with the text embeddings the detector was trained on,
so the check shows the adapter learning that mapping: a memorisation check on a tiny set, not an accuracy claim.
Results go to ``benchmarks/results/image_prompt_check.csv`` (appended atomically) with the environment.

Examples:
    python benchmarks/image_prompt_check.py
    python benchmarks/image_prompt_check.py --images 16 --adapter-epochs 40 --detector runs/detect/train/weights/best.pt
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# common (benchmarks/common.py) first: it puts the repository on sys.path and makes Ultralytics offline
from common import COCO128, RESULTS, append_csv_atomic, environment, link_coco128, save_random_clip

COLUMNS = ("date", "ultralytics", "torch", "device", "threads", "model", "images", "detector_epochs",
           "adapter_epochs", "imgsz", "batch", "crops", "clip", "map50_text", "map50_image_raw", "map50_image_adapter",
           "map_image_adapter", "adapter_train_s")  # fmt: skip

# A memorisation check: no augmentation, so the training images are exactly what is validated.
NO_AUGMENT = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, erasing=0.0, mosaic=0.0,
                  close_mosaic=0, warmup_epochs=0)  # fmt: skip


def main() -> None:
    """Parse arguments, train, print and record the three mAP50 values."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(COCO128))
    ap.add_argument("--model", default="yw-v2-n.yaml")
    ap.add_argument("--detector", default=None, help="a trained detector .pt (skips step 1)")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=200, help="detector epochs (step 1)")
    ap.add_argument("--adapter-epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crops", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(RESULTS / "image_prompt_check.csv"))
    args = ap.parse_args()

    import torch

    import yw_ext

    with tempfile.TemporaryDirectory(prefix="yw_image_prompt_") as d:
        d = Path(d)
        user_clip = os.environ.get("YW_CLIP")
        os.environ["YW_CLIP"] = user_clip or str(save_random_clip(d / "random_clip.pt", "tiny", vision=True))
        os.environ.setdefault("YW_CACHE_DIR", str(d / "emb"))
        data = str(link_coco128(args.coco128, d / "data", args.images))
        common = dict(imgsz=args.imgsz, batch=args.batch, plots=False, device=args.device, verbose=False)
        runs = str(d / "runs")

        if args.detector:
            model = yw_ext.YOLOWorld(args.detector)
        else:
            model = yw_ext.YOLOWorld(args.model)
            model.train(data=data, epochs=args.epochs, workers=0, optimizer="AdamW", lr0=0.003, val=False,
                        project=runs, name="detector", **NO_AUGMENT, **common)  # fmt: skip
            model = yw_ext.YOLOWorld(str(model.trainer.best))
        text = model.val(data=data, project=runs, name="text", **common).box.map50
        raw = model.val(data=data, image_prompts=args.crops, project=runs, name="raw", **common).box.map50
        t0 = time.perf_counter()
        model.train(data=data, mode="image_prompt", epochs=args.adapter_epochs, crops=args.crops, workers=0,
                    project=runs, name="adapter", **NO_AUGMENT, **common)  # fmt: skip
        train_s = time.perf_counter() - t0
        adapted = model.val(data=data, image_prompts=args.crops, project=runs, name="adapted", **common)
        env = environment(torch.get_num_threads(), args.device)
        row = dict(
            date=env["date"], ultralytics=env["ultralytics"], torch=env["torch"], device=env["device"],
            threads=env["threads"], model=args.detector or args.model, images=args.images,
            detector_epochs=0 if args.detector else args.epochs, adapter_epochs=args.adapter_epochs,
            imgsz=args.imgsz, batch=args.batch, crops=args.crops, clip=user_clip or "random tiny CLIP (with image tower)",
            map50_text=round(float(text), 4), map50_image_raw=round(float(raw), 4),
            map50_image_adapter=round(float(adapted.box.map50), 4), map_image_adapter=round(float(adapted.box.map), 4),
            adapter_train_s=round(train_s, 1),
        )  # fmt: skip
    append_csv_atomic(args.csv, [row], COLUMNS)
    print(f"\nimage-prompt check ({args.images} images, {args.imgsz} px, {args.crops} crops per class): mAP50 with text "
          f"{row['map50_text']:.3f}; with image prompts {row['map50_image_raw']:.3f} (raw CLIP) -> "
          f"{row['map50_image_adapter']:.3f} (adapter, {args.adapter_epochs} epochs, {row['adapter_train_s']:.0f} s); "
          f"written to {args.csv}")  # fmt: skip


if __name__ == "__main__":
    main()
