"""Learning check for YOLO-World-Seg: from random weights, mask mAP50 on the synthetic shapes set rises above 0.3.

The set is ``yw_ext.bench.seg_data``: filled circles / triangles / squares with known polygons pasted onto COCO128
photos (../shared has box labels only). Text embeddings come from a tiny random CLIP (tests/_tiny_clip.py), so the
three class "texts" are three fixed random vectors: this checks that boxes, classes and masks are learned through
yw_ext's seg trainer, not zero-shot ability.

Usage:
    python benchmarks/seg_learning.py --images 64 --epochs 30 --imgsz 128 --out benchmarks/results/seg_learning.csv

Prints mask and box mAP50 before training and after, and writes them as one CSV row.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    """Build the set, validate the random model, train, validate again; return and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco128", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--scale", default="n")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seg_learning.csv"))
    a = ap.parse_args(argv)

    import torch

    import yw_ext
    from tests._tiny_clip import save_openai
    from yw_ext.bench.seg_data import make_shapes_dataset, write_data_yaml
    from yw_ext.core.io import atomic_write

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="yw_seg_learning_"))
    save_openai(work / "clip.pt")
    os.environ["YW_CLIP"], os.environ["YW_CACHE_DIR"] = str(work / "clip.pt"), str(work / "emb")
    photos = sorted((Path(a.coco128) / "images" / "train2017").glob("*.jpg"))
    n_val = max(8, a.images // 4)
    make_shapes_dataset(photos[: a.images], work / "ds", imgsz=a.imgsz, seed=0, split="train")
    make_shapes_dataset(photos[a.images : a.images + n_val], work / "ds", imgsz=a.imgsz, seed=1, split="val")
    data = write_data_yaml(work / "seg.yaml", work / "ds", val="images/val")
    common = dict(imgsz=a.imgsz, batch=a.batch, plots=False, device="cpu", verbose=False, project=str(work / "runs"))
    model = yw_ext.YOLOWorld(f"yw-v2-seg-{a.scale}.yaml")
    before = model.val(data=str(data), name="before", **common)
    t0 = time.perf_counter()
    after = model.train(data=str(data), epochs=a.epochs, workers=0, name="train", exist_ok=True, **common)
    seconds = time.perf_counter() - t0
    row = {"scale": a.scale, "imgsz": a.imgsz, "train_images": a.images, "val_images": n_val, "epochs": a.epochs,
           "mask_map50_before": round(float(before.seg.map50), 4), "mask_map50_after": round(float(after.seg.map50), 4),
           "box_map50_before": round(float(before.box.map50), 4), "box_map50_after": round(float(after.box.map50), 4),
           "mask_map_after": round(float(after.seg.map), 4), "train_seconds": round(seconds, 1),
           "threads": torch.get_num_threads()}  # fmt: skip
    print(row)

    def write(f):
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)

    atomic_write(a.out, write, mode="w")
    return row


if __name__ == "__main__":
    main()
