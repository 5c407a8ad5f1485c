# yw_ext, AGPL-3.0 license
"""Class names and images of the benchmarks: the LVIS vocabulary, COCO128 subsets linked into a dataset folder.

Examples:
    >>> len(lvis_names())
    1203
"""

from __future__ import annotations

from pathlib import Path


def lvis_names() -> list[str]:
    """The 1203 LVIS class names from Ultralytics' ``cfg/datasets/lvis.yaml``, in class order.

    Examples:
        >>> lvis_names()[:2]
        ['aerosol can/spray can', 'air conditioner']
    """
    from yw_ext.seam import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "lvis.yaml")["names"]
    return [names[i] for i in sorted(names)]


def link_coco128(coco128: str | Path, root: str | Path, n: int, labelled_only: bool = True) -> Path:
    """A dataset YAML (train = val) over the first ``n`` COCO128 train images, linked (never copied) into ``root``.

    Images go to ``root/images/train``, their label files (where they exist) to ``root/labels/train``; the class
    names are COCO128's. ``labelled_only=False`` counts images without a label file among the first ``n`` too.

    Args:
        coco128: The COCO128 folder (with ``coco128.yaml``, ``images/train2017``, ``labels/train2017``).
        root: Folder of the new dataset (created).
        n: Number of images.
        labelled_only: Skip images without a label file.

    Returns:
        ``root/data.yaml``.

    Examples:
        >>> data = link_coco128("../shared/data/coco128", "/tmp/coco8", 8)  # doctest: +SKIP
    """
    from yw_ext.seam import YAML

    coco128, root = Path(coco128), Path(root)
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True, exist_ok=True)
    labels = coco128 / "labels" / "train2017"
    images = sorted((coco128 / "images" / "train2017").glob("*.jpg"))
    if labelled_only:
        images = [p for p in images if (labels / f"{p.stem}.txt").is_file()]
    for im in images[:n]:
        (root / "images" / "train" / im.name).symlink_to(im)
        lb = labels / f"{im.stem}.txt"
        if lb.is_file():
            (root / "labels" / "train" / lb.name).symlink_to(lb)
    names = YAML.load(coco128 / "coco128.yaml")["names"]
    YAML.save(root / "data.yaml", {"path": str(root), "train": "images/train", "val": "images/train", "names": names})
    return root / "data.yaml"


__all__ = ["link_coco128", "lvis_names"]
