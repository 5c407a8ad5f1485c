# yw_ext, AGPL-3.0 license
"""A local web demo (Gradio): type class names, give an image, see YOLO-World detections.

The page (served on ``127.0.0.1`` by default) has:

- an image input (upload, paste, or one of the examples: ``bus.jpg`` / ``zidane.jpg`` shipped with Ultralytics and
  the COCO128 images in ``../shared/data/coco128`` when that folder exists);
- a class box: comma-separated names, ``|`` between synonyms of one class (``person, car|automobile``), as the CLI;
- optional image prompts (detect by example), one per line, ``class: exemplar``, where an exemplar is
    - ``x1,y1,x2,y2``: a pixel box on the reference image (the uploaded reference image, else the input image);
    - ``dog1.jpg``: a whole uploaded example image (by file name), or ``dog1.jpg @ x1,y1,x2,y2`` a box on it;
    - nothing (``dog:`` or just ``dog``): every uploaded example image;

  classes with image prompts use ``n(alpha * text + (1 - alpha) * image)`` (``alpha`` slider); with the class box
  empty the classes are the image-prompt classes, image only (as ``yw predict prompt_images=...``);
- confidence and IoU sliders; outputs: the annotated image (``Results.plot()``: boxes, and the instance masks of a
  YOLO-World-Seg model) and a table of detections (class, confidence, x1, y1, x2, y2 in pixels of the input image);
- buttons that export the page's vocabulary as a prompt file (``.npz``: ``YOLOWorld.save_prompts``, the format of
  ``yw_ext.prompts``, read back by ``YOLOWorld.load_prompts``) and as a folded ONNX model (a copy of the model,
  ``reparameterize()``, ``export(format="onnx")``).

Nothing is downloaded: the demo uses the weights and CLIP that are on disk, and says in the page what is missing
(the hub's ``WeightsNotFoundError`` message for weights, the ``FileNotFoundError`` of ``yw_ext.text.load_clip`` for
CLIP). Bad input (no classes, an unreadable upload, a box outside the image...) gives a message in the page
(a warning pop-up and the status line), not a traceback.

Gradio is kept offline: ``GRADIO_ANALYTICS_ENABLED=False`` (no analytics, no version check), no share link, no
server-side rendering (no Node server), no MCP server, Gradio's default theme with its fonts served from the
package (``LocalFont``, no Google Fonts), and uploads are not opened with Ultralytics' patched ``PIL.Image.open``
(which would try to ``pip install pi-heif`` on an unreadable file).

Install with ``pip install -e ".[demo]"``.

Examples:
    >>> from yw_ext.demo import launch
    >>> launch(model="l")  # doctest: +SKIP
    >>> demo = launch(model="yw-v2-n.yaml", port=7861, block=False)  # doctest: +SKIP
    >>> demo.local_url  # doctest: +SKIP
    'http://127.0.0.1:7861/'
    >>> demo.close()  # doctest: +SKIP

    Command line::

        yw demo model=l port=7860 clip=~/.cache/clip/ViT-B-32.pt
"""

from __future__ import annotations

import copy
import os
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no analytics, no version check
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402

from yw_ext.core import parse_class_string  # noqa: E402

__all__ = ("launch", "build_demo", "Demo", "DemoInputError", "parse_prompt_lines", "read_image", "default_examples")

COCO128_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128" / "images" / "train2017"
"""COCO128 images offered as examples when present (``../shared`` next to the project)."""

TABLE_HEADERS = ["class", "confidence", "x1", "y1", "x2", "y2"]
BOX_SLACK = 1.0  # pixels a box may pass the image border (as yw_ext.text.image)
MAX_PIXELS = 64_000_000
"""Largest upload the demo decodes (64 MP: 50 MP phone photos pass); the size is read from the file's header first."""
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOX_RE = re.compile(rf"^\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*$")
_PROMPT_HELP = (
    "One per line, `class: exemplar`. Exemplar = `x1,y1,x2,y2` (a box on the reference image, else on the input "
    "image), `file.jpg` (an uploaded example image), `file.jpg @ x1,y1,x2,y2` (a box on it), or nothing "
    "(`dog:`: all uploaded example images)."
)


class DemoInputError(ValueError):
    """Bad input in the page; its message is shown to the user as is.

    Examples:
        >>> str(DemoInputError("upload an image first."))
        'upload an image first.'
    """


def _gradio():
    """Import gradio (analytics off), or raise an ImportError that says how to install it."""
    try:
        import gradio as gr
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the yw_ext demo needs Gradio ({e}); install it with: pip install 'yw_ext[demo]' (or pip install gradio)"
        ) from None
    return gr


# ----------------------------------------------------------------------------------------------------------------------
# Page input parsing
# ----------------------------------------------------------------------------------------------------------------------
def parse_classes_text(text: str | None) -> list[Any]:
    """The class box: ``"person, car|automobile,"`` -> ``["person", ["car", "automobile"]]`` (empty items dropped).

    The same form as the command line's ``classes=`` (``yw_ext.core.parse_class_string``).

    Examples:
        >>> parse_classes_text("person, car|automobile,")
        ['person', ['car', 'automobile']]
    """
    return parse_class_string(text)


def _name_of(path: str | Path) -> str:
    """File name of an upload as the user sees it."""
    return Path(str(path)).name


def read_image(path: str | Path, what: str = "image") -> np.ndarray:
    """Read an uploaded image as a BGR uint8 array (as ``cv2.imread`` / Ultralytics), or raise a readable error.

    OpenCV reads it first (EXIF orientation applied, as Ultralytics); formats OpenCV cannot read go through PIL's
    original ``Image.open`` (never Ultralytics' patched one, which may try to install a package).

    Raises:
        DemoInputError: missing, empty, unreadable or larger than ``MAX_PIXELS`` (checked before decoding).

    Examples:
        >>> read_image("bus.jpg").shape  # doctest: +SKIP
        (1080, 810, 3)
    """
    import cv2

    p = Path(str(path))
    if not p.is_file():
        raise DemoInputError(f"the {what} '{p.name}' was not found (upload it again).")
    if p.stat().st_size == 0:
        raise DemoInputError(f"the {what} '{p.name}' is an empty file (0 bytes). Upload a JPEG, PNG, BMP or WebP image.")
    _check_pixels(p, what)
    im = None
    try:
        im = cv2.imdecode(np.fromfile(str(p), dtype=np.uint8), cv2.IMREAD_COLOR)
    except Exception:  # noqa: BLE001 - cv2 raises different errors on odd data; try PIL next
        im = None
    if im is None:
        try:
            from yw_ext.text.image import _pil_open

            with _pil_open(p) as pil:
                im = np.ascontiguousarray(np.asarray(pil.convert("RGB"))[..., ::-1])
        except Exception:  # noqa: BLE001 - any decoder failure means "not an image we can read"
            im = None
    if im is None or im.ndim != 3 or im.shape[0] == 0 or im.shape[1] == 0:
        raise DemoInputError(f"could not read the {what} '{p.name}': it is not an image file, or it is damaged. "
                             "Upload a JPEG, PNG, BMP or WebP image.")
    _check_pixels(p, what, im.shape[1], im.shape[0])
    return im


def _check_pixels(p: Path, what: str, w: int | None = None, h: int | None = None) -> None:
    """Refuse an image over ``MAX_PIXELS``: by its decoded size, else by its header (PIL reads only the header)."""
    if w is None:
        from PIL import Image

        from yw_ext.text.image import _pil_open

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with _pil_open(p) as pil:
                    w, h = pil.size
        except Image.DecompressionBombError as e:
            raise DemoInputError(f"the {what} '{p.name}' is too large: {e} The demo accepts images up to "
                                 f"{MAX_PIXELS / 1e6:.0f} megapixels; resize it and upload it again.") from None
        except Exception:  # noqa: BLE001 - no header PIL knows: the decoder reports the file
            return
    if w * h > MAX_PIXELS:
        raise DemoInputError(f"the {what} '{p.name}' is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); the demo "
                             f"accepts images up to {MAX_PIXELS / 1e6:.0f} megapixels. Resize it (e.g. to 4000 pixels "
                             "on its longer side) and upload it again.")


def _parse_box(text: str, where: str) -> list[float]:
    """``"x1,y1,x2,y2"`` -> 4 floats, or a DemoInputError naming ``where``."""
    m = _BOX_RE.match(text)
    if not m:
        raise DemoInputError(f"{where}: a box must be 4 numbers x1,y1,x2,y2 in pixels, got {text.strip()!r}.")
    return [float(v) for v in m.groups()]


def check_box(box: list[float], shape: tuple[int, ...], where: str) -> list[float]:
    """Check a pixel box against an image of ``shape`` (H, W, ...): inside (1 px slack) and with an area.

    Raises:
        DemoInputError: box outside the image or without area (the message gives the image size).

    Examples:
        >>> check_box([10, 20, 200, 220], (1080, 810, 3), "bus")
        [10, 20, 200, 220]
    """
    h, w = shape[:2]
    x1, y1, x2, y2 = box
    if not (x2 > x1 and y2 > y1):
        raise DemoInputError(f"{where}: box {_fmt_box(box)} has no area (need x2 > x1 and y2 > y1).")
    if x1 < -BOX_SLACK or y1 < -BOX_SLACK or x2 > w + BOX_SLACK or y2 > h + BOX_SLACK:
        raise DemoInputError(f"{where}: box {_fmt_box(box)} is outside the image, which is {w} x {h} pixels "
                             f"(x from 0 to {w}, y from 0 to {h}).")
    return box


def _fmt_box(box: list[float]) -> str:
    return ",".join(f"{v:g}" for v in box)


def parse_prompt_lines(
    text: str | None,
    reference: np.ndarray | None = None,
    uploads: list[str] | None = None,
    reference_name: str = "input image",
) -> dict[str, list[Any]]:
    """The image-prompt box -> ``images`` for ``YOLOWorld.set_classes`` (``{class: [exemplars]}``).

    Args:
        text: Lines ``class: exemplar`` (also separated by ``;``). Exemplar: ``x1,y1,x2,y2`` (box on ``reference``),
            ``name.jpg`` (an upload), ``name.jpg @ x1,y1,x2,y2`` (a box on it), or empty (all uploads).
        reference: BGR image the bare boxes refer to (the reference upload, else the input image).
        uploads: Paths of the uploaded example images (matched by file name).
        reference_name: How messages call the reference image.

    Returns:
        (dict): ``{class_name: [BGR ndarray or (BGR ndarray, [x1, y1, x2, y2]), ...]}``; empty when ``text`` is
        blank and nothing is uploaded.

    Raises:
        DemoInputError: a malformed line, an unknown file name, a box outside its image, an unreadable upload,
            uploads with no line saying which class they show.

    Examples:
        >>> import numpy as np
        >>> scene = np.zeros((100, 200, 3), np.uint8)
        >>> out = parse_prompt_lines("dog: 10,10,50,60", reference=scene)
        >>> list(out), out["dog"][0][1]
        (['dog'], [10.0, 10.0, 50.0, 60.0])
    """
    uploads = [str(u) for u in (uploads or []) if u]
    by_name: dict[str, str] = {}
    for u in uploads:
        by_name.setdefault(_name_of(u), u)
    images: dict[str, np.ndarray] = {}

    def upload(name: str, where: str) -> np.ndarray:
        if name not in by_name:
            known = ", ".join(sorted(by_name)) or "none uploaded"
            raise DemoInputError(f"{where}: no uploaded example image is called {name!r} (uploaded: {known}).")
        if name not in images:
            images[name] = read_image(by_name[name], "example image")
        return images[name]

    out: dict[str, list[Any]] = {}
    used: set[str] = set()
    entries = [e.strip() for line in str(text or "").splitlines() for e in line.split(";")]
    for n, entry in enumerate([e for e in entries if e], 1):
        where = f"image prompt {n} ({entry!r})"
        name, _, spec = entry.partition(":")
        name, spec = name.strip(), spec.strip()
        if not name:
            raise DemoInputError(f"{where}: start the line with a class name, e.g. 'dog: 10,20,200,220'.")
        if not spec:  # every upload
            if not uploads:
                raise DemoInputError(f"{where}: no exemplar given and no example images uploaded; add a box "
                                     "'x1,y1,x2,y2' or upload example images.")
            for u in by_name:
                out.setdefault(name, []).append(upload(u, where))
                used.add(u)
            continue
        if _BOX_RE.match(spec) or re.fullmatch(r"[\d.,\s+eE-]+", spec):  # a box on the reference image
            if reference is None:
                raise DemoInputError(f"{where}: a box needs an image to crop from: give an input image or a "
                                     "reference image.")
            box = check_box(_parse_box(spec, where), reference.shape, f"{where} on the {reference_name}")
            out.setdefault(name, []).append((reference, box))
            continue
        file, at, box_text = spec.rpartition("@") if "@" in spec else (spec, "", "")
        file = file.strip()
        im = upload(file, where)
        used.add(file)
        if at:
            box = check_box(_parse_box(box_text, where), im.shape, f"{where} on '{file}'")
            out.setdefault(name, []).append((im, box))
        else:
            out.setdefault(name, []).append(im)
    unused = sorted(set(by_name) - used)
    if unused and not out:
        raise DemoInputError(
            f"example images uploaded ({', '.join(unused)}) but no image-prompt line says which class they show: "
            f"add e.g. '{Path(unused[0]).stem}:' (all uploads) or '{Path(unused[0]).stem}: {unused[0]}'.")
    return out


# ----------------------------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------------------------
def default_examples(limit: int = 6) -> list[str]:
    """Example images: Ultralytics' ``bus.jpg`` and ``zidane.jpg``, and the first COCO128 images when present.

    Examples:
        >>> [Path(p).name for p in default_examples()][:2]
        ['bus.jpg', 'zidane.jpg']
    """
    from yw_ext.seam import ASSETS

    out = [str(Path(ASSETS) / n) for n in ("bus.jpg", "zidane.jpg") if (Path(ASSETS) / n).is_file()]
    if COCO128_IMAGES.is_dir():
        out += [str(p) for p in sorted(COCO128_IMAGES.glob("*.jpg"))[:limit]]
    return out


class Demo:
    """The demo's state and actions, independent of the web page (the page calls ``detect`` and the exports).

    The model is loaded once; errors while loading it (missing weights) or finding CLIP are kept as messages
    (``problems``) for the page instead of being raised. Every action takes the page's inputs, sets the vocabulary
    and runs under one lock (a model is not safe to share between threads).

    Args:
        model: Model argument of ``yw_ext.YOLOWorld`` (``"l"``, a ``.pt``, a YAML) or a ``YOLOWorld``.
        clip: CLIP weights (OpenAI ``.pt`` file or Hugging Face folder); default ``$YW_CLIP`` / the clip cache.
        conf: Default confidence threshold of the page.
        iou: Default NMS IoU threshold of the page.
        imgsz: Inference (and ONNX export) image size.
        out_dir: Folder for exported files (default: a new temporary folder).

    Examples:
        >>> d = Demo("yw-v2-n.yaml")  # doctest: +SKIP
        >>> image, rows, status = d.detect("bus.jpg", "person, bus", conf=0.01)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any = "l",
        clip: str | Path | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        out_dir: str | Path | None = None,
    ) -> None:
        """Load the model and look for CLIP, keeping what is missing as messages."""
        self.clip = None if clip in (None, "") else str(Path(str(clip)).expanduser())
        self.conf, self.iou, self.imgsz = float(conf), float(iou), int(imgsz)
        self.out_dir = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="yw_demo_"))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.problems: list[str] = []
        self.model = None
        self.model_name = model if isinstance(model, (str, Path)) else type(model).__name__
        self._load_model(model)
        self.clip_info = self._find_clip()

    # ---------------------------------------------------------------- set-up
    def _load_model(self, model: Any) -> None:
        from yw_ext.model import YOLOWorld

        if not isinstance(model, (str, Path)):
            self.model = model
            self.model_name = str(getattr(model, "model_name", None) or getattr(model, "cfg", None) or "model")
            return
        try:
            self.model = YOLOWorld(model)
        except (FileNotFoundError, ValueError, TypeError, RuntimeError, NotImplementedError) as e:
            self.problems.append(f"**No model**: `{model}` could not be loaded: {e}")

    def _find_clip(self) -> str:
        from yw_ext.text import load_clip

        try:
            enc = load_clip(self.clip)
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            own = self.model is not None and getattr(self.model.model, "text_encoder_state", None) is not None
            if own:
                self.problems.append(f"**No CLIP** (text prompts use the checkpoint's own text tower; image prompts "
                                     f"need a CLIP): {e}")
                return "the checkpoint's text tower"
            self.problems.append(f"**No CLIP**: class names cannot be encoded, so no detection can run: {e}")
            return "missing"
        return f"`{getattr(enc, 'source', self.clip or 'YW_CLIP')}`"

    @property
    def ready(self) -> bool:
        """True when a model is loaded.

        Examples:
            >>> Demo("yw-v2-n.yaml").ready  # doctest: +SKIP
            True
        """
        return self.model is not None

    def info_markdown(self) -> str:
        """What the page says about the model and CLIP (and what is missing).

        Examples:
            >>> Demo("yw-v2-n.yaml").info_markdown().splitlines()[0]  # doctest: +SKIP
            '**Model**: `yw-v2-n.yaml` (YWDetectionModel, text width 512) - *random weights ...*  '
        """
        lines = []
        if self.model is not None:
            m = self.model.model
            random = str(self.model_name).lower().endswith((".yaml", ".yml"))
            width = getattr(m, "embed_dim", "?")
            lines.append(f"**Model**: `{self.model_name}` ({type(m).__name__}, text width {width})"
                         + (" - *random weights (an architecture YAML): detections are meaningless*" if random else ""))
        else:
            lines.append("**Model**: missing")
        lines.append(f"**CLIP**: {self.clip_info}")
        lines += self.problems
        return "  \n".join(lines)

    # ---------------------------------------------------------------- actions
    def _require_model(self) -> None:
        if self.model is None:
            raise DemoInputError("no model is loaded, so nothing can run: " + " ".join(self.problems))

    def _vocabulary(self, classes: str | None, prompts: str | None, image: np.ndarray | None,
                    reference: str | None, uploads: list[str] | None, alpha: float | None, margin: float) -> list[str]:
        """Set the model's vocabulary from the page's fields (caller holds the lock); returns the class names."""
        names = parse_classes_text(classes)
        ref = read_image(reference, "reference image") if reference else image
        ref_name = f"reference image '{_name_of(reference)}'" if reference else "input image"
        images = parse_prompt_lines(prompts, ref, uploads, ref_name)
        if not names and not images:
            raise DemoInputError("type at least one class name (comma-separated, e.g. 'person, bus, car|automobile'),"
                                 " or give image prompts.")
        if images:
            missing = [c for c in images if names and c not in [n if isinstance(n, str) else n[0] for n in names]]
            if missing:
                raise DemoInputError(f"image prompts name classes that are not in the class box: {missing}. Add them "
                                     "to the classes, or empty the class box to use the image-prompt classes only.")
            self.model.set_classes(names or list(images), images=images, alpha=alpha if names else None,
                                   margin=float(margin or 0.0), use_text=bool(names), encoder=self.clip)
        else:
            self.model.set_classes(names, encoder=self.clip)
        return list(self.model.names.values())

    def detect(
        self,
        image: str | None,
        classes: str | None,
        prompts: str | None = None,
        reference: str | None = None,
        uploads: list[str] | None = None,
        conf: float | None = None,
        iou: float | None = None,
        alpha: float | None = 0.5,
        margin: float = 0.0,
    ) -> tuple[np.ndarray, list[list[Any]], str]:
        """Detect the page's classes in ``image``.

        Args:
            image: Path of the input image.
            classes: The class box text.
            prompts: The image-prompt box text (see ``parse_prompt_lines``).
            reference: Path of the reference image for bare boxes (default: the input image).
            uploads: Paths of uploaded example images.
            conf: Confidence threshold.
            iou: NMS IoU threshold.
            alpha: Text weight for classes with text and image prompts.
            margin: Context around exemplar boxes (fraction of the box size).

        Returns:
            (tuple): annotated image (RGB ndarray), table rows ``[class, confidence, x1, y1, x2, y2]``, status text.

        Raises:
            DemoInputError / ValueError / TypeError / FileNotFoundError: bad input (shown in the page).

        Examples:
            >>> image, rows, status = Demo("yw-v2-n.yaml").detect("bus.jpg", "person, bus", conf=0.01)  # doctest: +SKIP
        """
        self._require_model()
        if not image:
            raise DemoInputError("upload an image (or click one of the examples) first.")
        im = read_image(image, "input image")
        t0 = time.perf_counter()
        with self.lock:
            names = self._vocabulary(classes, prompts, im, reference, uploads, alpha, margin)
            r = self.model.predict(im, conf=self.conf if conf is None else float(conf),
                                   iou=self.iou if iou is None else float(iou), imgsz=self.imgsz, verbose=False)[0]
        dt = time.perf_counter() - t0
        rows = []
        if r.boxes is not None and len(r.boxes):
            for c, s, b in zip(r.boxes.cls.tolist(), r.boxes.conf.tolist(), r.boxes.xyxy.tolist()):
                rows.append([r.names[int(c)], float(f"{float(s):.4g}"), *[round(float(v), 1) for v in b]])
        plot = r.plot()[..., ::-1]  # BGR -> RGB
        sources = getattr(self.model.model, "class_sources", None) or []
        kinds = ", ".join(f"{n} ({s})" for n, s in zip(names, sources)) if sources else ", ".join(names)
        status = (f"{_plural(len(rows), 'detection')} in {_name_of(image)} "
                  f"({im.shape[1]} x {im.shape[0]}), {dt * 1000:.0f} ms. Classes: {kinds}.")
        if r.masks is not None:  # a YOLO-World-Seg model: Results.plot() drew each detection's mask
            status += f" {_plural(len(r.masks), 'mask')} shown (segmentation model)."
        return np.ascontiguousarray(plot), rows, status

    def export_prompts(self, classes: str | None, prompts: str | None = None, image: str | None = None,
                       reference: str | None = None, uploads: list[str] | None = None, alpha: float | None = 0.5,
                       margin: float = 0.0) -> tuple[Path, str]:
        """Set the page's vocabulary and write it as a prompt file (``YOLOWorld.save_prompts``) in ``out_dir``.

        Returns:
            (tuple): the ``.npz`` path and a status text.

        Examples:
            >>> path, status = Demo("yw-v2-n.yaml").export_prompts("person, bus")  # doctest: +SKIP
        """
        self._require_model()
        im = read_image(image, "input image") if image else None
        with self.lock:
            names = self._vocabulary(classes, prompts, im, reference, uploads, alpha, margin)
            path = Path(self.model.save_prompts(self.out_dir / f"prompts_{_slug(names)}.npz"))  # atomic
            g = self.model.model.prompts_per_class
        d = self.model.model.txt_feats.shape[-1]
        return path, (f"Prompt file written: `{path.name}` ({_plural(len(names), 'class')} x "
                      f"{_plural(g, 'prompt')}, {d}-d).")

    def export_onnx(self, classes: str | None, prompts: str | None = None, image: str | None = None,
                    reference: str | None = None, uploads: list[str] | None = None, alpha: float | None = 0.5,
                    margin: float = 0.0) -> tuple[Path, str]:
        """Set the page's vocabulary, fold it into a copy of the model and export that copy to ONNX in ``out_dir``.

        Returns:
            (tuple): the ``.onnx`` path and a status text.

        Raises:
            RuntimeError: folding or exporting failed (the message says so; the demo's own model is untouched).

        Examples:
            >>> path, status = Demo("yw-v2-n.yaml").export_onnx("person, bus")  # doctest: +SKIP
        """
        import torch

        self._require_model()
        im = read_image(image, "input image") if image else None
        with self.lock:
            names = self._vocabulary(classes, prompts, im, reference, uploads, alpha, margin)
            predictor, self.model.predictor = self.model.predictor, None  # not copied
            try:
                folded = copy.deepcopy(self.model)
            finally:
                self.model.predictor = predictor
        dst = self.out_dir / f"folded_{_slug(names)}.onnx"
        try:
            folded.reparameterize()
            with warnings.catch_warnings():  # the tracer's notes on Python conditionals are not for the user
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                f = folded.export(format="onnx", imgsz=self.imgsz, out=str(dst), verbose=False)  # written atomically
        except Exception as e:  # noqa: BLE001 - any failure of the fold / export is reported in the page
            raise RuntimeError(f"the folded ONNX export failed: {type(e).__name__}: {e}") from e
        if not Path(str(f)).is_file():
            raise RuntimeError(f"the folded ONNX export failed: the exporter returned {f!r}, which is not a file.")
        dst = Path(str(f))
        return dst, (f"Folded ONNX model written: `{dst.name}` ({_plural(len(names), 'class')}, "
                     f"{dst.stat().st_size / 1e6:.1f} MB).")


def _plural(n: int, word: str) -> str:
    """``3 classes``, ``1 class``."""
    return f"{n} {word}" + ("" if n == 1 else "es" if word.endswith("s") else "s")


def _slug(names: list[str], limit: int = 40) -> str:
    """File-name-safe summary of class names."""
    s = re.sub(r"[^A-Za-z0-9]+", "-", "_".join(names)).strip("-")
    return (s[:limit].rstrip("-") or "vocab") + f"_{len(names)}cls"


def _message(e: BaseException) -> str:
    """A user-facing message for an exception raised by an action."""
    if isinstance(e, DemoInputError):
        return str(e)
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, (ValueError, TypeError, FileNotFoundError, RuntimeError)) else \
        f"{type(e).__name__}: {text}"


def _tolerant_image_class(gr):
    """``gr.Image`` whose upload is passed on as the uploaded file's path without opening it.

    Gradio's own ``gr.Image`` opens every upload with ``PIL.Image.open`` before the event handler runs: an unreadable
    file then fails inside Gradio (a bare "Error"), and Ultralytics' patched ``Image.open`` may try to install
    ``pi-heif`` first. This subclass hands the path to the demo, which reads it and reports problems clearly.
    """

    class TolerantImage(gr.Image):
        def get_block_name(self) -> str:
            return "image"  # the same front-end component

        def preprocess(self, payload):
            data_url = str(getattr(payload, "url", None) or "").startswith("data:")
            if payload is not None and getattr(payload, "path", None) and not data_url:
                return str(payload.path)
            return super().preprocess(payload)

    return TolerantImage


def build_demo(demo: Demo, examples: list[str] | None = None):
    """Build the Gradio page for a ``Demo`` (not launched).

    Args:
        demo: The demo state (model, CLIP, defaults).
        examples: Example image paths (default ``default_examples()``).

    Returns:
        (gradio.Blocks): the page; ``launch`` serves it.

    Examples:
        >>> blocks = build_demo(Demo("yw-v2-n.yaml"))  # doctest: +SKIP
        >>> blocks.launch(server_name="127.0.0.1")  # doctest: +SKIP
    """
    gr = _gradio()
    Image = _tolerant_image_class(gr)
    examples = default_examples() if examples is None else [str(e) for e in examples]

    def fail(e: BaseException):
        msg = _message(e)
        gr.Warning(msg)
        return f"**Error**: {msg}"

    def on_detect(image, classes, prompts, reference, uploads, conf, iou, alpha, margin):
        try:
            plot, rows, status = demo.detect(image, classes, prompts, reference, uploads, conf, iou, alpha, margin)
        except Exception as e:  # noqa: BLE001 - shown in the page
            return None, _table([]), fail(e)
        return plot, _table(rows), status

    def on_export(kind, image, classes, prompts, reference, uploads, alpha, margin):
        try:
            fn = demo.export_prompts if kind == "prompts" else demo.export_onnx
            path, status = fn(classes, prompts, image, reference, uploads, alpha, margin)
        except Exception as e:  # noqa: BLE001 - shown in the page
            return gr.update(), fail(e)
        return gr.update(value=str(path), visible=True), status

    def _table(rows):
        import pandas as pd

        return pd.DataFrame(rows, columns=TABLE_HEADERS)

    with gr.Blocks(title="yw_ext: YOLO-World demo", analytics_enabled=False) as blocks:
        gr.Markdown("## yw_ext: YOLO-World open-vocabulary detection")
        gr.Markdown(demo.info_markdown(), elem_id="yw-info")
        with gr.Row():
            with gr.Column(scale=1):
                image = Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="yw-image",
                              height=360)
                if examples:
                    gr.Examples(examples=[[e] for e in examples], inputs=[image], label="Examples",
                                examples_per_page=8, elem_id="yw-examples")
                classes = gr.Textbox(label="Classes", placeholder="person, bus, car|automobile", elem_id="yw-classes",
                                     info="Comma-separated; '|' separates synonyms of one class (first = its name).")
                with gr.Accordion("Image prompts (detect by example)", open=False, elem_id="yw-prompts-box"):
                    prompts = gr.Textbox(label="Image prompts", lines=3, elem_id="yw-prompts", info=_PROMPT_HELP,
                                         placeholder="dog: 120,40,380,300\ncat: cat1.jpg\n"
                                                     "bus: street.jpg @ 17,231,802,768")
                    with gr.Row():
                        reference = Image(label="Reference image (boxes; default: the input image)", type="filepath",
                                          sources=["upload", "clipboard"], elem_id="yw-reference", height=200)
                        uploads = gr.File(label="Example images", file_count="multiple", type="filepath",
                                          elem_id="yw-uploads", height=200)
                    with gr.Row():
                        alpha = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Text weight alpha", elem_id="yw-alpha",
                                          info="For classes with a name and image prompts: "
                                               "n(α · text + (1 − α) · image).")
                        margin = gr.Slider(0.0, 1.0, value=0.0, step=0.05, label="Box margin", elem_id="yw-margin",
                                           info="Context around exemplar boxes, as a fraction of the box size.")
                with gr.Row():
                    conf = gr.Slider(0.0, 1.0, value=demo.conf, step=0.001, label="Confidence", elem_id="yw-conf")
                    iou = gr.Slider(0.0, 1.0, value=demo.iou, step=0.01, label="IoU (NMS)", elem_id="yw-iou")
                run = gr.Button("Detect", variant="primary", elem_id="yw-detect")
            with gr.Column(scale=1):
                output = gr.Image(label="Detections", type="numpy", interactive=False, elem_id="yw-output", height=420)
                status = gr.Markdown("", elem_id="yw-status")
                table = gr.Dataframe(value=_table([]), headers=TABLE_HEADERS, interactive=False,
                                     label="Detections table", elem_id="yw-table", max_height=320)
                with gr.Row():
                    export_npz = gr.Button("Export prompt file (.npz)", elem_id="yw-export-prompts")
                    export_onnx = gr.Button("Export folded ONNX", elem_id="yw-export-onnx")
                download = gr.File(label="Exported file", interactive=False, elem_id="yw-download", visible=False)
        page = [image, classes, prompts, reference, uploads]
        run.click(on_detect, inputs=[*page, conf, iou, alpha, margin], outputs=[output, table, status])
        classes.submit(on_detect, inputs=[*page, conf, iou, alpha, margin], outputs=[output, table, status])
        export_npz.click(lambda *a: on_export("prompts", *a), inputs=[*page, alpha, margin],
                         outputs=[download, status])
        export_onnx.click(lambda *a: on_export("onnx", *a), inputs=[*page, alpha, margin],
                          outputs=[download, status])
    blocks.yw_demo = demo
    return blocks


def launch(
    model: Any = "l",
    host: str = "127.0.0.1",
    port: int | None = None,
    clip: str | Path | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    examples: list[str] | None = None,
    out_dir: str | Path | None = None,
    block: bool = True,
    quiet: bool = False,
):
    """Serve the demo page (Gradio) on ``host:port``.

    Missing weights or CLIP do not stop the server: the page says what is missing. No share link, analytics or
    server-side rendering: nothing leaves the machine.

    Args:
        model: ``yw_ext.YOLOWorld`` argument (``"l"``, ``"best.pt"``, ``"yw-v2-s.yaml"``...) or a loaded model.
        host: Interface to listen on; the default ``127.0.0.1`` is this machine only (``0.0.0.0``: the network).
        port: TCP port; None: ``$GRADIO_SERVER_PORT`` or the first free port from 7860.
        clip: CLIP weights (OpenAI ``.pt`` file or Hugging Face folder); default ``$YW_CLIP`` / the clip cache.
        conf: Initial confidence threshold.
        iou: Initial NMS IoU threshold.
        imgsz: Inference and ONNX export size.
        examples: Example image paths (default: ``bus.jpg``, ``zidane.jpg`` and COCO128 images when present).
        out_dir: Folder for exported files (default: a new temporary folder).
        block: Serve until interrupted (Ctrl-C); False returns at once with the server running in a thread.
        quiet: Do not print the URL.

    Returns:
        (gradio.Blocks): the page, with ``local_url`` and ``yw_demo`` (the ``Demo``); ``close()`` stops a server
        started with ``block=False``.

    Raises:
        ImportError: Gradio is not installed (the message says how to install it).

    Examples:
        >>> launch(model="l", port=7860)  # doctest: +SKIP
        >>> blocks = launch(model="yw-v2-n.yaml", port=7861, block=False)  # doctest: +SKIP
        >>> blocks.close()  # doctest: +SKIP
    """
    _gradio()  # fails early, with how to install it, before the (slow) model load
    state = Demo(model, clip=clip, conf=conf, iou=iou, imgsz=imgsz, out_dir=out_dir)
    examples = default_examples() if examples is None else [str(e) for e in examples]
    blocks = build_demo(state, examples)
    allowed = sorted({str(Path(e).resolve().parent) for e in examples} | {str(state.out_dir)})
    blocks.queue(default_concurrency_limit=1)
    blocks.launch(
        server_name=host, server_port=None if port is None else int(port), share=False, inbrowser=False,
        prevent_thread_lock=True, show_error=True, quiet=quiet, allowed_paths=allowed, ssr_mode=False, pwa=False,
        mcp_server=False, enable_monitoring=False, footer_links=[],
    )
    if block:
        try:
            blocks.block_thread()
        finally:
            blocks.close()
    return blocks
