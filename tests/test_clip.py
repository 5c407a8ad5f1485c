"""CLIP text encoder and embedding cache: parity with the `clip` package and transformers, loaders, cache, errors.

A tiny random CLIP (width 64, 2 layers) is saved as an OpenAI state dict, a TorchScript archive and Hugging Face
folders (full and text-only), and read back through the same loaders real weights go through.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")
pytest.importorskip("pkg_resources", reason="the `clip` reference package imports pkg_resources (setuptools<81)")
pytest.importorskip("clip")
transformers = pytest.importorskip("transformers")

from tests._tiny_clip import (  # noqa: E402
    hf_text_features,
    import_clip,
    save_hf,
    save_openai,
    save_openai_torchscript,
    tiny_clip,
)
from yw_ext.text import CLIPTextEncoder, EmbeddingCache, encode_texts, load_clip  # noqa: E402
from yw_ext.text import cache as cache_mod  # noqa: E402
from yw_ext.text import clip as clip_mod  # noqa: E402

TOL = 1e-5  # normalised-feature tolerance against the `clip` package (measured: ~1e-7)
TEXTS = [
    "person",
    "traffic light",
    "a photo of a Hot-Dog!",
    "café crème brûlée",
    "日本語のテキスト",
    "🚌 bus &amp; <b>tram</b>",
    "  lots   of\twhitespace \n",
    "",
    "a very long description of a thing " * 12,  # > 77 tokens: truncated, end-of-text kept last
]


def _normed(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def clip_pkg():
    """The `clip` package (reference implementation)."""
    return import_clip()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny CLIP saved in every supported form."""
    d = tmp_path_factory.mktemp("tiny_clip")
    model = tiny_clip(512, seed=0)
    return dict(
        model=model,
        openai=save_openai(d / "tiny.pt", model),
        jit=save_openai_torchscript(d / "tiny_jit.pt", model),
        hf=save_hf(d / "tiny-hf", model),
        hf_text=save_hf(d / "tiny-hf-text", model, text_only=True),
    )


@pytest.fixture(scope="module")
def reference(tiny, clip_pkg):
    """The `clip` package's model loaded from the OpenAI file (float32 on CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # clip.load tries torch.jit.load first (deprecated in torch 2.14)
        model, _ = clip_pkg.load(str(tiny["openai"]), device="cpu", jit=False)
    return model.eval()


@pytest.fixture(scope="module")
def ref_features(reference, clip_pkg):
    """Normalised `clip` package text features of TEXTS."""
    with torch.no_grad():
        return _normed(reference.encode_text(clip_pkg.tokenize(TEXTS, truncate=True)).float())


@pytest.fixture(scope="module")
def enc(tiny):
    """Our encoder from the OpenAI file."""
    return CLIPTextEncoder.from_openai(tiny["openai"])


# ----- (a) tokens ---------------------------------------------------------------------------------------------------
def test_tokens_match_clip_tokenize(enc, clip_pkg):
    ours = enc.tokenize(TEXTS)
    ref = clip_pkg.tokenize(TEXTS, truncate=True)
    assert ours.dtype == torch.long and ours.shape == (len(TEXTS), 77)
    assert torch.equal(ours, ref.long())
    assert ours[-1, -1] == 49407  # truncated text still ends with end-of-text
    assert torch.equal(enc.tokenize("person"), ref[:1].long())  # a single string


# ----- (b, c) text features -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["openai", "jit", "hf", "hf_text"])
def test_text_features_match_clip_package(tiny, ref_features, form):
    enc = CLIPTextEncoder.from_hf(tiny[form]) if form.startswith("hf") else CLIPTextEncoder.from_openai(tiny[form])
    emb = enc.encode(TEXTS, batch=4)  # several batches, grouped by length
    assert emb.dtype == torch.float32 and emb.shape == (len(TEXTS), 512)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-6)
    assert (emb - ref_features).abs().max().item() < TOL
    assert enc.has_vision == (form != "hf_text")


def test_encode_tokens_cut_equals_full_length_forward(enc):
    tokens = enc.tokenize(TEXTS)  # (N, 77)
    with torch.no_grad():
        full = enc.model.encode_text(tokens, normalize=True)  # open_clip's own forward over all 77 positions
    assert (enc.encode_tokens(tokens) - full).abs().max().item() < 1e-6


def test_hf_folder_is_the_same_model_for_transformers(tiny, ref_features, clip_pkg):
    """transformers' own forward on the saved folder agrees with the `clip` package (the folder is the same model)."""
    hf = transformers.CLIPModel.from_pretrained(str(tiny["hf"])).eval()
    diff = (hf_text_features(hf, clip_pkg.tokenize(TEXTS, truncate=True)) - ref_features).abs().max().item()
    assert diff < TOL, diff  # measured ~5e-8 (sdpa and eager attention) on this model


def test_image_tower_matches_clip_package(tiny, reference):
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = _normed(reference.encode_image(img))
        for enc in (CLIPTextEncoder.from_openai(tiny["openai"]), CLIPTextEncoder.from_hf(tiny["hf"])):
            assert (_normed(enc.model.encode_image(img)) - ref).abs().max().item() < TOL


# ----- (d) identity -------------------------------------------------------------------------------------------------
def test_identity_is_content_based(tiny, enc, tmp_path):
    ids = {CLIPTextEncoder.from_hf(tiny["hf"]).identity, CLIPTextEncoder.from_hf(tiny["hf_text"]).identity,
           CLIPTextEncoder.from_openai(tiny["jit"]).identity, enc.identity}
    assert ids == {enc.identity}
    half = {k: v.half() for k, v in tiny["model"].state_dict().items()}  # float16 tensors, as in OpenAI's files
    assert CLIPTextEncoder.from_openai_state_dict(half).identity == enc.identity
    assert enc.identity.startswith("openai-clip:text-w64-h1-l2-d512:")
    other = CLIPTextEncoder.from_openai(save_openai(tmp_path / "other.pt", tiny_clip(512, seed=1)))
    assert other.identity != enc.identity


# ----- (e) 768-d ----------------------------------------------------------------------------------------------------
def test_768_dim_variant(tmp_path, clip_pkg):
    model = tiny_clip(768, seed=2)
    enc = CLIPTextEncoder.from_openai(save_openai(tmp_path / "tiny768.pt", model))
    enc_hf = CLIPTextEncoder.from_hf(save_hf(tmp_path / "tiny768-hf", model, text_only=True))
    assert enc.dim == enc_hf.dim == 768 and enc.identity == enc_hf.identity
    with torch.no_grad():
        ref = _normed(model.encode_text(clip_pkg.tokenize(TEXTS[:4])))
    for e in (enc, enc_hf):
        emb = e.encode(TEXTS[:4])
        assert emb.shape == (4, 768) and (emb - ref).abs().max().item() < TOL


def test_resnet_openai_state_dict(tmp_path, clip_pkg):
    """OpenAI ResNet CLIPs (RN50 layout) go through open_clip's builder; text features still match."""
    torch.manual_seed(3)
    rn = clip_pkg.model.CLIP(embed_dim=512, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=64,
                             vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                             transformer_heads=1, transformer_layers=2).float().eval()
    with torch.no_grad():
        for p in rn.parameters():
            p.copy_(p.half().float())
        ref = _normed(rn.encode_text(clip_pkg.tokenize(TEXTS[:3])))
    enc = CLIPTextEncoder.from_openai(save_openai(tmp_path / "rn.pt", rn))
    assert (enc.encode(TEXTS[:3]) - ref).abs().max().item() < TOL


# ----- encoder API --------------------------------------------------------------------------------------------------
def test_encode_inputs_and_output(enc):
    emb = enc.encode(["dog", "cat", "dog"])
    assert (emb[0] - emb[2]).abs().max().item() < 1e-6
    assert not emb.is_inference() and torch.nn.Parameter(emb).requires_grad  # usable as a prompt-tuning init
    assert enc.encode([]).shape == (0, 512)
    assert (enc.encode("dog") - emb[:1]).abs().max().item() < 1e-6
    assert enc.encode(["dog"] * 3, batch=1).shape == (3, 512)
    with pytest.raises(ValueError, match="strings"):
        enc.encode(["dog", 3])
    with pytest.raises(ValueError, match="batch"):
        enc.encode(["dog"], batch=0)
    with pytest.raises(ValueError, match="tokens"):
        enc.encode_tokens(torch.zeros(2, 78, dtype=torch.long))
    assert enc.to("cpu") is enc and enc.device == torch.device("cpu")


def test_from_openai_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        CLIPTextEncoder.from_openai(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="neither"):
        CLIPTextEncoder.from_openai(tmp_path / "junk.pt")
    torch.save({"foo": torch.zeros(1)}, tmp_path / "foo.pt")
    with pytest.raises(ValueError, match="token_embedding.weight"):
        CLIPTextEncoder.from_openai(tmp_path / "foo.pt")


# ----- (g) Hugging Face folder validation ---------------------------------------------------------------------------
def _edit_hf(src, dst, edit_tensors=None, edit_config=None):
    """Copy a Hugging Face folder, editing its tensors and/or config."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    if edit_tensors:
        sd = load_file(str(dst / "model.safetensors"))
        edit_tensors(sd)
        save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    if edit_config:
        cfg = json.loads((dst / "config.json").read_text())
        edit_config(cfg)
        (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_hf_missing_tensor(tiny, tmp_path):
    key = "text_model.encoder.layers.1.self_attn.k_proj.bias"
    bad = _edit_hf(tiny["hf"], tmp_path / "bad", edit_tensors=lambda sd: sd.pop(key))
    with pytest.raises(ValueError, match="missing") as e:
        CLIPTextEncoder.from_hf(bad)
    assert key in str(e.value)


def test_hf_extra_tensor(tiny, tmp_path):
    keys = ["text_model.encoder.layers.2.mlp.fc1.weight", "text_model.extra_head.weight"]

    def add(sd):
        for k in keys:
            sd[k] = torch.zeros(4, 4)

    bad = _edit_hf(tiny["hf_text"], tmp_path / "bad", edit_tensors=add)
    with pytest.raises(ValueError, match="not consumed") as e:
        CLIPTextEncoder.from_hf(bad)
    assert all(k in str(e.value) for k in keys)


def test_hf_shape_mismatch_and_config_checks(tiny, tmp_path):
    bad = _edit_hf(tiny["hf"], tmp_path / "proj", edit_config=lambda c: c.update(projection_dim=256))
    with pytest.raises(ValueError, match="text_projection: got"):
        CLIPTextEncoder.from_hf(bad)
    bad = _edit_hf(tiny["hf"], tmp_path / "gelu", edit_config=lambda c: c["text_config"].update(hidden_act="gelu"))
    with pytest.raises(ValueError, match="quick_gelu"):
        CLIPTextEncoder.from_hf(bad)
    bad = _edit_hf(tiny["hf"], tmp_path / "siglip", edit_config=lambda c: c.update(model_type="siglip"))
    with pytest.raises(ValueError, match="siglip"):
        CLIPTextEncoder.from_hf(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        CLIPTextEncoder.from_hf(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        CLIPTextEncoder.from_hf(tmp_path / "empty")


def test_hf_pytorch_model_bin_and_position_ids(tiny, tmp_path, ref_features):
    """Older folders: pytorch_model.bin, with the position_ids buffers some checkpoints carry."""
    from safetensors.torch import load_file

    d = tmp_path / "bin"
    d.mkdir()
    shutil.copy(tiny["hf"] / "config.json", d)
    sd = load_file(str(tiny["hf"] / "model.safetensors"))
    sd["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    torch.save(sd, d / "pytorch_model.bin")
    assert (CLIPTextEncoder.from_hf(d).encode(TEXTS) - ref_features).abs().max().item() < TOL


def test_from_hf_state_dict_without_config(tiny, ref_features):
    """Text tower as embedded in YOLO-World checkpoints: HF names, no config (OpenAI conventions inferred)."""
    from safetensors.torch import load_file

    sd = load_file(str(tiny["hf_text"] / "model.safetensors"))
    enc = CLIPTextEncoder.from_hf_state_dict(sd)
    assert (enc.encode(TEXTS) - ref_features).abs().max().item() < TOL


# ----- (f) cache ----------------------------------------------------------------------------------------------------
class _Spy:
    """Wraps an encoder and records the texts passed to encode()."""

    def __init__(self, enc, identity=None):
        self.enc, self.calls = enc, []
        self.identity = identity or enc.identity
        self.dim, self.device = enc.dim, enc.device

    def encode(self, texts, batch=256):
        self.calls.append(list(texts))
        return self.enc.encode(texts, batch=batch)


def test_cache_second_call_does_not_encode(enc, tmp_path):
    cache = EmbeddingCache(tmp_path)
    spy = _Spy(enc)
    texts = ["person", "bus", "person", "traffic light"]
    first = encode_texts(spy, texts, cache=cache, batch=2)
    assert spy.calls == [["person", "bus", "traffic light"]]  # each distinct text once
    assert (first - enc.encode(texts)).abs().max().item() < 1e-6 and torch.equal(first[0], first[2])
    second = encode_texts(spy, texts, cache=cache)
    assert len(spy.calls) == 1 and torch.equal(first, second)
    encode_texts(spy, ["bus", "dog"], cache=cache)
    assert spy.calls[-1] == ["dog"]  # only the missing one
    assert (tmp_path / "text_embeddings.sqlite3").is_file()
    with sqlite3.connect(tmp_path / "text_embeddings.sqlite3") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM emb").fetchone()[0] == 4


def test_cache_keyed_by_identity(enc, tmp_path):
    cache = EmbeddingCache(tmp_path)
    encode_texts(_Spy(enc), ["person"], cache=cache)
    other = _Spy(enc, identity="another-encoder")
    encode_texts(other, ["person"], cache=cache)
    assert other.calls == [["person"]]
    assert set(cache.get_many(enc.identity, ["person", "nope"])) == {"person"}


def test_cache_disabled_and_default_location(enc, tmp_path, monkeypatch):
    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "default"))
    spy = _Spy(enc)
    encode_texts(spy, ["a"], cache=False)
    encode_texts(spy, ["a"], cache=False)
    assert len(spy.calls) == 2 and not (tmp_path / "default").exists()
    encode_texts(spy, ["a"])  # default cache under $YW_CACHE_DIR
    assert (tmp_path / "default" / "text_embeddings.sqlite3").is_file()
    assert encode_texts(spy, []).shape == (0, 512)
    monkeypatch.delenv("YW_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert EmbeddingCache().root == tmp_path / "xdg" / "yw_ext" / "embeddings"


@pytest.mark.parametrize("damage", ["corrupt", "unwritable", "bad_blob"])
def test_cache_damaged_still_correct(enc, tmp_path, monkeypatch, damage):
    warned = []
    monkeypatch.setattr(cache_mod.LOGGER, "warning", lambda msg, *a, **k: warned.append(str(msg)))
    root = tmp_path / "cache"
    if damage == "corrupt":
        root.mkdir()
        (root / "text_embeddings.sqlite3").write_bytes(b"this is not a database" * 100)
    elif damage == "unwritable":
        (tmp_path / "file").write_text("x")
        root = tmp_path / "file" / "cache"  # parent is a file: cannot be created, even as root
    else:  # a truncated blob is ignored and rewritten
        EmbeddingCache(root).put_many(enc.identity, ["person"], np.ones((1, 3), np.float32))
    texts = ["person", "bus"]
    spy = _Spy(enc)
    got = encode_texts(spy, texts, cache=EmbeddingCache(root))
    assert (got - enc.encode(texts)).abs().max().item() < 1e-6
    assert spy.calls == [texts]
    if damage == "bad_blob":
        assert not warned and EmbeddingCache(root).get_many(enc.identity, ["person"])["person"].shape == (512,)
    else:
        assert warned and str(root) in warned[0]


def test_cache_put_many_validates(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        EmbeddingCache(tmp_path).put_many("x", ["a", "b"], np.zeros((1, 4), np.float32))


# ----- (h) load_clip ------------------------------------------------------------------------------------------------
def test_load_clip_without_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("YW_CLIP", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="YW_CLIP") as e:
        load_clip()
    assert "ViT-B-32.pt" in str(e.value) and "get_weights" in str(e.value)
    monkeypatch.setenv("YW_CLIP", str(tmp_path / "nope.pt"))
    with pytest.raises(FileNotFoundError, match="YW_CLIP"):
        load_clip()


def test_load_clip_sources_and_reuse(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(clip_mod, "_LOADED", {})
    monkeypatch.setenv("YW_CLIP", str(tiny["openai"]))
    a = load_clip()
    assert a is load_clip() and a is load_clip(tiny["openai"])  # reused, not reloaded
    b = load_clip(str(tiny["hf"]))  # a folder: Hugging Face
    assert b is not a and b.identity == a.identity and b.source == str(tiny["hf"].resolve())
    monkeypatch.delenv("YW_CLIP")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    shutil.copy(tiny["openai"], tmp_path / ".cache" / "clip" / "ViT-B-32.pt")
    assert load_clip().identity == a.identity  # the `clip` package's cache file
    assert load_clip("ViT-B/32").identity == a.identity  # found locally: no hub call


def test_load_clip_hub_name_is_resolved_lazily(tiny, tmp_path, monkeypatch):
    """'clip' / 'ViT-B/32' go through yw_ext.hub.get_weights('clip') when the `clip` cache file is absent."""
    import yw_ext.hub

    calls = []
    monkeypatch.setattr(clip_mod, "_LOADED", {})
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(yw_ext.hub, "get_weights", lambda name, **k: calls.append(name) or tiny["openai"])
    assert load_clip("clip").dim == 512 and calls == ["clip"]
