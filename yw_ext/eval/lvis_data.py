# yw_ext, AGPL-3.0 license
"""LVIS annotation JSON: checks of the fields the LVIS API needs, and conversion to YOLO labels.

An LVIS annotation file (``lvis_v1_val.json``, MDETR's ``lvis_v1_minival_inserted_image_name.json``) is COCO-format
JSON with three extra kinds of field that the federated LVIS evaluation reads:

- every category has ``frequency``: ``"r"`` (rare, < 10 training images), ``"c"`` (common, 10-99) or ``"f"``
  (frequent, >= 100), which give APr / APc / APf;
- every image has ``neg_category_ids`` (categories verified absent: their detections count as false positives)
  and ``not_exhaustive_category_ids`` (categories not fully annotated: their unmatched detections are ignored).

``convert_lvis_json`` writes the YOLO labels (one ``.txt`` per image, class = index of the category id in sorted
order, so class ``i`` of ``cfg/datasets/lvis.yaml`` is LVIS category ``i + 1``) and the image list of the split
(``minival.txt``), in Ultralytics' layout; the evaluation itself reads the JSON.

This module is torch-free (standard library and numpy).

Examples:
    >>> d = {"images": [{"id": 1, "file_name": "val2017/000000000001.jpg", "height": 10, "width": 10,
    ...                  "neg_category_ids": [], "not_exhaustive_category_ids": []}],
    ...      "annotations": [], "categories": [{"id": 1, "name": "cat", "frequency": "f"}]}
    >>> check_lvis_fields(d, "x.json")
    >>> image_key(d["images"][0])
    '000000000001.jpg'
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from yw_ext.core.io import atomic_write

FREQUENCIES = ("r", "c", "f")
IMAGE_FIELDS = ("neg_category_ids", "not_exhaustive_category_ids")
LVIS_JSON_KEY = "lvis_json"
"""Dataset-YAML key naming the LVIS annotation JSON of each split (``{minival: ..., val: ...}`` or one file)."""


class LVISFormatError(ValueError):
    """An annotation JSON that is not LVIS-format (missing ``frequency`` / ``neg_category_ids`` / ... fields)."""


def check_lvis_fields(data: dict, path: str | os.PathLike) -> None:
    """Check that ``data`` (a loaded annotation JSON) has everything the LVIS API's federated evaluation reads.

    Raises:
        LVISFormatError: naming ``path``, the first offending entry and the missing or bad field.

    Examples:
        >>> check_lvis_fields({"images": [], "annotations": [], "categories": [{"id": 1}]}, "coco.json")
        Traceback (most recent call last):
        ...
        yw_ext.eval.lvis_data.LVISFormatError: ...
    """
    where = f"annotation JSON '{path}'"
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                       "categories")):
        raise LVISFormatError(f"{where} is not COCO/LVIS format: it needs 'images', 'annotations' and 'categories' "
                              "lists.")
    hint = ("LVIS evaluation needs LVIS-format annotations (lvis_v1_val.json or lvis_v1_minival*.json): a COCO "
            "file lacks these fields. Validate a COCO-format dataset with fixed_ap=False.")
    for c in data["categories"]:
        if c.get("frequency") not in FREQUENCIES:
            raise LVISFormatError(f"{where}: category {c.get('id')} ({c.get('name', '?')!r}) has no valid 'frequency' "
                                  f"field (one of {FREQUENCIES} for rare / common / frequent, got "
                                  f"{c.get('frequency')!r}). {hint}")
    for img in data["images"]:
        for field in IMAGE_FIELDS:
            if not isinstance(img.get(field), list):
                raise LVISFormatError(f"{where}: image {img.get('id')} has no '{field}' list. {hint}")


def load_lvis_json(path: str | os.PathLike) -> dict:
    """Read an LVIS annotation JSON and check its LVIS fields (``check_lvis_fields``).

    Raises:
        FileNotFoundError: no such file.
        LVISFormatError: not valid JSON, or LVIS fields missing.

    Examples:
        >>> data = load_lvis_json("lvis_v1_minival.json")  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LVIS annotation JSON '{path}' not found.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LVISFormatError(f"annotation JSON '{path}' is not valid JSON: {e}") from e
    check_lvis_fields(data, path)
    return data


def image_key(img: dict) -> str:
    """The image's file name (``000000397133.jpg``): from ``file_name``, else ``coco_url``, else its id.

    Examples:
        >>> image_key({"id": 5, "coco_url": "http://images.cocodataset.org/train2017/000000000005.jpg"})
        '000000000005.jpg'
        >>> image_key({"id": 7})
        '000000000007.jpg'
    """
    for field in ("file_name", "coco_url"):
        if img.get(field):
            return str(img[field]).replace("\\", "/").rsplit("/", 1)[-1]
    return f"{int(img['id']):012d}.jpg"


def image_subdir(img: dict, default: str = "val2017") -> str:
    """COCO image folder of an LVIS image (``train2017`` / ``val2017``), from ``file_name`` or ``coco_url``.

    Examples:
        >>> image_subdir({"coco_url": "http://images.cocodataset.org/train2017/000000000005.jpg"})
        'train2017'
    """
    for field in ("file_name", "coco_url"):
        parts = str(img.get(field) or "").replace("\\", "/").split("/")
        if len(parts) > 1 and parts[-2]:
            return parts[-2]
    return default


def category_ids(data: dict) -> list[int]:
    """Category ids in class order (sorted): class ``i`` of the YOLO labels is ``category_ids(data)[i]``.

    Examples:
        >>> category_ids({"categories": [{"id": 3}, {"id": 1}]})
        [1, 3]
    """
    return sorted(int(c["id"]) for c in data["categories"])


def class_names(data: dict) -> list[str]:
    """Category names in class order, ``_`` as spaces (``"aerosol_can"`` -> ``"aerosol can"``).

    Examples:
        >>> class_names({"categories": [{"id": 2, "name": "b_c"}, {"id": 1, "name": "a"}]})
        ['a', 'b c']
    """
    by_id = {int(c["id"]): str(c["name"]).replace("_", " ") for c in data["categories"]}
    return [by_id[i] for i in category_ids(data)]


def yolo_labels(data: dict) -> dict[int, list[str]]:
    """Per image id, its YOLO label lines ``"cls cx cy w h"`` (normalised; boxes clipped to the image).

    Examples:
        >>> d = {"images": [{"id": 1, "width": 100, "height": 50}], "categories": [{"id": 9}],
        ...      "annotations": [{"image_id": 1, "category_id": 9, "bbox": [10, 5, 20, 10]}]}
        >>> yolo_labels(d)
        {1: ['0 0.200000 0.200000 0.200000 0.200000']}
    """
    index = {c: i for i, c in enumerate(category_ids(data))}
    sizes = {int(img["id"]): (float(img["width"]), float(img["height"])) for img in data["images"]}
    lines: dict[int, list[str]] = {i: [] for i in sizes}
    for a in data["annotations"]:
        w, h = sizes[int(a["image_id"])]
        x, y, bw, bh = (float(v) for v in a["bbox"])
        x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + bw, w), min(y + bh, h)
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy, nw, nh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines[int(a["image_id"])].append(f"{index[int(a['category_id'])]} {cx:.6f} {cy:.6f} {nw:.6f} {nh:.6f}")
    return lines


def convert_lvis_json(json_path: str | os.PathLike, root: str | os.PathLike, split: str | None = None) -> Path:
    """Write YOLO labels and the split's image list for an LVIS annotation JSON, in Ultralytics' LVIS layout.

    Images are expected at ``root/images/<train2017|val2017>/<file>.jpg`` (the COCO folders); labels are written to
    ``root/labels/<same folder>/<file>.txt`` and the list to ``root/<split>.txt`` (lines ``./images/val2017/x.jpg``).
    Every file is written atomically. Missing images are only counted (the validator's availability check names
    them); images without boxes get an empty label file.

    Args:
        json_path: LVIS annotation JSON (checked with ``check_lvis_fields``).
        root: Dataset root (``path:`` of ``cfg/datasets/lvis.yaml``).
        split: Name of the list file; default from the JSON name (``lvis_v1_minival*.json`` -> ``minival``).

    Returns:
        The image-list file.

    Raises:
        LVISFormatError: the JSON lacks LVIS fields.

    Examples:
        >>> convert_lvis_json("annotations/lvis_v1_minival.json", "datasets/lvis")  # doctest: +SKIP
        PosixPath('datasets/lvis/minival.txt')
    """
    from yw_ext.core.log import LOGGER

    data, root = load_lvis_json(json_path), Path(root)
    split = split or next((s for s in ("minival", "val", "train") if s in Path(json_path).stem), "val")
    labels, files, missing = yolo_labels(data), [], 0
    for img in data["images"]:
        sub, name = image_subdir(img), image_key(img)
        missing += not (root / "images" / sub / name).exists()
        text = "".join(f"{line}\n" for line in labels[int(img["id"])])
        atomic_write(root / "labels" / sub / f"{Path(name).stem}.txt", lambda f, t=text: f.write(t), mode="w")
        files.append(f"./images/{sub}/{name}")
    out = atomic_write(root / f"{split}.txt", lambda f: f.write("".join(f"{p}\n" for p in files)), mode="w")
    n_boxes = sum(len(v) for v in labels.values())
    LOGGER.info(f"LVIS: {json_path} -> {len(files)} label files ({n_boxes} boxes, {len(category_ids(data))} classes) "
                f"under {root / 'labels'}, image list {out}" + (f"; {missing} images missing" if missing else ""))
    return out


def find_lvis_json(data: dict, split: str) -> Path | None:
    """The LVIS annotation JSON of a checked dataset dict's split, or None when the dataset is not LVIS.

    Looked for, in order: the YAML's ``lvis_json:`` key (one file, or ``{split: file}``; relative to ``path``, then
    to the YAML's folder), then Ultralytics' convention ``<path>/annotations/lvis_v1_<split>.json``.

    Raises:
        FileNotFoundError: ``lvis_json:`` names a file that does not exist (the places looked at are listed).

    Examples:
        >>> find_lvis_json({"path": "/nonexistent", "names": {0: "a"}}, "val") is None
        True
    """
    value = data.get(LVIS_JSON_KEY)
    if isinstance(value, dict):
        value = value.get(split)
    if value:
        p = Path(str(value)).expanduser()
        bases = [] if p.is_absolute() else [Path(data.get("path") or "."), Path(data.get("yaml_file") or ".").parent]
        candidates = [p] if p.is_absolute() else [b / p for b in bases]
        for c in candidates:
            if c.is_file():
                return c.resolve()
        raise FileNotFoundError(f"{data.get('yaml_file', 'the dataset YAML')}: {LVIS_JSON_KEY} for split '{split}' "
                                f"('{value}') not found (looked at {', '.join(str(c) for c in candidates)}).")
    p = Path(data.get("path") or ".") / "annotations" / f"lvis_v1_{split}.json"
    return p.resolve() if p.is_file() else None


def gt_counts(data: dict, image_ids: set[int] | None = None) -> dict[int, tuple[int, int]]:
    """Per category id: (ground-truth instances, images with it), over ``image_ids`` (all images when None).

    Examples:
        >>> gt_counts({"annotations": [{"image_id": 1, "category_id": 2}, {"image_id": 1, "category_id": 2}]})
        {2: (2, 1)}
    """
    inst: dict[int, int] = defaultdict(int)
    imgs: dict[int, set] = defaultdict(set)
    for a in data["annotations"]:
        if image_ids is None or int(a["image_id"]) in image_ids:
            inst[int(a["category_id"])] += 1
            imgs[int(a["category_id"])].add(int(a["image_id"]))
    return {c: (inst[c], len(imgs[c])) for c in inst}


def _main(argv: list[str] | None = None) -> Any:
    """``python -m yw_ext.eval.lvis_data ANNOTATION.json ROOT [SPLIT]``: convert one LVIS JSON."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        raise SystemExit("usage: python -m yw_ext.eval.lvis_data lvis_v1_minival.json datasets/lvis [minival]")
    out = convert_lvis_json(*args)
    print(f"wrote YOLO labels under {Path(args[1]) / 'labels'} and the image list {out}")
    return out


if __name__ == "__main__":
    _main()

__all__ = ["FREQUENCIES", "LVISFormatError", "LVIS_JSON_KEY", "category_ids", "check_lvis_fields", "class_names",
           "convert_lvis_json", "find_lvis_json", "gt_counts", "image_key", "image_subdir", "load_lvis_json",
           "yolo_labels"]  # fmt: skip
