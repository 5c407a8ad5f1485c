"""Predictor for yw_ext models: Ultralytics' detection predictor, results named by the current vocabulary."""

from __future__ import annotations

from yw_ext.seam import DetectionPredictor


class YWPredictor(DetectionPredictor):
    """Ultralytics ``DetectionPredictor`` for yw_ext models.

    The model's forward already returns one score per class (max over each class's prompts), so Ultralytics'
    NMS, ``Results`` and plotting apply unchanged; ``Results.names`` are the vocabulary's class names.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> model = YOLOWorld("yw-v2-n.yaml")
        >>> results = model.predict("bus.jpg", predictor=YWPredictor)  # doctest: +SKIP
    """
