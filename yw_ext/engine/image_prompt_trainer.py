# yw_ext, AGPL-3.0 license
"""Image-prompt adapter training (``mode="image_prompt"``): the official v2.1 recipe on a frozen detector.

A frozen CLIP image tower encodes exemplar crops; a small residual MLP (``yw_ext.nn.adapter.ResidualAdapter``,
``A(u) = n(u + MLP(u))``, the only trainable tensors) maps them into the detector's text space; the detector is
frozen (bitwise, as in prompt tuning: see ``yw_ext.engine.prompt_trainer``) and the detection loss trains the adapter.

Each training step, for each image of the batch and each class present in it:

- one ground-truth box of that class is picked at random (``sample_prompt_boxes``), its width and height scaled by
  one factor drawn from ``U(0.8, 1.5)`` about its centre and clipped to the image;
- the crop is cut from the (augmented) training image and brought to CLIP's input size (224 for ViT-B/32) with the
  geometry of CLIP's own preprocessing, which inference uses too: the central square of the box, resized
  (``crop_for_clip``, ``torchvision.ops.roi_align``), normalised with CLIP's mean and std;
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

import datetime
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.ops import roi_align
from ultralytics.utils import LOGGER
from ultralytics.utils.torch_utils import unwrap_model

from yw_ext.engine.prompt_trainer import PromptTuningModel, YWPromptTrainer, adapter_param_groups, make_optimizer
from yw_ext.image_adapter import install_adapter, read_adapter_file, write_adapter_file
from yw_ext.nn.adapter import ResidualAdapter, adapter_state, load_adapter_state
from yw_ext.nn.model import YWDetectionModel
from yw_ext.prompts import apply_prompts, write_prompt_file

DEFAULT_CROPS = 32
"""Training crops per class that make a class's validation prompt (the official evaluation uses 32)."""

JITTER = (0.8, 1.5)
"""Range of the scale factor applied to a training box's width and height (official v2.1 recipe)."""

MIN_BOX = 2.0
"""Boxes narrower or lower than this many pixels (after clipping) are not used as prompts."""

IMAGE_SOURCE, TEXT_SOURCE = "image", "text"


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
    """One random ground-truth box per (image, class) present, scale-jittered, clipped, as its central square.

    Args:
        batch_idx: ``(N,)`` image index of each box.
        cls: ``(N,)`` or ``(N, 1)`` class index of each box.
        bboxes: ``(N, 4)`` normalised ``xywh`` boxes (Ultralytics batch layout).
        num_classes: K (boxes with a class outside ``[0, K)`` are ignored).
        size: ``(H, W)`` of the images in pixels.
        jitter: ``(low, high)``: width and height are both scaled by one factor from ``U(low, high)``.
        generator: Random generator (CPU) for reproducible picks.

    Returns:
        (tuple[torch.Tensor, torch.Tensor]): ``rois (M, 5)`` float ``[image, x1, y1, x2, y2]`` in pixels (the central
        square of the jittered, clipped box, the region CLIP's preprocessing keeps), and ``slots (M, 2)`` long
        ``[image, class]``; both on CPU, one row per (image, class) pair, sorted by image then class.

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
    side = torch.minimum(x2 - x1, y2 - y1)  # central square, as CLIP's resize-shortest-side + center crop
    mx, my = (x1 + x2) / 2, (y1 + y2) / 2
    rois = torch.stack((b[pick].float(), mx - side / 2, my - side / 2, mx + side / 2, my + side / 2), 1)  # (M, 5)
    slots = torch.stack((b[pick], c[pick]), 1)  # (M, 2)
    ok = side >= MIN_BOX
    return rois[ok], slots[ok]


def crop_for_clip(images: torch.Tensor, rois: torch.Tensor, size: int, mean: Any, std: Any) -> torch.Tensor:
    """Cut boxes out of a batch and resize them to CLIP's input, normalised (``torchvision.ops.roi_align``).

    ``roi_align`` with ``aligned=True`` treats pixel ``i`` as covering ``[i, i + 1)``, so a box ``[x1, y1, x2, y2]``
    in pixel coordinates maps onto exactly those pixels, and its adaptive sampling averages
    ``ceil(box / size)`` samples per output pixel in each direction (an area filter when shrinking).

    Args:
        images: ``(B, 3, H, W)`` RGB in ``[0, 1]``.
        rois: ``(M, 5)`` ``[image, x1, y1, x2, y2]`` in pixels.
        size: Output side S.
        mean: CLIP's per-channel mean (3 numbers).
        std: CLIP's per-channel std (3 numbers).

    Returns:
        (torch.Tensor): ``(M, 3, S, S)`` normalised crops, float32, on the images' device.

    Examples:
        >>> crop_for_clip(torch.rand(1, 3, 64, 64), torch.tensor([[0.0, 0, 0, 32, 32]]), 8, [0.5] * 3, [0.5] * 3).shape
        torch.Size([1, 3, 8, 8])
    """
    x = images.float()
    crops = roi_align(x, rois.to(x.device, torch.float32), output_size=(size, size), spatial_scale=1.0,
                      sampling_ratio=-1, aligned=True)  # (M, 3, S, S)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    sd = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (crops - m) / sd


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
        for c, (cx, cy, bw, bh) in zip(np.asarray(lb["cls"]).reshape(-1), np.asarray(lb["bboxes"]).reshape(-1, 4)):
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
# The model trained in image_prompt mode
# ----------------------------------------------------------------------------------------------------------------------
class ImagePrompts(nn.Module):
    """Class embeddings of image-prompt training: adapted CLIP image embeddings where there are exemplars, else text.

    Args:
        text: ``(K * G, D)`` text embeddings of the K classes (G prompts each).
        prompts_per_class: G.

    Attributes:
        adapter (ResidualAdapter): The trainable projector.
        text, ref_feats, ref_cls: Non-persistent buffers: the text embeddings, the CLIP embeddings ``(R, D)`` of the
            reference crops that make the vocabulary (``set_references``) and their class ids ``(R,)``.

    Examples:
        >>> p = ImagePrompts(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), 1)
        >>> p.set_references(torch.randn(4, 8), torch.tensor([0, 0, 2, 2]))
        >>> p().shape  # (K * G, D): classes 0 and 2 from images, class 1 from text
        torch.Size([3, 8])
        >>> list(p.state_dict())  # only the adapter is state
        ['adapter.0.weight', 'adapter.0.bias', 'adapter.2.weight', 'adapter.2.bias']
    """

    def __init__(self, text: torch.Tensor, prompts_per_class: int = 1):
        """Keep the text embeddings and build a fresh (identity) adapter."""
        super().__init__()
        if text.dim() != 2 or text.shape[0] % prompts_per_class:
            raise ValueError(f"text embeddings must be (K * G, D) with G={prompts_per_class}, got {tuple(text.shape)}.")
        d = text.shape[1]
        self.g = int(prompts_per_class)
        self.register_buffer("text", text.detach().float().clone(), persistent=False)  # (K * G, D)
        self.register_buffer("ref_feats", torch.zeros(0, d), persistent=False)  # (R, D)
        self.register_buffer("ref_cls", torch.zeros(0, dtype=torch.long), persistent=False)  # (R,)
        self.adapter = ResidualAdapter(d)

    @property
    def num_classes(self) -> int:
        """K."""
        return self.text.shape[0] // self.g

    def set_references(self, feats: torch.Tensor, cls: torch.Tensor) -> None:
        """Install the CLIP embeddings ``(R, D)`` of the reference crops and their class ids ``(R,)``."""
        if feats.dim() != 2 or feats.shape[0] != cls.numel() or feats.shape[1] != self.text.shape[1]:
            raise ValueError(f"reference features {tuple(feats.shape)} do not fit {cls.numel()} class ids of "
                             f"{self.text.shape[1]}-d embeddings.")
        self.ref_feats = nn.functional.normalize(feats.detach().float(), dim=-1).to(self.text.device)  # (R, D)
        self.ref_cls = cls.detach().long().view(-1).to(self.text.device)  # (R,)

    def has_images(self) -> torch.Tensor:
        """``(K,)`` bool: classes whose vocabulary embedding comes from reference crops."""
        return torch.bincount(self.ref_cls.cpu(), minlength=self.num_classes)[: self.num_classes] > 0

    def forward(self) -> torch.Tensor:
        """The vocabulary ``(K * G, D)``: ``n(mean_j A(u_j))`` per class with reference crops, text otherwise."""
        k, g, d = self.num_classes, self.g, self.text.shape[1]
        out = self.text.view(k, g, d)  # (K, G, D)
        if self.ref_cls.numel() == 0:
            return self.text
        a = self.adapter(self.ref_feats.to(self.text.dtype)).to(self.text.dtype)  # (R, D), unit norm (autocast)
        sums = torch.zeros(k, d, dtype=a.dtype, device=a.device).index_add(0, self.ref_cls, a)  # (K, D)
        counts = torch.bincount(self.ref_cls, minlength=k)[:k]  # (K,)
        img = nn.functional.normalize(sums, dim=-1)  # (K, D): n(mean) = n(sum)
        out = torch.where((counts > 0).view(k, 1, 1), img.view(k, 1, d).expand(k, g, d), out)  # (K, G, D)
        return out.reshape(k * g, d)  # (K * G, D)

    def batch_embeddings(self, feats: torch.Tensor | None, slots: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Per-image embeddings ``(B, K * G, D)``: text, with each (image, class) slot replaced by ``A(feats)``.

        Args:
            feats: ``(M, D)`` CLIP embeddings of this batch's crops (None or empty: text only).
            slots: ``(M, 2)`` ``[image, class]`` of each crop.
            batch: B.
        """
        k, g, d = self.num_classes, self.g, self.text.shape[1]
        out = self.text.view(1, k, g, d).expand(batch, k, g, d)  # (B, K, G, D)
        if feats is not None and feats.numel():
            a = self.adapter(feats.to(self.text.dtype)).to(self.text.dtype)  # (M, D); fp16 under autocast
            bi, ci = slots[:, 0].to(a.device), slots[:, 1].to(a.device)
            out = out.index_put((bi, ci), a.view(-1, 1, d).expand(-1, g, d))  # (B, K, G, D), new tensor
        return out.reshape(batch, k * g, d)  # (B, K * G, D)

    def adapter_state(self) -> dict[str, np.ndarray]:
        """The adapter's tensors keyed ``adapter.0.weight`` ... (the file layout)."""
        return adapter_state(self.adapter)

    def load_adapter_state(self, state: dict[str, Any]) -> None:
        """Load adapter tensors keyed ``adapter.0.weight`` ... (checked)."""
        load_adapter_state(self.adapter, state)


class ImagePromptModel(PromptTuningModel):
    """A frozen ``YWDetectionModel`` whose training vocabulary mixes adapted image prompts and text (``ImagePrompts``).

    Training (``loss``) uses per-image embeddings: each class present in an image gets the adapted CLIP embedding of
    one of its boxes in that image (``batch["prompt_feats"]`` / ``batch["prompt_slots"]``, made by the trainer);
    evaluation uses ``prompt()``, the vocabulary built from the reference crops.

    Examples:
        >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> m = ImagePromptModel.from_detector(det, torch.randn(2, 512), ["cat", "dog"])
        >>> [n for n, p in m.named_parameters() if p.requires_grad][:1]
        ['prompt.adapter.0.weight']
    """

    prompt: ImagePrompts

    @classmethod
    def make_prompt(cls, embeddings: torch.Tensor, num_classes: int, prompts_per_class: int, adapter: bool) -> nn.Module:
        """``ImagePrompts`` over the text embeddings (the adapter is always there; ``adapter`` is ignored)."""
        return ImagePrompts(nn.functional.normalize(embeddings.float(), dim=-1), prompts_per_class)

    def loss(self, batch: dict, preds: Any = None):
        """Detection loss; without ``preds``, a forward with the batch's per-image image-prompt embeddings."""
        if preds is None:
            tf = self.prompt.batch_embeddings(batch.get("prompt_feats"), batch.get("prompt_slots"),
                                              batch["img"].shape[0])  # (B, K * G, D)
            with self._backbone_no_grad():
                preds = YWDetectionModel.predict(self, batch["img"], txt_feats=tf)
            if self.prompts_per_class > 1:
                preds = self._max_over_prompts(preds)
        return super().loss(batch, preds)

    def vocab_sources(self) -> list[str]:
        """``"image"`` for classes whose vocabulary embedding comes from reference crops, else ``"text"``."""
        return [IMAGE_SOURCE if h else TEXT_SOURCE for h in self.prompt.has_images().tolist()]

    @torch.no_grad()
    def sync_vocabulary(self) -> None:
        """Copy the current vocabulary into ``txt_feats`` and record each class's source (image or text)."""
        super().sync_vocabulary()
        self.class_sources = self.vocab_sources()

    @torch.no_grad()
    def prompt_arrays(self) -> dict[str, Any]:
        """The vocabulary ``(K * G, D)`` and the adapter arrays."""
        return {"embeddings": self.prompt().detach().float().cpu(), "raw_embeddings": None,
                "adapter": self.prompt.adapter_state()}  # fmt: skip

    def to_detector(self) -> YWDetectionModel:
        """A plain ``YWDetectionModel`` copy with the current vocabulary and the adapter installed."""
        det = super().to_detector()
        install_adapter(det, {"adapter": self.prompt.adapter_state(), "dim": self.embed_dim,
                              "image_encoder_id": getattr(self, "image_encoder_id", None)})  # fmt: skip
        return det


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
            m.image_encoder_id = self.image_encoder.identity
            m.sync_vocabulary()

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Images to the device, then one jittered crop per (image, class) present, encoded by the frozen CLIP."""
        batch = super().preprocess_batch(batch)
        if self.image_encoder is None:  # before set-up (e.g. Ultralytics' plotting): nothing to encode yet
            return batch
        img = batch["img"]
        rois, slots = sample_prompt_boxes(batch["batch_idx"], batch["cls"], batch["bboxes"],
                                          unwrap_model(self.model).prompt.num_classes, tuple(img.shape[2:]),
                                          self.jitter, self._generator)  # fmt: skip
        ienc = self.image_encoder
        if rois.shape[0]:
            from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

            x = crop_for_clip(img, rois, ienc.image_size, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)  # (M, 3, S, S)
            p = next(ienc.clip.model.visual.parameters())
            with torch.no_grad():
                feats = nn.functional.normalize(ienc.clip.model.visual(x.to(p.device, p.dtype)).float(), dim=-1)
        else:
            feats = torch.zeros(0, unwrap_model(self.model).embed_dim, device=img.device)
        batch["prompt_feats"], batch["prompt_slots"] = feats.to(img.device), slots.to(img.device)
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
        import ultralytics

        import yw_ext

        model = model or (self.ema.ema if self.ema else unwrap_model(self.model))
        arrays = model.prompt_arrays()
        meta = {
            "mode": self.mode_name, "crops": self.crops, "jitter": list(self.jitter),
            "references": {k: len(v) for k, v in self.references.items()},
            "epoch": int(self.epoch) + 1 if getattr(self, "epoch", None) is not None else None,
            "fitness": None if self.fitness is None else float(self.fitness),
            "best_fitness": None if self.best_fitness is None else float(self.best_fitness),
            "data": str(self.args.data), "imgsz": self.args.imgsz,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "yw_ext": getattr(yw_ext, "__version__", ""), "ultralytics": ultralytics.__version__,
            "torch": torch.__version__,
        }  # fmt: skip
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
        >>> from ultralytics.data.utils import check_det_dataset
        >>> refs = image_prompt_val_exemplars(check_det_dataset("coco128.yaml"), names, n=32)  # doctest: +SKIP
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides={"imgsz": imgsz, "task": "detect", "mode": "val"})
    ds = build_yolo_dataset(cfg, data["train"], 1, data, mode="val")
    return reference_crops(ds.labels, names, n, seed)


__all__ = (
    "DEFAULT_CROPS",
    "JITTER",
    "ImagePromptModel",
    "ImagePrompts",
    "YWImagePromptTrainer",
    "crop_for_clip",
    "image_prompt_val_exemplars",
    "reference_crops",
    "sample_prompt_boxes",
)
