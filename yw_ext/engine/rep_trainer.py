"""Re-parameterised fine-tuning (``mode="rep"``): fold the dataset's classes into the model, then train all weights.

The official "rep" fine-tuning (YOLO-World paper, S/M/L ``rep_vlpan`` configs) trains a model whose vocabulary is
already folded into the neck's text-guided attention (``RepC2fAttn`` guide convs) and the head's classifier
(``RepWorldDetect`` 1x1 convs). Here the dataset's class texts (all synonyms; score = max over a class's prompts) are
encoded, folded with ``yw_ext.nn.rep.reparameterize``, and the folded model trains like a closed-set detector: every
weight, the folded guide and classifier convs included, on the dataset's own labels (no text sampling). The
checkpoints (best.pt / last.pt) hold the folded model: no text path, the dataset's names, deployable as is.

Examples:
    >>> from yw_ext import YOLOWorld
    >>> model = YOLOWorld("yolov8s-worldv2.pt")
    >>> model.train(data="coco128.yaml", mode="rep", epochs=10)  # doctest: +SKIP
    >>> model.model.folded  # doctest: +SKIP
    True
"""

from __future__ import annotations

from copy import deepcopy

from yw_ext.engine.dataset import display_names
from yw_ext.engine.grounding import is_mixed
from yw_ext.engine.trainer import YWTrainer
from yw_ext.nn.model import YWDetectionModel
from yw_ext.seam import unwrap_model


class YWRepTrainer(YWTrainer):
    """Trainer for a re-parameterised (vocabulary-folded) model on a closed-set detection dataset.

    A fixed-vocabulary trainer (``fixed_vocabulary = True``): plain detection datasets, no per-image texts, nothing
    set on the EMA model (the vocabulary is in the weights), the K-class loss.

    Examples:
        >>> from yw_ext.engine.modes import get_trainer
        >>> get_trainer("rep").__name__
        'YWRepTrainer'
    """

    fixed_vocabulary = True
    mode_name = "rep"

    def get_dataset(self) -> dict:
        """Check the detection dataset; grounding data needs an open vocabulary, so it is refused here."""
        if is_mixed(self.args.data):
            raise ValueError(
                "mode='rep' trains a fixed vocabulary (the dataset's classes, folded into the weights); grounding data "
                "needs the text path. Use mode='finetune' with grounding_data=..., then reparameterize()."
            )
        return super().get_dataset()

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> YWDetectionModel:
        """Build (or copy) the model, give it the dataset vocabulary and fold it.

        Raises:
            ValueError: ``weights`` is already folded for other class names.
        """
        src = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        names = display_names(self.data) if not self.args.single_cls else [self.data["names"][0]]
        if src is not None and getattr(src, "folded", False):
            have = list(src.names.values()) if isinstance(src.names, dict) else list(src.names)
            if have != names:
                raise ValueError(
                    f"this model is already re-parameterised for {have[:5]}..., not for the dataset's classes "
                    f"{names[:5]}...; start mode='rep' from the unfolded model (before reparameterize())."
                )
            model = deepcopy(unwrap_model(src)).float()
        else:
            model = super().get_model(cfg, weights, verbose)
            self.set_vocabulary(model)  # encoded with the new model's text encoder, before folding
            model.reparameterize()
        for p in model.parameters():
            p.requires_grad_(True)
        model.criterion = None
        return model
