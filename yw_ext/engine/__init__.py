"""Trainer, validator and predictor for yw_ext models, one role per module.

- ``trainer``: ``YWTrainer`` (fine-tuning; detection data, optionally mixed with grounding data).
- ``rep_trainer``: ``YWRepTrainer`` (re-parameterised fine-tuning of a vocabulary-folded model).
- ``modes``: the ``mode=`` registry of ``YOLOWorld.train`` (name -> trainer class).
- ``validator``: ``YWValidator`` (validation with the dataset's classes and all their prompts).
- ``predictor``: ``YWPredictor``.
- ``dataset``: class texts (``text_json``), the text-sampling training dataset, the offline availability check.
- ``grounding``: grounding (mdetr JSON) data: argument normalisation, mixing with detection data, checks.
"""
