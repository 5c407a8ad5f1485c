"""Detection datasets for yw_ext training: class texts (synonyms), text sampling, and an offline availability check.

A dataset YAML may name a class-text JSON in the official YOLO-World format, one list of prompts per class::

    # coco128-texts.yaml
    path: ../datasets/coco128
    train: images/train2017
    val: images/train2017
    names: {0: person, 1: bicycle, ...}
    text_json: coco_class_texts.json   # [["person", "human"], ["bicycle", "bike"], ...]

``text_json`` is resolved against the YAML's folder, then the dataset ``path``, then the working directory. Without
it, a class's prompts are its YAML name split at ``/`` (Ultralytics' synonym convention, e.g. ``"car/automobile"``).

Training samples one prompt per class per image plus negative classes (Ultralytics' ``RandomLoadText``, as the
official ``MultiModalDataset`` does); validation uses every prompt of every class (score = max over prompts).

Examples:
    >>> from yw_ext.seam import check_det_dataset
    >>> data = check_det_dataset("coco128-texts.yaml")  # doctest: +SKIP
    >>> class_texts(data)[:2]  # doctest: +SKIP
    [['person', 'human'], ['bicycle', 'bike']]
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from yw_ext.seam import YOLOMultiModalDataset, colorstr

TEXT_JSON_KEY = "text_json"


class DatasetNotAvailableError(FileNotFoundError):
    """A dataset whose images are missing and cannot be downloaded (offline, or no download recipe)."""


# ----------------------------------------------------------------------------------------------------- class texts
def display_names(data: dict) -> list[str]:
    """Class display names of a checked dataset dict: the YAML names up to the first ``/``.

    Examples:
        >>> display_names({"names": {0: "car/automobile", 1: "bus"}})
        ['car', 'bus']
    """
    return [str(n).split("/", 1)[0].strip() for n in data["names"].values()]


def resolve_text_json(data: dict) -> Path | None:
    """Path of the dataset's class-text JSON (``text_json:`` key), or None when the YAML has none.

    Raises:
        FileNotFoundError: the key is set but the file is not found (all searched places are listed).

    Examples:
        >>> resolve_text_json({"names": {0: "a"}}) is None
        True
    """
    value = data.get(TEXT_JSON_KEY)
    if not value:
        return None
    p = Path(str(value)).expanduser()
    candidates = [p] if p.is_absolute() else []
    if not p.is_absolute():
        if data.get("yaml_file"):
            candidates.append(Path(data["yaml_file"]).parent / p)
        if data.get("path"):
            candidates.append(Path(data["path"]) / p)
        candidates.append(Path.cwd() / p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    where = data.get("yaml_file", "the dataset YAML")
    raise FileNotFoundError(
        f"{where}: {TEXT_JSON_KEY}: '{value}' not found (looked at {', '.join(str(c) for c in candidates)})."
    )


def load_class_texts(path: str | Path, names: list[str]) -> list[list[str]]:
    """Read and check a class-text JSON: one non-empty list of non-empty strings per class, in class order.

    Args:
        path: JSON file in the official format ``[["person", "human"], ["bicycle"], ...]``.
        names: The dataset's class names (only their count and, for messages, their text are used).

    Returns:
        Per class, its prompts (stripped, duplicates within a class removed, order kept).

    Raises:
        ValueError: not valid JSON, not a list of lists of strings, or its length differs from ``len(names)``.

    Examples:
        >>> import json, tempfile
        >>> f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        >>> json.dump([["person", "human"], ["bus"]], f); f.close()
        >>> load_class_texts(f.name, ["person", "bus"])
        [['person', 'human'], ['bus']]
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"class-text JSON '{path}' is not valid JSON: {e}") from e
    if not isinstance(raw, list):
        raise ValueError(
            f"class-text JSON '{path}' must be a list with one list of prompts per class, e.g. "
            f'[["person", "human"], ["bicycle"]]; got a {type(raw).__name__}.'
        )
    if len(raw) != len(names):
        raise ValueError(
            f"class-text JSON '{path}' has {len(raw)} entries but the dataset has {len(names)} classes "
            f"(names: {names[:5]}{' ...' if len(names) > 5 else ''}); it needs exactly one list of prompts per class, "
            "in class order."
        )
    out = []
    for i, item in enumerate(raw):
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, list) or not group or not all(isinstance(t, str) and t.strip() for t in group):
            raise ValueError(
                f"class-text JSON '{path}': entry {i} (class '{names[i]}') is {item!r}; each entry must be a non-empty "
                "list of non-empty strings."
            )
        out.append(list(dict.fromkeys(t.strip() for t in group)))
    return out


def class_texts(data: dict) -> list[list[str]]:
    """Per class, its text prompts: from the ``text_json`` file if the YAML names one, else the names split at ``/``.

    The result is cached in ``data["class_texts"]``.

    Examples:
        >>> class_texts({"names": {0: "car/automobile", 1: "bus"}})
        [['car', 'automobile'], ['bus']]
    """
    if data.get("class_texts") is None:
        path = resolve_text_json(data)
        if path is not None:
            data["class_texts"] = load_class_texts(path, display_names(data))
        else:
            data["class_texts"] = [
                list(dict.fromkeys(t.strip() for t in str(n).split("/") if t.strip())) for n in data["names"].values()
            ]
    return data["class_texts"]


# --------------------------------------------------------------------------------------------------- training data
class YWMultiModalDataset(YOLOMultiModalDataset):
    """YOLO detection dataset whose images carry their class texts, sampled by ``RandomLoadText`` when training.

    ``data["class_texts"]`` (see ``class_texts``) gives each class's prompts. For every image ``RandomLoadText``
    keeps the classes present, adds negative classes up to ``min(nc, 80)`` texts, and picks one prompt at random for
    each sampled class, so an image never sees two prompts of the same class.

    Examples:
        >>> ds = YWMultiModalDataset(img_path="images/train2017", data=data, augment=True, hyp=hyp)  # doctest: +SKIP
        >>> ds[0]["texts"][:3]  # doctest: +SKIP
        ['human', 'dog', 'bike']
    """

    def update_labels_info(self, label: dict) -> dict:
        """Attach every class's prompt list to the image's labels (``RandomLoadText`` picks among them)."""
        labels = super().update_labels_info(label)
        labels["texts"] = class_texts(self.data)
        return labels

    @property
    def category_names(self) -> set[str]:
        """Every prompt of every class (these are the texts that get embedded)."""
        return {t for texts in class_texts(self.data) for t in texts}

    @property
    def category_freq(self) -> dict[str, int]:
        """How many labelled objects each prompt covers (a prompt counts its class's instances)."""
        texts = class_texts(self.data)
        freq: dict[str, int] = defaultdict(int)
        for label in self.labels:
            for c in label["cls"].reshape(-1):  # (N,)
                for t in texts[int(c)]:
                    freq[t] += 1
        return freq or dict.fromkeys((t for g in texts for t in g), 0)


def build_yw_dataset(cfg: Any, img_path: str | list[str], batch: int, data: dict, stride: int = 32):
    """Training dataset with class texts: the arguments of Ultralytics' ``build_yolo_dataset(mode="train")``.

    Args:
        cfg: Trainer args (``IterableSimpleNamespace``).
        img_path: Image folder, image-list ``.txt``, or a list of them.
        batch: Batch size.
        data: Checked dataset dict (``check_det_dataset``); its class texts are read or cached in it.
        stride: Model stride.

    Examples:
        >>> ds = build_yw_dataset(trainer.args, data["train"], 16, data, stride=32)  # doctest: +SKIP
    """
    from yw_ext.seam import get_split_fraction

    class_texts(data)
    return YWMultiModalDataset(
        img_path=img_path,
        imgsz=cfg.imgsz,
        batch_size=batch,
        augment=True,
        hyp=cfg,
        rect=cfg.rect,
        cache=cfg.cache or None,
        single_cls=cfg.single_cls or False,
        stride=stride,
        pad=0.0,
        prefix=colorstr("train: "),
        task=cfg.task,
        classes=cfg.classes,
        data=data,
        fraction=1.0 if data.get("complete") else get_split_fraction(cfg.fraction, "train"),
    )


# ------------------------------------------------------------------------------------------- offline availability
_URL = re.compile(r"https?://[^\s'\"()]+")
_ASSETS = re.compile(r"ASSETS_URL\s*\+\s*\(?\s*[\"']([^\"']+)[\"']")


def download_urls(download: Any) -> list[str]:
    """URLs named in a dataset YAML's ``download`` value (a URL, or a script containing URLs).

    Examples:
        >>> download_urls("https://example.com/coco128.zip")
        ['https://example.com/coco128.zip']
    """
    text = str(download or "")
    urls = []
    if "ASSETS_URL" in text:  # Ultralytics' scripts name their label archives as ASSETS_URL + "/file.zip"
        from yw_ext.seam import ASSETS_URL

        urls += [ASSETS_URL + m for m in _ASSETS.findall(text)]
    return list(dict.fromkeys(urls + _URL.findall(text)))


def check_dataset_available(data: Any, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Fail early, with the folder and the download URL, when a dataset's images are missing and cannot be fetched.

    Only dataset YAMLs are checked (archives, URLs and dicts are left to Ultralytics). Images that are missing are an
    error here when ``YOLO_OFFLINE`` is set or the YAML has no ``download:`` recipe; otherwise Ultralytics downloads.

    Args:
        data: The ``data=`` argument.
        splits: Splits whose image paths must exist.

    Raises:
        DatasetNotAvailableError: naming the YAML, the missing folder, the download URL(s) and what to do.

    Examples:
        >>> import os; os.environ["YOLO_OFFLINE"] = "1"
        >>> check_dataset_available("coco.yaml")  # doctest: +SKIP
        Traceback (most recent call last):
        DatasetNotAvailableError: Dataset 'coco.yaml' is not available offline: ...
    """
    if isinstance(data, dict) or data is None:
        return
    s = str(data)
    if "://" in s or Path(s).suffix.lower() not in {".yaml", ".yml"}:
        return
    from yw_ext.seam import DATASETS_DIR, YAML, check_yaml

    try:
        file = Path(check_yaml(s, hard=True))
    except Exception:  # a missing YAML: Ultralytics' own error is clear
        return
    try:
        d = YAML.load(file)
    except Exception:
        return
    if not isinstance(d, dict):
        return
    root = Path(d.get("path") or file.parent)
    if not root.exists() and not root.is_absolute():
        root = (DATASETS_DIR / root).resolve()
    missing = []
    for k in splits:
        v = d.get(k)
        for x in [v] if isinstance(v, str) else (v or []):
            p = (root / str(x)).resolve()
            if not p.exists() and str(x).startswith("../"):
                p = (root / str(x)[3:]).resolve()
            if not p.exists():
                missing.append(p)
    if not missing:
        return
    offline = os.environ.get("YOLO_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    recipe = d.get("download")
    if recipe and not offline:
        return  # Ultralytics can download it
    urls = download_urls(recipe)
    why = "YOLO_OFFLINE is set, so nothing is downloaded" if (recipe and offline) else "its YAML has no download recipe"
    src = f"download it from {', '.join(urls)}" if urls else ("run the YAML's download script" if recipe else "get it")
    raise DatasetNotAvailableError(
        f"Dataset '{s}' ({file}) is not available: its images ('{missing[0]}') do not exist and {why}. "
        f"To use it, {src} into '{root}' (so that '{missing[0]}' exists), or set 'path:' in a copy of the YAML to "
        f"where the dataset is. Datasets folder: {DATASETS_DIR}."
    )
