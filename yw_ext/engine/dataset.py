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
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"class-text JSON '{path}' is not valid JSON: {e}") from e
    if not isinstance(raw, list):
        raise ValueError(
            f"class-text JSON '{path}' must be a list with one list of prompts per class, e.g. "
            f'[["person", "human"], ["bicycle"]]; got a {type(raw).__name__}.'
        )
    lines = _entry_lines(text)
    if len(raw) != len(names):
        where = f"line {lines[len(names)]}: entry {len(names)} is one too many" if len(raw) > len(names) else \
            f"line {text.count(chr(10)) + 1}: the list ends after entry {len(raw) - 1}"
        raise ValueError(
            f"class-text JSON '{path}' has {len(raw)} entries but the dataset has {len(names)} classes "
            f"(names: {names[:5]}{' ...' if len(names) > 5 else ''}); it needs exactly one list of prompts per class, "
            f"in class order ({where})."
        )
    out = []
    for i, item in enumerate(raw):
        group = [item] if isinstance(item, str) else item
        if not isinstance(group, list) or not group or not all(isinstance(t, str) and t.strip() for t in group):
            raise ValueError(
                f"class-text JSON '{path}', line {lines[i]}: entry {i} (class '{names[i]}') is {item!r}; each entry "
                "must be a non-empty list of non-empty strings."
            )
        out.append(list(dict.fromkeys(t.strip() for t in group)))
    _check_text_order(path, out, names, lines)
    return out


def _norm(text: str) -> str:
    """Case-, space- and ``_``/``-``-insensitive form of a class name, for matching JSON prompts to names."""
    return " ".join(re.sub(r"[_\-]+", " ", str(text)).lower().split())


def _check_text_order(path: Path, texts: list[list[str]], names: list[str], lines: list[int]) -> None:
    """Raise when entries are out of order for these names: entry ``i`` lacks its own name but holds the name of a
    class ``j`` whose entry lacks ``j``'s name too (a swap or shift, not a shared synonym).

    Entries whose prompts mention no class name at all are accepted (prompts may be free descriptions).
    """
    index = {}
    for i, n in enumerate(names):
        index.setdefault(_norm(n), i)
    own = [{_norm(t) for t in group} for group in texts]
    displaced = {i for i, n in enumerate(names) if _norm(n) not in own[i]}
    for i in sorted(displaced):
        group = texts[i]
        other = [index[t] for t in own[i] if index.get(t, i) != i and index[t] in displaced]
        if other:
            j = min(other)
            raise ValueError(
                f"class-text JSON '{path}', line {lines[i]}: entry {i} {group} is the prompts of class {j} "
                f"('{names[j]}'), but class {i} is '{names[i]}': the JSON does not match the dataset names (it needs "
                "one list of prompts per class, in the order of the YAML's names)."
            )


def _entry_lines(text: str) -> list[int]:
    """1-based line of each top-level entry of a JSON list (``text`` is known to be a valid JSON list)."""
    dec, lines = json.JSONDecoder(), []
    i = text.index("[") + 1
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "]":
            return lines
        lines.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)


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

    def get_labels(self) -> list[dict]:
        """Check every label file first (``check_labels``: fails naming file and line), then Ultralytics' labels."""
        check_labels(self.get_label_files(), display_names(self.data), self.prefix)
        return super().get_labels()

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


def _label_line_problem(parts: list[str], nc: int) -> str | None:
    """What is wrong with one split label line (``class x y w h`` or ``class x1 y1 ... xn yn``), or None."""
    if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
        return f"{len(parts)} values; a line is 'class x y w h' (5 values) or 'class x1 y1 x2 y2 ...' (a polygon)"
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return f"not numbers: {' '.join(parts)!r}"
    c = values[0]
    if c != int(c) or c < 0:
        return f"class id {parts[0]} is not a non-negative integer"
    if c >= nc:
        return f"class id {int(c)}, but the dataset has {nc} names (ids 0-{nc - 1})"
    if min(values[1:]) < 0 or max(values[1:]) > 1:
        return f"coordinates {' '.join(parts[1:])} are not normalised to [0, 1]"
    return None


def check_labels(label_files: list[str], names: list[str], prefix: str = "") -> None:
    """Fail before training on labels Ultralytics would only warn about and drop (with the image), or train on.

    Ultralytics skips an image whose label file has a class id ``>= len(names)``, a malformed line or coordinates
    outside [0, 1] (a warning in the scan log); here each is an error naming the file and the line. An empty or
    missing label file is a background image (legitimate, as in Ultralytics), but a split where every label file is
    empty or missing has nothing to learn (Ultralytics only warns "Labels are missing or empty") and is an error.

    Args:
        label_files: The label file of each image (``YOLODataset.get_label_files()``).
        names: The dataset's class names.
        prefix: Message prefix (the dataset's ``prefix``).

    Raises:
        ValueError: naming up to 10 ``file:line: problem`` entries and how many there are in all; or, when no image
            has a label, the label folder and one of its empty files.

    Examples:
        >>> check_labels(["labels/train/a.txt"], ["person", "bus"])  # doctest: +SKIP
        ValueError: ... labels/train/a.txt:2: class id 5, but the dataset has 2 names (ids 0-1)
    """
    problems, labelled, nc = [], 0, len(names)
    for f in label_files:
        try:
            text = Path(f).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue  # missing: a background image
        for n, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            why = _label_line_problem(parts, nc) if parts else None
            if why:
                problems.append(f"{f}:{n}: {why}")
        labelled += bool(text.split())
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ValueError(f"{prefix}{len(problems)} bad label line(s) (Ultralytics would drop these images); fix them "
                         f"before training:\n  {shown}{more}")
    if label_files and not labelled:
        raise ValueError(
            f"{prefix}no labels: all {len(label_files)} label files are empty or missing (in "
            f"{Path(label_files[0]).parent}, e.g. {Path(label_files[0]).name}). An empty label file marks a background "
            "image; a dataset of background images only has nothing to learn. Check that labels sit in a 'labels' "
            "folder next to 'images', one .txt per image."
        )


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
