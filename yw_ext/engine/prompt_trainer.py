"""Prompt tuning (``mode="prompt"``): learnable class embeddings trained against a frozen detector.

As the official ``SimpleYOLOWorldDetector`` prompt-tuning recipe: the class embeddings (``K x D``; ``K * G x D``
when classes keep G synonym prompts, score = max over them) are the only trainable tensors, optionally followed by a
residual MLP adapter (``adapter=True``: ``Linear(D, 2D)``, ReLU, ``Linear(2D, D)``, residual, L2 normalisation).
Because the detector never changes, every other vocabulary keeps exactly its zero-shot outputs, and the result of a
run is a small prompt file (``weights/best_prompts.npz`` and ``weights/last_prompts.npz``, see ``yw_ext.prompts``)
that names the detector it was tuned with (path and SHA-256 of its tensors), not a copy of the detector.

How the detector stays bitwise frozen through Ultralytics' trainer:

- the trainer trains a ``PromptTuningModel`` (``yw_ext.nn.prompt_model``): a copy of the detector (built from its
  YAML, tensors loaded bitwise) with the prompts as the submodule ``prompt``; every detector parameter has
  ``requires_grad=False`` and ``args.freeze`` names every detector layer, so ``BaseTrainer._setup_train`` (which
  re-enables gradients on non-frozen parameters) leaves them frozen and its ``_model_train`` keeps their BatchNorm in
  eval;
- ``PromptTuningModel.train()`` keeps every detector module in eval mode (BatchNorm uses and never updates its
  running statistics); only the head's ``training`` flag follows ``mode``, which selects raw predictions for the
  loss and changes no tensor;
- the optimizer holds the prompt tensors only (``build_optimizer``), the EMA averages the prompt tensors only
  (``PromptEMA``), and ``save_model`` writes prompt files instead of ``best.pt`` / ``last.pt``;
- the backbone (every layer before the first text-consuming layer) runs under ``torch.no_grad``.

Initialisation (``init=``): ``"text"`` (default: CLIP text of the dataset's class texts, synonyms kept),
``"image"`` (the model's current image-prompt embeddings, see ``set_classes(images=...)``), ``"vocabulary"`` (the
model's current vocabulary, e.g. a loaded prompt file), ``"random"`` (normal, L2-normalised, seeded by ``seed``) or
a path to a ``.npy`` ``(K, D)`` / ``(K, G, D)`` array or a prompt file ``.npz`` (its adapter too when
``adapter=True``). Optimiser: AdamW (``optimizer="auto"``), ``lr0=2e-3`` unless given, no weight decay on the
embeddings (the adapter's weights take ``weight_decay``), no gradient accumulation unless ``nbs`` is given.
Resume and multi-GPU (DDP) training are not supported in this mode.

A YOLO-World-Seg model tunes the prompts of its detector part (``YWSegmentationModel.detector_part``: box, class and
DFL losses on the dataset's boxes, polygons read as their boxes; the class scores do not depend on the mask branch).
The seg model itself stays unchanged, the prompt files name it (path and hash), and with them it predicts masks.

Examples:
    >>> from yw_ext import YOLOWorld
    >>> model = YOLOWorld("best.pt")  # a trained detector  # doctest: +SKIP
    >>> model.train(data="coco128.yaml", mode="prompt", epochs=20, init="text")  # doctest: +SKIP
    >>> model.train(data="coco128.yaml", mode="prompt", adapter=True, init="random")  # doctest: +SKIP
    >>> model.save_prompts("coco_prompts.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from collections import defaultdict
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yw_ext.engine.dataset import class_texts, display_names
from yw_ext.engine.grounding import is_mixed
from yw_ext.engine.trainer import YWTrainer
from yw_ext.nn.model import YWDetectionModel
from yw_ext.nn.prompt_model import PROMPT_SOURCE, PromptTuningModel
from yw_ext.prompts import apply_prompts, atomic_torch_save, detector_hash, read_prompt_file, write_prompt_file
from yw_ext.seam import LOGGER, RANK, ULTRALYTICS_VERSION, ModelEMA, check_is_pytorch_model, unwrap_model
from yw_ext.vocab import check_embeddings, pad_prompts

INITS = ("text", "image", "vocabulary", "random")
DEFAULT_LR = 2e-3  # the official prompt-tuning base_lr (AdamW)


class PromptEMA(ModelEMA):
    """Ultralytics' ``ModelEMA`` restricted to the prompt tensors: the detector copy inside is never updated.

    (Averaging a frozen tensor with itself, ``d * v + (1 - d) * v``, is not bitwise ``v`` in floating point.)

    Examples:
        >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> m = PromptTuningModel.from_detector(det, torch.randn(2, 512), ["a", "b"])
        >>> ema = PromptEMA(m)
        >>> ema.update(m)  # only ema.ema.prompt changes
    """

    def update(self, model: nn.Module) -> None:
        """EMA-update ``prompt.*`` from ``model``."""
        if not self.enabled:
            return
        self.updates += 1
        d = self.decay(self.updates)
        src = unwrap_model(model).prompt.state_dict()
        with torch.no_grad():
            for k, v in self.ema.prompt.state_dict().items():
                if v.dtype.is_floating_point:
                    v.mul_(d).add_(src[k].detach(), alpha=1 - d)


@contextlib.contextmanager
def _quiet(prefix: str):
    """Drop Ultralytics log records starting with ``prefix`` (one "Freezing layer" line per detector tensor)."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return not str(record.getMessage()).startswith(prefix)

    f = _Drop()
    LOGGER.addFilter(f)
    try:
        yield
    finally:
        LOGGER.removeFilter(f)


def adapter_param_groups(adapter: nn.Module | None, decay: float) -> list[dict]:
    """Optimizer groups of an adapter: weights with ``decay``, biases without (group ``"adapter_bias"``, not ``"bias"``,
    which Ultralytics' warm-up would give ``warmup_bias_lr``); ``[]`` without adapter.

    Examples:
        >>> from yw_ext.nn.adapter import ResidualAdapter
        >>> [g["param_group"] for g in adapter_param_groups(ResidualAdapter(8), 1e-4)]
        ['weight', 'adapter_bias']
    """
    if adapter is None:
        return []
    return [
        {"params": [p for n, p in adapter.named_parameters() if n.endswith("weight")], "weight_decay": decay,
         "param_group": "weight"},
        {"params": [p for n, p in adapter.named_parameters() if n.endswith("bias")], "weight_decay": 0.0,
         "param_group": "adapter_bias"},
    ]  # fmt: skip


def make_optimizer(groups: list[dict], name: str | None, lr: float, momentum: float) -> torch.optim.Optimizer:
    """A torch optimizer over ``groups``; ``name="auto"`` means AdamW (the official prompt-tuning optimizer).

    Adam, Adamax, AdamW, NAdam, RAdam use ``betas=(momentum, 0.999)``; RMSProp and SGD (Nesterov) use ``momentum``.

    Raises:
        NotImplementedError: an optimizer name not listed above.

    Examples:
        >>> groups = [{"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.0, "param_group": "prompt"}]
        >>> type(make_optimizer(groups, "auto", 2e-3, 0.9)).__name__
        'AdamW'
    """
    name = "AdamW" if name in (None, "auto") else name
    optimizers = {"Adam": torch.optim.Adam, "Adamax": torch.optim.Adamax, "AdamW": torch.optim.AdamW,
                  "NAdam": torch.optim.NAdam, "RAdam": torch.optim.RAdam}  # fmt: skip
    if name in optimizers:
        optimizer = optimizers[name](groups, lr=lr, betas=(momentum, 0.999))
    elif name == "RMSProp":
        optimizer = torch.optim.RMSprop(groups, lr=lr, momentum=momentum)
    elif name == "SGD":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    else:
        raise NotImplementedError(f"optimizer '{name}' is not supported for prompt / adapter training; use AdamW "
                                  "(default), Adam, Adamax, NAdam, RAdam, RMSProp or SGD.")
    LOGGER.info(f"optimizer: {type(optimizer).__name__}(lr={lr}) over the prompt tensors only: "
                + ", ".join(f"{g['param_group']} (decay={g['weight_decay']})" for g in groups))
    return optimizer


def _check_init(init: Any) -> Any:
    """Validate ``init=`` early (before any dataset scan): a known word or an existing finite ``.npy`` / ``.npz``."""
    if isinstance(init, (str, Path)) and str(init).strip().lower() in INITS:
        return str(init).strip().lower()
    if isinstance(init, (str, Path)) and Path(str(init)).suffix.lower() in {".npy", ".npz"}:
        p = Path(str(init))
        if not p.is_file():
            raise FileNotFoundError(f"init='{p}': no such embeddings file.")
        if p.suffix.lower() == ".npy":
            try:
                arr = np.load(p, allow_pickle=False)
            except Exception as e:
                raise ValueError(f"init='{p}' is not a readable .npy array: {e}") from e
            if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
                raise ValueError(f"init='{p}': the embeddings contain NaN or inf values (or are not numeric).")
        else:
            read_prompt_file(p)  # format, sizes and finiteness
        return p
    raise ValueError(
        f"init={init!r}: use one of {', '.join(repr(i) for i in INITS)} or a .npy (K, D) / .npz prompt file path."
    )


def _embeddings_from_vocabulary(src: YWDetectionModel, init: str, names: list[str]) -> tuple:
    """``init="image"`` / ``"vocabulary"``: the model's current vocabulary, matched to ``names`` by class name.

    Raises:
        ValueError: no vocabulary set, a dataset class missing from it, or (``"image"``) a class without an
            image-prompt embedding.
    """
    what = "image-prompt embeddings" if init == "image" else "vocabulary"
    if not getattr(src, "vocab_set", False):
        raise ValueError(
            f"init='{init}' starts from the model's current {what}, but the model has no vocabulary set. "
            + ("Set image prompts first: model.set_classes(names, images={name: [exemplars]}) for every dataset "
               "class." if init == "image" else "Set one first (set_classes / load_prompts), or use init='text'.")
        )
    have = [str(n) for n in dict(src.names).values()]
    k, gm, d = len(names), int(src.prompts_per_class), src.embed_dim
    missing = [n for n in names if n not in have]
    if missing:
        raise ValueError(f"init='{init}': the model's vocabulary has no class {missing[0]!r} "
                         f"({len(missing)} of the dataset's {k} classes are missing); its classes are {have[:10]}.")
    idx = [have.index(n) for n in names]
    if init == "image":
        sources = list(src.class_sources or ["embedding"] * len(have))
        no_image = [n for n, i in zip(names, idx) if "image" not in sources[i]]
        if no_image:
            raise ValueError(
                f"init='image': class {no_image[0]!r} (and {len(no_image) - 1} more) has no image-prompt embedding "
                f"(its source is {sources[have.index(no_image[0])]!r}). Give every dataset class exemplars with "
                "model.set_classes(names, images=...), or use init='vocabulary' / 'text'."
            )
    emb = src.txt_feats.detach().float().cpu()[0].view(len(have), gm, d)[idx]  # (K, G, D), the dataset's order
    return emb.reshape(k * gm, d), gm, src.text_encoder_id, None  # (K * G, D)


# ----------------------------------------------------------------------------------------------------------------------
# Trainer
# ----------------------------------------------------------------------------------------------------------------------
class YWPromptTrainer(YWTrainer):
    """Prompt-tuning trainer: Ultralytics' training loop with only the class embeddings (and adapter) trainable.

    Extra arguments (taken out of ``overrides`` before Ultralytics checks them): ``init`` (default ``"text"``) and
    ``adapter`` (default False); see the module docstring. A fixed-vocabulary trainer (``YWTrainer.fixed_vocabulary``):
    every image sees the dataset's K classes, whose embeddings are the learnable ones; the EMA copy carries them.

    Attributes:
        prompt_init: The resolved ``init``.
        prompt_adapter (bool): Whether the adapter is trained.
        detector_path (str | None): Checkpoint the detector came from (written into the prompt files).
        detector_sha256 (str | None): ``yw_ext.prompts.detector_hash`` of the frozen detector.

    Examples:
        >>> args = dict(model="best.pt", data="coco128.yaml", init="random", epochs=30)
        >>> trainer = YWPromptTrainer(overrides=args)  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> trainer.best  # doctest: +SKIP
        PosixPath('runs/detect/train/weights/best_prompts.npz')
    """

    tunes_prompts = True  # YOLOWorld.train hands this trainer to yw_ext.engine.prompt_trainer.train_prompts
    mode_name = "prompt"  # the mode= value, for messages
    model_class = PromptTuningModel
    fixed_vocabulary = True  # plain detection data, no per-image texts, no vocabulary set on the EMA copy

    def __init__(self, cfg=None, overrides: dict | None = None, _callbacks: dict | None = None):
        """Take ``init`` / ``adapter`` out of the overrides, set prompt-tuning defaults, then initialise as usual."""
        overrides = dict(overrides or {})
        self.prompt_init = _check_init(overrides.pop("init", "text"))
        adapter = overrides.pop("adapter", False)
        if not isinstance(adapter, bool):
            raise ValueError(f"adapter must be True or False, got {adapter!r}.")
        self.prompt_adapter = adapter
        if len(str(overrides.get("device") or "").split(",")) > 1:  # refused here, before any device is selected
            raise ValueError(f"mode='{self.mode_name}' trains on one device; multi-GPU (DDP) is not supported "
                             f"(device={overrides['device']!r}): pass one device, e.g. device=0.")
        if overrides.get("resume"):
            raise ValueError(f"resume is not supported with mode='{self.mode_name}'; start a new run"
                             + (" with init='<last_prompts.npz>' to continue from a prompt file."
                                if self.mode_name == "prompt" else "."))
        if is_mixed(overrides.get("data")):
            raise ValueError(f"mode='{self.mode_name}' trains against a dataset's fixed classes; grounding data has "
                             "none. Use a detection dataset (data='...yaml').")
        if overrides.get("optimizer") in (None, "auto"):
            overrides["optimizer"] = "AdamW"
        overrides.setdefault("lr0", DEFAULT_LR)
        batch = overrides.get("batch")
        if "nbs" not in overrides and isinstance(batch, int) and batch >= 1:
            overrides["nbs"] = batch  # no gradient accumulation (the official recipe), unless nbs is given
        self.detector_path: str | None = None
        self.detector_sha256: str | None = None
        self.init_info: dict = {}
        self._detector_src: YWDetectionModel | None = None
        self._detector_written = False
        super().__init__(cfg, overrides, _callbacks)
        if self.world_size > 1:  # e.g. device="" auto-selecting several devices
            raise ValueError(f"mode='{self.mode_name}' trains on one device; multi-GPU (DDP) is not supported.")
        self.last, self.best = self.wdir / "last_prompts.npz", self.wdir / "best_prompts.npz"

    # ------------------------------------------------------------------------------------------------------ model
    def initial_embeddings(self, src: YWDetectionModel) -> tuple[torch.Tensor, int, str | None, dict | None]:
        """Initial embeddings for the dataset's classes from ``init``.

        Returns:
            (embeddings (K * G, D), G, text encoder id, adapter state or None).

        Raises:
            ValueError: ``init="image"`` / ``"vocabulary"`` without a matching vocabulary on the model; a file of the
                wrong class count / width / names, or with NaN.

        Examples:
            >>> emb, g, encoder_id, adapter = trainer.initial_embeddings(detector)  # doctest: +SKIP
        """
        names, prompts = display_names(self.data), class_texts(self.data)
        if self.args.single_cls:
            names, prompts = names[:1], prompts[:1]
        init = self.prompt_init
        self.init_info = {"init": str(init)}
        if isinstance(init, Path):
            return self._embeddings_from_file(init, names, src.embed_dim)
        if init == "text":
            flat, g = pad_prompts(prompts)
            emb, encoder_id = src.encode_text(flat)
            return emb.float().cpu(), g, encoder_id, None
        if init == "random":
            gen = torch.Generator().manual_seed(int(self.args.seed))
            emb = nn.functional.normalize(torch.randn(len(names), src.embed_dim, generator=gen), dim=-1)  # (K, D)
            return emb, 1, None, None
        return _embeddings_from_vocabulary(src, init, names)

    def _embeddings_from_file(self, path: Path, names: list[str], d: int) -> tuple:
        """``init=`` a ``.npy`` ``(K, D)`` / ``(K, G, D)`` array or a prompt file (its adapter too with ``adapter``)."""
        if path.suffix.lower() == ".npy":
            emb, g = check_embeddings(path, len(names), d)
            return emb, g, None, None
        p = read_prompt_file(path)
        if p["dim"] != d:
            raise ValueError(f"init='{path}' holds {p['dim']}-d embeddings but this model expects {d}-d.")
        if p["names"] != names:
            raise ValueError(f"init='{path}' holds classes {p['names'][:5]}... ({len(p['names'])}), not the "
                             f"dataset's {names[:5]}... ({len(names)}); a prompt file initialises the same classes in "
                             "the same order.")
        if self.prompt_adapter and p["adapter"] is not None:
            return p["raw_embeddings"], p["prompts_per_class"], p["text_encoder_id"], p["adapter"]
        return p["embeddings"], p["prompts_per_class"], p["text_encoder_id"], None

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> PromptTuningModel:
        """A ``PromptTuningModel``: a frozen copy of ``weights`` with learnable embeddings for the dataset's classes.

        Args:
            cfg: Model YAML / dict, used only when there are no weights (a random detector: a warning is logged).
            weights: The trained detector (module or checkpoint dict); it is copied, never modified.
            verbose: Unused (the detector is not rebuilt).
        """
        src = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        if src is None:
            LOGGER.warning("prompt tuning a detector built from a YAML with random weights: load a trained detector.")
            src = YWDetectionModel(cfg if cfg is not None else self.args.model, ch=self.data["channels"], nc=80,
                                   verbose=False)
        if not isinstance(src, YWDetectionModel):
            raise TypeError(f"prompt tuning needs a yw_ext model, got {type(src).__name__}.")
        if isinstance(src, PromptTuningModel):
            src = src.to_detector()
        if getattr(src, "folded", False):
            raise ValueError(
                "this model is re-parameterised (its vocabulary is folded into its weights), so it has no text path "
                "to tune prompts for. Prompt-tune the unfolded model, then reparameterize()."
            )
        src = src.float() if next(src.parameters()).dtype != torch.float32 else src
        emb, g, encoder_id, adapter_state = self.initial_embeddings(src)
        names = display_names(self.data) if not self.args.single_cls else [self.data["names"][0]]
        prompts = class_texts(self.data) if not self.args.single_cls else [class_texts(self.data)[0]]
        model = self.model_class.from_detector(src, emb, names, g, self.prompt_adapter, adapter_state, prompts,
                                               encoder_id)
        self.detector_sha256 = detector_hash(src)
        self._detector_src = src  # a reference (not a copy): written as weights/detector.pt if it has no file
        m = str(self.args.model)
        if Path(m).suffix.lower() in {".pt", ".pth"} and Path(m).is_file():
            self.detector_path = str(Path(m).resolve())
        return model

    def _setup_train(self) -> None:
        """Ultralytics' set-up with every detector layer frozen; then the prompt-only EMA; then a frozen-ness check."""
        model = unwrap_model(self.model)
        if self.args.freeze not in (None, 0, []):
            LOGGER.warning(f"freeze={self.args.freeze} is ignored with mode='{self.mode_name}': the whole detector "
                           "is frozen.")
        self.args.freeze = list(range(len(model.model)))  # BaseTrainer keeps these frozen (and their BatchNorm in eval)
        with _quiet("Freezing layer"):
            super()._setup_train()
        self.ema = PromptEMA(self.model)
        trainable = [n for n, p in unwrap_model(self.model).named_parameters() if p.requires_grad]
        bad = [n for n in trainable if not n.startswith("prompt.")]
        if bad:  # a guard: nothing above should have re-enabled a detector gradient
            raise RuntimeError(f"{self.mode_name}: detector tensors became trainable: {bad[:5]}")
        count = sum(p.numel() for p in unwrap_model(self.model).prompt.parameters())
        LOGGER.info(f"{self.mode_name}: {count} trainable values ({', '.join(trainable)}); the detector is frozen (sha256 {self.detector_sha256[:12]}...)")

    def build_optimizer(self, model, name: str = "auto", lr: float = 0.001, momentum: float = 0.9, decay: float = 1e-5,
                        iterations: float = 1e5):
        """An optimizer over the prompt tensors only: embeddings without weight decay, adapter weights with ``decay``.

        ``name="auto"`` means AdamW (the official prompt-tuning optimizer). Adam, Adamax, AdamW, NAdam, RAdam use
        ``betas=(momentum, 0.999)``; RMSProp and SGD use ``momentum``.

        Raises:
            NotImplementedError: an optimizer name not listed above.
        """
        prompt = unwrap_model(model).prompt
        groups = [{"params": [prompt.embeddings], "weight_decay": 0.0, "param_group": "prompt"}]
        groups += adapter_param_groups(prompt.adapter, decay)
        return make_optimizer(groups, name, lr, momentum)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _write_detector(self) -> None:
        """When the detector has no checkpoint file (built in memory), write it once as ``weights/detector.pt``.

        The file holds the frozen detector as it was given (float32, its exact tensors, its own vocabulary), so the
        prompt files can name a file.
        """
        if self.detector_path or self._detector_written or self._detector_src is None:
            return
        det = deepcopy(self._detector_src).float().eval()
        det.criterion = None
        path = self.wdir / "detector.pt"
        ckpt = {"model": det, "train_args": {}, "date": datetime.datetime.now().isoformat(),
                "note": "frozen detector of a yw_ext prompt-tuning run (float32)"}  # fmt: skip
        atomic_torch_save(ckpt, path)
        self.detector_path = str(path.resolve())
        self._detector_written = True

    def run_meta(self) -> dict[str, Any]:
        """What a written file records of the run: epoch, fitness, data, image size, date, versions.

        Examples:
            >>> sorted(trainer.run_meta())[:3]  # doctest: +SKIP
            ['best_fitness', 'data', 'date']
        """
        import yw_ext

        return {
            "epoch": int(self.epoch) + 1 if getattr(self, "epoch", None) is not None else None,
            "fitness": None if self.fitness is None else float(self.fitness),
            "best_fitness": None if self.best_fitness is None else float(self.best_fitness),
            "data": str(self.args.data),
            "imgsz": self.args.imgsz,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "yw_ext": getattr(yw_ext, "__version__", ""),
            "ultralytics": ULTRALYTICS_VERSION,
            "torch": torch.__version__,
        }

    def write_prompts(self, path: Path, model: PromptTuningModel | None = None) -> Path:
        """Write ``model``'s (default: the EMA model's) prompts as a prompt file naming the frozen detector."""
        model = model or (self.ema.ema if self.ema else unwrap_model(self.model))
        arrays = model.prompt_arrays()
        meta = {**self.init_info, "adapter": self.prompt_adapter, **self.run_meta()}
        return write_prompt_file(
            path, list(model.names.values()), arrays["embeddings"], model.prompts_per_class,
            class_prompts=model.class_prompts, class_sources=[PROMPT_SOURCE] * len(model.names),
            text_encoder_id=model.text_encoder_id, adapter=arrays["adapter"],
            raw_embeddings=arrays["raw_embeddings"] if arrays["adapter"] else None,  # without adapter: = embeddings
            detector=self.detector_path, detector_sha256=self.detector_sha256, meta=meta,
        )  # fmt: skip

    def save_model(self) -> bool:
        """Write ``last_prompts.npz`` (and ``best_prompts.npz`` when fitness improved) instead of ``.pt`` checkpoints.

        The detector is frozen, so it is not copied into every checkpoint; the prompt files name it (path and hash).
        A detector without a checkpoint file is written once as ``weights/detector.pt``.
        """
        self._write_detector()
        self.write_prompts(self.last)
        if self.best_fitness == self.fitness:
            self.write_prompts(self.best)
        if self.save_period > 0 and self.epoch % self.save_period == 0:
            self.write_prompts(self.wdir / f"epoch{self.epoch}_prompts.npz")
        return True

    def final_eval(self):
        """Validate the frozen detector with the best prompt file (as Ultralytics validates best.pt)."""
        f = self.best if self.best.exists() else self.last
        if not f.exists():
            return
        det = unwrap_model(self.model).to_detector()
        apply_prompts(det, f, check_detector=False)
        self.validate_final(det, f"{f} (prompts)")

    def validate_final(self, det: YWDetectionModel, what: str) -> None:
        """Ultralytics' closing validation, on ``det`` (the frozen detector with the run's result)."""
        LOGGER.info(f"\nValidating {what} on the frozen detector...")
        self.validator.args.plots = self.args.plots
        self.validator.args.compile = False
        self.metrics = self.validator(model=det)
        self.metrics.pop("fitness", None)
        self.epoch += 1  # log best metrics at step epochs+1, as Ultralytics
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1

    def restore_prompts(self, path: Path) -> None:
        """Put the trainable tensors of a written prompt file back into the model and its EMA copy."""
        p = read_prompt_file(path)
        for m in (unwrap_model(self.model), self.ema.ema):
            with torch.no_grad():
                raw = p["raw_embeddings"] if p["raw_embeddings"] is not None else p["embeddings"]
                m.prompt.embeddings.copy_(raw.to(m.prompt.embeddings.device))
                if p["adapter"] is not None and m.prompt.adapter is not None:
                    m.prompt.load_adapter_state(p["adapter"])

    def apply_result(self, yolo: Any) -> Path:
        """After training: give the ``YOLOWorld`` the best (else last) prompt file's vocabulary; returns that file.

        Raises:
            FileNotFoundError: no file was written.
        """
        f = self.best if self.best.exists() else self.last
        if not f.exists():
            raise FileNotFoundError(f"mode='{self.mode_name}' finished but wrote no file ({self.best} / {self.last}).")
        yolo.load_prompts(f)
        return f

    def _handle_nan_recovery(self, epoch: int) -> bool:
        """On a NaN/inf loss or fitness, restore the prompts from ``last_prompts.npz`` (optimizer state reset)."""
        loss_nan = self.loss is not None and not self.loss.isfinite()
        fitness_nan = self.fitness is not None and not np.isfinite(self.fitness)
        if not (loss_nan or fitness_nan):
            return False
        reason = "Loss NaN/Inf" if loss_nan else "Fitness NaN/Inf"
        if epoch == self.start_epoch or not self.last.exists():
            LOGGER.warning(f"{reason} detected but no prompt file to recover from yet...")
            return False
        self.nan_recovery_attempts += 1
        if self.nan_recovery_attempts > 3:
            raise RuntimeError(f"Training failed: NaN persisted for {self.nan_recovery_attempts} epochs")
        LOGGER.warning(f"{reason} detected (attempt {self.nan_recovery_attempts}/3), recovering from {self.last}...")
        self.restore_prompts(self.last)
        self.optimizer.state = defaultdict(dict)
        self.scheduler.last_epoch = epoch - 1
        return True


# ----------------------------------------------------------------------------------------------------------------------
# YOLOWorld.train(mode="prompt")
# ----------------------------------------------------------------------------------------------------------------------
def train_prompts(yolo: Any, trainer: type = YWPromptTrainer, **kwargs: Any):
    """Run prompt tuning for a ``yw_ext.YOLOWorld`` (what ``YOLOWorld.train(mode="prompt" / "image_prompt")`` calls).

    Like Ultralytics' ``Model.train`` (same arguments), except that the model keeps its detector object, unchanged:
    afterwards the trainer's ``apply_result`` gives it the result (the best prompt file's vocabulary; with
    ``mode="image_prompt"`` also the trained image adapter).

    Args:
        yolo: The ``YOLOWorld``.
        trainer: The trainer class (``YWPromptTrainer`` or a subclass such as ``YWImagePromptTrainer``).
        **kwargs: Ultralytics training arguments plus the trainer's own (``init`` and ``adapter`` for prompt tuning).

    Returns:
        The final validation metrics (``DetMetrics``).

    Raises:
        ValueError: bad ``init`` / ``adapter``, ``resume``, grounding data, a re-parameterised model, no vocabulary
            for ``init="image"``.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> model = YOLOWorld("best.pt")  # doctest: +SKIP
        >>> metrics = train_prompts(model, data="coco128.yaml", epochs=20, init="text")  # doctest: +SKIP
        >>> model.vocabulary[:2]  # doctest: +SKIP
        ['person', 'bicycle']
    """
    from yw_ext.seam import DEFAULT_CFG_DICT, TASK2DATA, YAML, checks

    check_is_pytorch_model(yolo)
    overrides = YAML.load(checks.check_yaml(kwargs["cfg"])) if kwargs.get("cfg") else yolo.overrides
    data = (overrides.get("data") if kwargs.get("cfg") else None) or DEFAULT_CFG_DICT["data"] or TASK2DATA["detect"]
    custom = {"data": data, "model": yolo.overrides["model"], "task": "detect"}  # as Ultralytics' Model.train
    args = {**overrides, **custom, **kwargs, "mode": "train"}
    yolo.trainer = t = trainer(overrides=args, _callbacks=yolo.callbacks)
    t.model = t.get_model(weights=yolo.model, cfg=getattr(yolo.model, "yaml", None))
    t.train()
    if RANK in {-1, 0}:
        t.apply_result(yolo)
        yolo.metrics = getattr(t.validator, "metrics", None)
    return yolo.metrics


__all__ = (
    "DEFAULT_LR",
    "INITS",
    "PROMPT_SOURCE",
    "PromptEMA",
    "PromptTuningModel",  # re-exported from yw_ext.nn.prompt_model (pickles and old imports name it here)
    "YWPromptTrainer",
    "adapter_param_groups",
    "make_optimizer",
    "train_prompts",
)
