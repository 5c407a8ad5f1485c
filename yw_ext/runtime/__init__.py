"""Torch-free runtime for exported yw_ext models: numpy + ONNX Runtime + OpenCV (+ ftfy / regex for text).

Importing this package never imports torch or ultralytics. It loads a detector exported with
``YOLOWorld.export(format="onnx", ...)`` (fixed or run-time vocabulary, with or without NMS in the graph), an
optional CLIP text encoder exported with ``yw export model=clip``, and CLIP's BPE tokenizer; sets classes by text or
by embeddings; pre- and post-processes exactly as Ultralytics' predictor; and returns boxes, scores and class ids.
TensorRT engines load through the same ``Detector`` (``yw_ext.runtime.trt``; needs ``tensorrt`` and a CUDA GPU).

Examples:
    >>> from yw_ext.runtime import Detector
    >>> det = Detector("yolo_world_dynvocab.onnx", text_encoder="clip_text.onnx")  # doctest: +SKIP
    >>> det.set_classes(["person", "bus", ["car", "automobile"]])  # doctest: +SKIP
    >>> d = det("bus.jpg")[0]  # doctest: +SKIP
    >>> d.boxes.shape, d.scores.shape, d.class_ids.shape, d.labels[:3]  # doctest: +SKIP
"""

from yw_ext.core.classes import parse_classes  # the one implementation, shared with the PyTorch model
from yw_ext.runtime.detector import Detector, parse_metadata
from yw_ext.runtime.ops import Detections, letterbox, non_max_suppression, preprocess, scale_boxes
from yw_ext.runtime.text import TextEncoder
from yw_ext.runtime.tokenizer import Tokenizer, find_bpe

__all__ = [
    "Detector",
    "Detections",
    "TextEncoder",
    "Tokenizer",
    "find_bpe",
    "letterbox",
    "non_max_suppression",
    "parse_classes",
    "parse_metadata",
    "preprocess",
    "scale_boxes",
]
