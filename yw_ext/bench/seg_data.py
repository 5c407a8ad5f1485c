"""A synthetic instance-segmentation set on real images: filled shapes with known polygons, YOLO-seg labels.

``../shared/data/coco128`` has box labels only and no small segmentation set ships in the installed packages, so the
seg tests and the learning check (``benchmarks/seg_learning.py``) paste filled shapes (``circle``, ``triangle``,
``square``) onto real photos and write their polygons as YOLO-seg labels (``class x1 y1 ... xn yn``, normalised).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yw_ext.core.io import atomic_path, atomic_write

SHAPES = ("circle", "triangle", "square")
"""Class names of the synthetic set, in class order."""


def _polygon(kind: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices ``(n, 2)`` in pixels of shape ``kind`` (index into ``SHAPES``) centred at ``(cx, cy)``, radius ``r``."""
    n = (24, 3, 4)[kind]
    t = angle + np.arange(n) * 2 * np.pi / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)  # (n, 2)


def make_shapes_dataset(images: list[str | Path], root: str | Path, imgsz: int = 128, per_image: tuple = (1, 3),
                        seed: int = 0, split: str = "train") -> Path:  # fmt: skip
    """Write ``root/images/<split>`` and ``root/labels/<split>``: each image resized to ``imgsz`` square with shapes.

    Args:
        images: Source photos (e.g. COCO128 images).
        root: Dataset folder.
        imgsz: Side of the written images.
        per_image: (min, max) shapes per image.
        seed: Random seed (layout, colours).
        split: Sub-folder name.

    Returns:
        The image folder.

    Examples:
        >>> folder = make_shapes_dataset(sorted(Path("coco128/images/train2017").glob("*.jpg"))[:8], "seg")
        >>> sorted(p.name for p in folder.parent.parent.iterdir())
        ['images', 'labels']
    """
    import cv2

    rng = np.random.default_rng(seed)
    root = Path(root)
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    lbl_dir.mkdir(parents=True, exist_ok=True)
    for src in images:
        im = cv2.imread(str(src))
        if im is None:
            raise ValueError(f"cannot read image '{src}'.")
        im = cv2.resize(im, (imgsz, imgsz))
        rows = []
        for _ in range(int(rng.integers(per_image[0], per_image[1] + 1))):
            kind = int(rng.integers(len(SHAPES)))
            r = float(rng.uniform(0.12, 0.25) * imgsz)
            cx, cy = rng.uniform(r, imgsz - r, 2)
            poly = _polygon(kind, cx, cy, r, float(rng.uniform(0, np.pi)))
            cv2.fillPoly(im, [np.round(poly).astype(np.int32)], tuple(int(c) for c in rng.integers(0, 256, 3)))
            rows.append(f"{kind} " + " ".join(f"{v:.5f}" for v in (np.clip(poly, 0, imgsz) / imgsz).ravel()))
        ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise OSError(f"cannot encode '{src}' as JPEG.")
        atomic_write(img_dir / f"{Path(src).stem}.jpg", lambda f, b=buf.tobytes(): f.write(b))
        atomic_write(lbl_dir / f"{Path(src).stem}.txt", lambda f, t="\n".join(rows) + "\n": f.write(t), mode="w")
    return img_dir


def write_data_yaml(path: str | Path, root: str | Path, train: str = "images/train", val: str = "images/train") -> Path:
    """A dataset YAML over a ``make_shapes_dataset`` folder (names = ``SHAPES``).

    Examples:
        >>> write_data_yaml("seg.yaml", "seg")  # doctest: +SKIP
    """
    from yw_ext.seam import YAML

    names = dict(enumerate(SHAPES))
    with atomic_path(path) as tmp:
        YAML.save(tmp, {"path": str(Path(root).resolve()), "train": train, "val": val, "names": names})
    return Path(path)
