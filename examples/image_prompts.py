"""Detect by example: a box from one COCO128 image is the prompt, detections come from another image.

The exemplar is the largest ground-truth box of ``--cls`` in the first COCO128 image that has one; the target is
the next image with that class. The class is then detected three ways: from the image prompt alone, from its name
(text), and from both fused (``n(alpha * text + (1 - alpha) * image)``). Public API only.

Needs CLIP weights with an image tower (``YW_CLIP``: OpenAI ``ViT-B-32.pt`` or a Hugging Face CLIPModel folder) and
detector weights (``--model``, default ``l``: downloaded when online, else looked for in ``YW_WEIGHTS_DIR``).

With ``--train-adapter N`` the image-prompt adapter (``mode="image_prompt"``: frozen detector, frozen CLIP image
tower, a residual MLP trained with the detection loss) is first trained for N epochs on COCO128, and the image
prompts then go through it; ``--adapter best_adapter.npz`` uses an adapter trained before.

Examples:
    YW_CLIP=~/.cache/clip/ViT-B-32.pt python examples/image_prompts.py
    python examples/image_prompts.py --model s --cls giraffe --conf 0.05 --margin 0.1 --save
    python examples/image_prompts.py --model s --train-adapter 10 --imgsz 320
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def class_names(data: Path) -> dict[int, str]:
    """COCO128 class names from its YAML."""
    import yaml

    return yaml.safe_load((data / "coco128.yaml").read_text())["names"]


def boxes_of(label: Path, cls_id: int, width: int, height: int) -> list[list[float]]:
    """Pixel xyxy boxes of ``cls_id`` in a YOLO label file (``cls cx cy w h``, normalised)."""
    out = []
    for line in label.read_text().splitlines():
        v = line.split()
        if len(v) == 5 and int(v[0]) == cls_id:
            cx, cy, w, h = (float(x) for x in v[1:])
            out.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height])
    return out


def find_images(data: Path, cls_id: int) -> list[tuple[Path, list[list[float]]]]:
    """(image, pixel boxes of the class) for every COCO128 image that contains the class, in name order."""
    from PIL import Image

    found = []
    for split in ("train2017", "val2017"):
        for label in sorted((data / "labels" / split).glob("*.txt")):
            image = data / "images" / split / (label.stem + ".jpg")
            if not image.is_file():
                continue
            with Image.open(image) as im:
                w, h = im.size
            boxes = boxes_of(label, cls_id, w, h)
            if boxes:
                found.append((image, boxes))
    return found


def show(title: str, result) -> None:
    """Print the detections of one Results object."""
    print(f"\n{title}: {len(result.boxes)} detections")
    for c, conf, xyxy in zip(result.boxes.cls.tolist(), result.boxes.conf.tolist(), result.boxes.xyxy.tolist()):
        print(f"  {result.names[int(c)]:<12} {conf:.3f}  [{', '.join(f'{v:.0f}' for v in xyxy)}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="l", help="yw_ext model: size letter, alias or checkpoint (default: l)")
    ap.add_argument("--data", type=Path, default=DATA, help=f"COCO128 folder (default: {DATA})")
    ap.add_argument("--cls", default="dog", help="COCO class to find by example (default: dog)")
    ap.add_argument("--conf", type=float, default=0.1, help="confidence threshold (default: 0.1)")
    ap.add_argument("--alpha", type=float, default=0.5, help="text weight of the fused run (default: 0.5)")
    ap.add_argument("--margin", type=float, default=0.0, help="context around the exemplar box, fraction (default: 0)")
    ap.add_argument("--save", action="store_true", help="save the annotated image-prompt result (runs/detect/...)")
    ap.add_argument("--adapter", type=Path, default=None, help="a trained image adapter file (best_adapter.npz)")
    ap.add_argument("--train-adapter", type=int, default=0, metavar="N",
                    help="first train the image adapter for N epochs on COCO128 (default: 0, no training)")
    ap.add_argument("--imgsz", type=int, default=640, help="training / validation image size (default: 640)")
    args = ap.parse_args()

    if not (args.data / "coco128.yaml").is_file():
        print(f"COCO128 not found at {args.data}: pass --data /path/to/coco128.")
        return 1
    if not os.environ.get("YW_CLIP") and not Path("~/.cache/clip/ViT-B-32.pt").expanduser().is_file():
        print("No CLIP weights: set YW_CLIP to OpenAI's ViT-B-32.pt (the `clip` package caches it in "
              "~/.cache/clip/) or to a Hugging Face CLIPModel folder (openai/clip-vit-base-patch32). Image prompts "
              "need the image tower, so a text-only CLIP is not enough.")
        return 1
    names = class_names(args.data)
    ids = {v: k for k, v in names.items()}
    if args.cls not in ids:
        print(f"'{args.cls}' is not a COCO class; e.g. {', '.join(list(ids)[:10])}, ...")
        return 1
    found = find_images(args.data, ids[args.cls])
    if len(found) < 2:
        print(f"need two COCO128 images with a '{args.cls}', found {len(found)}; try another --cls.")
        return 1
    (ex_image, ex_boxes), (target, target_boxes) = found[0], found[1]
    box = max(ex_boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # the largest instance is the exemplar

    import yw_ext

    try:
        model = yw_ext.YOLOWorld(args.model)
    except FileNotFoundError as e:  # weights not local and not downloadable (offline)
        print(f"Detector weights for --model {args.model!r} are not available:\n{e}")
        return 1

    if args.adapter is not None:
        model.load_image_adapter(args.adapter)
    if args.train_adapter > 0:
        data = str(args.data / "coco128.yaml")
        before = model.val(data=data, image_prompts=32, imgsz=args.imgsz, plots=False, verbose=False).box.map50
        model.train(data=data, mode="image_prompt", epochs=args.train_adapter, imgsz=args.imgsz, plots=False)
        after = model.val(data=data, image_prompts=32, imgsz=args.imgsz, plots=False, verbose=False).box.map50
        print(f"image-prompt mAP50 on COCO128 val (32 training crops per class): {before:.3f} with raw CLIP "
              f"embeddings -> {after:.3f} with the trained adapter ({model.trainer.best})")

    print(f"exemplar: {ex_image.name} box [{', '.join(f'{v:.0f}' for v in box)}] ('{args.cls}')")
    print(f"target:   {target.name} ({len(target_boxes)} ground-truth '{args.cls}')")
    prompts = {args.cls: [(ex_image, box)]}
    kw = dict(conf=args.conf, verbose=False)
    try:
        by_image = model.predict(target, image_prompts=prompts, margin=args.margin, save=args.save, **kw)[0]
        fused = model.predict(target, image_prompts=prompts, alpha=args.alpha, margin=args.margin, **kw)[0]
    except (FileNotFoundError, ValueError) as e:  # e.g. a text-only CLIP, or no CLIP weights at all
        print(f"Image prompts failed: {e}")
        return 1
    model.set_classes([args.cls])
    by_text = model.predict(target, **kw)[0]

    show("image prompt", by_image)
    show("text prompt", by_text)
    show(f"text + image (alpha={args.alpha})", fused)
    if args.save:
        print(f"\nannotated image saved in {by_image.save_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
