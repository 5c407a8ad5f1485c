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
import csv
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import torch  # noqa: E402

COLUMNS = ("date", "ultralytics", "torch", "device", "threads", "model", "images", "epochs", "imgsz", "batch",
           "clip", "map50_before", "map50_after", "map_after", "train_s")  # fmt: skip


# A memorisation check: no augmentation, so the training images are exactly what is validated.
NO_AUGMENT = dict(hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0, erasing=0.0)


def random_clip_file(path: Path, seed: int = 0) -> Path:
    """Save a random tiny CLIP text tower (width 64, 2 layers, 512-d) as an OpenAI-layout state dict."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(seed)
    model = CLIP(512, vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=32, image_size=32),
                 text_cfg=CLIPTextCfg(width=64, layers=2, heads=1), quick_gelu=True, cast_dtype=torch.float32)
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}, path)
    return path


def linked_subset(coco128: Path, root: Path, n: int) -> Path:
    """Dataset YAML over ``n`` COCO128 train images linked into ``root`` (train = val)."""
    from ultralytics.utils import YAML

    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True, exist_ok=True)
    images = [p for p in sorted((coco128 / "images" / "train2017").glob("*.jpg"))
              if (coco128 / "labels" / "train2017" / f"{p.stem}.txt").is_file()][:n]  # fmt: skip
    for im in images:
        (root / "images" / "train" / im.name).symlink_to(im)
        (root / "labels" / "train" / f"{im.stem}.txt").symlink_to(coco128 / "labels" / "train2017" / f"{im.stem}.txt")
    names = YAML.load(coco128 / "coco128.yaml")["names"]
    YAML.save(root / "data.yaml", {"path": str(root), "train": "images/train", "val": "images/train", "names": names})
    return root / "data.yaml"


def write_csv_atomic(path: Path, rows: list[dict]) -> None:
    """Append ``rows`` to the CSV at ``path`` (rewritten through a temporary file and ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(old + rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> None:
    """Parse arguments, train, print and record mAP50 before / after."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    ap.add_argument("--model", default="yw-v2-n.yaml")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr0", type=float, default=0.003)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "learning_check.csv"))
    args = ap.parse_args()

    import ultralytics

    import yw_ext

    with tempfile.TemporaryDirectory(prefix="yw_learning_") as d:
        d = Path(d)
        user_clip = os.environ.get("YW_CLIP")
        os.environ["YW_CLIP"] = user_clip or str(random_clip_file(d / "random_clip.pt"))
        os.environ.setdefault("YW_CACHE_DIR", str(d / "emb"))
        data = linked_subset(Path(args.coco128), d / "data", args.images)
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
            date=datetime.datetime.now().isoformat(timespec="seconds"), ultralytics=ultralytics.__version__,
            torch=torch.__version__, device=args.device, threads=torch.get_num_threads(), model=args.model,
            images=args.images, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
            clip=user_clip or "random tiny CLIP",
            map50_before=round(float(before), 4), map50_after=round(float(after.box.map50), 4),
            map_after=round(float(after.box.map), 4), train_s=round(train_s, 1),
        )  # fmt: skip
        del metrics
    write_csv_atomic(Path(args.csv), [row])
    print(f"\nlearning check: mAP50 {row['map50_before']:.3f} -> {row['map50_after']:.3f} "
          f"(mAP50-95 {row['map_after']:.3f}) after {args.epochs} epochs on {args.images} images at {args.imgsz} px, "
          f"{row['train_s']:.0f} s; written to {args.csv}")  # fmt: skip


if __name__ == "__main__":
    main()
