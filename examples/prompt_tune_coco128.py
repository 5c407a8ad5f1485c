"""Prompt tuning on COCO128: learn class embeddings for a frozen, trained detector.

1. A detector is trained a little (``yw-v2-n.yaml`` from random weights, a few COCO128 images, train = val, no
   augmentation: a memorisation set-up that runs on a CPU in minutes; pass ``--detector best.pt`` to skip it).
2. Baseline: the detector with RANDOM class embeddings (``set_classes(names, embeddings=random.npy)``) is validated.
3. Prompt tuning from those same random embeddings (``mode="prompt"``, ``init=random.npy``): only the 80 x 512
   embeddings train; the detector stays bitwise unchanged. The tuned vocabulary is validated.
4. For reference, the CLIP-text vocabulary the detector was trained with is validated too.

Text embeddings come from ``$YW_CLIP`` (e.g. OpenAI's ViT-B-32.pt) or, by default, a random tiny CLIP text tower
written to the work folder (its embeddings are random but distinct per class, which is all a closed-set check needs).
COCO128 images are linked (symlinks), never copied.

Examples:
    python examples/prompt_tune_coco128.py
    python examples/prompt_tune_coco128.py --images 8 --ft-epochs 200 --pt-epochs 60 --imgsz 160
    python examples/prompt_tune_coco128.py --detector runs/detect/train/weights/best.pt --pt-epochs 30
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NO_AUGMENT = dict(mosaic=0.0, close_mosaic=0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, translate=0.0, scale=0.0, fliplr=0.0,
                  erasing=0.0)  # fmt: skip


def main() -> None:
    """Train (or load) a detector, then compare random, prompt-tuned and CLIP-text vocabularies."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--coco128", default=str(ROOT.parent / "shared" / "data" / "coco128"))
    ap.add_argument("--detector", default=None, help="a trained yw_ext .pt (skips step 1)")
    ap.add_argument("--model", default="yw-v2-n.yaml")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--ft-epochs", type=int, default=200, help="detector training epochs (step 1)")
    ap.add_argument("--pt-epochs", type=int, default=60, help="prompt-tuning epochs")
    ap.add_argument("--lr0", type=float, default=2e-3, help="prompt-tuning learning rate (official: 2e-3)")
    ap.add_argument("--adapter", action="store_true", help="train the residual MLP adapter too")
    ap.add_argument("--imgsz", type=int, default=160)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workdir", default=None, help="keep runs here (default: a temporary folder)")
    args = ap.parse_args()

    import yw_ext
    from yw_ext.bench import link_coco128, save_random_clip

    work = Path(args.workdir or tempfile.mkdtemp(prefix="yw_prompt_tune_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["YW_CLIP"] = os.environ.get("YW_CLIP") or str(save_random_clip(work / "random_clip.pt", "tiny"))
    os.environ.setdefault("YW_CACHE_DIR", str(work / "embeddings"))
    data = str(link_coco128(args.coco128, work / "data", args.images) if not (work / "data").exists()
               else work / "data" / "data.yaml")  # fmt: skip
    common = dict(imgsz=args.imgsz, batch=args.batch, plots=False, device="cpu", verbose=False,
                  project=str(work / "runs"))  # fmt: skip
    times = {}

    # 1. a trained detector
    detector = args.detector
    if detector is None:
        t = time.perf_counter()
        model = yw_ext.YOLOWorld(args.model)
        model.train(data=data, epochs=args.ft_epochs, workers=0, optimizer="AdamW", lr0=0.003, warmup_epochs=0,
                    val=False, name="detector", **NO_AUGMENT, **common)  # fmt: skip
        detector = str(model.trainer.best)
        times["detector training"] = time.perf_counter() - t

    # 2. baseline: random class embeddings (saved, so that prompt tuning starts from exactly these)
    names = list(yw_ext.YOLOWorld(detector).vocabulary)
    rng = np.random.default_rng(0)
    random_emb = rng.standard_normal((len(names), 512)).astype(np.float32)
    random_emb /= np.linalg.norm(random_emb, axis=1, keepdims=True)
    np.save(work / "random_init.npy", random_emb)
    model = yw_ext.YOLOWorld(detector)
    model.set_classes(names, embeddings=work / "random_init.npy")
    random_map = model.val(data=data, name="val_random", **common).box.map50

    # 3. prompt tuning from those random embeddings; the detector is frozen
    model = yw_ext.YOLOWorld(detector)
    t = time.perf_counter()
    model.train(data=data, mode="prompt", init=str(work / "random_init.npy"), adapter=args.adapter,
                epochs=args.pt_epochs, lr0=args.lr0, workers=0, val=False, name="prompts",
                **NO_AUGMENT, **common)  # fmt: skip
    times["prompt tuning"] = time.perf_counter() - t
    prompts = model.trainer.best  # weights/best_prompts.npz
    tuned = yw_ext.YOLOWorld(detector).load_prompts(prompts)  # what a user does later: detector + prompt file
    tuned_map = tuned.val(data=data, name="val_prompts", **common).box.map50

    # 4. reference: the CLIP text of the class names (the vocabulary the detector was trained with)
    text_map = yw_ext.YOLOWorld(detector).val(data=data, name="val_text", **common).box.map50

    size_kb = Path(prompts).stat().st_size / 1024
    print(f"\nCOCO128 ({args.images} images, train = val), {args.model} at {args.imgsz} px, detector {detector}")
    print(f"  mAP50 random embeddings (baseline):        {random_map:.3f}")
    print(f"  mAP50 prompt-tuned from them ({args.pt_epochs} epochs):  {tuned_map:.3f}"
          f"   -> {prompts} ({size_kb:.0f} KB)")
    print(f"  mAP50 CLIP text vocabulary (reference):    {text_map:.3f}")
    print("  time: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


if __name__ == "__main__":
    main()
