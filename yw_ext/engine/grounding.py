"""Grounding data (Flickr30k / GQA "mdetr" JSON) for training next to detection data, checked before training.

Fine-tuning on a closed set of classes only teaches the model those names; mixing in grounding data (captions with
phrase boxes) keeps it answering free-form prompts. The JSON is the format Ultralytics' ``GroundingDataset`` reads::

    {"images": [{"id": 1, "file_name": "1000092795.jpg", "height": 500, "width": 333,
                 "caption": "Two young guys with shaggy hair look at their hands ..."}],
     "annotations": [{"id": 1, "image_id": 1, "bbox": [x, y, w, h], "iscrowd": 0,
                      "tokens_positive": [[0, 20]]}]}

``tokens_positive`` are character spans ``[start, end)`` of the caption; the phrase they cover is the box's text.

Examples:
    >>> data = mixed_data("coco128.yaml", [{"img_path": "flickr30k/images", "json_file": "flickr_train.json"}])
    >>> data["train"]["grounding_data"][0]["json_file"]  # doctest: +SKIP
    'flickr_train.json'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GROUNDING_KEYS = ("img_path", "json_file")


class GroundingDataError(ValueError):
    """A grounding dataset entry or JSON that Ultralytics' ``GroundingDataset`` could not train on."""


def normalize_grounding(grounding_data: Any) -> list[dict]:
    """Turn the ``grounding_data=`` argument into a list of ``{"img_path", "json_file"}`` dicts.

    Accepted: one dict, a list of dicts, or ``(img_path, json_file)`` pairs.

    Raises:
        GroundingDataError: anything else, naming the expected form.

    Examples:
        >>> normalize_grounding(("images", "ann.json"))
        [{'img_path': 'images', 'json_file': 'ann.json'}]
    """
    items = grounding_data
    if isinstance(items, dict) or (
        isinstance(items, (list, tuple)) and len(items) == 2 and all(isinstance(x, (str, Path)) for x in items)
    ):
        items = [items]
    if not isinstance(items, (list, tuple)) or not items:
        raise GroundingDataError(
            f"grounding_data must be a dict or a list of dicts like {{'img_path': 'flickr30k/images', "
            f"'json_file': 'flickr30k/final_flickr_separateGT_train.json'}}, got {grounding_data!r}."
        )
    out = []
    for i, g in enumerate(items):
        if isinstance(g, (list, tuple)) and len(g) == 2:
            g = dict(zip(GROUNDING_KEYS, g))
        if not isinstance(g, dict) or any(k not in g for k in GROUNDING_KEYS):
            raise GroundingDataError(
                f"grounding_data[{i}] is {g!r}; each entry needs 'img_path' (image folder) and 'json_file' "
                "(mdetr-format annotations)."
            )
        out.append({k: str(g[k]) for k in GROUNDING_KEYS})
    return out


def mixed_data(data: Any, grounding_data: Any) -> dict:
    """Data dict mixing a detection dataset with grounding data (the form of Ultralytics' ``WorldTrainerFromScratch``).

    Args:
        data: A detection dataset YAML (also used for validation), or an already mixed dict (grounding is appended).
        grounding_data: See ``normalize_grounding``.

    Returns:
        ``{"train": {"yolo_data": [data], "grounding_data": [...]}, "val": {"yolo_data": [data]}}``.

    Examples:
        >>> mixed_data("coco128.yaml", {"img_path": "imgs", "json_file": "g.json"})["val"]
        {'yolo_data': ['coco128.yaml']}
    """
    extra = normalize_grounding(grounding_data)
    if is_mixed(data):
        out = {k: dict(v) for k, v in data.items()}
        g = out["train"].get("grounding_data") or []
        out["train"]["grounding_data"] = (g if isinstance(g, list) else [g]) + extra
        return out
    if not data:
        raise GroundingDataError("grounding_data needs data=... (a detection dataset YAML, also used for validation).")
    return {"train": {"yolo_data": [str(data)], "grounding_data": extra}, "val": {"yolo_data": [str(data)]}}


def is_mixed(data: Any) -> bool:
    """True for a ``{"train": {"yolo_data": ...}, "val": {...}}`` data dict (detection + grounding).

    Examples:
        >>> is_mixed("coco128.yaml"), is_mixed({"train": {"yolo_data": ["a.yaml"]}, "val": {"yolo_data": ["a.yaml"]}})
        (False, True)
    """
    return isinstance(data, dict) and isinstance(data.get("train"), dict) and isinstance(data.get("val"), dict)


def val_data(data: Any) -> Any:
    """The validation dataset of a ``data`` argument (the first ``val.yolo_data`` of a mixed dict).

    Examples:
        >>> val_data({"train": {"yolo_data": ["a.yaml"]}, "val": {"yolo_data": ["b.yaml"]}})
        'b.yaml'
    """
    if is_mixed(data):
        v = data["val"].get("yolo_data") or []
        return v[0] if isinstance(v, list) and v else v
    return data


def resolve_mixed_data(data: dict, single_cls: bool = False) -> tuple[dict, dict]:
    """Check the datasets of a mixed data dict and lay them out for the trainer, as ``WorldTrainerFromScratch`` does.

    Training images are every ``train.yolo_data`` dataset's train split followed by the ``train.grounding_data``
    entries (relative paths resolved against Ultralytics' datasets folder when they do not exist as given);
    validation is the one ``val.yolo_data`` dataset (its ``minival`` split for LVIS), whose names, ``nc``, path and
    channels the run takes. ``val.grounding_data`` is not used (validation is detection mAP).

    Args:
        data: ``{"train": {"yolo_data": [...], "grounding_data": [...]}, "val": {"yolo_data": [one]}}``; grounding
            entries are normalised in place (``normalize_grounding`` first).
        single_cls: One class named ``"object"`` everywhere.

    Returns:
        (dict, dict): the trainer's dataset dict (``train`` list, ``val`` path, ``nc``, ``names``, ``path``,
        ``channels``) and, per detection training path, its checked dataset dict.

    Raises:
        GroundingDataError: ``train`` / ``val`` are not non-empty dicts, or ``val`` has not exactly one dataset.

    Examples:
        >>> data = mixed_data("coco128.yaml", {"img_path": "flickr30k/images", "json_file": "flickr.json"})
        >>> out, per_train = resolve_mixed_data(data)  # doctest: +SKIP
        >>> out["train"][-1]["json_file"]  # doctest: +SKIP
        '/datasets/flickr.json'
    """
    from yw_ext.seam import DATASETS_DIR, check_det_dataset

    for split in ("train", "val"):
        if not isinstance(data.get(split), dict) or not data[split]:
            raise GroundingDataError(f"mixed data must map '{split}' to a dict like {{'yolo_data': ['coco8.yaml']}}, "
                                     f"got {split}={data.get(split)!r}.")
    train = [check_det_dataset(d) for d in data["train"].get("yolo_data") or []]
    vals = [check_det_dataset(d) for d in data["val"].get("yolo_data") or []]
    if len(vals) != 1:
        raise GroundingDataError(f"mixed data validates on exactly one detection dataset, got {len(vals)}.")
    val = vals[0]
    split = "minival" if "lvis" in str(val["val"]) else "val"
    if val.get("minival") is not None:  # LVIS
        val["minival"] = str(Path(val["path"]) / val["minival"])
    grounding = data["train"].get("grounding_data") or []
    grounding = grounding if isinstance(grounding, list) else [grounding]
    for g in grounding:
        for k in GROUNDING_KEYS:
            if not Path(g[k]).exists() and not Path(g[k]).is_absolute():
                g[k] = str((DATASETS_DIR / g[k]).resolve())  # relative to Ultralytics' datasets folder
    out = {"train": [d["train"] for d in train] + grounding, "val": val[split]}
    out.update({k: val[k] for k in ("nc", "names", "path", "channels")})
    for d in ([out, *train] if single_cls else []):
        d["names"], d["nc"] = {0: "object"}, 1
    return out, {d["train"]: d for d in train}


def check_grounding(img_path: str | Path, json_file: str | Path, max_errors: int = 5) -> dict[str, int]:
    """Check one grounding dataset before training: files exist, JSON structure, boxes and caption spans.

    Args:
        img_path: Folder the JSON's ``file_name`` entries are relative to.
        json_file: mdetr-format annotations.
        max_errors: How many problems to list in the error.

    Returns:
        Counts: ``images``, ``annotations``, ``found`` (images present in ``img_path``).

    Raises:
        FileNotFoundError: missing folder or JSON, or none of its images in the folder.
        GroundingDataError: malformed JSON, an annotation pointing to an unknown image, a bad box, or a
            ``tokens_positive`` span outside its caption (each problem is named: annotation id, span, caption length).

    Examples:
        >>> check_grounding("flickr30k/images", "flickr30k/final_flickr_separateGT_train.json")  # doctest: +SKIP
        {'images': 148915, 'annotations': 640704, 'found': 148915}
    """
    img_path, json_file = Path(img_path), Path(json_file)
    if not json_file.is_file():
        raise FileNotFoundError(f"grounding JSON '{json_file}' does not exist.")
    if not img_path.is_dir():
        raise FileNotFoundError(f"grounding image folder '{img_path}' (for '{json_file}') does not exist.")
    try:
        with open(json_file, encoding="utf-8") as f:
            ann = json.load(f)
    except json.JSONDecodeError as e:
        raise GroundingDataError(f"grounding JSON '{json_file}' is not valid JSON: {e}") from e
    if not (isinstance(ann, dict) and isinstance(ann.get("images"), list) and isinstance(ann.get("annotations"), list)):
        raise GroundingDataError(
            f"grounding JSON '{json_file}' must be an object with 'images' and 'annotations' lists (mdetr format)."
        )
    errors: list[str] = []
    images: dict[int, dict] = {}
    for i, im in enumerate(ann["images"]):
        keys = ("id", "file_name", "height", "width", "caption")
        missing = [k for k in keys if not isinstance(im, dict) or k not in im]
        if missing:
            errors.append(f"images[{i}] lacks {missing}")
            continue
        if not isinstance(im["id"], int) or isinstance(im["id"], bool):
            errors.append(f"images[{i}]: id must be an integer, got {im['id']!r}")
            continue
        if not isinstance(im["caption"], str):
            errors.append(f"images[{i}] (id {im['id']}): caption is not a string")
            continue
        images[im["id"]] = im
    for j, a in enumerate(ann["annotations"]):
        if len(errors) >= max_errors:
            break
        if not isinstance(a, dict):
            errors.append(f"annotations[{j}] is not an object")
            continue
        name = f"annotation {a.get('id', j)} (annotations[{j}])"
        missing = [k for k in ("image_id", "bbox", "tokens_positive", "iscrowd") if k not in a]
        if missing:
            errors.append(f"{name} lacks {missing}")
            continue
        im = images.get(a["image_id"])
        if im is None:
            errors.append(f"{name}: image_id {a['image_id']!r} is not in 'images'")
            continue
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            errors.append(f"{name}: bbox must be [x, y, w, h] numbers, got {box!r}")
            continue
        spans, cap = a["tokens_positive"], im["caption"]
        if not isinstance(spans, list) or not spans:
            errors.append(f"{name}: tokens_positive must be a non-empty list of [start, end] spans, got {spans!r}")
            continue
        for s in spans:
            ok = isinstance(s, (list, tuple)) and len(s) == 2 and all(isinstance(v, int) for v in s)
            if not ok or not 0 <= s[0] < s[1] <= len(cap):
                errors.append(
                    f"{name}: tokens_positive span {s!r} is outside its caption (length {len(cap)}, image "
                    f"{im['file_name']}: {cap[:60]!r}); spans are [start, end) character offsets with "
                    "0 <= start < end <= len(caption)"
                )
                break
    if errors:
        more = " (first problems only)" if len(errors) >= max_errors else ""
        raise GroundingDataError(
            f"grounding JSON '{json_file}' cannot be trained on{more}:\n  " + "\n  ".join(errors[:max_errors])
        )
    used = {a["image_id"] for a in ann["annotations"]}
    found = sum((img_path / images[i]["file_name"]).is_file() for i in used)
    if used and not found:
        example = images[next(iter(used))]["file_name"]
        raise FileNotFoundError(
            f"none of the {len(used)} annotated images of '{json_file}' are in '{img_path}' "
            f"(e.g. '{img_path / example}')."
        )
    return {"images": len(images), "annotations": len(ann["annotations"]), "found": found}
