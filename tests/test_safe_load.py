"""Loading untrusted files without running their code, the .safetensors format, and damaged files (issue 16).

- Official ``.pth`` files whose pickles name missing modules or call ``os.system`` give their tensors and run nothing
  (a sentinel file proves it); plain unpickling of the same files would run / fail.
- ``model.save("m.safetensors")`` / ``yw convert src.pth out.safetensors`` -> ``YOLOWorld(...)``: bitwise-equal
  outputs, unfolded and folded, v1 and v2.
- Prompt, adapter and embedding files keep loading with ``allow_pickle=False``.
- Truncated ``.pt`` / ``.pth`` / ``.safetensors`` / ``.onnx`` files are refused naming the file; NaN weights warn.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import yw_ext
from tests.conftest import randomize_
from tests.test_official import official_checkpoint, tiny_hf_text
from yw_ext.checkpoints import CheckpointError, convert_cli, load_official, read_official


class _Evil:
    """Pickles as a call of ``os.system`` that creates ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch '{self.path}'",))


def _missing_module_object():
    """An object whose class lives in a module that exists only while the file is written."""
    mod = types.ModuleType("mmengine_not_installed_xyz")
    cls = type("MessageHub", (), {"__module__": mod.__name__})
    mod.MessageHub = cls
    obj = cls()
    obj.log_scalars = {"loss": np.arange(3.0)}
    return mod, obj


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """(state dict, path of a .pth whose meta names a missing module, path of one that calls os.system, sentinel)."""
    d = tmp_path_factory.mktemp("hostile")
    sentinel = d / "SENTINEL"
    _, ckpt = official_checkpoint(seed=21)
    mod, hub = _missing_module_object()
    sys.modules[mod.__name__] = mod
    try:
        missing = d / "missing_module.pth"  # zip format, as MMEngine writes
        meta = {**ckpt["meta"], "message_hub": hub, "seed": np.int64(7)}
        torch.save({"meta": meta, "state_dict": ckpt["state_dict"]}, missing)
    finally:
        del sys.modules[mod.__name__]
    evil = d / "evil.pth"
    torch.save({"meta": {**ckpt["meta"], "hook": _Evil(sentinel)}, "state_dict": ckpt["state_dict"]}, evil)
    return ckpt["state_dict"], missing, evil, sentinel


def _same_tensors(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_unpickling_of_the_hostile_files_fails_or_runs_code(hostile, tmp_path):
    """The files are what they claim: tensors-only loading refuses both, full unpickling fails / runs the command."""
    _, missing, evil, _ = hostile
    for path in (missing, evil):
        with pytest.raises(pickle.UnpicklingError, match="(?i)weights only load failed"):
            torch.load(path, weights_only=True)
    with pytest.raises(ModuleNotFoundError, match="mmengine_not_installed_xyz"):
        torch.load(missing, weights_only=False)  # the old fallback: fails without the package
    sentinel = tmp_path / "RAN"
    bait = tmp_path / "bait.pth"
    torch.save({"x": _Evil(sentinel)}, bait)
    torch.load(bait, weights_only=False)  # the old fallback: runs the file's command
    assert sentinel.exists()


def test_official_pth_with_foreign_objects_loads_tensors_and_runs_nothing(hostile):
    sd, missing, evil, sentinel = hostile
    for path in (missing, evil):
        ckpt = read_official(path)
        assert _same_tensors(ckpt["state_dict"], sd)
        assert not sentinel.exists()
    hub = read_official(missing)["meta"]["message_hub"]
    assert hub.pickled_name == "mmengine_not_installed_xyz.MessageHub" and "log_scalars" in hub.state
    assert read_official(missing)["meta"]["seed"] == 7  # numpy scalars are rebuilt as data
    model, _ = load_official(evil, names="person,bus")  # the whole conversion runs on the hostile file
    assert model.names == {0: "person", 1: "bus"} and not sentinel.exists()


def test_restricted_unpickler_legacy_format_and_builtins(tmp_path):
    """The legacy (non-zip) torch format and the classic gadgets (eval, getattr, subprocess) stay inert."""
    from yw_ext.checkpoints.safe_pickle import placeholders, safe_torch_load

    sentinel = tmp_path / "SENTINEL"

    class Gadget:
        def __init__(self, fn, args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    import subprocess

    payload = {"w": torch.randn(3, 2), "p": torch.nn.Parameter(torch.ones(2)),
               "g": [Gadget(eval, (f"open('{sentinel}', 'w')",)), Gadget(subprocess.call, (["touch", str(sentinel)],)),
                     Gadget(getattr, ("text", "upper"))]}
    path = tmp_path / "legacy.pth"
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    out = safe_torch_load(path)
    assert torch.equal(out["w"], payload["w"]) and isinstance(out["p"], torch.nn.Parameter)
    assert placeholders(out) == ["builtins.eval", "builtins.getattr", "subprocess.call"]
    assert not sentinel.exists()


# ======================================================================================================================
# .safetensors
# ======================================================================================================================
def _model(yaml: str, seed: int = 0):
    model = yw_ext.YOLOWorld(yaml)
    randomize_(model.model, seed=seed)
    model.model.eval()
    return model


def _outputs(net, x):
    with torch.no_grad():
        return net(x)[0]


@pytest.mark.parametrize("yaml", ["yw-v2-n.yaml", "yw-v1-n.yaml"])
@pytest.mark.parametrize("folded", [False, True])
def test_safetensors_round_trip_is_bitwise(yaml, folded, tmp_path, assets):
    model = _model(yaml)
    model.set_classes(["person", "bus", "dog"], embeddings=torch.randn(3, 2, 512))  # 2 prompts per class
    if folded:
        model.reparameterize(partial_v1="v1" in yaml)
    path = tmp_path / "m.safetensors"
    model.save(path)
    assert path.read_bytes()[8:9] == b"{" and not list(tmp_path.glob("*.tmp"))  # safetensors: size + JSON header
    again = yw_ext.YOLOWorld(path)
    assert again.model.folded is folded and again.vocabulary == ["person", "bus", "dog"]
    assert again.model.vocab == model.model.vocab
    assert [type(m).__name__ for m in again.model.model] == [type(m).__name__ for m in model.model.model]
    x = torch.rand(2, 3, 64, 96)
    assert torch.equal(_outputs(again.model, x), _outputs(model.model, x))
    res = again.predict(assets / "bus.jpg", imgsz=96, conf=0.0, verbose=False)[0]
    assert res.names == {0: "person", 1: "bus", 2: "dog"} and len(res.boxes) > 0


def test_safetensors_metadata_text_vocabulary_and_errors(env, tmp_path):
    """Metadata holds architecture, vocabulary, sources, folded flag, encoders; foreign / missing files are refused."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = _model("yw-v2-n.yaml", seed=2)
    model.set_classes(["person", ["car", "automobile"]])  # tiny CLIP text, synonyms
    path = tmp_path / "text.safetensors"
    model.save(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert {"architecture", "vocabulary", "class_sources", "folded", "encoders"} <= set(meta)
    assert '"car", "automobile"' in meta["vocabulary"] and model.model.text_encoder_id in meta["encoders"]
    again = yw_ext.YOLOWorld(path)
    assert again.model.vocab == model.model.vocab and again.model.class_prompts == [["person"], ["car", "automobile"]]
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_outputs(again.model, x), _outputs(model.model, x))
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="without yw_ext metadata") as e:
        yw_ext.YOLOWorld(foreign)
    assert str(foreign) in str(e.value)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        yw_ext.YOLOWorld(tmp_path / "missing.safetensors")


def test_yw_convert_to_safetensors(tmp_path):
    from yw_ext.cli import entrypoint

    _, ckpt = official_checkpoint(text_model=tiny_hf_text(heads=1, seed=5), seed=23)
    src = tmp_path / "official.pth"
    torch.save(ckpt, src)
    out = convert_cli({"src": str(src), "out": str(tmp_path / "conv.safetensors"), "names": "person,bus|coach"})
    direct, _ = load_official(src, names="person,bus|coach")
    loaded = yw_ext.YOLOWorld(out)
    assert loaded.vocabulary == ["person", "bus"] and loaded.model.prompts_per_class == 2
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(_outputs(loaded.model, x), _outputs(direct, x))
    loaded.set_classes(["bus", "person"])  # the embedded text tower travels in the file
    direct.set_classes(["bus", "person"])
    assert torch.equal(loaded.model.txt_feats, direct.txt_feats)
    assert entrypoint(["convert", str(src), str(tmp_path / "cli.safetensors"), "names=a,b"]) == 0
    assert yw_ext.YOLOWorld(tmp_path / "cli.safetensors").vocabulary == ["a", "b"]
    # a re-parameterised official checkpoint converts to a folded .safetensors
    _, rep = official_checkpoint(rep_prompts=3, seed=8)
    torch.save(rep, tmp_path / "rep.pth")
    out = convert_cli({"src": str(tmp_path / "rep.pth"), "out": str(tmp_path / "rep.safetensors"), "names": "a,b,c"})
    direct, _ = load_official(tmp_path / "rep.pth", names="a,b,c")
    loaded = yw_ext.YOLOWorld(out)
    assert loaded.model.folded and torch.equal(_outputs(loaded.model, x), _outputs(direct, x))


# ======================================================================================================================
# allow_pickle=False for prompt, adapter and embedding files
# ======================================================================================================================
def test_prompt_adapter_and_embedding_files_never_unpickle(tmp_path):
    from yw_ext.image_adapter import AdapterFileError, write_adapter_file
    from yw_ext.nn.adapter import ResidualAdapter
    from yw_ext.prompts import PromptFileError

    sentinel = tmp_path / "SENTINEL"
    evil = np.array([_Evil(sentinel)], dtype=object)
    model = _model("yw-v2-n.yaml")
    model.set_classes(["a", "b"], embeddings=torch.randn(2, 512))
    prompts = model.save_prompts(tmp_path / "vocab.npz")
    adapter = write_adapter_file(tmp_path / "adapter.npz", ResidualAdapter(512))
    for path in (prompts, adapter):  # the same archive with one entry replaced by a pickled object
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(path, **{**arrays, "meta": evil})
    np.save(tmp_path / "emb.npy", evil, allow_pickle=True)
    with pytest.raises(PromptFileError, match="vocab.npz"):
        model.load_prompts(prompts)
    with pytest.raises(AdapterFileError, match="adapter.npz"):
        model.load_image_adapter(adapter)
    with pytest.raises(ValueError, match=r"emb\.npy.*pickled objects are never loaded"):
        model.set_classes(["a"], embeddings=str(tmp_path / "emb.npy"))
    assert not sentinel.exists()
    np.load(tmp_path / "emb.npy", allow_pickle=True)  # the files are live: unpickling them runs the command
    assert sentinel.exists()


# ======================================================================================================================
# Damaged files
# ======================================================================================================================
def _truncate(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_truncated_checkpoints_are_refused_naming_the_file(tmp_path):
    model = _model("yw-v2-n.yaml")
    model.set_classes(["a"], embeddings=torch.randn(1, 512))
    model.save(tmp_path / "m.pt")
    model.save(tmp_path / "m.safetensors")
    _, ckpt = official_checkpoint(seed=3)
    torch.save(ckpt, tmp_path / "m.pth")
    for suffix in (".pt", ".pth", ".safetensors"):
        bad = _truncate(tmp_path / f"m{suffix}", tmp_path / f"half{suffix}")
        with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
            yw_ext.YOLOWorld(bad)
        assert str(bad) in str(e.value)


def test_truncated_onnx_is_refused_naming_the_file(tmp_path):
    pytest.importorskip("onnxruntime")
    from yw_ext.runtime import Detector

    model = _model("yw-v2-n.yaml")
    model.set_classes(["a"], embeddings=torch.randn(1, 512))
    f = model.export(format="onnx", imgsz=64, out=tmp_path / "m.onnx", verbose=False)
    bad = _truncate(tmp_path / "m.onnx", tmp_path / "half.onnx")
    assert len(Detector(f).names) == 1
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        Detector(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(Exception, match="truncated or corrupt") as e:  # Ultralytics' AutoBackend, at first predict
        yw_ext.YOLOWorld(bad).predict(np.zeros((64, 64, 3), np.uint8), imgsz=64, verbose=False)
    assert str(bad) in str(e.value)


def test_nan_weights_warn_at_load(tmp_path):
    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    model = _model("yw-v2-n.yaml")
    model.set_classes(["a"], embeddings=torch.randn(1, 512))
    model.save(tmp_path / "ok.safetensors")
    with torch.no_grad():
        model.model.model[0].conv.weight[0, 0, 0, 0] = float("nan")
    model.save(tmp_path / "nan.pt")
    model.save(tmp_path / "nan.safetensors")
    _, ckpt = official_checkpoint(seed=4)
    ckpt["state_dict"]["backbone.image_model.stem.conv.weight"][0, 0, 0, 0] = float("inf")
    torch.save(ckpt, tmp_path / "nan.pth")
    logger = logging.getLogger("ultralytics")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yw_ext.YOLOWorld(tmp_path / "ok.safetensors")
        assert not any("NaN or inf" in s for s in seen)
        for name in ("nan.pt", "nan.safetensors", "nan.pth"):
            seen.clear()
            if name.endswith(".pth"):
                load_official(tmp_path / name, names="a")
            else:
                yw_ext.YOLOWorld(tmp_path / name)
            hits = [s for s in seen if "NaN or inf" in s]
            assert hits and name in hits[0] and "model.0.conv.weight" in hits[0], (name, seen)
    finally:
        logger.removeHandler(handler)
