"""set_classes: every bad input gets a clear error; valid forms work (texts, tensors, arrays, .npy, synonyms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import yw_ext
from yw_ext import vocab


@pytest.fixture(scope="module")
def model():
    return yw_ext.YOLOWorld("yw-v2-n.yaml")


@pytest.mark.parametrize(
    "classes,exc,match",
    [
        ([], ValueError, "empty"),
        ("person,bus", TypeError, "list of class names"),
        (["person", ""], ValueError, "empty class name"),
        (["person", "   "], ValueError, "empty class name"),
        (["person", "person"], ValueError, "duplicate class name 'person'"),
        (["person", 3], TypeError, "class 1 is 3"),
        (["person", ["car", 5]], TypeError, "prompt 5"),
        (["person", []], TypeError, "non-empty"),
        (None, TypeError, "list"),
    ],
)
def test_bad_names(model, classes, exc, match):
    with pytest.raises(exc, match=match):
        model.set_classes(classes, embeddings=torch.randn(2, 512))


@pytest.mark.parametrize(
    "emb,match",
    [
        (torch.randn(2, 256), "width 256 does not match .* 512"),
        (torch.randn(3, 512), "3 rows but there are 2"),
        (torch.randn(2, 512, 1, 1), r"shape \(K, D\) or \(K, G, D\)"),
        (torch.tensor([[float("nan")] * 512, [0.1] * 512]), "NaN or inf"),
        (torch.tensor([[float("inf")] * 512, [0.1] * 512]), "NaN or inf"),
        (torch.zeros(2, 512), "all-zero"),
    ],
)
def test_bad_embeddings(model, emb, match):
    with pytest.raises(ValueError, match=match):
        model.set_classes(["a", "b"], embeddings=emb)


def test_bad_embedding_types(model, tmp_path):
    with pytest.raises(TypeError, match="torch.Tensor, numpy.ndarray or .npy"):
        model.set_classes(["a"], embeddings=[[0.1] * 512])
    with pytest.raises(TypeError, match=".npy"):
        model.set_classes(["a"], embeddings=str(tmp_path / "e.txt"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model.set_classes(["a"], embeddings=tmp_path / "missing.npy")


def test_too_many_prompts(model, monkeypatch):
    monkeypatch.setattr(vocab, "MAX_PROMPTS", 4)
    with pytest.raises(ValueError, match="MAX_PROMPTS"):
        model.set_classes([f"c{i}" for i in range(5)], embeddings=torch.randn(5, 512))
    with pytest.raises(ValueError, match="MAX_PROMPTS"):
        vocab.pad_prompts([["a", "b", "c"], ["d"]])


def test_valid_forms(model, tmp_path):
    arr = np.random.default_rng(0).standard_normal((3, 512)).astype(np.float32)
    np.save(tmp_path / "e.npy", arr)
    for emb in (arr, torch.from_numpy(arr), tmp_path / "e.npy", str(tmp_path / "e.npy")):
        model.set_classes(["a", "b", "c"], embeddings=emb)
        assert model.model.names == {0: "a", 1: "b", 2: "c"}
        assert torch.equal(model.model.txt_feats[0], torch.from_numpy(arr))
    names, prompts = vocab.parse_classes({"car": ["automobile"], "bus": "bus"})
    assert names == ["car", "bus"] and prompts == [["car", "automobile"], ["bus"]]
    with pytest.raises(ValueError, match="not both"):
        model.set_classes([["car", "automobile"]], embeddings=torch.randn(1, 512))


def test_predict_names_follow_vocabulary(model, assets):
    model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
    r = model.predict(assets / "bus.jpg", imgsz=128, conf=0.0, verbose=False)[0]
    assert r.names == {0: "person", 1: "bus"}
    assert r.boxes.cls.max() <= 1
    model.set_classes(["a", "b", "c"], embeddings=torch.randn(3, 512))
    r = model.predict(assets / "bus.jpg", imgsz=128, conf=0.0, verbose=False)[0]
    assert r.names == {0: "a", 1: "b", 2: "c"}
