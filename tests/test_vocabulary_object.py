"""The Vocabulary value object: round trips, the model's single writer, snapshot/restore, legacy pickles."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from yw_ext.nn.model import YWDetectionModel
from yw_ext.vocab import Vocabulary


@pytest.fixture(scope="module")
def net():
    return YWDetectionModel("yw-v2-n.yaml", verbose=False).eval()


def _vocab(seed: int = 0) -> Vocabulary:
    e = torch.nn.functional.normalize(torch.randn(6, 512, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return Vocabulary(["person", "bus", "car"], e, 2, [["person"], ["bus", "coach"], ["car"]],
                      ["text", "text+image", "text"], "enc-a", "img-b")


def test_round_trip_and_checks():
    v = _vocab()
    d = v.to_dict()
    assert isinstance(d["embeddings"], np.ndarray) and d["embeddings"].shape == (6, 512)
    w = Vocabulary.from_dict(d)
    assert w == v and w.embeddings.tobytes() == v.embeddings.tobytes()
    assert w.replace(text_encoder_id="other") != v
    assert not v.embeddings.flags.writeable  # a value: nobody edits it in place
    with pytest.raises(ValueError, match=r"expected \(6, D\)"):
        Vocabulary(["a", "b", "c"], np.ones((5, 8), np.float32), 2)
    with pytest.raises(ValueError, match="unique"):
        Vocabulary(["a", "a"], np.ones((2, 8), np.float32))
    with pytest.raises(ValueError, match="class_sources has 1 entries for 2"):
        Vocabulary(["a", "b"], np.ones((2, 8), np.float32), sources=["text"])
    with pytest.raises(ValueError, match="unknown vocabulary fields"):
        Vocabulary.from_dict({**d, "colour": "red"})


def test_install_is_the_single_writer(net):
    m = copy.deepcopy(net)
    v = _vocab()
    m.install_vocabulary(v)
    assert m.vocab is v and m.names == {0: "person", 1: "bus", 2: "car"} and m.model[-1].nc == 6
    assert (m.prompts_per_class, m.class_sources, m.text_encoder_id, m.image_encoder_id) == (
        2, ["text", "text+image", "text"], "enc-a", "img-b")
    assert torch.equal(m.txt_feats[0], torch.from_numpy(np.array(v.embeddings)))
    with pytest.raises(AttributeError):
        m.prompts_per_class = 3  # read-only views of the vocabulary
    with pytest.raises(TypeError, match="Vocabulary"):
        m.install_vocabulary({"names": ["a"]})
    with pytest.raises(ValueError, match="width 8"):
        m.install_vocabulary(Vocabulary(["a"], np.ones((1, 8), np.float32)))
    y = m(torch.rand(1, 3, 64, 64))[0]
    assert y.shape == (1, 4 + 3, 84) and m.model[-1].nc == 6  # synonyms reduced; the head keeps K * G


def test_explicit_txt_feats_do_not_change_the_installed_count(net):
    m = copy.deepcopy(net)
    m.install_vocabulary(_vocab())
    out = m.predict(torch.rand(1, 3, 64, 64), txt_feats=torch.randn(1, 5, 512))
    assert out[0].shape == (1, 4 + 5, 84) and m.model[-1].nc == 6


def test_snapshot_restore(net):
    m = copy.deepcopy(net)
    m.install_vocabulary(_vocab(0))
    x = torch.rand(1, 3, 64, 64)
    before = m(x)[0]
    snap = m.snapshot_vocabulary()
    m.install_vocabulary(Vocabulary(["dog"], torch.randn(1, 512)))
    assert m.names == {0: "dog"} and m.model[-1].nc == 1
    m.restore_vocabulary(snap)
    assert torch.equal(m(x)[0], before) and m.names == {0: "person", 1: "bus", 2: "car"} and m.model[-1].nc == 6


def test_legacy_pickle_is_migrated(net):
    """A model pickled before Vocabulary existed (loose attributes) unpickles with an equal Vocabulary."""
    m = copy.deepcopy(net)
    v = _vocab(1)
    m.install_vocabulary(v)
    x = torch.rand(1, 3, 64, 64)
    ref = m(x)[0]
    state = dict(m.__dict__)
    del state["vocab"]
    state.update(prompts_per_class=2, class_prompts=[["person"], ["bus", "coach"], ["car"]], text_encoder_id="enc-a",
                 vocab_set=True, class_sources=["text", "text+image", "text"], image_encoder_id="img-b")
    old = YWDetectionModel.__new__(YWDetectionModel)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.vocab == v and "prompts_per_class" not in old.__dict__
    assert torch.equal(old(x)[0], ref)
    state["vocab_set"] = False  # never given a vocabulary: the placeholder stays a placeholder
    fresh = YWDetectionModel.__new__(YWDetectionModel)
    fresh.__setstate__(pickle.loads(pickle.dumps(state)))
    assert fresh.vocab is None and fresh.prompts_per_class == 1
