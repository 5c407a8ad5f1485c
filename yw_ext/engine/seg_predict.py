"""Validation and prediction for YOLO-World-Seg models: Ultralytics' segmentation machinery on yw_ext's classes.

``YWSegValidator`` is ``YWValidator`` (the dataset's class texts installed as the vocabulary, synonyms, LVIS options)
on top of Ultralytics' ``SegmentationValidator`` (box and mask mAP50-95 / mAP50, per class). ``YWSegPredictor`` is
``YWPredictor`` on top of ``SegmentationPredictor`` (``Results`` with ``masks``). Both only combine classes by
inheritance; the model's eval output is Ultralytics' ``Segment`` layout (``((y, proto), preds)``).
"""

from __future__ import annotations

from yw_ext.engine.predictor import YWPredictor
from yw_ext.engine.validator import YWValidator
from yw_ext.seam import SegmentationPredictor, SegmentationValidator


class YWSegValidator(YWValidator, SegmentationValidator):
    """Box and mask mAP50-95 / mAP50 (per class) of a seg model, with the dataset's class texts.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> m = YOLOWorld("yw-v2-seg-n.yaml").val(data="my-seg.yaml")  # doctest: +SKIP
        >>> m.box.map50, m.seg.map50  # doctest: +SKIP
    """


class YWSegPredictor(YWPredictor, SegmentationPredictor):
    """Predictions of a seg model as Ultralytics ``Results`` with ``boxes`` and ``masks``.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> model = YOLOWorld("yw-v2-seg-n.yaml")
        >>> model.predict("bus.jpg")[0].masks  # doctest: +SKIP
    """

    def _reducing_head(self):
        """None: a folded seg head always outputs every score (best-class rows would carry no mask coefficients)."""
        return None
