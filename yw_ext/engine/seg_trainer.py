"""Training YOLO-World-Seg models: Ultralytics' segmentation machinery with yw_ext's class texts.

``YWSegTrainer`` is ``YWTrainer`` (class texts and ``text_json`` synonyms sampled per image, grounding mix, the
dataset vocabulary on the EMA model) with ``task="segment"``: Ultralytics' datasets then read polygon labels and
build instance masks, and the model's ``v8SegmentationLoss`` adds the mask loss. Validation is ``YWSegValidator``
(box and mask mAP). A training set without any polygon is refused (it would train the mask branch on empty masks).

``YWSegHeadTrainer`` (``mode="seghead"``, the official "seghead" fine-tuning recipe) trains only the mask branch
(``proto`` and the mask-coefficient convs ``cv5``). The detector stays bitwise unchanged: its layers are named in
``args.freeze`` (no gradients, BatchNorm kept in eval by Ultralytics' trainer) and the EMA averages only the mask
branch (``MaskBranchEMA``; averaging a frozen tensor with itself is not bitwise the tensor).
"""

from __future__ import annotations

from copy import copy
from typing import Any

import torch

from yw_ext.engine.seg_predict import YWSegValidator
from yw_ext.engine.trainer import RUN_KEYS, YWTrainer
from yw_ext.nn.build import load_model_cfg
from yw_ext.nn.seg import MASK_BRANCH, YWSegmentationModel, is_seg_cfg
from yw_ext.seam import LOGGER, RANK, ModelEMA, unwrap_model


class SegDataError(ValueError):
    """A dataset given for segmentation training has no polygon labels."""


def check_polygons(dataset: Any, data: Any) -> None:
    """Raise ``SegDataError`` unless some training label of ``dataset`` has a polygon.

    Examples:
        >>> check_polygons(trainer.train_loader.dataset, "coco128.yaml")  # doctest: +SKIP
        Traceback (most recent call last):
        SegDataError: ... has no polygon labels ...
    """
    parts = getattr(dataset, "datasets", None) or [dataset]
    labels = [lb for d in parts for lb in (getattr(d, "labels", None) or [])]
    if not any(len(lb.get("segments") or []) for lb in labels):
        raise SegDataError(
            f"segmentation training needs polygon labels, but the training labels of '{data}' ({len(labels)} images) "
            "have none (box-only rows 'class x y w h'). Give YOLO-seg labels ('class x1 y1 x2 y2 ... xn yn', "
            "normalised), or train a detection model on this dataset."
        )


class YWSegTrainer(YWTrainer):
    """Fine-tune a YOLO-World-Seg model (all weights): box, class, DFL and mask losses.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> YOLOWorld("yw-v2-seg-n.yaml").train(data="my-seg.yaml", epochs=1)  # doctest: +SKIP
    """

    mode_name = "finetune"

    def __init__(self, cfg=None, overrides: dict | None = None, _callbacks: dict | None = None):
        """``YWTrainer`` with ``task="segment"`` (polygon labels, instance masks in the batches)."""
        overrides = {**(overrides or {}), "task": "segment"}
        super().__init__(cfg, overrides, _callbacks)

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> YWSegmentationModel:
        """Build a ``YWSegmentationModel`` from a seg YAML / dict and load ``weights`` (matching tensors).

        Raises:
            ValueError: ``cfg`` is a detection model (no ``segment:`` key); ``.to_seg()`` makes a seg model of it.
        """
        cfg = cfg if cfg is not None else self.args.model
        if not isinstance(cfg, dict) and (self.args.yw_scale or self.args.yw_embed_dim):
            cfg = load_model_cfg(cfg, scale=self.args.yw_scale, embed_dim=self.args.yw_embed_dim)
        d = load_model_cfg(cfg)
        if not is_seg_cfg(d):
            raise ValueError(f"mode='{self.mode_name}' with task='segment' needs a YOLO-World-Seg model, but "
                             f"{d.get('yaml_file', 'the model')} is a detection model: use YOLOWorld(...).to_seg() "
                             "(detector weights kept, mask branch new) or a seg YAML such as 'yw-v2-seg-s.yaml'.")
        model = YWSegmentationModel(d, ch=self.data["channels"], nc=min(self.data["nc"], 80),
                                    verbose=verbose and RANK == -1)
        if weights:
            model.load(weights)
        self.args.yw_scale, self.args.yw_embed_dim = model.yaml.get("scale"), int(model.embed_dim)
        return model

    def get_validator(self) -> YWSegValidator:
        """``YWSegValidator`` (box and mask mAP) with the trainer's arguments minus yw_ext's run keys."""
        args = copy(self.args)
        for k in RUN_KEYS:
            vars(args).pop(k, None)
        return YWSegValidator(self.test_loader, save_dir=self.save_dir, args=args, _callbacks=self.callbacks)

    def build_dataset(self, img_path, mode: str = "train", batch: int | None = None):
        """``YWTrainer``'s datasets with ``task="segment"``; the training set must hold polygons (``SegDataError``)."""
        ds = super().build_dataset(img_path, mode, batch)
        if mode == "train":
            check_polygons(ds, self.args.data)
        return ds


class MaskBranchEMA(ModelEMA):
    """Ultralytics' ``ModelEMA`` updating only the tensors whose state-dict names start with ``prefixes``.

    Examples:
        >>> ema = MaskBranchEMA(model, ("model.22.proto.", "model.22.cv5."))  # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, prefixes: tuple[str, ...], **kwargs: Any):
        """Copy ``model`` like ``ModelEMA``; later updates touch ``prefixes`` only."""
        super().__init__(model, **kwargs)
        self.prefixes = tuple(prefixes)

    def update(self, model: torch.nn.Module) -> None:
        """EMA-update the mask-branch tensors (parameters and BatchNorm buffers) from ``model``."""
        if not self.enabled:
            return
        self.updates += 1
        d = self.decay(self.updates)
        src = unwrap_model(model).state_dict()
        with torch.no_grad():
            for k, v in self.ema.state_dict().items():
                if k.startswith(self.prefixes) and v.dtype.is_floating_point:
                    v.mul_(d).add_(src[k].detach(), alpha=1 - d)


class YWSegHeadTrainer(YWSegTrainer):
    """``mode="seghead"``: only the mask branch trains; the detector's tensors stay bitwise unchanged.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> seg = YOLOWorld("det.pt").to_seg()  # doctest: +SKIP
        >>> seg.train(data="my-seg.yaml", mode="seghead", epochs=10)  # doctest: +SKIP
    """

    mode_name = "seghead"

    def mask_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the mask branch (``model.<head>.proto.``, ``model.<head>.cv5.``)."""
        return unwrap_model(self.model).mask_prefixes()

    def _setup_train(self) -> None:
        """Ultralytics' set-up with every detector layer frozen, then the mask-branch EMA and a frozen-ness check."""
        model = unwrap_model(self.model)
        i = len(model.model) - 1
        if self.args.freeze not in (None, 0, []):
            LOGGER.warning(f"freeze={self.args.freeze} is ignored with mode='seghead': the detector is frozen.")
        keep = {f"{i}.{k}" for k in MASK_BRANCH}
        head_parts = sorted({n.split(".")[0] for n, _ in model.model[-1].named_parameters()} - set(MASK_BRANCH))
        self.args.freeze = list(range(i)) + [f"{i}.{k}" for k in head_parts if f"{i}.{k}" not in keep]
        super()._setup_train()
        prefixes = self.mask_prefixes()
        ema = MaskBranchEMA(self.model, prefixes)
        ema.ema.load_state_dict(self.ema.ema.state_dict())  # Ultralytics' EMA (a resumed run's, if resuming)
        ema.updates = self.ema.updates
        self.ema = ema
        bad = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith(prefixes)]
        if bad:  # a guard: nothing above should have left a detector tensor trainable
            raise RuntimeError(f"seghead: detector tensors are trainable: {bad[:5]}")
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        LOGGER.info(f"seghead: {n} trainable values (mask branch {', '.join(prefixes)}); the detector is frozen.")
