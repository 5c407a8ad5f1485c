"""Shared by tests/test_scale.py and tests/test_serve.py: a tiny, well-conditioned yw-v2-n exported to ONNX.

Random heads give near-constant scores and image-sized boxes (NMS then depends on float rounding), so the head is
scaled as in tests/test_export.py: spread class scores, small boxes that vary with the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

IMGSZ = 128
_SHARED: dict = {}


def tiny_detector(seed: int = 0):
    """yw-v2-n with random weights and a head that gives sparse, distinct detections."""
    import torch

    import yw_ext
    from tests.conftest import randomize_

    torch.manual_seed(seed)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(model.model, seed)
    head = model.model.model[-1]
    with torch.no_grad():
        for b in head.cv3:
            b[-1].weight.mul_(10.0)
        for b in head.cv2:
            b[-1].weight.mul_(3.0)
            b[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
        for c in head.cv4:
            c.bias.fill_(-3.0)
    return model


def unit_rows(k: int, g: int = 1, d: int = 512, seed: int = 1) -> np.ndarray:
    """``(K, G, D)`` (or ``(K, D)`` for G = 1) random unit vectors."""
    e = np.random.default_rng(seed).standard_normal((k, g, d)).astype(np.float32)
    e /= np.linalg.norm(e, axis=-1, keepdims=True)
    return e[:, 0] if g == 1 else e


def export_dynvocab(model, folder: Path) -> Path:
    """Run-time-vocabulary ONNX with dynamic batch and image size (``txt_feats`` ``(B, P, D)``)."""
    return Path(model.export(format="onnx", dynamic_vocab=True, dynamic=True, imgsz=IMGSZ, verbose=False,
                             out=Path(folder) / "dv.onnx"))


@pytest.fixture(scope="session")
def dv_files(tmp_path_factory):
    """The tiny detector (default vocabulary person / car / dog) and its run-time-vocabulary ONNX, exported once for
    test_scale and test_serve (import this fixture into the test module)."""
    if "dv" not in _SHARED:  # a fixture imported into two modules is two fixtures: share the export here
        d = tmp_path_factory.mktemp("dv")
        model = tiny_detector()
        model.set_classes(["person", "car", "dog"], embeddings=unit_rows(3))
        _SHARED["dv"] = model, export_dynvocab(model, d)
    return _SHARED["dv"]
