"""``yw_ext.YOLOWorld``: the user-facing model, an Ultralytics ``Model`` with yw_ext's classes and name resolution."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ultralytics.engine.model import Model
from ultralytics.utils import DEFAULT_CFG_DICT, RANK

from yw_ext.engine.predictor import YWPredictor
from yw_ext.engine.trainer import YWTrainer
from yw_ext.engine.validator import YWValidator
from yw_ext.nn.build import load_model_cfg
from yw_ext.nn.model import YWDetectionModel

_EXPORTED = {".onnx", ".engine", ".torchscript", ".xml", ".mlpackage", ".tflite", ".pb"}


def resolve_source(model: str | Path) -> str:
    """Turn a user's model argument into a YAML or weights path (downloading known weights when allowed).

    Accepted: a size letter / version alias (``"l"``, ``"v1-l"``, ``"v2-l"``, ``"v2.1-l"``, ``"xl"``), a ``.yaml``
    (yw_ext's ``yw-v2-l.yaml``-style names or Ultralytics' world YAMLs), a ``.pt`` path or known file name, or an
    exported model (``.onnx``, ``.engine``...).

    Raises:
        yw_ext.convert.CheckpointError: official ``.pth`` (not convertible yet).
        yw_ext.hub.WeightsNotFoundError: a known file that is not local and cannot be downloaded.

    Examples:
        >>> resolve_source("yw-v2-s.yaml")  # doctest: +ELLIPSIS
        'yw-v2-s.yaml'
    """
    from yw_ext.convert import official_not_supported

    s = str(model).strip()
    p = Path(s)
    suffix = p.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return s
    if suffix == ".pth":
        raise official_not_supported(s)
    if p.is_file():
        return s
    from yw_ext import hub

    spec = hub.resolve_alias(s)
    file_name = spec.name if spec else s
    if Path(file_name).suffix.lower() == ".pth":
        raise official_not_supported(file_name)
    return str(hub.get_weights(file_name))


class YOLOWorld(Model):
    """YOLO-World open-vocabulary detector on the Ultralytics engine.

    Args:
        model: Size letter or alias (``"l"`` = v2 L weights), a YAML (random weights), a ``.pt`` checkpoint, or an
            exported model.
        scale: Scale for a YAML without one in its name (``n``, ``s``, ``m``, ``l``, ``x``, ``xl``).
        embed_dim: Text-embedding width for a YAML (512 for CLIP ViT-B/32, 768 for ViT-L/14).
        verbose: Print the model summary.

    Examples:
        >>> import yw_ext
        >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")
        >>> model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> results = model.predict("bus.jpg", conf=0.25)  # doctest: +SKIP
    """

    def __init__(
        self, model: str | Path = "l", scale: str | None = None, embed_dim: int | None = None, verbose: bool = False
    ) -> None:
        """Resolve the model argument and build or load the model."""
        self._yw_scale, self._yw_embed_dim = scale, embed_dim
        super().__init__(model=resolve_source(model), task="detect", verbose=verbose)

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """yw_ext's model, trainer, validator and predictor classes."""
        return {
            "detect": {
                "model": YWDetectionModel,
                "trainer": YWTrainer,
                "validator": YWValidator,
                "predictor": YWPredictor,
            }
        }

    def _new(self, cfg: str, task: str | None = None, verbose: bool = False) -> None:
        """Build a model with random weights from a YAML (scale and text width resolved by yw_ext)."""
        cfg_dict = load_model_cfg(cfg, scale=self._yw_scale, embed_dim=self._yw_embed_dim)
        self.cfg = cfg
        self.task = "detect"
        self.model = YWDetectionModel(cfg_dict, verbose=verbose and RANK == -1)
        self.overrides["model"] = self.cfg
        self.overrides["task"] = self.task
        self.model.args = {**DEFAULT_CFG_DICT, **self.overrides}
        self.model.task = self.task
        self.model_name = cfg

    def _load(self, weights: str, task: str | None = None) -> None:
        """Load a ``.pt`` (yw_ext or Ultralytics world) as a yw_ext model; exported formats go to Ultralytics."""
        from yw_ext.convert import load_pt

        if Path(weights).suffix.lower() == ".pt":
            self.model, self.ckpt = load_pt(weights)
            self.task = "detect"
            self.overrides = self.model.args = self._reset_ckpt_args(getattr(self.model, "args", {}) or {})
            self.ckpt_path = getattr(self.model, "pt_path", weights)
            self.model.task = "detect"
        else:
            super()._load(weights, task="detect")
        self.overrides["model"] = weights
        self.overrides["task"] = "detect"
        self.model_name = weights

    # ---------------------------------------------------------------- vocabulary
    def set_classes(self, classes: Any, embeddings: Any = None, **kwargs: Any) -> YOLOWorld:
        """Set the vocabulary: text prompts (CLIP, cached on disk) or precomputed embeddings.

        Args:
            classes: Class names; a class may be a list of synonyms whose first item is its name.
            embeddings: Optional ``(K, D)`` / ``(K, G, D)`` tensor, ndarray or ``.npy`` path.
            **kwargs: ``encoder`` (CLIP source or encoder), ``batch``, ``cache`` (see ``YWDetectionModel.set_classes``).

        Returns:
            self, for chaining.

        Raises:
            ValueError / TypeError: empty or duplicate names, non-string names, wrong embedding width, NaN/inf,
                too many prompts.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.set_classes(["person", ["car", "automobile"]], embeddings=None)  # doctest: +SKIP
        """
        self._check_is_pytorch_model()
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError("set_classes needs a PyTorch model; load the .pt file first.")
        self.model.set_classes(classes, embeddings=embeddings, **kwargs)
        self.predictor = None  # the next predict builds a predictor with the new names
        return self

    def reparameterize(self) -> YOLOWorld:
        """Fold the current vocabulary exactly into the neck and head weights (RepVL-PAN), in place.

        After folding the model has no text path: it ignores embeddings and ``set_classes`` raises.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
            >>> model.reparameterize()  # doctest: +SKIP
        """
        self._check_is_pytorch_model()
        self.model.reparameterize()
        self.predictor = None
        return self

    @property
    def vocabulary(self) -> list[str]:
        """The current class names."""
        return list(self.model.names.values())

    def save(self, filename: str | Path = "saved_model.pt") -> None:
        """Save like Ultralytics' ``Model.save``, atomically (temporary file in the same folder, then rename).

        Examples:
            >>> YOLOWorld("yw-v2-n.yaml").save("n.pt")  # doctest: +SKIP
        """
        filename = Path(filename)
        filename.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{filename.name}.", suffix=".tmp", dir=filename.parent)
        os.close(fd)
        try:
            super().save(tmp)
            os.replace(tmp, filename)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
