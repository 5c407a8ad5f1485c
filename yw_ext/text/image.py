# yw_ext, AGPL-3.0 license
"""CLIP image prompts: exemplar images (or boxes cropped from reference scenes) -> class embeddings.

The image tower is the one of the local CLIP that also gives the text embeddings (``yw_ext.text.load_clip``: an
OpenAI ``ViT-B-32.pt`` file or a full Hugging Face ``CLIPModel`` folder; a text-only folder has no image tower and
gives a clear error). Images go through CLIP's own evaluation transform (that of the ``clip`` package and of
``open_clip.transform.image_transform(image_size, is_train=False)``): resize the shortest side to 224 (bicubic,
antialiased, PIL), center crop 224 x 224, RGB, to ``[0, 1]``, normalise with CLIP's mean
``(0.48145466, 0.4578275, 0.40821073)`` and std ``(0.26862954, 0.26130258, 0.27577711)``.

One crop pipeline serves exemplars at use and image-prompt training (``train(mode="image_prompt")``): ``clip_crops``
turns an image tensor and pixel boxes into CLIP inputs (the box's pixels as ``pixel_box`` selects them, then the
transform above, with PIL's resampling), and ``CLIPImageEncoder.encode_crops`` encodes them. So a box gives the same
embedding whether it is cut from an augmented training batch or passed to ``set_classes(images={...})``.

Exemplars (what ``set_classes(..., images={...})`` accepts per class, one item or a list of them):

- a path (``str`` / ``os.PathLike``) to an image file, read with PIL; EXIF orientation is applied, so pixel
  coordinates are those of the image as displayed (and as ``cv2.imread`` / Ultralytics read it);
- a ``numpy.ndarray`` ``(H, W, 3)`` uint8 in **BGR** order, as ``cv2.imread`` and Ultralytics use (``(H, W, 4)``
  is BGRA, ``(H, W)`` / ``(H, W, 1)`` grayscale);
- a ``PIL.Image.Image`` (any mode; converted to RGB);
- ``(image, [x1, y1, x2, y2])``: a box cropped from ``image`` (any of the above) in pixel xyxy of the original
  image. The crop takes the pixel columns ``floor(x1) .. ceil(x2) - 1`` and rows ``floor(y1) .. ceil(y2) - 1``
  (integer boxes are the plain slice ``img[y1:y2, x1:x2]``). With ``margin=m`` the box first grows by
  ``m * width`` left and right and ``m * height`` above and below, then is clipped to the image. A box must have
  ``x2 > x1`` and ``y2 > y1`` and lie inside the image (1 px of slack for rounding, clipped away).

Formulas (all vectors L2-normalised, ``n(v) = v / ||v||``):

- one exemplar: ``v = n(CLIP_image(preprocess(crop)))``;
- several exemplars of a class: ``v = n(mean_j v_j)``; a model with a trained image adapter
  (``train(mode="image_prompt")``, see ``yw_ext.image_adapter``) uses ``v = n(mean_j A(v_j))`` instead;
- text and image: ``e = n(alpha * t + (1 - alpha) * v)`` (default ``alpha = 0.5``), ``t`` the class's normalised
  CLIP text embedding (each synonym prompt is fused with the same ``v``).

Examples:
    >>> from yw_ext.text import load_clip
    >>> from yw_ext.text.image import CLIPImageEncoder, crop_box
    >>> enc = CLIPImageEncoder(load_clip())  # $YW_CLIP: OpenAI file or full Hugging Face folder
    >>> enc.encode_images(["dog1.jpg", crop_box("scene.jpg", [10, 20, 200, 220])]).shape
    torch.Size([2, 512])
"""

from __future__ import annotations

import hashlib
import math
import os
import weakref
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = (
    "CLIPImageEncoder",
    "image_encoder",
    "load_image",
    "pixel_box",
    "crop_box",
    "clip_crops",
    "parse_exemplars",
    "load_exemplars",
    "average_embeddings",
    "fuse_embeddings",
    "DEFAULT_ALPHA",
)

DEFAULT_ALPHA = 0.5
"""Default text weight when a class has both text and image prompts: ``e = n(alpha * t + (1 - alpha) * v)``."""

BOX_SLACK = 1.0
"""Pixels a box may extend past the image border (rounding of converted labels); the excess is clipped."""

_NO_VISION = (
    "image prompts need CLIP's image tower, but the CLIP at {src} is text-only (e.g. a CLIPTextModelWithProjection "
    "folder or an official checkpoint's text tower). Use a full CLIP: OpenAI's 'ViT-B-32.pt' or a Hugging Face "
    "CLIPModel folder (config.json + model.safetensors with vision_model.*), via the YW_CLIP environment variable or "
    "encoder=..."
)


def _prefix(cls: Optional[str], idx: Optional[int] = None) -> str:
    """``"class 'dog', exemplar 1: "``-style message prefix (empty when no class is known)."""
    if cls is None:
        return ""
    return f"class {cls!r}, exemplar {idx}: " if idx is not None else f"class {cls!r}: "


def _describe(image: Any) -> str:
    """Short description of an exemplar image for messages."""
    if isinstance(image, (str, os.PathLike)):
        return f"'{image}'"
    if isinstance(image, np.ndarray):
        return f"ndarray{tuple(image.shape)}"
    size = getattr(image, "size", None)
    return f"PIL image {size[0]}x{size[1]}" if isinstance(size, tuple) else type(image).__name__


# ----------------------------------------------------------------------------------------------------------------------
# Images and crops
# ----------------------------------------------------------------------------------------------------------------------
def _pil_open(path: Path):
    """``PIL.Image.open`` without Ultralytics' patch, which on an unidentified file tries to install ``pi-heif``
    (a network access, or an ImportError offline) instead of reporting the file (``yw_ext.seam.pil_image_open``)."""
    from yw_ext.seam import pil_image_open

    return pil_image_open()(path)


def load_image(image: Any, cls: Optional[str] = None, idx: Optional[int] = None):
    """Read an exemplar image as an RGB ``PIL.Image``.

    Args:
        image: A path (EXIF orientation applied), a BGR(A)/grayscale uint8 ``ndarray`` (cv2 / Ultralytics
            convention) or a ``PIL.Image`` (any mode).
        cls: Class name used in error messages.
        idx: Exemplar index used in error messages.

    Returns:
        (PIL.Image.Image): The image in RGB mode.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the file is not a readable image; an ndarray of the wrong shape or dtype.
        TypeError: an unsupported type.

    Examples:
        >>> load_image("bus.jpg").size  # (W, H)
        (810, 1080)
        >>> load_image(cv2.imread("bus.jpg")).mode  # BGR array -> RGB image
        'RGB'
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = _prefix(cls, idx)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{p}image file not found: '{image}'")
        try:
            with _pil_open(path) as im:
                im = ImageOps.exif_transpose(im)
                return im.convert("RGB")  # also forces the (lazy) decode: truncated files fail here
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, ImportError) as e:
            raise ValueError(f"{p}cannot read image '{image}': {e}") from None
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
            raise ValueError(
                f"{p}an ndarray exemplar must be uint8 (H, W, 3) BGR as from cv2.imread (or (H, W, 4) BGRA, (H, W) "
                f"grayscale), got {a.dtype} {tuple(image.shape)}"
            )
        if a.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(a)).convert("RGB")
        return Image.fromarray(np.ascontiguousarray(a[..., 2::-1]))  # BGR(A) -> RGB, alpha dropped
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise ValueError(f"{p}empty PIL image {image.size}")
        return image if image.mode == "RGB" else image.convert("RGB")
    raise TypeError(
        f"{p}an exemplar image must be a path, a BGR numpy array or a PIL image (optionally as (image, [x1, y1, x2, "
        f"y2])), got {type(image).__name__}"
    )


def _as_box(box: Any, p: str) -> list:
    """Validate a box: 4 finite numbers -> list of floats."""
    if isinstance(box, torch.Tensor):
        box = box.detach().cpu().tolist()
    elif isinstance(box, np.ndarray):
        box = box.tolist()
    try:
        vals = [float(v) for v in box]
    except (TypeError, ValueError):
        raise ValueError(f"{p}box must be 4 numbers [x1, y1, x2, y2] in pixels, got {box!r}") from None
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise ValueError(f"{p}box must be 4 finite numbers [x1, y1, x2, y2] in pixels, got {box!r}")
    return vals


def crop_box(image: Any, box: Any, margin: float = 0.0, cls: Optional[str] = None, idx: Optional[int] = None):
    """Crop a box (pixel xyxy of the original image) from an exemplar scene, with an optional context margin.

    Pixels taken: columns ``floor(x1) .. ceil(x2) - 1`` and rows ``floor(y1) .. ceil(y2) - 1`` of the box grown by
    ``margin * (x2 - x1)`` on the left and right and ``margin * (y2 - y1)`` above and below, clipped to the image.
    An integer box with ``margin=0`` is exactly ``img[y1:y2, x1:x2]``.

    Args:
        image: Path, BGR ndarray or PIL image (see ``load_image``).
        box: ``[x1, y1, x2, y2]`` (list, tuple, ndarray or tensor) in pixels.
        margin: Context margin as a fraction of the box size (>= 0).
        cls: Class name used in error messages.
        idx: Exemplar index used in error messages.

    Returns:
        (PIL.Image.Image): The RGB crop.

    Raises:
        ValueError: box malformed, with zero/negative area, or outside the image (more than 1 px); bad margin.

    Examples:
        >>> crop_box("bus.jpg", [50, 400, 250, 900]).size
        (200, 500)
        >>> crop_box("bus.jpg", [50, 400, 250, 900], margin=0.1).size  # 20 px / 50 px more on each side
        (240, 600)
    """
    p = _prefix(cls, idx)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a number >= 0 (fraction of the box size), got {margin!r}")
    x1, y1, x2, y2 = _as_box(box, p)
    img = load_image(image, cls, idx)
    w, h = img.size
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{p}box {[x1, y1, x2, y2]} of {_describe(image)} has zero or negative area "
                         "(need x2 > x1 and y2 > y1, pixel xyxy)")
    if x1 < -BOX_SLACK or y1 < -BOX_SLACK or x2 > w + BOX_SLACK or y2 > h + BOX_SLACK or x1 >= w or y1 >= h \
            or x2 <= 0 or y2 <= 0:
        raise ValueError(f"{p}box {[x1, y1, x2, y2]} is outside the image {_describe(image)} of size {w}x{h} "
                         "(boxes are pixel xyxy in the original image, 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height)")
    bw, bh = x2 - x1, y2 - y1
    return img.crop(pixel_box(x1 - margin * bw, y1 - margin * bh, x2 + margin * bw, y2 + margin * bh, w, h))


def pixel_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The pixels a box takes: ``(left, top, right, bottom)``, right / bottom exclusive, clipped to the image.

    Columns ``floor(x1) .. ceil(x2) - 1`` and rows ``floor(y1) .. ceil(y2) - 1``: every pixel the box touches. Both
    exemplar crops (``crop_box``) and training crops (``clip_crops``) select pixels with this function.

    Examples:
        >>> pixel_box(10.2, 5.0, 20.5, 30.0, 640, 480)
        (10, 5, 21, 30)
        >>> pixel_box(-3.0, 0.0, 700.0, 480.0, 640, 480)  # clipped to the image
        (0, 0, 640, 480)
    """
    return max(0, math.floor(x1)), max(0, math.floor(y1)), min(width, math.ceil(x2)), min(height, math.ceil(y2))


def _clip_geometry(crop: Any, size: int) -> np.ndarray:
    """CLIP's geometry on a PIL RGB image: shortest side to ``size`` (PIL bicubic, antialiased), center crop.

    These are the ``Resize(size, BICUBIC)`` and ``CenterCrop(size)`` stages of CLIP's evaluation transform, on PIL
    as there (PIL resamples in two separable uint8 passes, which no torch kernel reproduces exactly).

    Returns:
        (np.ndarray): ``(size, size, 3)`` uint8 RGB.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    resized = TF.resize(crop, size, interpolation=InterpolationMode.BICUBIC, antialias=True)
    return np.asarray(TF.center_crop(resized, size))  # (S, S, 3)


def clip_crops(images: torch.Tensor, rois: torch.Tensor, size: int = 224, mean: Any = None,
               std: Any = None) -> torch.Tensor:
    """Cut pixel boxes out of image tensors and make them CLIP inputs, exactly as CLIP preprocesses an image.

    For each box: its pixels (``pixel_box``: every pixel the box touches, clipped to the image), then CLIP's
    evaluation transform: shortest side resized to ``size`` with PIL's antialiased bicubic filter, center crop
    ``size x size``, scaled to ``[0, 1]``, normalised with ``mean`` / ``std``. The result is bitwise what CLIP's own
    transform gives for the same crop, so exemplars at use (``CLIPImageEncoder.preprocess``) and the crops of
    image-prompt training (cut from augmented batches) share geometry and resampling.

    Args:
        images: ``(B, 3, H, W)`` or ``(3, H, W)`` RGB, uint8 (``0..255``) or float in ``[0, 1]`` (rounded to the
            nearest uint8 level, as training batches are uint8 images divided by 255). Any device.
        rois: ``(M, 5)`` ``[image, x1, y1, x2, y2]`` or ``(M, 4)`` ``[x1, y1, x2, y2]`` (image 0), pixels.
        size: CLIP's input side S (224 for ViT-B/32).
        mean: Per-channel mean (default CLIP's).
        std: Per-channel std (default CLIP's).

    Returns:
        (torch.Tensor): ``(M, 3, S, S)`` float32 on CPU.

    Examples:
        >>> img = torch.randint(0, 256, (1, 3, 480, 640), dtype=torch.uint8)
        >>> clip_crops(img, torch.tensor([[0.0, 10, 20, 300, 200]])).shape
        torch.Size([1, 3, 224, 224])
    """
    from PIL import Image

    if mean is None or std is None:
        from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

        mean, std = OPENAI_DATASET_MEAN if mean is None else mean, OPENAI_DATASET_STD if std is None else std
    x = images.detach()
    x = x[None] if x.dim() == 3 else x  # (B, 3, H, W)
    if x.is_floating_point():
        x = (x.float() * 255).round_().clamp_(0, 255)
    x = x.to("cpu", torch.uint8).permute(0, 2, 3, 1)  # (B, H, W, 3)
    r = rois.detach().cpu().double().reshape(-1, rois.shape[-1])  # float64: the box as Python floats, as crop_box
    if r.shape[1] == 4:
        r = torch.cat((torch.zeros(len(r), 1, dtype=r.dtype), r), 1)  # (M, 5)
    h, w = x.shape[1:3]
    out = np.empty((len(r), size, size, 3), np.uint8)  # (M, S, S, 3)
    for i, (b, x1, y1, x2, y2) in enumerate(r.tolist()):
        left, top, right, bottom = pixel_box(x1, y1, x2, y2, w, h)
        out[i] = _clip_geometry(Image.fromarray(x[int(b), top:bottom, left:right].numpy()), size)
    t = torch.from_numpy(out).permute(0, 3, 1, 2).float().div(255)  # (M, 3, S, S), as ToTensor
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    sd = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (t - m) / sd


# ----------------------------------------------------------------------------------------------------------------------
# Exemplar specs
# ----------------------------------------------------------------------------------------------------------------------
def _is_box(x: Any) -> bool:
    """Whether ``x`` looks like a box: 4 numbers (list, tuple, 1-d ndarray or tensor)."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim == 1 and x.shape[0] == 4
    return (isinstance(x, (list, tuple)) and len(x) == 4
            and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in x))


def parse_exemplars(value: Any, cls: str) -> list:
    """Normalise one class's exemplars into a list of ``(image, box_or_None)``.

    Args:
        value: One exemplar (path, ndarray, PIL image, or ``(image, box)``) or a list/tuple of them.
        cls: Class name (for messages).

    Returns:
        (list[tuple[Any, Any]]): ``[(image, box or None), ...]``, at least one.

    Raises:
        ValueError: no exemplars; an ``(image, box)`` pair whose box is not 4 numbers.

    Examples:
        >>> parse_exemplars("dog1.jpg", "dog")
        [('dog1.jpg', None)]
        >>> parse_exemplars(["dog1.jpg", ("scene.jpg", [1, 2, 30, 40])], "dog")
        [('dog1.jpg', None), ('scene.jpg', [1, 2, 30, 40])]
    """
    from PIL import Image

    def single(x: Any) -> bool:
        return isinstance(x, (str, os.PathLike, np.ndarray, Image.Image))

    def pair(x: Any) -> bool:
        return isinstance(x, tuple) and len(x) == 2 and single(x[0]) and _is_box(x[1])

    if single(value) or pair(value):
        items = [value]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise TypeError(f"class {cls!r}: images must be an image (path, BGR ndarray, PIL), an (image, [x1, y1, x2, "
                        f"y2]) pair, or a list of them; got {type(value).__name__}")
    if not items:
        raise ValueError(f"class {cls!r}: empty list of exemplar images")
    out = []
    for i, x in enumerate(items):
        if single(x):
            out.append((x, None))
        elif isinstance(x, (tuple, list)) and len(x) == 2 and single(x[0]):
            _as_box(x[1], _prefix(cls, i))  # raises a clear error for a malformed box
            out.append((x[0], x[1]))
        else:
            raise TypeError(f"class {cls!r}, exemplar {i}: expected a path, BGR ndarray, PIL image or (image, "
                            f"[x1, y1, x2, y2]), got {type(x).__name__} {x!r:.80}")
    return out


def load_exemplars(images: dict, margin: float = 0.0) -> dict:
    """Read (and crop) every exemplar of ``{class: exemplars}``; all checks happen here, before any encoding.

    Args:
        images: ``{class_name: exemplar or list of exemplars}`` (see the module docstring).
        margin: Context margin for boxes (fraction of the box size).

    Returns:
        (dict[str, list[PIL.Image.Image]]): RGB images / crops per class, in the order given.

    Raises:
        FileNotFoundError / ValueError / TypeError: messages name the class and the exemplar.

    Examples:
        >>> crops = load_exemplars({"bus": [("bus.jpg", [17, 231, 802, 768])]})
        >>> crops["bus"][0].size
        (785, 537)
    """
    if not isinstance(images, dict):
        raise TypeError(f"images must be a dict {{class_name: exemplars}}, got {type(images).__name__}")
    out = {}
    for cls, value in images.items():
        if not isinstance(cls, str):
            raise TypeError(f"images keys must be class names (str), got {cls!r} ({type(cls).__name__})")
        crops = []
        for i, (img, box) in enumerate(parse_exemplars(value, cls)):
            crops.append(load_image(img, cls, i) if box is None else crop_box(img, box, margin, cls, i))
        out[cls] = crops
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Formulas
# ----------------------------------------------------------------------------------------------------------------------
def average_embeddings(emb: torch.Tensor) -> torch.Tensor:
    """Class embedding of several exemplars: ``n(mean_j n(v_j))``.

    Args:
        emb: ``(N, D)`` exemplar embeddings (normalised here again).

    Returns:
        (torch.Tensor): ``(D,)`` L2-normalised.

    Examples:
        >>> average_embeddings(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.7071, 0.7071])
    """
    return F.normalize(F.normalize(emb.float(), dim=-1).mean(0), dim=-1)


def fuse_embeddings(text: torch.Tensor, image: torch.Tensor, alpha: float = DEFAULT_ALPHA) -> torch.Tensor:
    """Text + image fusion: ``n(alpha * n(t) + (1 - alpha) * n(v))``.

    Args:
        text: ``(..., D)`` text embeddings (e.g. ``(G, D)``, one per synonym prompt).
        image: ``(D,)`` or broadcastable image embedding.
        alpha: Text weight in ``[0, 1]``: 1 gives the text, 0 the image.

    Returns:
        (torch.Tensor): Fused, L2-normalised, shape of ``text``.

    Raises:
        ValueError: the weighted sum is (near) zero.

    Examples:
        >>> fuse_embeddings(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), alpha=0.5)
        tensor([0.7071, 0.7071])
    """
    s = alpha * F.normalize(text.float(), dim=-1) + (1 - alpha) * F.normalize(image.float(), dim=-1)
    if (s.norm(dim=-1) < 1e-6).any():
        raise ValueError(f"text and image embeddings cancel out with alpha={alpha} (opposite directions)")
    return F.normalize(s, dim=-1)


# ----------------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------------
class CLIPImageEncoder:
    """CLIP image tower of a loaded ``CLIPTextEncoder`` with CLIP's own preprocessing.

    Attributes:
        clip: The ``CLIPTextEncoder`` whose ``.model.visual`` is used.
        dim (int): Embedding width D (same as the text tower's).
        image_size (int): Input resolution (224 for ViT-B/32).

    Examples:
        >>> from yw_ext.text import load_clip
        >>> ienc = CLIPImageEncoder(load_clip("ViT-B-32.pt"))
        >>> ienc.encode_images(["dog.jpg", cv2.imread("cat.jpg")]).shape  # (N, D)
        torch.Size([2, 512])
    """

    def __init__(self, clip: Any):
        """Wrap ``clip`` (a ``CLIPTextEncoder`` with an image tower).

        Raises:
            ValueError: ``clip`` has no image tower (text-only weights).
        """
        if not getattr(clip, "has_vision", False):
            raise ValueError(_NO_VISION.format(src=getattr(clip, "source", type(clip).__name__)))
        self.clip = clip
        self.dim = int(clip.dim)
        size = getattr(clip.model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self._identity = None

    @property
    def device(self) -> torch.device:
        """Device of the underlying CLIP model."""
        return self.clip.device

    @property
    def identity(self) -> str:
        """Content-based identity of the image tower (sha256 of the ``visual.*`` tensors in float32), computed once.

        Examples:
            >>> ienc.identity  # doctest: +SKIP
            'openai-clip-image:vit-r224-d512:3f2a...'
        """
        if self._identity is None:
            h = hashlib.sha256()
            sd = self.clip.model.visual.state_dict()
            for k in sorted(sd):
                t = sd[k].detach().to("cpu", torch.float32).contiguous()
                h.update(f"{k}:{tuple(t.shape)};".encode())
                h.update(t.numpy().reshape(-1).view("uint8"))  # (numel * 4,) bytes
            self._identity = f"openai-clip-image:vit-r{self.image_size}-d{self.dim}:{h.hexdigest()[:16]}"
        return self._identity

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """Load images and make them a CLIP input batch (``clip_crops`` of each whole image).

        Args:
            images: Paths, BGR ndarrays or PIL images (crops already cut, e.g. by ``crop_box``).

        Returns:
            (torch.Tensor): ``(N, 3, S, S)`` float32 on CPU.

        Examples:
            >>> ienc.preprocess(["bus.jpg"]).shape  # doctest: +SKIP
            torch.Size([1, 3, 224, 224])
        """
        out = []
        for i, im in enumerate(images):
            rgb = torch.from_numpy(np.array(load_image(im, None, i))).permute(2, 0, 1)  # (3, H, W) uint8
            whole = torch.tensor([[0.0, 0.0, rgb.shape[2], rgb.shape[1]]])  # (1, 4) xyxy
            out.append(clip_crops(rgb, whole, self.image_size))  # (1, 3, S, S)
        return torch.cat(out) if out else torch.zeros(0, 3, self.image_size, self.image_size)

    def encode_crops(self, crops: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """L2-normalised embeddings of CLIP inputs (``clip_crops`` / ``preprocess`` output), without gradients.

        Args:
            crops: ``(N, 3, S, S)`` normalised CLIP inputs, any device.
            batch: Crops per forward pass.

        Returns:
            (torch.Tensor): ``(N, D)`` float32 on the encoder's device.

        Examples:
            >>> ienc.encode_crops(clip_crops(img, boxes, ienc.image_size)).shape  # doctest: +SKIP
            torch.Size([3, 512])
        """
        visual = self.clip.model.visual
        p = next(visual.parameters())
        out = [torch.zeros(0, self.dim, device=p.device)]
        with torch.no_grad():  # not inference_mode: training feeds these into the adapter's autograd graph
            for i in range(0, len(crops), batch):
                x = crops[i: i + batch].to(p.device, p.dtype)  # (B, 3, S, S)
                out.append(F.normalize(visual(x).float(), dim=-1))  # (B, D)
        return torch.cat(out)  # (N, D)

    def encode_images(self, images: Union[Any, Sequence[Any]], batch: int = 32, cache: Any = False) -> torch.Tensor:
        """L2-normalised CLIP image embeddings, batched, without gradients (``preprocess`` + ``encode_crops``).

        Args:
            images: One image or a list: paths, BGR uint8 ndarrays (cv2 convention) or PIL images. Crop boxes
                first with ``crop_box``.
            batch: Images per forward pass.
            cache: ``False`` (default): encode every image. An ``EmbeddingCache`` or None (the default on-disk cache,
                shared with text embeddings): images are keyed by this tower's identity and a SHA-256 of their RGB
                pixels (``image_key``), and only images not cached yet are encoded.

        Returns:
            (torch.Tensor): ``(N, D)`` float32 on the encoder's device.

        Examples:
            >>> e = ienc.encode_images(["a.jpg", "b.jpg"])
            >>> e.norm(dim=-1)
            tensor([1.0000, 1.0000])
        """
        from PIL import Image

        if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
            images = [images]
        images = list(images)
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if not images:
            return torch.zeros((0, self.dim), device=self.device)
        if cache is not False:
            from yw_ext.text.cache import encode_texts

            rgb = [load_image(im, None, i) for i, im in enumerate(images)]
            by_key = {image_key(im): im for im in rgb}
            return encode_texts(_KeyedImages(self, by_key), [image_key(im) for im in rgb], cache=cache, batch=batch)
        return torch.cat([self.encode_crops(self.preprocess(images[i: i + batch]), batch)
                          for i in range(0, len(images), batch)])  # (N, D)

    def __call__(self, images, batch: int = 32) -> torch.Tensor:
        """Alias of ``encode_images``."""
        return self.encode_images(images, batch=batch)

    def __repr__(self) -> str:
        return f"CLIPImageEncoder(dim={self.dim}, image_size={self.image_size}, source={self.clip.source!r})"


def image_key(image: Any) -> str:
    """Cache key of an RGB ``PIL.Image``: ``"image:sha256:<hex>"`` of its size and RGB pixel bytes.

    Examples:
        >>> from PIL import Image
        >>> image_key(Image.new("RGB", (2, 2)))[:13]
        'image:sha256:'
    """
    h = hashlib.sha256(f"{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.convert("RGB").tobytes())
    return f"image:sha256:{h.hexdigest()}"


class _KeyedImages:
    """``encode_texts``' encoder interface over images addressed by ``image_key`` (so the text cache serves images)."""

    def __init__(self, encoder: CLIPImageEncoder, by_key: dict):
        self.encoder, self.by_key = encoder, by_key
        self.identity, self.dim, self.device = encoder.identity, encoder.dim, encoder.device

    def encode(self, keys: Sequence[str], batch: int = 32) -> torch.Tensor:
        """Embeddings ``(N, D)`` of the images behind ``keys``."""
        return self.encoder.encode_images([self.by_key[k] for k in keys], batch=batch)


_WRAPPERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def image_encoder(encoder: Any = None, device: Union[str, torch.device, None] = None) -> CLIPImageEncoder:
    """The image encoder of a CLIP: a ``CLIPImageEncoder``, a ``CLIPTextEncoder``, or a source for ``load_clip``.

    Wrappers are reused per ``CLIPTextEncoder`` (so the image-tower identity is hashed once).

    Args:
        encoder: ``CLIPImageEncoder`` (returned as is), ``CLIPTextEncoder``, a path / ``"clip"`` or None
            (``$YW_CLIP``, see ``load_clip``).
        device: Device for ``load_clip`` (default CPU); ignored for encoder objects.

    Returns:
        (CLIPImageEncoder): the wrapper.

    Raises:
        FileNotFoundError: no CLIP weights found.
        ValueError: the CLIP is text-only.

    Examples:
        >>> ienc = image_encoder()  # from $YW_CLIP
    """
    if isinstance(encoder, CLIPImageEncoder):
        return encoder
    if encoder is None or isinstance(encoder, (str, os.PathLike)):
        from yw_ext.text.clip import load_clip

        encoder = load_clip(encoder, device=device or "cpu")
    if not hasattr(encoder, "model") or not hasattr(encoder, "dim"):
        raise TypeError(
            f"encoder must be a CLIPTextEncoder, CLIPImageEncoder or CLIP path, got {type(encoder).__name__}"
        )
    wrapper = _WRAPPERS.get(encoder)
    if wrapper is None:
        wrapper = CLIPImageEncoder(encoder)
        _WRAPPERS[encoder] = wrapper
    return wrapper
