# yw_ext, AGPL-3.0 license
"""Image-prompt adapter training (``mode="image_prompt"``): the official v2.1 recipe on a frozen detector.

A frozen CLIP image tower encodes exemplar crops; a small residual MLP (``yw_ext.nn.adapter.ResidualAdapter``,
``A(u) = n(u + MLP(u))``, the only trainable tensors) maps them into the detector's text space; the detector is
frozen (bitwise, as in prompt tuning: see ``yw_ext.engine.prompt_trainer``) and the detection loss trains the adapter.
The model (``ImagePrompts``, ``ImagePromptModel``) lives in ``yw_ext.nn.image_prompt_model``.

Each training step, for each image of the batch and each class present in it:

- one ground-truth box of that class is picked at random (``sample_prompt_boxes``), its width and height scaled by
  one factor drawn from ``U(0.8, 1.5)`` about its centre and clipped to the image;
- the crop is cut from the (augmented, uint8) training image and made a CLIP input by ``yw_ext.text.image.clip_crops``,
  the pipeline exemplars go through at use (``set_classes(images=...)``): the box's pixels, CLIP's own preprocessing
  (shortest side to 224 with PIL's antialiased bicubic filter, center crop, CLIP's mean and std), then encoded by
  ``CLIPImageEncoder.encode_crops``;
- its CLIP embedding goes through the adapter and replaces that class's text embedding for that image (all G prompt
  slots of the class); classes absent from the image keep their text embeddings.

Validation uses image prompts only, as the official evaluation: each class's prompt is built from ``crops`` (default
32) ground-truth boxes of the training set (``reference_crops``: a seeded random choice), cut from the original image
files and encoded with CLIP's own preprocessing, exactly as ``set_classes(images=...)`` does; the class embedding is
``n(mean_j A(u_j))``; classes with no training box keep their text. mAP is reported as in any Ultralytics run.

Outputs (``weights/``): ``best_adapter.npz`` / ``last_adapter.npz`` (image-adapter files, ``yw_ext.image_adapter``)
and ``best_prompts.npz`` / ``last_prompts.npz`` (the validation vocabulary as prompt files, class sources ``"image"``
or ``"text"``). After ``YOLOWorld.train(mode="image_prompt")`` the model carries the best adapter, so later
``set_classes(..., images=...)`` calls use it, and its vocabulary is the best prompt file's.

Extra training arguments: ``crops`` (validation exemplars per class, default 32), ``clip`` (the CLIP whose image
tower is used, default ``$YW_CLIP``: an OpenAI ``ViT-B-32.pt`` or a full Hugging Face folder; the text embeddings come
from the same CLIP when given), ``jitter`` (scale range, default ``(0.8, 1.5)``). The optimiser defaults to AdamW,
``lr0=2e-3``, no gradient accumulation (as prompt tuning).

Examples:
    >>> from yw_ext import YOLOWorld
    >>> model = YOLOWorld("yw-v2-l.pt")  # doctest: +SKIP
    >>> model.train(data="coco128.yaml", mode="image_prompt", epochs=10, clip="ViT-B-32.pt")  # doctest: +SKIP
    >>> model.set_classes(["dog"], images={"dog": ["dog1.jpg", "dog2.jpg"]}, use_text=False)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yw_ext.engine.prompt_trainer import YWPromptTrainer, adapter_param_groups, make_optimizer
from yw_ext.image_adapter import install_adapter, read_adapter_file, write_adapter_file
from yw_ext.nn.image_prompt_model import IMAGE_SOURCE, TEXT_SOURCE, ImagePromptModel, ImagePrompts
from yw_ext.nn.model import YWDetectionModel
from yw_ext.prompts import apply_prompts, write_prompt_file
from yw_ext.seam import LOGGER, unwrap_model
from yw_ext.text.image import clip_crops

DEFAULT_CROPS = 32
"""Training crops per class that make a class's validation prompt (the official evaluation uses 32)."""

JITTER = (0.8, 1.5)
"""Range of the scale factor applied to a training box's width and height (official v2.1 recipe)."""

MIN_BOX = 2.0
"""Boxes narrower or lower than this many pixels (after clipping) are not used as prompts."""

crop_for_clip = clip_crops
"""Former name of ``yw_ext.text.image.clip_crops`` (the one crop pipeline of training and inference)."""


# ----------------------------------------------------------------------------------------------------------------------
# Crops
# ----------------------------------------------------------------------------------------------------------------------
def sample_prompt_boxes(
    batch_idx: torch.Tensor,
    cls: torch.Tensor,
    bboxes: torch.Tensor,
    num_classes: int,
    size: tuple[int, int],
    jitter: tuple[float, float] = JITTER,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ground-truth box per (image, class) present, scale-jittered about its centre, clipped to the image.

    Args:
        batch_idx: ``(N,)`` image index of each box.
        cls: ``(N,)`` or ``(N, 1)`` class index of each box.
        bboxes: ``(N, 4)`` normalised ``xywh`` boxes (Ultralytics batch layout).
        num_classes: K (boxes with a class outside ``[0, K)`` are ignored).
        size: ``(H, W)`` of the images in pixels.
        jitter: ``(low, high)``: width and height are both scaled by one factor from ``U(low, high)``.
        generator: Random generator (CPU) for reproducible picks.

    Returns:
        (tuple[torch.Tensor, torch.Tensor]): ``rois (M, 5)`` float ``[image, x1, y1, x2, y2]`` in pixels (the
        jittered, clipped box; ``clip_crops`` then takes CLIP's center crop of it, as for any exemplar box), and
        ``slots (M, 2)`` long ``[image, class]``; both on CPU, one row per (image, class) pair, sorted by image then
        class. Boxes under ``MIN_BOX`` pixels wide or high are dropped.

    Examples:
        >>> rois, slots = sample_prompt_boxes(torch.tensor([0, 0, 1]), torch.tensor([2, 2, 0]),
        ...                                   torch.tensor([[0.5, 0.5, 0.2, 0.4]] * 3), 3, (100, 100))
        >>> slots.tolist()  # one box for class 2 in image 0, one for class 0 in image 1
        [[0, 2], [1, 0]]
    """
    lo, hi = float(jitter[0]), float(jitter[1])
    b = batch_idx.detach().cpu().long().view(-1)  # (N,)
    c = cls.detach().cpu().long().view(-1)  # (N,)
    xywh = bboxes.detach().cpu().float().view(-1, 4)  # (N, 4)
    h, w = int(size[0]), int(size[1])
    keep = (c >= 0) & (c < num_classes)
    b, c, xywh = b[keep], c[keep], xywh[keep]
    if b.numel() == 0:
        return torch.zeros(0, 5), torch.zeros(0, 2, dtype=torch.long)
    # one random box per (image, class): shuffle, then keep the first box of each pair in shuffled order
    perm = torch.randperm(b.numel(), generator=generator)  # (N,)
    key = (b * num_classes + c)[perm]  # (N,)
    uniq, inv = torch.unique(key, return_inverse=True)  # sorted pairs
    first = torch.full((uniq.numel(),), perm.numel(), dtype=torch.long).scatter_reduce_(
        0, inv, torch.arange(perm.numel()), reduce="amin"
    )  # (M,) position in perm of each pair's first box
    pick = perm[first]  # (M,)
    s = torch.empty(pick.numel()).uniform_(lo, hi, generator=generator)  # (M,)
    cx, cy = xywh[pick, 0] * w, xywh[pick, 1] * h  # (M,)
    bw, bh = xywh[pick, 2] * w * s, xywh[pick, 3] * h * s  # (M,)
    x1, x2 = (cx - bw / 2).clamp(0, w), (cx + bw / 2).clamp(0, w)
    y1, y2 = (cy - bh / 2).clamp(0, h), (cy + bh / 2).clamp(0, h)
    rois = torch.stack((b[pick].float(), x1, y1, x2, y2), 1)  # (M, 5)
    slots = torch.stack((b[pick], c[pick]), 1)  # (M, 2)
    ok = torch.minimum(x2 - x1, y2 - y1) >= MIN_BOX
    return rois[ok], slots[ok]


def reference_crops(labels: list[dict], names: list[str], n: int = DEFAULT_CROPS, seed: int = 0) -> dict:
    """Up to ``n`` ground-truth boxes per class from dataset labels: a seeded random choice, as exemplars.

    Args:
        labels: Ultralytics dataset labels (``dataset.labels``): dicts with ``im_file``, ``shape`` ``(H, W)``,
            ``cls`` ``(N, 1)`` and ``bboxes`` ``(N, 4)`` normalised ``xywh``.
        names: The K class names (index = class id).
        n: Boxes per class at most.
        seed: Seed of the choice.

    Returns:
        (dict[str, list]): ``{class_name: [(image_path, [x1, y1, x2, y2]), ...]}`` in pixels of the original image,
        only for classes with at least one usable box (at least ``MIN_BOX`` pixels wide and high).

    Examples:
        >>> refs = reference_crops(trainer.train_loader.dataset.labels, ["person", "bus"], n=32)  # doctest: +SKIP
        >>> len(refs["person"])  # doctest: +SKIP
        32
    """
    per_class: dict[int, list] = {}
    for lb in labels:
        h, w = (int(v) for v in lb["shape"])
        cls, xywh = np.asarray(lb["cls"]).reshape(-1), np.asarray(lb["bboxes"]).reshape(-1, 4)  # (N,), (N, 4)
        for c, (cx, cy, bw, bh) in zip(cls, xywh):
            x1, x2 = max(0.0, (cx - bw / 2) * w), min(float(w), (cx + bw / 2) * w)
            y1, y2 = max(0.0, (cy - bh / 2) * h), min(float(h), (cy + bh / 2) * h)
            if x2 - x1 >= MIN_BOX and y2 - y1 >= MIN_BOX and 0 <= int(c) < len(names):
                per_class.setdefault(int(c), []).append((lb["im_file"], [x1, y1, x2, y2]))
    rng = np.random.default_rng(seed)
    out = {}
    for c in sorted(per_class):
        boxes = per_class[c]
        idx = sorted(rng.choice(len(boxes), size=min(n, len(boxes)), replace=False).tolist())
        out[names[c]] = [boxes[i] for i in idx]
    return out


# ----------------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------------
def _check_jitter(jitter: Any) -> tuple[float, float]:
    """``(low, high)`` with ``0 < low <= high``."""
    try:
        lo, hi = (float(v) for v in jitter)
    except (TypeError, ValueError):
        raise ValueError(f"jitter must be two numbers (low, high), got {jitter!r}.") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"jitter must satisfy 0 < low <= high, got {jitter!r}.")
    return lo, hi


class YWImagePromptTrainer(YWPromptTrainer):
    """Trains the image-prompt adapter against a frozen detector and a frozen CLIP image tower.

    Extra arguments (taken out of ``overrides``): ``crops`` (default 32), ``clip`` (CLIP source), ``jitter``
    (default ``(0.8, 1.5)``); see the module docstring. ``init`` and ``adapter`` (prompt tuning's) are refused.

    Attributes:
        image_encoder (yw_ext.text.image.CLIPImageEncoder | None): The frozen CLIP image tower (set up with the run).
        references (dict): The validation exemplars ``{class: [(image, box), ...]}`` (``reference_crops``).

    Examples:
        >>> args = dict(model="best.pt", data="coco128.yaml", epochs=10, clip="ViT-B-32.pt")
        >>> trainer = YWImagePromptTrainer(overrides=args)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer.best  # doctest: +SKIP
        PosixPath('runs/detect/train/weights/best_adapter.npz')
    """

    mode_name = "image_prompt"
    model_class = ImagePromptModel

    def __init__(self, cfg=None, overrides: dict | None = None, _callbacks: dict | None = None):
        """Take ``crops`` / ``clip`` / ``jitter`` out of the overrides, then set up as prompt tuning does."""
        overrides = dict(overrides or {})
        for key in ("init", "adapter"):
            if key in overrides:
                raise ValueError(f"{key}= applies to mode='prompt'; mode='image_prompt' always trains the image "
                                 "adapter from text-initialised class embeddings.")
        crops = overrides.pop("crops", DEFAULT_CROPS)
        if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
            raise ValueError(f"crops (validation exemplars per class) must be a positive integer, got {crops!r}.")
        self.crops = crops
        self.clip_source = overrides.pop("clip", None)
        self.jitter = _check_jitter(overrides.pop("jitter", JITTER))
        self.image_encoder = None
        self.references: dict = {}
        super().__init__(cfg, overrides, _callbacks)
        self.last, self.best = self.wdir / "last_adapter.npz", self.wdir / "best_adapter.npz"
        self._generator = torch.Generator().manual_seed(int(self.args.seed))

    # ------------------------------------------------------------------------------------------------------ model
    def initial_embeddings(self, src: YWDetectionModel) -> tuple[torch.Tensor, int, str | None, dict | None]:
        """Text embeddings of the dataset's class texts, from ``clip`` when given (else as ``encode_text`` picks)."""
        from yw_ext.engine.dataset import class_texts
        from yw_ext.vocab import pad_prompts

        prompts = class_texts(self.data)[:1] if self.args.single_cls else class_texts(self.data)
        flat, g = pad_prompts(prompts)
        emb, encoder_id = src.encode_text(flat, encoder=self.clip_source)
        self.init_info = {"init": "text"}
        return emb.float().cpu(), g, encoder_id, None

    def _setup_train(self) -> None:
        """Prompt tuning's set-up (frozen detector, adapter-only EMA), then the CLIP image tower and the references."""
        from yw_ext.text.image import image_encoder

        super()._setup_train()
        model = unwrap_model(self.model)
        ienc = image_encoder(self.clip_source, device=self.device)
        if ienc.dim != model.embed_dim:
            raise ValueError(f"the CLIP image tower gives {ienc.dim}-d embeddings but the detector expects "
                             f"{model.embed_dim}-d (use the CLIP the detector was trained with).")
        ienc.clip.model.visual.requires_grad_(False).eval()
        if model.text_encoder_id and model.text_encoder_id != ienc.clip.identity:
            LOGGER.warning(f"image_prompt: the class texts were encoded by {model.text_encoder_id}, the crops by the "
                           f"CLIP at {ienc.clip.source}; both should come from one CLIP (pass clip=... or set YW_CLIP).")
        self.image_encoder = ienc
        names = list(model.names.values())
        self.references = reference_crops(self.train_loader.dataset.labels, names, self.crops, int(self.args.seed))
        self._install_references()
        n = sum(len(v) for v in self.references.values())
        LOGGER.info(f"image_prompt: validation prompts from {n} training crops ({len(self.references)} of "
                    f"{len(names)} classes have boxes; the others keep their text embeddings)")

    @torch.no_grad()
    def _install_references(self) -> None:
        """Encode the reference crops once (CLIP is frozen) and give them to the model and its EMA copy."""
        from yw_ext.text.image import crop_box, load_image

        model = unwrap_model(self.model)
        names = list(model.names.values())
        by_image: dict[str, list] = {}  # read each image file once
        for name, items in self.references.items():
            for i, (im, box) in enumerate(items):
                by_image.setdefault(str(im), []).append((name, i, box))
        crops, cls = [], []
        for im, items in by_image.items():
            pil = load_image(im)
            for name, i, box in items:
                crops.append(crop_box(pil, box, cls=name, idx=i))
                cls.append(names.index(name))
        d = model.embed_dim
        feats = (self.image_encoder.encode_images(crops, cache=None).float() if crops
                 else torch.zeros(0, d))  # (R, D); the on-disk embedding cache serves repeated runs  # fmt: skip
        ids = torch.tensor(cls, dtype=torch.long)  # (R,)
        for m in (model, self.ema.ema):
            m.prompt.set_references(feats, ids)
            m.sync_vocabulary(image_encoder_id=self.image_encoder.identity)

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """One jittered crop per (image, class) present, cut from the uint8 images, then Ultralytics' preprocessing,
        then the crops encoded by the frozen CLIP (``batch["prompt_feats"] (M, D)``, ``batch["prompt_slots"] (M, 2)``).

        The crops go through ``clip_crops`` and ``CLIPImageEncoder.encode_crops``, as exemplars at use do.
        """
        if self.image_encoder is None:  # before set-up (e.g. Ultralytics' plotting): nothing to encode yet
            return super().preprocess_batch(batch)
        img = batch["img"]  # (B, 3, H, W) uint8, as the dataloader gives it
        rois, slots = sample_prompt_boxes(batch["batch_idx"], batch["cls"], batch["bboxes"],
                                          unwrap_model(self.model).prompt.num_classes, tuple(img.shape[2:]),
                                          self.jitter, self._generator)  # fmt: skip
        crops = clip_crops(img, rois, self.image_encoder.image_size)  # (M, 3, S, S)
        batch = super().preprocess_batch(batch)
        device = batch["img"].device
        batch["prompt_feats"] = self.image_encoder.encode_crops(crops).to(device)  # (M, D)
        batch["prompt_slots"] = slots.to(device)  # (M, 2)
        return batch

    def build_optimizer(self, model, name: str = "auto", lr: float = 0.001, momentum: float = 0.9, decay: float = 1e-5,
                        iterations: float = 1e5):
        """An optimizer over the adapter only: weights with ``decay``, biases without; ``"auto"`` is AdamW."""
        return make_optimizer(adapter_param_groups(unwrap_model(model).prompt.adapter, decay), name, lr, momentum)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def prompt_file(self, adapter_file: Path) -> Path:
        """The vocabulary prompt file written beside an adapter file (``best_adapter.npz`` -> ``best_prompts.npz``)."""
        return adapter_file.with_name(adapter_file.name.replace("_adapter", "_prompts"))

    def write_prompts(self, path: Path, model: ImagePromptModel | None = None) -> Path:
        """Write ``model``'s (default: the EMA model's) adapter to ``path`` and its vocabulary beside it."""
        model = model or (self.ema.ema if self.ema else unwrap_model(self.model))
        arrays = model.prompt_arrays()
        meta = {"mode": self.mode_name, "crops": self.crops, "jitter": list(self.jitter),
                "references": {k: len(v) for k, v in self.references.items()}, **self.run_meta()}  # fmt: skip
        ienc_id = self.image_encoder.identity if self.image_encoder is not None else None
        write_prompt_file(
            self.prompt_file(path), list(model.names.values()), arrays["embeddings"], model.prompts_per_class,
            class_prompts=model.class_prompts, class_sources=model.vocab_sources(),
            text_encoder_id=model.text_encoder_id, image_encoder_id=ienc_id, detector=self.detector_path,
            detector_sha256=self.detector_sha256, meta=meta,
        )  # fmt: skip
        return write_adapter_file(path, arrays["adapter"], image_encoder_id=ienc_id,
                                  text_encoder_id=model.text_encoder_id, detector=self.detector_path,
                                  detector_sha256=self.detector_sha256, meta=meta)  # fmt: skip

    def restore_prompts(self, path: Path) -> None:
        """Put a written adapter back into the model and its EMA copy."""
        state = read_adapter_file(path)["adapter"]
        for m in (unwrap_model(self.model), self.ema.ema):
            m.prompt.load_adapter_state(state)

    def final_eval(self):
        """Validate the frozen detector with the best adapter's image-prompt vocabulary (as Ultralytics: best.pt)."""
        f = self.best if self.best.exists() else self.last
        if not f.exists():
            return
        model = unwrap_model(self.model)
        model.prompt.load_adapter_state(read_adapter_file(f)["adapter"])
        model.sync_vocabulary()
        self.validate_final(model.to_detector(), f"{f} (image-prompt adapter)")

    def apply_result(self, yolo: Any) -> Path:
        """Give the ``YOLOWorld`` the best (else last) adapter and that run's image-prompt vocabulary."""
        f = self.best if self.best.exists() else self.last
        if not f.exists():
            raise FileNotFoundError(f"mode='image_prompt' finished but wrote no adapter file ({self.best} / "
                                    f"{self.last}).")
        install_adapter(yolo.model, f)
        apply_prompts(yolo.model, self.prompt_file(f), check_detector=False)
        yolo.predictor = None
        return f


def image_prompt_val_exemplars(data: dict, names: list[str], n: int = DEFAULT_CROPS, seed: int = 0,
                               imgsz: int = 640) -> dict:
    """Validation exemplars for ``YOLOWorld.val(image_prompts=n)``: ``reference_crops`` of ``data``'s train split.

    The split's labels are read by Ultralytics' ``YOLODataset`` (its label cache and checks).

    Examples:
        >>> from yw_ext.seam import check_det_dataset
        >>> refs = image_prompt_val_exemplars(check_det_dataset("coco128.yaml"), names, n=32)  # doctest: +SKIP
    """
    from yw_ext.seam import build_yolo_dataset, get_cfg

    cfg = get_cfg(overrides={"imgsz": imgsz, "task": "detect", "mode": "val"})
    ds = build_yolo_dataset(cfg, data["train"], 1, data, mode="val")
    return reference_crops(ds.labels, names, n, seed)


__all__ = (
    "DEFAULT_CROPS",
    "IMAGE_SOURCE",
    "JITTER",
    "TEXT_SOURCE",
    "ImagePromptModel",  # re-exported from yw_ext.nn.image_prompt_model (pickles and old imports name it here)
    "ImagePrompts",
    "YWImagePromptTrainer",
    "clip_crops",
    "crop_for_clip",
    "image_prompt_val_exemplars",
    "reference_crops",
    "sample_prompt_boxes",
)
