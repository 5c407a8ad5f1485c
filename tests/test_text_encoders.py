# yw_ext, AGPL-3.0 license
"""Pluggable text encoders (issue 19): Sentence-Transformers and M-CLIP folders, the format registry, resolution
(``encoder=`` / ``clip=`` / ``$YW_TEXT_ENCODER``), the cache, ONNX export + torch-free runtime, and bad input.

All models are tiny random BERT / XLM-R built in the tests (``tests/_tiny_text.py``); the reference is the
`sentence-transformers` library itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from tests._tiny_text import dense_linear, save_mclip, save_st, save_transformer
from yw_ext.text.encoders import TextEncoder, detect_format, formats, load_text_encoder

pytest.importorskip("sentence_transformers")
TEXTS = ["a dog", "人", "公共汽车", "一只狗", "the person on the bus " * 6]  # the last is cut at 16 tokens


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny BERT / XLM-R, saved as Sentence-Transformers folders (Dense 512, and none: 32-d) and as M-CLIP."""
    root = tmp_path_factory.mktemp("text_enc")
    bert = save_transformer("bert", root / "bert")
    xlmr = save_transformer("xlm-roberta", root / "xlmr", seed=1)
    st = save_st(bert, root / "st")
    st_xlmr = save_st(xlmr, root / "st_xlmr", seed=1)
    return {"bert": bert, "st": st, "st32": save_st(bert, root / "st32", dense=None, pooling="cls"),
            "st_xlmr": st_xlmr, "mclip": save_mclip(xlmr, root / "mclip", dense_linear(st_xlmr)), "root": root}


def _st_reference(folder, texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, normalize_embeddings=True, convert_to_tensor=True).float()


@pytest.mark.parametrize("name,ref", [("st", "st"), ("st32", "st32"), ("mclip", "st_xlmr")])
def test_parity_with_sentence_transformers(folders, name, ref):
    """Our encoder == SentenceTransformer(folder).encode(normalize_embeddings=True) within 1e-5 (M-CLIP folder
    against the same weights saved as a Sentence-Transformers folder)."""
    enc = load_text_encoder(folders[name])
    texts = TEXTS if name != "mclip" else TEXTS[:4]
    ours = enc.encode(texts)
    theirs = _st_reference(folders[ref], texts)
    assert ours.shape == theirs.shape == (len(texts), enc.dim)
    assert (ours - theirs).abs().max().item() < 1e-5
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    assert enc.encode(texts[:1], batch=1).allclose(ours[:1], atol=1e-6)


def test_legacy_sentence_transformers_layout(folders, tmp_path):
    """The pre-v3 layout (pooling_mode_* keys, max_seq_length in sentence_bert_config, pytorch_model.bin) reads the
    same model: same embeddings, same identity (content hash)."""
    from safetensors.torch import load_file

    old = shutil.copytree(folders["st"], tmp_path / "legacy")
    (old / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}))
    (old / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    dense = old / "2_Dense"
    torch.save(load_file(str(dense / "model.safetensors")), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    a, b = load_text_encoder(folders["st"]), load_text_encoder(old)
    assert a.identity == b.identity
    assert torch.equal(a.encode(TEXTS), b.encode(TEXTS))


def test_registry_contract(folders, tiny_clip_file, tmp_path):
    """Every registered format is detected, loads, and honours the interface (unit rows, dim, stable identity)."""
    from tests._tiny_clip import save_hf
    from yw_ext.text.align import Projection, save_projection

    st32 = load_text_encoder(folders["st32"])
    rng = np.random.default_rng(0)
    proj = Projection({"W": rng.standard_normal((32, 512)).astype(np.float32), "b": np.zeros(512, np.float32)})
    made = {"openai-clip": tiny_clip_file, "hf-clip": save_hf(tmp_path / "hf"), "sentence-transformers": folders["st"],
            "m-clip": folders["mclip"], "projection": save_projection(tmp_path / "p.npz", proj, st32, "teacher")}
    assert set(formats()) == set(made), "a registered format has no contract test"
    for name, path in made.items():
        assert detect_format(path) == name
        enc = load_text_encoder(path)
        assert isinstance(enc, TextEncoder), name
        e = enc.encode(["a dog", "人"])
        assert e.shape == (2, enc.dim) and torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5), name
        assert isinstance(enc.identity, str) and enc.identity and enc.source
    assert load_text_encoder(made["projection"]).identity.startswith(st32.identity + "+proj:")


def test_resolution_encoder_clip_and_env(folders, tiny_clip_file, monkeypatch):
    """``encoder=`` / ``clip=`` alias, ``$YW_TEXT_ENCODER`` before ``$YW_CLIP`` and before an embedded tower."""
    from yw_ext.text.vocabulary import resolve_text_encoder

    st = load_text_encoder(folders["st"])
    assert resolve_text_encoder(str(folders["st"])) is st
    assert resolve_text_encoder(clip=folders["st"]) is st
    with pytest.raises(ValueError, match="give the text encoder once"):
        resolve_text_encoder(folders["st"], clip=tiny_clip_file)
    from yw_ext.text.vocabulary import build_vocabulary

    assert build_vocabulary(["dog"], 512, clip=str(folders["st"]), cache=False).text_encoder_id == st.identity
    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    assert resolve_text_encoder().identity.startswith("openai-clip:")
    monkeypatch.setenv("YW_TEXT_ENCODER", str(folders["mclip"]))
    assert resolve_text_encoder(embedded_state={"format": "hf-clip-text"}).kind == "m-clip"
    assert resolve_text_encoder(folders["st"]) is st  # an explicit encoder still wins


def test_cache_never_mixes_encoders(folders, tmp_path):
    """Same text, two encoders (and a copy whose Dense layer differs): separate cache entries, right embeddings."""
    from yw_ext.text.cache import EmbeddingCache, encode_texts

    changed = shutil.copytree(folders["st"], tmp_path / "st_changed")
    from safetensors.torch import load_file, save_file

    sd = load_file(str(changed / "2_Dense" / "model.safetensors"))
    sd["linear.bias"] = sd["linear.bias"] + 0.5
    save_file(sd, str(changed / "2_Dense" / "model.safetensors"))
    same = shutil.copytree(folders["st"], tmp_path / "st_copy")
    cache = EmbeddingCache(tmp_path / "cache")
    encs = [load_text_encoder(p) for p in (folders["st"], folders["mclip"], changed)]
    assert len({e.identity for e in encs}) == 3
    assert load_text_encoder(same).identity == encs[0].identity  # content, not path
    for _ in range(2):  # second round reads the cache
        for e in encs:
            got = encode_texts(e, ["dog", "人"], cache=cache)
            assert torch.allclose(got, e.encode(["dog", "人"]), atol=1e-6)
    assert all(set(cache.get_many(e.identity, ["dog", "人"])) == {"dog", "人"} for e in encs)


def test_set_classes_multilingual_then_predict(folders, assets, tmp_path, monkeypatch):
    """``set_classes(["人", "公共汽车"], encoder=<multilingual folder>)`` then predict (Python and ``yw predict``)."""
    import yw_ext
    from yw_ext.cli import run

    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "emb"))
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["人", "公共汽车"], encoder=str(folders["st"]))
    enc = load_text_encoder(folders["st"])
    assert model.model.vocab.text_encoder_id == enc.identity
    assert torch.allclose(model.model.txt_feats[0].float(), enc.encode(["人", "公共汽车"]), atol=1e-5)
    r = model.predict(assets / "bus.jpg", imgsz=64, conf=0.0, verbose=False, save=False)[0]
    assert r.names == {0: "人", 1: "公共汽车"}
    res = run(["predict", "model=yw-v2-n.yaml", f"source={assets / 'bus.jpg'}", "classes=人,公共汽车",
               f"encoder={folders['mclip']}", "imgsz=64", "save=False", "verbose=False"])
    assert res[0].names == {0: "人", 1: "公共汽车"}


def test_embed_cli_with_encoder(folders, tmp_path, monkeypatch):
    """``yw embed encoder=FOLDER`` writes the encoder's embeddings and its identity."""
    from yw_ext.cli import run
    from yw_ext.prompts import read_prompt_file

    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "emb"))
    out = run(["embed", "texts=人,公共汽车", f"encoder={folders['st']}", f"out={tmp_path / 'v.npz'}"])
    enc = load_text_encoder(folders["st"])
    pf = read_prompt_file(out)
    assert pf["text_encoder_id"] == enc.identity
    assert torch.allclose(pf["embeddings"], enc.encode(["人", "公共汽车"]), atol=1e-5)


def test_bad_input(folders, tmp_path):
    """Clear errors: width not the model's, empty text, a folder of no known format, unsupported modules."""
    from yw_ext.text.vocabulary import build_vocabulary

    with pytest.raises(ValueError, match=r"gives 32-d embeddings but this model expects 512-d.*yw align-text"):
        build_vocabulary(["dog"], 512, encoder=folders["st32"], cache=False)
    enc = load_text_encoder(folders["st"])
    with pytest.raises(ValueError, match=r"text 1 is empty"):
        enc.encode(["dog", "  "])
    with pytest.raises(ValueError, match="is not a text encoder of a known format.*sentence-transformers"):
        load_text_encoder(folders["bert"])  # a bare transformer: neither format
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_encoder(tmp_path / "missing")
    odd = shutil.copytree(folders["st"], tmp_path / "odd")
    mods = json.loads((odd / "modules.json").read_text())
    mods[1]["type"] = "sentence_transformers.models.LSTM"
    (odd / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValueError, match="'sentence_transformers.models.LSTM'.*not supported"):
        load_text_encoder(odd)
    cfg = json.loads((folders["mclip"] / "config.json").read_text())
    bad = shutil.copytree(folders["mclip"], tmp_path / "mclip_bad")
    (bad / "config.json").write_text(json.dumps({**cfg, "modelBase": "not-a-local-model"}))
    with pytest.raises(FileNotFoundError, match="not available offline"):
        load_text_encoder(bad)


@pytest.mark.parametrize("name", ["st", "mclip"])
def test_onnx_export_and_runtime(folders, name, tmp_path):
    """ONNX export (transformer + pooling + dense + normalise in one graph) == PyTorch within 1e-4; the runtime
    reads the tokenizer.json written next to it, through ``Detector``'s text-encoder class, without torch."""
    from yw_ext.export.text import export_text_encoder
    from yw_ext.runtime import TextEncoder as RuntimeTextEncoder

    enc = load_text_encoder(folders[name])
    texts = TEXTS if name == "st" else TEXTS[:4]
    if name == "st":
        out = export_text_encoder(str(folders[name]), tmp_path / f"{name}_text.onnx")
    else:  # the command line: yw export model=text encoder=...
        from yw_ext.cli import run

        out = run(["export", "model=text", f"encoder={folders[name]}", f"out={tmp_path / 'mclip_text.onnx'}",
                   "simplify=False"])
    assert (tmp_path / f"{name}_text.tokenizer.json").is_file()
    rt = RuntimeTextEncoder(out)
    assert rt.kind == "st_text" and rt.identity == enc.identity and rt.dim == 512
    got = rt.encode(texts, batch=2)
    assert np.abs(got - enc.encode(texts).numpy()).max() < 1e-4
    if name != "st":
        return
    code = ("import sys, numpy as np; from yw_ext.runtime import TextEncoder; "
            f"e = TextEncoder({out!r}).encode({texts!r}); np.save({str(tmp_path / 'rt.npy')!r}, e); "
            "assert 'torch' not in sys.modules, 'runtime imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert np.abs(np.load(tmp_path / "rt.npy") - got).max() < 1e-6
