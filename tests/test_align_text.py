# yw_ext, AGPL-3.0 license
"""``yw align-text`` (issue 19): fitting a projection from a student encoder to the teacher CLIP's text space on a
synthetic known case, the projection file, the projected encoder (vocabulary, ONNX export), the CLI, and bad input.

The student is a tiny random BERT saved as a Sentence-Transformers folder (32-d, no Dense layer); the synthetic
teacher is the student's embedding times a fixed random (32, 512) matrix plus per-text noise, normalised."""

from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests._tiny_text import random_names, save_st, save_transformer
from yw_ext.text.align import ProjectionError, align_text, gather_texts, load_projected_encoder, read_projection
from yw_ext.text.encoders import load_text_encoder

pytest.importorskip("sentence_transformers")
NOISE = 0.02


class SyntheticTeacher:
    """``n(student(x) M + NOISE * eps_x)``: a known linear map plus fixed per-text noise (seeded by the text)."""

    dim, source, device = 512, "synthetic teacher", torch.device("cpu")

    def __init__(self, student, seed: int = 123):
        self.student = student
        self.m = torch.randn(student.dim, self.dim, generator=torch.Generator().manual_seed(seed))  # (Ds, 512)
        self.identity = f"synthetic-teacher:{student.identity}:{seed}"

    def encode(self, texts, batch: int = 256) -> torch.Tensor:
        s = self.student.encode(texts, batch=batch)  # (N, Ds)
        eps = torch.stack([torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(t.encode())))
                           for t in texts])  # (N, 512)
        return F.normalize(s @ self.m + NOISE * eps, dim=-1)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """Two tiny students (32-d Sentence-Transformers folders, different weights) and the 200 names."""
    root = tmp_path_factory.mktemp("align")
    bert, bert2 = save_transformer("bert", root / "bert"), save_transformer("bert", root / "bert2", seed=5)
    return {"st": save_st(bert, root / "st", dense=None), "other": save_st(bert2, root / "other", dense=None),
            "names": random_names(200), "root": root}


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_recovers_synthetic_map(student, kind, tmp_path):
    """Held-out cosine > 0.99 and 100% top-1 retrieval on 200 names; the file (plain arrays) gives the same
    encoder back, and ``check=True`` measures it."""
    stu = load_text_encoder(student["st"])
    teacher = SyntheticTeacher(stu)
    names = student["names"]
    rep = align_text(student["st"], teacher, texts=names, out=tmp_path / "p.npz", kind=kind, cache=False)
    assert rep["n_names"] == 200 and rep["n_heldout"] == 20
    assert rep["cosine"] > 0.99, rep
    assert rep["retrieval"] == 1.0 and rep["retrieval_heldout"] == 1.0, rep
    with np.load(rep["out"], allow_pickle=False) as z:  # arrays only
        assert {"W", "b"} <= set(z.files) and ("W1" in z.files) == (kind == "mlp")
    enc = load_text_encoder(rep["out"])
    assert enc.dim == 512 and enc.identity.startswith(stu.identity + "+proj:")
    t = teacher.encode(names)
    e = enc.encode(names)
    assert ((e @ t.T).argmax(1) == torch.arange(200)).all()
    chk = align_text(rep["out"], teacher, texts=names, check=True, cache=False)
    assert chk["cosine"] > 0.99 and chk["retrieval"] == 1.0 and chk["out"] is None


def test_untrained_student_is_far_from_teacher(student):
    """Control: the same numbers for a random projection are poor (the metrics can fail)."""
    from yw_ext.text.align import Projection, ProjectedEncoder

    stu = load_text_encoder(student["st"])
    rng = np.random.default_rng(0)
    rand = ProjectedEncoder(stu, Projection({"W": rng.standard_normal((32, 512)).astype(np.float32),
                                             "b": np.zeros(512, np.float32)}))
    chk = align_text(rand, SyntheticTeacher(stu), texts=student["names"], check=True, cache=False)
    assert chk["cosine"] < 0.5 and chk["retrieval"] < 0.5


def test_projected_encoder_vocabulary_and_export(student, tmp_path):
    """A projected encoder builds a 512-d vocabulary for Chinese names; its ONNX export (student graph + projection)
    equals PyTorch within 1e-4."""
    from yw_ext.export.text import export_text_encoder
    from yw_ext.runtime import TextEncoder as RuntimeTextEncoder
    from yw_ext.text.vocabulary import build_vocabulary

    stu = load_text_encoder(student["st"])
    out = align_text(stu, SyntheticTeacher(stu), texts=student["names"][:60], out=tmp_path / "p.npz", epochs=20,
                     cache=False)["out"]
    v = build_vocabulary(["人", "公共汽车"], 512, encoder=out, cache=False)
    enc = load_text_encoder(out)
    assert v.text_encoder_id == enc.identity
    assert np.allclose(np.asarray(v.embeddings), enc.encode(["人", "公共汽车"]).numpy(), atol=1e-6)
    onnx = export_text_encoder(out, tmp_path / "proj_text.onnx", simplify=False)
    rt = RuntimeTextEncoder(onnx)
    texts = ["人", "公共汽车", "a photo of a dog"]
    assert rt.identity == enc.identity
    assert np.abs(rt.encode(texts) - enc.encode(texts).numpy()).max() < 1e-4


def test_cli_with_pairs(student, tiny_clip_file, tmp_path, capsys):
    """``yw align-text student=... teacher=<CLIP> texts=... pairs=pairs.json`` writes a projection to the CLIP's
    width; translations are what the student sees."""
    from yw_ext.cli import run

    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([["a dog", "一只狗"], ["person", "人"], ["bus", "公共汽车"]], ensure_ascii=False),
                     encoding="utf-8")
    assert gather_texts("dog,cat", pairs=str(pairs))[0] == ["dog", "cat", "一只狗", "人", "公共汽车"]
    texts = ",".join(student["names"][:20])
    rep = run(["align-text", f"student={student['st']}", f"teacher={tiny_clip_file}", f"texts={texts}",
               f"pairs={pairs}", f"out={tmp_path / 'cli.npz'}", "epochs=5"])
    assert rep["n"] == 23 and rep["n_names"] == 23 and "held-out cosine" in capsys.readouterr().out
    proj, meta = read_projection(tmp_path / "cli.npz")
    assert (proj.in_dim, proj.out_dim) == (32, 512)
    assert meta["student_identity"] == load_text_encoder(student["st"]).identity
    assert meta["teacher_identity"] == load_text_encoder(tiny_clip_file).identity


def test_bad_input(student, tiny_clip_file, tmp_path):
    """Projection for another encoder, foreign / pickled files, width mismatch in check mode, empty or too few
    texts: clear errors."""
    stu = load_text_encoder(student["st"])
    out = align_text(stu, SyntheticTeacher(stu), texts=student["names"][:30], out=tmp_path / "p.npz", epochs=0,
                     cache=False)["out"]
    with pytest.raises(ProjectionError, match="was fitted for the text encoder"):
        load_projected_encoder(out, student=student["other"])
    moved = tmp_path / "p_moved.npz"
    shutil.copy(out, moved)
    assert load_projected_encoder(moved, student=student["st"]).dim == 512
    np.savez(tmp_path / "foreign.npz", W=np.zeros((2, 2)))
    with pytest.raises(ProjectionError, match="not a text projection file"):
        load_text_encoder(tmp_path / "foreign.npz")
    np.savez(tmp_path / "pickled.npz", meta=np.array([{"format": "x"}], dtype=object))
    with pytest.raises(ProjectionError, match="not a readable text projection file"):
        load_text_encoder(tmp_path / "pickled.npz")
    with pytest.raises(ValueError, match="gives 32-d embeddings, the teacher 512-d"):
        align_text(student["st"], tiny_clip_file, texts="dog,cat", check=True, cache=False)
    with pytest.raises(ValueError, match="text 1 is empty"):
        align_text(student["st"], tiny_clip_file, texts=["dog", " ", "cat"], cache=False)
    with pytest.raises(ValueError, match="too few"):
        align_text(student["st"], tiny_clip_file, texts="dog,cat", cache=False, out=None)
    with pytest.raises(ValueError, match="kind must be one of"):
        align_text(stu, SyntheticTeacher(stu), texts=student["names"][:10], kind="deep", cache=False, out=None)
