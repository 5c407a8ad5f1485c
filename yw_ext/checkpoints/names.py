# yw_ext, AGPL-3.0 license
"""Class names for converted checkpoints: the ``names=...`` argument, a checkpoint's own classes, COCO's 80.

``parse_names`` reads a list, a ``"a,b|c"`` string or a ``.txt`` / ``.json`` file; ``meta_names`` the classes MMEngine
stored in a checkpoint's ``meta``; ``coco_names`` the default vocabulary of official models. Torch-free.

Examples:
    >>> parse_names("person, car|automobile")
    ['person', ['car', 'automobile']]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yw_ext.core.classes import parse_class_string

META_NAMES_MAX = 100
"""Largest ``meta['dataset_meta']['classes']`` list used as the default vocabulary. Larger ones (LVIS 1203,
Objects365 365) are pre-training / evaluation sets rather than a deployment vocabulary: COCO's 80 are used instead,
as in Ultralytics' world weights. ``names=...`` overrides either."""


def coco_names() -> list[str]:
    """The 80 COCO class names, from Ultralytics' ``coco.yaml`` (the vocabulary official models are evaluated on).

    Examples:
        >>> coco_names()[:3]
        ['person', 'bicycle', 'car']
    """
    from yw_ext.seam import ROOT, YAML

    names = YAML.load(ROOT / "cfg" / "datasets" / "coco.yaml")["names"]
    return [names[i] for i in sorted(names)] if isinstance(names, dict) else list(names)


def _line_class(line: str) -> Any:
    """One class of a ``.txt`` line: ``"car|automobile"`` -> ``["car", "automobile"]`` (commas belong to the name)."""
    syn = [p.strip() for p in line.split("|") if p.strip()]
    return syn[0] if len(syn) == 1 else syn


def _read_names_file(path: Path) -> list[Any]:
    """Names from a ``.json`` file (list, list of synonym lists, ``{index: name}``) or a ``.txt`` file (one a line)."""
    if not path.is_file():
        raise FileNotFoundError(f"class-names file '{path}' does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".json":
        return [_line_class(line) for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"class-names file '{path}' is not valid JSON: {e}") from e
    if isinstance(data, dict):
        data = [data[k] for k in sorted(data, key=lambda k: int(k) if str(k).isdigit() else str(k))]
    if not isinstance(data, list):
        raise ValueError(f"class-names file '{path}' must hold a JSON list (or an index -> name dict).")
    return [d[0] if isinstance(d, list) and len(d) == 1 else d for d in data]


def parse_names(names: Any) -> list[Any]:
    """Class names from a list, a comma-separated string, or a ``.txt`` (one per line) / ``.json`` file.

    JSON may hold a list of names, a list of synonym lists (the official ``class_texts`` format, e.g.
    ``[["person"], ["car", "automobile"]]``) or an ``{index: name}`` dict. A name in a ``.txt`` line may list synonyms
    separated by ``|`` (first = display name), as on the ``yw`` command line.

    Raises:
        FileNotFoundError: a ``.txt`` / ``.json`` path that does not exist.
        ValueError: an empty vocabulary or an unreadable file.

    Examples:
        >>> parse_names("person, bus")
        ['person', 'bus']
        >>> parse_names(["person", ["car", "automobile"]])
        ['person', ['car', 'automobile']]
    """
    if isinstance(names, Path) or (isinstance(names, str) and names.strip().lower().endswith((".txt", ".json"))):
        out = _read_names_file(Path(str(names).strip()).expanduser())
    elif isinstance(names, str):
        out = parse_class_string(names)
    elif isinstance(names, dict):
        out = [names[k] for k in sorted(names)]
    else:
        out = list(names)
    if not out:
        raise ValueError(f"no class names in {names!r}.")
    return out


def meta_names(ckpt: Any) -> list[str] | None:
    """Class names stored by MMEngine in ``meta['dataset_meta']['classes']`` (a fine-tune's classes), when usable.

    Usable: a non-empty list of distinct, non-blank strings, at most ``META_NAMES_MAX`` of them.

    Examples:
        >>> meta_names({"meta": {"dataset_meta": {"classes": ["person", "bus"]}}})
        ['person', 'bus']
        >>> meta_names({"state_dict": {}}) is None
        True
    """
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta, dict) else None
    classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) and c.strip() for c in classes):
        if len(set(classes)) == len(classes) and len(classes) <= META_NAMES_MAX:
            return list(classes)
    return None


__all__ = ["META_NAMES_MAX", "coco_names", "meta_names", "parse_names"]
