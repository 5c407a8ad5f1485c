"""Fine-tuning trainer for yw_ext models: Ultralytics' detection trainer with yw_ext's model, texts and checks.

``YWTrainer`` is an Ultralytics ``DetectionTrainer`` that does what Ultralytics' YOLO-World trainers
(``WorldTrainer`` / ``WorldTrainerFromScratch``) do, yw_ext's way:

- ``get_model`` builds a ``YWDetectionModel`` (upstream hard-codes ``WorldModel``);
- text embeddings from the model's text encoder as ``YWDetectionModel.encode_text`` resolves it (``$YW_CLIP``, else
  the text tower that came with the weights, else ``load_clip()``) and yw_ext's on-disk cache (upstream hard-codes
  ``clip:ViT-B/32`` and a ``text_embeddings_clip_ViT-B_32.pt`` file next to the images), gathered per batch by
  index instead of one tensor per text;
- class texts: a dataset YAML's ``text_json`` (official ``[["person", "human"], ...]`` format) or ``/``-separated
  names; training samples one prompt per class per image plus negatives, validation uses all prompts (max);
- the EMA model (which is validated and saved as best.pt / last.pt) gets the dataset vocabulary, names plus
  embeddings plus prompts, so ``yw_ext.YOLOWorld("best.pt")`` reloads with its classes (``set_ema_vocabulary``,
  in place of upstream's callback, which would set names only);
- detection data alone (``data="coco128.yaml"``) or mixed with grounding data (``data={"train": {"yolo_data": [...],
  "grounding_data": [...]}, "val": {"yolo_data": [...]}}``, which ``YOLOWorld.train(grounding_data=...)`` builds;
  laid out by ``yw_ext.engine.grounding.resolve_mixed_data``);
- clear errors before training for unavailable datasets, class-text JSONs of the wrong length and bad grounding JSON;
- what yw_ext knows beyond Ultralytics' arguments (the mode, the model's scale and text width, the text encoder) rides
  in the trainer's ``args`` as ``yw_*`` keys (``RUN_KEYS``), so a trainer rebuilt from ``vars(args)`` alone (a DDP
  worker) or from a checkpoint's ``train_args`` (``resume=True``) trains the same model on the same vocabulary.

Trainers of a fixed vocabulary (``fixed_vocabulary = True``: the dataset's classes, folded in ``rep_trainer``,
learnable in ``prompt_trainer``) train on plain detection datasets without per-image texts, with a K-class loss.
Modes are picked in ``yw_ext.engine.modes``.

Examples:
    >>> from yw_ext import YOLOWorld
    >>> model = YOLOWorld("yw-v2-n.yaml")
    >>> model.train(data="coco128.yaml", epochs=1, imgsz=320)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
from copy import copy
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from yw_ext.engine.dataset import build_yw_dataset, check_dataset_available, class_texts, display_names
from yw_ext.engine.grounding import check_grounding, is_mixed, normalize_grounding, resolve_mixed_data, val_data
from yw_ext.engine.validator import YWValidator
from yw_ext.nn.build import load_model_cfg
from yw_ext.nn.model import YWDetectionModel
from yw_ext.seam import (
    DEFAULT_CFG,
    LOGGER,
    RANK,
    YAML,
    DetectionTrainer,
    YOLOConcatDataset,
    build_grounding,
    build_yolo_dataset,
    check_det_dataset,
    unwrap_model,
    world_set_classes_callback,
)
from yw_ext.vocab import pad_prompts


RUN_KEYS = ("yw_mode", "yw_scale", "yw_embed_dim", "yw_text_encoder", "yw_text_encoder_id")
"""yw_ext's own run state, kept as extra keys of a trainer's ``args``: the ``mode=``, the model's scale and text width
(a model built from a YAML), the text encoder's source (a local path, or None) and identity. Ultralytics saves
``vars(args)`` as a checkpoint's ``train_args`` and hands it to DDP workers as their overrides; ``YWTrainer.__init__``
takes the keys out of the overrides (Ultralytics' argument check refuses unknown keys) and puts them back."""


def split_run_keys(overrides: dict | None) -> tuple[dict, dict]:
    """``(overrides without yw_ext's run keys, the run keys)``; neither input is modified.

    Examples:
        >>> split_run_keys({"epochs": 2, "yw_mode": "rep"})
        ({'epochs': 2}, {'yw_mode': 'rep'})
    """
    rest = dict(overrides or {})
    return rest, {k: rest.pop(k) for k in RUN_KEYS if k in rest}


def class_criterion(model: torch.nn.Module, num_classes: int):
    """The detection loss for a model whose class scores are reduced over synonyms to ``num_classes`` channels.

    The head reports ``K * G`` prompt channels but the model's own forward returns ``K`` class scores (max over each
    class's ``G`` prompts); Ultralytics' loss reads the head's ``nc`` once, when it is built, so it is built while the
    head reports ``K`` (the model's ``head_prompts`` context, which restores the installed count).

    Examples:
        >>> model.criterion = class_criterion(model, len(model.names))  # doctest: +SKIP
    """
    with model.head_prompts(num_classes):
        return model.init_criterion()


def replace_callbacks(trainer: Any, event: str, remove: Iterable[Callable] = (), add: Iterable[Callable] = ()) -> None:
    """Remove exactly the callbacks ``remove`` (by identity) from ``event``, then add each of ``add`` once.

    The one place yw_ext trainers edit their callback lists: Ultralytics' ``BaseTrainer`` offers ``add_callback``
    and ``set_callback`` (which would drop every other callback, e.g. integrations'), not removal.

    Examples:
        >>> replace_callbacks(trainer, "on_pretrain_routine_end", remove=[world_set_classes_callback])  # doctest: +SKIP
    """
    hooks = trainer.callbacks[event]
    for fn in remove:
        while fn in hooks:
            hooks.remove(fn)
    for fn in add:
        if fn not in hooks:
            trainer.add_callback(event, fn)


def set_ema_vocabulary(trainer: YWTrainer) -> None:
    """``on_pretrain_routine_end`` callback: give the EMA model the validation dataset's vocabulary.

    Names are the dataset's display names, prompts its class texts (all synonyms; score = max over them). The EMA
    model is what validation runs and what best.pt / last.pt hold, so the checkpoints keep this vocabulary.

    Examples:
        >>> trainer.add_callback("on_pretrain_routine_end", set_ema_vocabulary)  # doctest: +SKIP
    """
    trainer.set_vocabulary(trainer.ema.ema)


class YWTrainer(DetectionTrainer):
    """Fine-tuning trainer building ``YWDetectionModel`` and encoding class texts with yw_ext's CLIP + cache.

    Attributes:
        fixed_vocabulary (bool): Class attribute. False here: training samples class texts per image and the EMA model
            gets the dataset vocabulary. True in subclasses whose model scores the dataset's classes itself.
        text_embeddings (dict[str, torch.Tensor]): Text -> embedding for every training text (Ultralytics' attribute).
        text_encoder_id (str | None): Identity of the encoder that made them.
        training_data (dict | None): Per detection dataset of a mixed run, its checked dataset dict; None otherwise.

    Examples:
        >>> from yw_ext.engine.trainer import YWTrainer
        >>> trainer = YWTrainer(overrides=dict(model="yw-v2-n.yaml", data="coco128.yaml", epochs=1))  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
    """

    fixed_vocabulary = False
    mode_name = "finetune"  # the mode= value (yw_ext.engine.modes), recorded as args.yw_mode

    def __init__(self, cfg=None, overrides: dict | None = None, _callbacks: dict | None = None):
        """Initialize like Ultralytics' trainers; the dataset, its class texts and grounding data are checked here.

        ``overrides`` may hold yw_ext's run keys (``RUN_KEYS``: a DDP worker's overrides are the parent's args).
        """
        if (overrides or {}).get("compile"):
            raise ValueError("yw_ext training needs compile=False (text embeddings vary per batch), as Ultralytics' "
                             "YOLO-World trainers.")
        overrides, carried = split_run_keys(overrides)
        self.training_data = None
        self.text_embeddings: dict | None = None
        self._text_index: dict[str, int] = {}
        self._text_matrix: torch.Tensor | None = None
        self.text_encoder_id: str | None = None
        self._text_encoder = None
        super().__init__(DEFAULT_CFG if cfg is None else cfg, overrides, _callbacks)
        self.restore_run_state(carried)
        ema_vocabulary = () if self.fixed_vocabulary else (set_ema_vocabulary,)
        # upstream's callback would set names only (no synonyms), with its own encoder call
        replace_callbacks(self, "on_pretrain_routine_end", remove=(world_set_classes_callback, set_ema_vocabulary),
                          add=ema_vocabulary)

    def restore_run_state(self, carried: dict) -> None:
        """Put yw_ext's run keys on ``self.args``: a resumed run's from its checkpoint, else ``carried``.

        Raises:
            ValueError: resuming a checkpoint trained with another ``mode=`` (it names the mode to resume with).
        """
        if self.resume:  # check_resume replaced self.args by the checkpoint's train_args, run keys included
            was = getattr(self.args, "yw_mode", None)
            if was and was != self.mode_name:
                raise ValueError(f"{self.args.resume} was trained with mode='{was}'; resume it with mode='{was}' (or "
                                 f"YOLOWorld('{self.args.resume}').train(resume=True), which reads the mode from it), "
                                 f"not mode='{self.mode_name}'.")
        else:
            for k, v in carried.items():
                setattr(self.args, k, v)
        for k in RUN_KEYS:
            if not hasattr(self.args, k):
                setattr(self.args, k, None)
        self.args.yw_mode = self.mode_name
        if RANK in {-1, 0}:  # Ultralytics wrote args.yaml before the run keys were set
            YAML.save(self.save_dir / "args.yaml", vars(self.args))

    # ----------------------------------------------------------------------------------------------------- model
    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> YWDetectionModel:
        """Build a ``YWDetectionModel`` (nc = texts per image = min(dataset nc, 80), as officially) and load weights.

        Args:
            cfg: Model YAML / dict (``YOLOWorld.train`` passes the current model's dict, keeping scale and text width).
            weights: A model (or checkpoint dict) whose weights are copied in.
            verbose: Print the model summary.
        """
        src = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        if getattr(src, "folded", False):
            raise ValueError(
                "this model is re-parameterised (its vocabulary is folded into its weights), so it has no text path "
                "to fine-tune. Train the unfolded model (mode='finetune'), or fine-tune the folded weights with "
                "mode='rep' on a dataset with the same classes."
            )
        cfg = cfg if cfg is not None else self.args.model
        if not isinstance(cfg, dict) and (self.args.yw_scale or self.args.yw_embed_dim):  # rebuilt from args alone
            cfg = load_model_cfg(cfg, scale=self.args.yw_scale, embed_dim=self.args.yw_embed_dim)
        model = YWDetectionModel(cfg, ch=self.data["channels"], nc=min(self.data["nc"], 80),
                                 verbose=verbose and RANK == -1)
        if weights:
            model.load(weights)
        self.args.yw_scale, self.args.yw_embed_dim = model.yaml.get("scale"), int(model.embed_dim)
        return model

    def get_validator(self) -> YWValidator:
        """Return a ``YWValidator`` (a DetectionValidator that understands yw_ext vocabularies).

        Its arguments are the trainer's without yw_ext's run keys (Ultralytics' argument check refuses unknown keys).
        """
        args = copy(self.args)
        for k in RUN_KEYS:
            vars(args).pop(k, None)
        return YWValidator(self.test_loader, save_dir=self.save_dir, args=args, _callbacks=self.callbacks)

    def set_model_attributes(self) -> None:
        """Ultralytics' (names, nc, args); with a fixed vocabulary: args and the K-class loss (names are the model's:
        the head keeps its K * G prompt channels)."""
        if not self.fixed_vocabulary:
            return super().set_model_attributes()
        model = unwrap_model(self.model)
        model.args = self.args
        model.criterion = class_criterion(model, len(model.names))

    def set_class_weights(self) -> None:
        """No class weights: score channels are prompt positions, not dataset classes (as Ultralytics' WorldTrainer)."""

    # ----------------------------------------------------------------------------------------------------- data
    def get_dataset(self) -> dict:
        """Check the data (availability, class texts, grounding JSON) and return the dataset dict.

        Raises:
            yw_ext.engine.dataset.DatasetNotAvailableError: images missing and not downloadable (offline).
            ValueError: class-text JSON of the wrong length or form; bad grounding JSON (``GroundingDataError``).
            FileNotFoundError: missing class-text JSON, grounding JSON or grounding image folder.
        """
        data = self.args.data
        if not is_mixed(data):
            check_dataset_available(data, splits=("train", "val"))
            self.training_data = None
            out = super().get_dataset()
            if self.args.single_cls:
                out["class_texts"] = [[out["names"][0]]]
            class_texts(out)
            return out
        for split in ("train", "val"):
            for d in (data[split].get("yolo_data") or []):
                check_dataset_available(d, splits=(split,))
        for g in ("train", "val"):
            if data[g].get("grounding_data") is not None:
                data[g]["grounding_data"] = normalize_grounding(data[g]["grounding_data"])
        out, self.training_data = resolve_mixed_data(data, self.args.single_cls)
        for entry in out["train"]:
            if isinstance(entry, dict):
                n = check_grounding(entry["img_path"], entry["json_file"])
                LOGGER.info(f"grounding data {entry['json_file']}: {n['annotations']} boxes on {n['found']} images")
        for d in self.training_data.values():
            class_texts(d)
        vd = check_det_dataset(val_data(self.args.data))
        out["class_texts"] = [[out["names"][0]]] if self.args.single_cls else class_texts(vd)
        return out

    def build_dataset(self, img_path, mode: str = "train", batch: int | None = None):
        """Build the training dataset (class texts; detection and grounding mixed) or the validation dataset.

        With a fixed vocabulary both are plain detection datasets (labels are the dataset's class indices).

        Args:
            img_path: Training/validation image path(s); for a mixed run, the list of detection paths and grounding
                dicts.
            mode: ``"train"`` or ``"val"``.
            batch: Batch size (for ``rect``).
        """
        gs = max(int(unwrap_model(self.model).stride.max() if self.model else 0), 32)
        if mode != "train" or self.fixed_vocabulary:
            return build_yolo_dataset(self.args, img_path, batch, self.data, mode=mode, rect=mode == "val", stride=gs)
        if self.training_data:
            datasets = [
                build_yw_dataset(self.args, p, batch, self.training_data[p], stride=gs)
                if isinstance(p, str)
                else build_grounding(
                    self.args, p["img_path"], p["json_file"], batch, stride=gs, max_samples=self.data["nc"]
                )
                for p in img_path
            ]
        else:
            datasets = [build_yw_dataset(self.args, img_path, batch, self.data, stride=gs)]
        self.set_text_embeddings(datasets, batch)
        return YOLOConcatDataset(datasets) if len(datasets) > 1 else datasets[0]

    def plot_training_labels(self) -> None:
        """Plot label statistics for detection data (skipped for mixed detection + grounding data, as upstream)."""
        if not self.training_data:
            super().plot_training_labels()

    def final_eval(self):
        """Validate best.pt on the (first) validation dataset."""
        if is_mixed(self.args.data):
            self.validator.args.data = val_data(self.args.data)
            self.validator.args.split = "val"
        return super().final_eval()

    # ----------------------------------------------------------------------------------------------------- texts
    def encode(self, texts: list[str], model: torch.nn.Module | None = None) -> torch.Tensor:
        """Embeddings ``(N, D)`` of ``texts`` on the training device, from the model's text encoder.

        The encoder is the one ``YWDetectionModel.encode_text`` resolves (``$YW_CLIP``, else the text tower that came
        with the weights, else ``yw_ext.text.load_clip()``), so training and ``set_classes`` agree; embeddings are
        cached on disk by encoder identity and text.
        """
        if model is None:
            model = unwrap_model(self.model) if isinstance(self.model, torch.nn.Module) else None
        enc = self.text_encoder(model)
        if model is not None and hasattr(model, "encode_text"):
            emb, self.text_encoder_id = model.encode_text(list(texts), encoder=enc, batch=256)
        else:
            from yw_ext.text import encode_texts

            emb, self.text_encoder_id = encode_texts(enc, list(texts), batch=256), enc.identity
        return emb.float().to(self.device)

    def text_encoder(self, model: torch.nn.Module | None = None):
        """This run's text encoder, resolved once and recorded in ``args`` (``yw_text_encoder`` / ``_id``).

        Resolved as ``YWDetectionModel.encode_text`` does (``$YW_CLIP``, else the model's text tower, else
        ``load_clip()``); a resumed run or DDP worker without ``$YW_CLIP`` uses the recorded source.

        Raises:
            ValueError: the encoder found differs from the one the run started with (its identity is recorded), which
                would give the same classes other embeddings.
        """
        if self._text_encoder is not None:
            return self._text_encoder
        from yw_ext.text.clip import ENV_CLIP
        from yw_ext.text.vocabulary import resolve_text_encoder

        src, want = self.args.yw_text_encoder, self.args.yw_text_encoder_id
        use = src if src and not os.environ.get(ENV_CLIP, "").strip() and Path(src).exists() else None
        enc = resolve_text_encoder(use, getattr(model, "text_encoder_state", None))
        if want and enc.identity != want:
            raise ValueError(f"this run's class texts were encoded with text encoder {src or '(embedded tower)'} "
                             f"(identity {want}), but {enc.source} (identity {enc.identity}) is found now; set "
                             f"{ENV_CLIP} to the run's encoder.")
        source = str(getattr(enc, "source", "") or "")
        self.args.yw_text_encoder = source if source and Path(source).exists() else None
        self.args.yw_text_encoder_id = enc.identity
        self._text_encoder = enc
        return enc

    def set_text_embeddings(self, datasets: list[Any], batch: int | None) -> None:
        """Embed every text the training datasets can sample (all class prompts, grounding phrases) once."""
        texts = sorted({t for d in datasets for t in getattr(d, "category_names", ())})
        emb = self.encode(texts) if texts else torch.zeros(0, 0, device=self.device)
        self._text_index = {t: i for i, t in enumerate(texts)}
        self._text_matrix = emb
        self.text_embeddings = dict(zip(texts, emb))

    def generate_text_embeddings(self, texts: list[str], batch: int, cache_dir: Path | None = None) -> dict:
        """Upstream API: ``{text: embedding}`` from yw_ext's encoder (``cache_dir`` is unused: the cache is global)."""
        return dict(zip(texts, self.encode(texts)))

    def set_vocabulary(self, model: torch.nn.Module) -> None:
        """Give ``model`` the dataset vocabulary: display names, all class prompts, their embeddings.

        Args:
            model: A ``YWDetectionModel`` (the EMA model during training).
        """
        names = display_names(self.data) if not self.args.single_cls else [self.data["names"][0]]
        prompts = self.data["class_texts"]
        flat, g = pad_prompts(prompts)
        missing = [t for t in dict.fromkeys(flat) if t not in self._text_index]
        if missing or self._text_matrix is None:
            emb = self.encode(flat, model)
        else:
            emb = self._text_matrix[torch.tensor([self._text_index[t] for t in flat], device=self._text_matrix.device)]
        model.set_vocabulary(names, emb.detach().float().cpu(), g, prompts, self.text_encoder_id)
        if getattr(model, "args", None) is not None:  # the validation loss needs a criterion for K classes
            model.criterion = class_criterion(model, len(names))

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Ultralytics' (images to the device, in ``[0, 1]``), plus the batch's text embeddings ``(B, T, D)`` as
        ``batch["txt_feats"]`` (none with a fixed vocabulary: the model scores its own classes)."""
        batch = super().preprocess_batch(batch)
        batch.pop("txt_feats", None)
        if not self.fixed_vocabulary:
            texts = batch["texts"]
            idx = [self._text_index[t] for t in itertools.chain.from_iterable(texts)]
            m = self._text_matrix  # (N, D)
            batch["txt_feats"] = m[torch.tensor(idx, device=m.device)].reshape(len(texts), -1, m.shape[-1])  # (B, T, D)
        return batch
