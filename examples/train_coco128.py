# yw_ext, AGPL-3.0 license
"""Fine-tune a YOLO-World model on COCO128 and print mAP before and after (public yw_ext API only).

Needs CLIP text weights for the class names: set ``YW_CLIP`` to OpenAI's ``ViT-B-32.pt`` or a Hugging Face CLIP
folder. Pretrained detector weights (``--model l``, the default) are downloaded when online; offline, put
``yolov8l-worldv2.pt`` in ``$YW_WEIGHTS_DIR`` or start from random weights with ``--model yw-v2-n.yaml``.

Examples:
    YW_CLIP=~/.cache/clip/ViT-B-32.pt python examples/train_coco128.py
    YW_CLIP=~/.cache/clip/ViT-B-32.pt python examples/train_coco128.py --model yw-v2-n.yaml --epochs 3 --imgsz 320
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yw_ext
from yw_ext.text import load_clip

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "coco128.yaml"


def main() -> int:
    """Validate, fine-tune, validate again; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="l", help="size letter (pretrained), .pt file, or YAML (random weights)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="dataset YAML (may name a text_json of synonyms)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="", help="'' = first GPU if any, else CPU; or 'cpu', '0', ...")
    ap.add_argument("--project", default="runs/yw_train")
    args = ap.parse_args()

    try:
        load_clip()  # fail early, with instructions, if no CLIP text weights are available
    except FileNotFoundError as e:
        print(f"This example needs CLIP text weights to embed the class names.\n{e}", file=sys.stderr)
        return 2
    try:
        model = yw_ext.YOLOWorld(args.model)
    except FileNotFoundError as e:
        print(f"{e}\nOffline? Start from random weights instead: --model yw-v2-n.yaml", file=sys.stderr)
        return 2

    common = dict(data=args.data, imgsz=args.imgsz, batch=args.batch, device=args.device, project=args.project)
    before = model.val(name="before", plots=False, **common)
    after = model.train(epochs=args.epochs, name="train", **common)
    print(f"\n{'':10s}{'mAP50-95':>10s}{'mAP50':>10s}")
    for label, m in (("before", before), ("after", after)):
        print(f"{label:10s}{m.box.map:10.4f}{m.box.map50:10.4f}")
    print(f"weights: {model.trainer.best} (reload with yw_ext.YOLOWorld(path); classes: {len(model.vocabulary)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
