"""Training modes: ``YOLOWorld.train(mode=...)`` picks a trainer class from this registry.

A mode is a name bound to a trainer class, given either as the class or as an import path
``"package.module:ClassName"`` resolved on first use (so registering costs no import). A feature that is not
built yet is registered with ``unavailable=`` and raises a clear error when chosen. New modes slot in with one
``register_mode`` call in the module that defines their trainer (imported by ``yw_ext.engine``), without touching
``YOLOWorld.train`` or the CLI (``yw train mode=...``).

Trainer classes must live in importable modules (Ultralytics pickles ``type(trainer)`` for multi-GPU DDP).

Examples:
    >>> from yw_ext.engine.modes import get_trainer, register_mode, available_modes
    >>> get_trainer("finetune").__name__
    'YWTrainer'
    >>> register_mode("mine", "my_pkg.train:MyTrainer", description="my experiment")  # doctest: +SKIP
    >>> "finetune" in available_modes()
    True
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MODE = "finetune"


class UnknownModeError(ValueError):
    """``mode=`` names no registered training mode."""


class ModeNotAvailableError(NotImplementedError, ValueError):
    """``mode=`` names a registered mode whose feature is not available in this version (or environment)."""


@dataclass
class TrainingMode:
    """One registry entry.

    Attributes:
        name: The ``mode=`` value.
        trainer: Trainer class or ``"module:Class"`` import path; None when unavailable.
        description: One line for listings and errors.
        unavailable: Why the mode cannot be used (None when it can).
    """

    name: str
    trainer: Any = None
    description: str = ""
    unavailable: str | None = None

    def resolve(self) -> type:
        """The trainer class (importing it on first use).

        Raises:
            ModeNotAvailableError: the mode is registered as unavailable, or its trainer cannot be imported.
        """
        if self.unavailable:
            raise ModeNotAvailableError(
                f"training mode '{self.name}' ({self.description}) is not available: {self.unavailable}"
            )
        if isinstance(self.trainer, str):
            module, _, attr = self.trainer.partition(":")
            try:
                self.trainer = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ModeNotAvailableError(
                    f"training mode '{self.name}' ({self.description}) is not available: cannot import "
                    f"{self.trainer} ({type(e).__name__}: {e})."
                ) from e
        return self.trainer


_MODES: dict[str, TrainingMode] = {}


def register_mode(
    name: str, trainer: Any = None, description: str = "", unavailable: str | None = None, replace: bool = True
) -> TrainingMode:
    """Register (or replace) a training mode.

    Args:
        name: The ``mode=`` value (lower case, no spaces).
        trainer: Trainer class, or ``"module:Class"`` import path (lazy).
        description: One line shown in listings and errors.
        unavailable: Reason the mode cannot be used yet; choosing it raises ``ModeNotAvailableError``.
        replace: Allow replacing an existing registration (False: raise ``ValueError`` on a clash).

    Returns:
        The registry entry.

    Raises:
        ValueError: bad name, neither trainer nor ``unavailable`` given, or a clash with ``replace=False``.

    Examples:
        >>> entry = register_mode("demo", "yw_ext.engine.trainer:YWTrainer", description="demo")
        >>> get_trainer("demo").__name__
        'YWTrainer'
    """
    if not isinstance(name, str) or not name or name != name.strip().lower() or " " in name:
        raise ValueError(f"mode name must be a non-empty lower-case word, got {name!r}.")
    if trainer is None and not unavailable:
        raise ValueError(f"register_mode('{name}'): give a trainer class / import path, or unavailable='reason'.")
    if not replace and name in _MODES:
        raise ValueError(f"training mode '{name}' is already registered.")
    _MODES[name] = entry = TrainingMode(name, trainer, description, unavailable)
    return entry


def available_modes() -> dict[str, str]:
    """All registered modes: name -> description (with ``(not available: ...)`` where they cannot be used).

    Examples:
        >>> list(available_modes())[:1]
        ['finetune']
    """
    return {
        k: v.description + (f" (not available: {v.unavailable})" if v.unavailable else "") for k, v in _MODES.items()
    }


def get_trainer(mode: str | None = None) -> type:
    """The trainer class for ``mode`` (default ``"finetune"``).

    Raises:
        UnknownModeError: no such mode (a ``ValueError`` listing the modes).
        ModeNotAvailableError: a registered mode that cannot be used yet.

    Examples:
        >>> get_trainer("nope")
        Traceback (most recent call last):
        ...
        yw_ext.engine.modes.UnknownModeError: unknown training mode 'nope'; modes: finetune, ...
    """
    mode = DEFAULT_MODE if mode is None else mode
    entry = _MODES.get(mode.strip().lower() if isinstance(mode, str) else mode)
    if entry is None:
        listing = "; ".join(f"{k}: {v}" for k, v in available_modes().items())
        raise UnknownModeError(f"unknown training mode {mode!r}; modes: {', '.join(_MODES)} ({listing}).")
    return entry.resolve()


def resume_mode(resume: Any, ckpt: dict | None = None) -> str | None:
    """The ``mode=`` of the run a ``resume=`` value continues (``yw_mode`` in its checkpoint's ``train_args``).

    Args:
        resume: ``True`` (the checkpoint ``ckpt``, already loaded) or a checkpoint path; anything else gives None.
        ckpt: The loaded checkpoint dict for ``resume=True``.

    Returns:
        The recorded mode, or None (not resuming, no such file, or a checkpoint from before modes were recorded).

    Examples:
        >>> resume_mode(True, {"train_args": {"yw_mode": "rep"}})
        'rep'
        >>> resume_mode(False) is None
        True
    """
    if resume is True:
        args = (ckpt or {}).get("train_args") if isinstance(ckpt, dict) else None
    elif isinstance(resume, (str, Path)) and Path(resume).is_file():
        from yw_ext.seam import load_checkpoint

        args = (load_checkpoint(str(resume))[1] or {}).get("train_args")
    else:
        return None
    mode = (args or {}).get("yw_mode")
    return mode if isinstance(mode, str) and mode in _MODES else None


def _rep_trainer_or_reason() -> tuple[Any, str | None]:
    """The "rep" trainer path when ``yw_ext.nn.rep`` (folding) exists, else the reason it is unavailable."""
    import importlib.util

    if importlib.util.find_spec("yw_ext.nn.rep") is None:
        return None, "re-parameterisation (yw_ext.nn.rep) is not part of this version of yw_ext yet."
    return "yw_ext.engine.rep_trainer:YWRepTrainer", None


register_mode("finetune", "yw_ext.engine.trainer:YWTrainer", description="fine-tune all weights (default)")
register_mode(
    "prompt",
    "yw_ext.engine.prompt_trainer:YWPromptTrainer",
    description="prompt tuning: class embeddings train, detector frozen",
)
register_mode(
    "image_prompt",
    "yw_ext.engine.image_prompt_trainer:YWImagePromptTrainer",
    description="image-prompt adapter: CLIP image embeddings of exemplar crops, adapter trains, detector frozen",
)
_rep, _why = _rep_trainer_or_reason()
register_mode(
    "rep",
    _rep,
    description="re-parameterised fine-tuning: vocabulary folded into the neck and head, all weights train",
    unavailable=_why,
)
register_mode(
    "seghead",
    "yw_ext.engine.seg_trainer:YWSegHeadTrainer",
    description="YOLO-World-Seg: only the mask branch trains, the detector stays bitwise unchanged",
)
