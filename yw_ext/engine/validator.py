"""Validator for yw_ext models: the dataset's classes (with all their prompts) become the vocabulary.

During training the trainer has already given the validated (EMA) model the dataset vocabulary. Standalone
(``YOLOWorld.val(data=...)``, ``yw val``), the model's vocabulary is replaced for the run by the dataset's: display
names from the YAML ``names`` (up to a ``/``), prompts from its ``text_json`` or ``/``-separated names, score = max
over a class's prompts. The model's own vocabulary is restored afterwards.

Examples:
    >>> from yw_ext import YOLOWorld
    >>> metrics = YOLOWorld("best.pt").val(data="coco128.yaml")  # doctest: +SKIP
    >>> metrics.box.map, metrics.box.map50  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from yw_ext.seam import DetectionValidator, check_det_dataset, select_device


class YWValidator(DetectionValidator):
    """Detection validator (mAP50-95, mAP50, per class) that validates with the dataset's class texts.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> metrics = YOLOWorld("yw-v2-n.yaml").val(data="coco128.yaml", validator=YWValidator)  # doctest: +SKIP
    """

    def __call__(self, trainer=None, model=None):
        """Run validation; standalone runs first check the dataset and set its vocabulary on the model."""
        if trainer is not None:
            return super().__call__(trainer, model)
        from yw_ext.engine.dataset import check_dataset_available, class_texts, display_names
        from yw_ext.engine.grounding import val_data

        self.args.data = val_data(self.args.data)
        check_dataset_available(self.args.data, splits=(self.args.split or "val",))
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "install_vocabulary"):
            return super().__call__(trainer, model)  # a checkpoint path or exported model: its own vocabulary
        if getattr(model, "folded", False):  # re-parameterised: the vocabulary is in the weights
            return super().__call__(trainer, model)
        self.device = select_device(self.args.device, verbose=False)
        data = check_det_dataset(self.args.data, split=self.args.split)
        names, prompts = display_names(data), class_texts(data)
        if list(model.names.values()) == names and (model.class_prompts or [[n] for n in names]) == prompts:
            return super().__call__(trainer, model)
        from yw_ext.vocab import Vocabulary, pad_prompts

        flat, g = pad_prompts(prompts)
        emb, encoder_id = model.encode_text(flat)
        snap = model.snapshot_vocabulary()
        model.install_vocabulary(Vocabulary(names, emb, g, prompts, None, encoder_id))
        try:
            return super().__call__(trainer, model)
        finally:
            model.restore_vocabulary(snap)
