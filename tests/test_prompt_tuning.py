"""Prompt tuning (``mode="prompt"``), prompt files (``save_prompts`` / ``load_prompts``) and ``yw embed``.

Datasets are a few COCO128 images linked (symlinks, never copies) into tmp folders; text embeddings come from the tiny
random CLIP of tests/_tiny_clip.py (``YW_CLIP``) cached in a tmp ``YW_CACHE_DIR``. Detectors are built from
``yw-v2-n.yaml`` (random weights): what is checked is the mechanics (frozen detector, files, plumbing, gradients),
not accuracy (see examples/prompt_tune_coco128.py for a run on a trained detector).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import yw_ext
from tests.conftest import randomize_
from tests.test_train import coco_names, link_subset, write_yaml
from yw_ext.engine.prompt_trainer import YWPromptTrainer
from yw_ext.nn.prompt_model import PromptTuningModel
from yw_ext.prompts import PromptFileError, detector_hash, read_prompt_file, write_prompt_file

TRAIN_ARGS = dict(imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True)


@pytest.fixture
def data(coco128, tmp_path) -> dict:
    """Four COCO128 images (train = val) as a dataset YAML with COCO's 80 classes."""
    names = coco_names(coco128)
    root = tmp_path / "subset"
    link_subset(coco128, root)
    return {"names": names, "root": root, "yaml": str(write_yaml(tmp_path / "subset.yaml", names, root))}


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A fixed random image batch ``(n, 3, size, size)``."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def outputs(model: yw_ext.YOLOWorld, x: torch.Tensor) -> torch.Tensor:
    """Decoded eval outputs ``(B, 4 + K, A)`` of the model's current vocabulary, computed on one thread.

    (Ultralytics' CPU trainer sets ``torch.set_num_threads`` itself; another thread count sums convolutions in another
    order, so bitwise comparisons across a training run fix the count.)
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model.model.eval()(x)[0]
    finally:
        torch.set_num_threads(n)


def detector_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every detector parameter and buffer (prompt tensors excluded), cloned to CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if not k.startswith("prompt.")}


def assert_same_state(a: dict, b: dict) -> None:
    """Same keys and bitwise-equal tensors."""
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"detector tensors changed: {differ[:5]}"


# ------------------------------------------------------------------------------------------------- the full run
def test_prompt_tuning_freezes_detector_and_keeps_zero_shot(env, data, monkeypatch):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(model.model)  # non-default BatchNorm statistics: a BN update in train mode would show
    x = images()
    model.set_classes(["cat", "dog"])  # a zero-shot vocabulary (CLIP text)
    zero_shot = outputs(model, x)
    before = detector_state(model.model)

    metrics = model.train(data=data["yaml"], mode="prompt", epochs=2, project=str(env / "runs"), name="pt",
                          **TRAIN_ARGS)  # fmt: skip
    assert math.isfinite(metrics.box.map50)
    trainer = model.trainer
    wdir = Path(trainer.wdir)
    assert (wdir / "best_prompts.npz").is_file() and (wdir / "last_prompts.npz").is_file()
    assert not (wdir / "best.pt").exists() and not (wdir / "last.pt").exists()  # no copies of the detector

    # every detector parameter and buffer is bitwise unchanged: the model's, the trained copy's, the EMA copy's
    assert_same_state(before, detector_state(model.model))
    assert_same_state(before, detector_state(trainer.model))
    assert_same_state(before, detector_state(trainer.ema.ema))
    assert all(not m.training for n, m in trainer.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d))

    # only the embeddings trained, and they changed (from the CLIP text of the class names)
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(trainer.model.prompt.embeddings)}
    assert all(g["weight_decay"] == 0.0 for g in trainer.optimizer.param_groups)
    assert trainer.optimizer.param_groups[0]["initial_lr"] == pytest.approx(2e-3)  # the official lr by default
    text, _ = model.model.encode_text(list(data["names"].values()))
    tuned = trainer.model.prompt.embeddings.detach().cpu()
    assert tuned.shape == (80, 512) and not torch.allclose(tuned, text)

    # the model now uses the best prompts: dataset names, source "prompt"
    p = read_prompt_file(wdir / "best_prompts.npz")
    assert model.vocabulary == p["names"] == list(data["names"].values())
    assert model.model.class_sources == ["prompt"] * 80 and torch.equal(model.model.txt_feats[0], p["embeddings"])
    assert p["detector_sha256"] == detector_hash(model.model) and p["meta"]["init"] == "text"
    assert Path(p["detector"]) == (wdir / "detector.pt").resolve()  # built in memory: written once, float32

    # the prompt file reloads to the same outputs, on the detector it names
    tuned_out = outputs(model, x)
    reloaded = yw_ext.YOLOWorld(p["detector"]).load_prompts(wdir / "best_prompts.npz")
    assert torch.equal(outputs(reloaded, x), tuned_out)

    # zero-shot kept: another vocabulary gives exactly the outputs it gave before tuning
    model.set_classes(["cat", "dog"])
    assert torch.equal(outputs(model, x), zero_shot)

    # a tuned vocabulary folds like any other (reparameterize uses the vocabulary set by load_prompts)
    reloaded.reparameterize()
    assert torch.allclose(outputs(reloaded, x), tuned_out, atol=1e-4)

    # val and predict use the tuned embeddings (no text is encoded for the dataset's classes). Both fuse the model's
    # Conv+BN in place (Ultralytics' AutoBackend), so they come last.
    model.load_prompts(wdir / "best_prompts.npz")
    calls = []
    original = type(model.model).encode_text

    def counting(self, *a, **k):
        calls.append(a)
        return original(self, *a, **k)

    monkeypatch.setattr(type(model.model), "encode_text", counting)
    val = model.val(data=data["yaml"], imgsz=64, batch=2, plots=False, project=str(env / "runs"), name="v")
    assert math.isfinite(val.box.map50) and not calls
    assert val.box.map50 == pytest.approx(metrics.box.map50)  # what the trainer's final validation measured
    image = str(next((data["root"] / "images" / "train").iterdir()))
    res = model.predict(image, imgsz=64, conf=0.0, verbose=False)
    assert res[0].names == data["names"] and len(res[0].boxes) > 0


def test_prompt_tuning_adapter_random_init(env, data):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    before = detector_state(model.model)
    model.train(data=data["yaml"], mode="prompt", epochs=2, adapter=True, init="random", lr0=0.01,
                project=str(env / "runs"), name="ad", **TRAIN_ARGS)  # fmt: skip
    trainer = model.trainer
    assert_same_state(before, detector_state(model.model))
    assert_same_state(before, detector_state(trainer.model))
    groups = {g["param_group"]: g for g in trainer.optimizer.param_groups}
    assert groups["prompt"]["weight_decay"] == 0.0 and groups["adapter_bias"]["weight_decay"] == 0.0
    assert groups["weight"]["weight_decay"] > 0 and groups["prompt"]["initial_lr"] == pytest.approx(0.01)  # lr0 wins
    adapter = trainer.model.prompt.adapter
    assert adapter is not None and adapter[2].weight.abs().sum() > 0  # the zero-initialised last layer trained

    p = read_prompt_file(trainer.best)
    assert p["adapter"] is not None and p["raw_embeddings"] is not None and p["meta"]["init"] == "random"
    assert torch.allclose(p["embeddings"].norm(dim=-1), torch.ones(80), atol=1e-5)  # adapter output is normalised
    x = images()
    tuned = outputs(model, x)
    fresh = yw_ext.YOLOWorld(p["detector"]).load_prompts(trainer.best)
    assert torch.equal(outputs(fresh, x), tuned)

    # continue from the prompt file (adapter restored)
    t2 = YWPromptTrainer(overrides=dict(model="yw-v2-n.yaml", data=data["yaml"], init=str(trainer.best), adapter=True,
                                        project=str(env / "runs"), name="again", **TRAIN_ARGS))  # fmt: skip
    m2 = t2.get_model(weights=fresh.model)
    assert torch.equal(m2.prompt.embeddings.detach(), p["raw_embeddings"])
    assert torch.allclose(m2.prompt().detach(), p["embeddings"], atol=1e-6)


# --------------------------------------------------------------------------------------- optimisation on a batch
def test_prompt_loss_decreases_on_fixed_batch(data):
    from ultralytics.cfg import get_cfg
    from ultralytics.data import YOLODataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.nn.modules import C2fAttn, WorldDetect

    from yw_ext.engine.trainer import class_criterion

    torch.manual_seed(0)
    ds_info = check_det_dataset(data["yaml"])
    hyp = get_cfg(overrides=dict(imgsz=128))
    ds = YOLODataset(img_path=str(data["root"] / "images" / "train"), imgsz=128, augment=False, hyp=hyp,
                     data=ds_info, task="detect", batch_size=4)  # fmt: skip
    batch = YOLODataset.collate_fn([ds[i] for i in range(4)])
    batch["img"] = batch["img"].float() / 255

    detector = randomize_(yw_ext.YOLOWorld("yw-v2-n.yaml").model)
    before = detector_state(detector)
    init = torch.nn.functional.normalize(torch.randn(80, 512), dim=-1)
    model = PromptTuningModel.from_detector(detector, init, list(ds_info["names"].values()))
    model.args = hyp
    model.criterion = class_criterion(model, 80)
    model.train()
    text_layers = [m for m in model.model if isinstance(m, (C2fAttn, WorldDetect))]
    grad_out = {}

    def watch(mod, args, out):  # the text-guided neck layers' and the head's outputs carry the embeddings' gradient
        t = out["scores"] if isinstance(out, dict) else out
        assert t.requires_grad
        t.register_hook(lambda g: grad_out.__setitem__(mod.i, g.abs().sum().item()))

    for m in text_layers:
        m.register_forward_hook(watch)
    backbone_grad = []
    model.model[0].register_forward_hook(lambda mod, a, out: backbone_grad.append(torch.is_grad_enabled()))

    opt = torch.optim.AdamW(model.prompt.parameters(), lr=0.01, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss, _items = model.loss(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        losses.append(float(loss.detach().sum()))
    assert model.prompt.embeddings.grad is not None and model.prompt.embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("prompt."))
    assert backbone_grad and not any(backbone_grad)  # the backbone ran under no_grad
    assert torch.is_grad_enabled()  # and grad mode was restored
    assert len(grad_out) == len(text_layers) and all(v > 0 for v in grad_out.values())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses
    assert_same_state(before, detector_state(model))  # 30 optimiser steps: detector and BN statistics untouched


# --------------------------------------------------------------------------------------------------- prompt files
def test_save_load_prompts_round_trip_with_adapter(env, tmp_path):
    det = yw_ext.YOLOWorld("yw-v2-n.yaml")
    m = PromptTuningModel.from_detector(det.model, torch.randn(3, 512), ["a", "b", "c"], adapter=True)
    with torch.no_grad():
        for p in m.prompt.adapter.parameters():
            p.normal_(0, 0.05)  # a non-trivial adapter
    arrays = m.prompt_arrays()
    src = write_prompt_file(tmp_path / "p.npz", ["a", "b", "c"], arrays["embeddings"], 1, class_sources=["prompt"] * 3,
                            raw_embeddings=arrays["raw_embeddings"], adapter=arrays["adapter"], detector="det.pt",
                            detector_sha256=detector_hash(det.model), meta={"init": "random"})  # fmt: skip
    x = images()
    with torch.no_grad():
        want = m.eval()(x)[0]
    det.load_prompts(src)
    assert det.vocabulary == ["a", "b", "c"] and torch.allclose(outputs(det, x), want, atol=1e-6)
    out = det.save_prompts(tmp_path / "again.npz")  # carries raw embeddings, adapter and detector reference
    a, b = read_prompt_file(src), read_prompt_file(out)
    for key in ("names", "prompts_per_class", "class_sources", "detector", "detector_sha256", "meta"):
        assert a[key] == b[key], key
    assert torch.equal(a["embeddings"], b["embeddings"]) and torch.equal(a["raw_embeddings"], b["raw_embeddings"])
    assert all(np.array_equal(a["adapter"][k], b["adapter"][k]) for k in a["adapter"])
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file

    # synonyms: (K, G, D) files, names= renames
    det.set_classes([["car", "automobile"], "bus"])
    det.save_prompts(tmp_path / "syn.npz")
    with np.load(tmp_path / "syn.npz") as z:
        assert z["embeddings"].shape == (2, 2, 512) and int(z["prompts_per_class"]) == 2 and "adapter.0.weight" not in z
    syn_out = outputs(det, x)
    det.set_classes(["x"], embeddings=torch.randn(1, 512))
    det.load_prompts(tmp_path / "syn.npz", names=["auto", "coach"])
    assert det.vocabulary == ["auto", "coach"] and det.model.prompts_per_class == 2
    assert torch.equal(outputs(det, x), syn_out)
    assert json.loads(json.dumps(det.model.class_prompts)) == [["car", "automobile"], ["bus"]]


def test_yw_embed_writes_encode_texts(env, tmp_path):
    from yw_ext.cli import entrypoint, run
    from yw_ext.text import encode_texts, load_clip

    out = run(["embed", "texts=person,car|automobile", f"out={tmp_path / 'v.npz'}"])
    p = read_prompt_file(out)
    enc = load_clip()
    flat = ["person", "person", "car", "automobile"]  # padded: a class's first prompt repeated
    assert p["names"] == ["person", "car"] and p["prompts_per_class"] == 2
    assert torch.equal(p["embeddings"], encode_texts(enc, flat)) and p["text_encoder_id"] == enc.identity
    assert torch.allclose(p["embeddings"], encode_texts(enc, flat, cache=False), atol=1e-6)  # not only the cache
    assert p["class_prompts"] == [["person"], ["car", "automobile"]] and p["class_sources"] == ["text", "text"]

    texts = tmp_path / "class_texts.json"
    texts.write_text(json.dumps([["person"], ["bus"], ["dining table"]]))  # the official format
    npy = run(["embed", f"json={texts}", f"out={tmp_path / 'coco.npy'}"])
    arr = np.load(npy)
    assert arr.shape == (3, 512) and np.array_equal(arr, encode_texts(enc, ["person", "bus", "dining table"]).numpy())
    assert np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-5)  # normalised CLIP text features
    model = yw_ext.YOLOWorld("yw-v2-n.yaml").load_prompts(out)  # plugs into a model
    assert model.vocabulary == ["person", "car"]

    assert entrypoint(["embed", f"out={tmp_path / 'x.npz'}"]) == 2  # neither texts nor json
    assert entrypoint(["embed", "texts=a,,b", f"out={tmp_path / 'x.npz'}"]) == 2  # an empty class
    assert not (tmp_path / "x.npz").exists()


# ------------------------------------------------------------------------------------------------------ bad input
def test_bad_prompt_files(env, tmp_path):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    wide = write_prompt_file(tmp_path / "wide.npz", ["a", "b"], torch.randn(2, 768))
    with pytest.raises(PromptFileError, match=r"768-d embeddings but this model expects 512-d"):
        model.load_prompts(wide)
    ok = write_prompt_file(tmp_path / "ok.npz", ["a", "b"], torch.randn(2, 512))
    with pytest.raises(PromptFileError, match=r"names= has 3 entries but prompt file .* holds 2 classes"):
        model.load_prompts(ok, names=["x", "y", "z"])
    np.save(tmp_path / "bare.npy", np.ones((2, 512), np.float32))
    with pytest.raises(PromptFileError, match="not a readable prompt file|not a yw_ext prompt file"):
        model.load_prompts(tmp_path / "bare.npy")
    with pytest.raises(FileNotFoundError):
        model.load_prompts(tmp_path / "missing.npz")
    with pytest.raises(PromptFileError, match="NaN"):
        write_prompt_file(tmp_path / "nan.npz", ["a"], torch.full((1, 512), float("nan")))
    assert not (tmp_path / "nan.npz").exists()
    bad = dict(np.load(ok))
    bad["embeddings"] = np.full((2, 512), np.nan, np.float32)
    np.savez(tmp_path / "nan2.npz", **bad)
    with pytest.raises(PromptFileError, match="NaN"):
        model.load_prompts(tmp_path / "nan2.npz")
    with pytest.raises(ValueError, match="no vocabulary"):
        model.save_prompts(tmp_path / "none.npz")

    # a vocabulary tuned for another detector loads with a warning naming both hashes
    other = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(other.model, seed=3)
    tagged = write_prompt_file(tmp_path / "tagged.npz", ["a", "b"], torch.randn(2, 512),
                               detector_sha256=detector_hash(other.model))  # fmt: skip
    import logging

    from ultralytics.utils import LOGGER

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    seen = []
    handler = Collect()
    LOGGER.addHandler(handler)
    try:
        model.load_prompts(tagged)
    finally:
        LOGGER.removeHandler(handler)
    assert any("tuned with another detector" in s for s in seen)


def test_bad_prompt_training_input(env, data):
    kw = dict(data=data["yaml"], mode="prompt", epochs=1, project=str(env / "runs"), name="bad", **TRAIN_ARGS)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    nan = env / "nan.npy"
    np.save(nan, np.full((80, 512), np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        model.train(init=str(nan), **kw)
    short = env / "short.npy"
    np.save(short, np.ones((3, 512), np.float32))
    with pytest.raises(ValueError, match="3 rows but there are 80 class names"):
        model.train(init=str(short), **kw)
    with pytest.raises(ValueError, match="init='image' starts from the model's current image-prompt embeddings, but "
                                         "the model has no vocabulary set"):
        model.train(init="image", **kw)
    with pytest.raises(ValueError, match="no vocabulary set"):
        model.train(init="vocabulary", **kw)
    with pytest.raises(ValueError, match="init='nope'"):
        model.train(init="nope", **kw)
    with pytest.raises(ValueError, match="adapter must be True or False"):
        model.train(adapter="yes", **kw)
    with pytest.raises(ValueError, match="applies to mode=.prompt."):
        model.train(data=data["yaml"], init="text", epochs=1)
    with pytest.raises(ValueError, match="resume is not supported"):
        model.train(resume=True, **kw)
    names = list(data["names"].values())
    model.set_classes(names, embeddings=torch.randn(80, 512))  # a vocabulary without image prompts
    with pytest.raises(ValueError, match=r"class 'person' \(and 79 more\) has no image-prompt embedding"):
        model.train(init="image", **kw)
    model.set_classes(names[:5], embeddings=torch.randn(5, 512))
    with pytest.raises(ValueError, match=r"has no class 'bus'"):
        model.train(init="vocabulary", **kw)
    wrong = write_prompt_file(env / "wrong.npz", names[:2], torch.randn(2, 512))
    with pytest.raises(ValueError, match="initialises the same classes"):
        model.train(init=str(wrong), **kw)
    assert not list((env / "runs").rglob("*.npz")) and not list((env / "runs").rglob("*.pt"))  # nothing trained

    folded = yw_ext.YOLOWorld("yw-v2-n.yaml")
    folded.set_classes(names, embeddings=torch.randn(80, 512))
    folded.reparameterize()
    with pytest.raises(ValueError, match="re-parameterised"):
        folded.train(**kw)


def test_init_from_image_prompt_vocabulary(env, data):
    """``init="image"``: the image-prompt embeddings of the model's vocabulary, matched to the dataset's names."""
    names = list(data["names"].values())
    src = yw_ext.YOLOWorld("yw-v2-n.yaml").model
    emb = torch.nn.functional.normalize(torch.randn(81, 512), dim=-1)
    shuffled = ["zebra-crossing", *names[::-1]]  # other order plus an extra class
    src.set_vocabulary(shuffled, emb, 1, None, None, ["image"] * 81, "clip-image-id")
    trainer = YWPromptTrainer(overrides=dict(model="yw-v2-n.yaml", data=data["yaml"], init="image",
                                             project=str(env / "runs"), name="img", **TRAIN_ARGS))  # fmt: skip
    model = trainer.get_model(weights=src)
    want = torch.stack([emb[shuffled.index(n)] for n in names])
    assert torch.equal(model.prompt.embeddings.detach(), want)
    assert list(model.names.values()) == names and model.class_sources == ["prompt"] * 80
