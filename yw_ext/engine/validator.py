"""Validator for yw_ext models: the dataset's class names become the vocabulary for standalone validation."""

from __future__ import annotations

import torch
from ultralytics.data.utils import check_det_dataset
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils.torch_utils import select_device


class YWValidator(DetectionValidator):
    """Detection validator that sets the dataset's names as the vocabulary when validating standalone.

    During training the trainer sets the vocabulary; standalone, the model's vocabulary is replaced by the
    dataset's class names for the run and restored afterwards (names, embeddings, prompts).

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> metrics = YOLOWorld("yw-v2-n.yaml").val(data="coco128.yaml")  # doctest: +SKIP
    """

    def __call__(self, trainer=None, model=None):
        """Run validation; standalone runs encode the dataset's names as the vocabulary first."""
        if trainer is not None or not isinstance(model, torch.nn.Module) or not hasattr(model, "set_vocabulary"):
            return super().__call__(trainer, model)
        self.device = select_device(self.args.device, verbose=False)
        names = [n.split("/", 1)[0] for n in check_det_dataset(self.args.data)["names"].values()]
        if list(model.names.values()) == names:
            return super().__call__(trainer, model)
        state = (dict(model.names), model.txt_feats, model.prompts_per_class, model.class_prompts, model.text_encoder_id)
        model.set_classes(names)
        try:
            return super().__call__(trainer, model)
        finally:
            model.set_vocabulary(list(state[0].values()), state[1][0], state[2], state[3], state[4])
