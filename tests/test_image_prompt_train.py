"""Image-prompt adapter training (``mode="image_prompt"``), adapter files, ``val(image_prompts=N)``.

Crops and sampling are checked on synthetic tensors against plain slicing; the adapter path against independent
formulas; the full run on a few COCO128 images (symlinked into tmp, so label caches stay out of ../shared) with the
tiny random CLIP of tests/_tiny_clip.py and a random ``yw-v2-n`` detector: what is checked is the mechanics (loss on a
fixed batch goes down, only the adapter changes, files round-trip, training-side prompts equal the inference path).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ultralytics.cfg import get_cfg

import yw_ext
from tests.test_train import coco_names, link_subset, write_yaml
from yw_ext.engine.image_prompt_trainer import YWImagePromptTrainer, reference_crops, sample_prompt_boxes
from yw_ext.image_adapter import AdapterFileError, read_adapter_file, write_adapter_file
from yw_ext.nn.adapter import ResidualAdapter, adapter_from_state, adapter_state
from yw_ext.nn.image_prompt_model import ImagePromptModel, ImagePrompts
from yw_ext.nn.model import YWDetectionModel
from yw_ext.prompts import read_prompt_file
from yw_ext.text.image import clip_crops

TOL = 1e-5


@pytest.fixture
def data(coco128, tmp_path) -> dict:
    """Six COCO128 images (train = val) as a dataset YAML with COCO's 80 classes."""
    names = coco_names(coco128)
    root = tmp_path / "subset"
    link_subset(coco128, root, n=6)
    return {"names": names, "root": root, "yaml": str(write_yaml(tmp_path / "subset.yaml", names, root))}


def trained_adapter(seed: int = 0, dim: int = 512) -> ResidualAdapter:
    """An adapter with random (non-identity) weights."""
    a = ResidualAdapter(dim)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in a.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return a


# ------------------------------------------------------------------------------------------------ crops, sampling
def test_sample_prompt_boxes_one_per_image_class_with_jitter():
    # image 0: three boxes of class 2 (different sizes) and one of class 5; image 1: one of class 2
    xywh = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2],
                         [0.5, 0.5, 0.1, 0.2], [0.4, 0.5, 0.2, 0.2]])  # fmt: skip
    bi, ci = torch.tensor([0, 0, 0, 0, 1]), torch.tensor([[2.0], [2.0], [2.0], [5.0], [2.0]])
    g = torch.Generator().manual_seed(0)
    picked, scales = set(), []
    for _ in range(300):
        rois, slots = sample_prompt_boxes(bi, ci, xywh, 80, (100, 200), generator=g)  # H=100, W=200
        assert slots.tolist() == [[0, 2], [0, 5], [1, 2]]
        assert torch.equal(rois[:, 0], slots[:, 0].float())
        for r, (b, c) in zip(rois, slots.tolist()):
            cands = [i for i in range(5) if bi[i] == b and int(ci[i]) == c]
            # the box is one of the candidate boxes (none reaches the border here), its width and height scaled
            # about its centre by one factor s in [0.8, 1.5]; clip_crops then takes CLIP's center crop of it
            fits = []
            for i in cands:
                cx, cy, w, h = (xywh[i] * torch.tensor([200, 100, 200, 100])).tolist()
                if abs((r[1] + r[3]) / 2 - cx) < 1e-3 and abs((r[2] + r[4]) / 2 - cy) < 1e-3:
                    fits.append((i, float(r[3] - r[1]) / w, float(r[4] - r[2]) / h))
            assert len(fits) == 1, (r, cands)
            i, s, s_h = fits[0]
            assert abs(s - s_h) < 1e-4 and 0.8 - 1e-5 <= s <= 1.5 + 1e-5
            picked.add(i)
            scales.append(s)
    assert {0, 1, 2} <= picked  # every box of (image 0, class 2) gets picked sometimes
    assert min(scales) < 0.85 and max(scales) > 1.45


def test_sample_prompt_boxes_clip_to_image_and_ignore_bad():
    # a box hanging over the right edge: clipped to the image
    rois, slots = sample_prompt_boxes(torch.tensor([0]), torch.tensor([1]), torch.tensor([[0.95, 0.5, 0.2, 0.8]]), 3,
                                      (100, 100), jitter=(1.0, 1.0))  # fmt: skip
    assert torch.allclose(rois, torch.tensor([[0.0, 85.0, 10.0, 100.0, 90.0]]))  # x 85..105 -> 85..100
    # a class outside the vocabulary and a sub-pixel box are not used
    rois, slots = sample_prompt_boxes(torch.tensor([0, 0]), torch.tensor([7, 0]),
                                      torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.001, 0.5]]), 3, (64, 64))
    assert rois.shape == (0, 5) and slots.shape == (0, 2)


def test_clip_crops_is_clips_own_preprocessing():
    from open_clip.transform import image_transform
    from PIL import Image

    img = torch.randint(0, 256, (2, 3, 40, 60), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    rois = torch.tensor([[1.0, 10, 5, 26, 21], [0.0, 0, 0, 32, 32], [1.0, 3.5, 2.2, 50.1, 30.0]])
    out = clip_crops(img, rois, 16, mean, std)  # (3, 3, 16, 16)
    # same size: exactly the pixels img[1, :, 5:21, 10:26]
    assert torch.equal(out[0], (img[1, :, 5:21, 10:26].float() / 255 - m) / s)
    # any box: bitwise CLIP's own transform (PIL bicubic shortest side, center crop) of the pixels the box touches
    ref = image_transform(16, is_train=False, mean=mean, std=std)
    for r, o in zip(rois.tolist(), out):
        b, x1, y1, x2, y2 = int(r[0]), math.floor(r[1]), math.floor(r[2]), math.ceil(r[3]), math.ceil(r[4])
        pil = Image.fromarray(img[b, :, y1:y2, x1:x2].permute(1, 2, 0).numpy())
        assert torch.equal(o, ref(pil))
    # float images in [0, 1] (training batches after Ultralytics' preprocessing) give the same crops
    assert torch.equal(clip_crops(img.float() / 255, rois, 16, mean, std), out)
    assert clip_crops(img, torch.zeros(0, 5), 16).shape == (0, 3, 16, 16)


def test_reference_crops_seeded_and_capped():
    labels = [
        {"im_file": f"im{i}.jpg", "shape": (100, 200), "cls": np.array([[0.0], [1.0], [0.0]]),
         "bboxes": np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.005, 0.5], [0.25, 0.25, 0.1, 0.2]])}
        for i in range(10)
    ]  # fmt: skip
    refs = reference_crops(labels, ["a", "b", "c"], n=4, seed=3)
    assert list(refs) == ["a"]  # class b's boxes are 1 px wide, class c has none
    assert len(refs["a"]) == 4 and refs == reference_crops(labels, ["a", "b", "c"], n=4, seed=3)
    assert refs != reference_crops(labels, ["a", "b", "c"], n=4, seed=4)
    im, box = refs["a"][0]
    assert box in ([50.0, 25.0, 150.0, 75.0], [40.0, 15.0, 60.0, 35.0])  # pixel xyxy of the original image
    assert len(reference_crops(labels, ["a", "b", "c"], n=100)["a"]) == 20  # all of them when fewer than n


# --------------------------------------------------------------------------------------------- prompts module
def test_image_prompts_vocabulary_and_batch_embeddings():
    torch.manual_seed(0)
    k, g, d = 3, 2, 16
    text = F.normalize(torch.randn(k * g, d), dim=-1)
    p = ImagePrompts(text, g)
    p.adapter.load_state_dict(trained_adapter(1, d).state_dict())
    u = F.normalize(torch.randn(5, d), dim=-1)
    p.set_references(u, torch.tensor([0, 2, 0, 2, 2]))
    adapt = lambda x: F.normalize(x + p.adapter[2](torch.relu(p.adapter[0](x))), dim=-1)  # noqa: E731
    voc = p().detach().view(k, g, d)
    want0 = F.normalize(adapt(u[[0, 2]]).mean(0), dim=-1)
    want2 = F.normalize(adapt(u[[1, 3, 4]]).mean(0), dim=-1)
    assert torch.allclose(voc[0], want0.expand(g, d), atol=TOL) and torch.allclose(voc[2], want2.expand(g, d), atol=TOL)
    assert torch.equal(voc[1], text.view(k, g, d)[1])  # no references: text
    assert p.has_images().tolist() == [True, False, True]

    feats, slots = F.normalize(torch.randn(2, d), dim=-1), torch.tensor([[0, 1], [1, 1]])
    be = p.batch_embeddings(feats, slots, 2).view(2, k, g, d)  # (B, K, G, D)
    assert torch.allclose(be[0, 1], adapt(feats[0]).expand(g, d), atol=TOL)
    assert torch.allclose(be[1, 1], adapt(feats[1]).expand(g, d), atol=TOL)
    for b, c in [(0, 0), (0, 2), (1, 0), (1, 2)]:  # absent classes keep their text
        assert torch.equal(be[b, c], text.view(k, g, d)[c])
    be.sum().backward()
    assert all(q.grad is not None for q in p.adapter.parameters())
    assert list(p.state_dict()) == [f"adapter.{n}" for n in ("0.weight", "0.bias", "2.weight", "2.bias")]


def test_image_prompt_model_gradients_reach_only_the_adapter():
    det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
    m = ImagePromptModel.from_detector(det, torch.randn(4, 512), ["a", "b", "c", "d"])
    m.args = get_cfg()  # the loss's hyperparameters, as the trainer sets them
    m.train()
    assert not any(mod.training for layer in list(m.model)[:-1] for mod in layer.modules())  # BatchNorm in eval
    batch = {"img": torch.rand(2, 3, 64, 64), "batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[1.0], [3.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]),
             "prompt_feats": F.normalize(torch.randn(2, 512), dim=-1), "prompt_slots": torch.tensor([[0, 1], [1, 3]])}
    m.prompt.adapter.load_state_dict(trained_adapter(2).state_dict())
    loss, _ = m.loss(batch)
    loss.sum().backward()
    with_grad = [n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert with_grad and all(n.startswith("prompt.adapter.") for n in with_grad)
    assert not any(p.requires_grad for n, p in m.named_parameters() if not n.startswith("prompt."))


# ------------------------------------------------------------------------------------------------------ files
def test_adapter_file_round_trip_and_errors(tmp_path):
    a = trained_adapter(3, 32)
    f = write_adapter_file(tmp_path / "a.npz", a, image_encoder_id="img-id", meta={"epoch": 3})
    info = read_adapter_file(f)
    assert info["dim"] == 32 and info["image_encoder_id"] == "img-id" and info["meta"] == {"epoch": 3}
    assert info["text_encoder_id"] is None and not list(tmp_path.glob(".*tmp"))
    x = torch.randn(5, 32)
    assert torch.equal(adapter_from_state(info["adapter"])(x), a(x))

    with pytest.raises(FileNotFoundError, match="not found"):
        read_adapter_file(tmp_path / "missing.npz")
    bad = adapter_state(a)
    bad["adapter.2.bias"] = bad["adapter.2.bias"][:3]
    with pytest.raises(AdapterFileError, match="adapter.2.bias has shape"):
        write_adapter_file(tmp_path / "b.npz", bad)
    nan = adapter_state(a)
    nan["adapter.0.weight"][0, 0] = np.nan
    with pytest.raises(AdapterFileError, match="NaN"):
        write_adapter_file(tmp_path / "c.npz", nan)
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "c.npz").exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(AdapterFileError, match="not a readable"):
        read_adapter_file(tmp_path / "junk.npz")


def test_load_image_adapter_errors(env, tmp_path):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["a", "b"], embeddings=torch.randn(2, 512))
    prompts = model.save_prompts(tmp_path / "p.npz")
    with pytest.raises(AdapterFileError, match="prompt file .* load_prompts"):
        model.load_image_adapter(prompts)
    write_adapter_file(tmp_path / "a32.npz", trained_adapter(0, 32))
    with pytest.raises(AdapterFileError, match="32-d embeddings but this model uses 512-d"):
        model.load_image_adapter(tmp_path / "a32.npz")
    assert model.model.image_adapter_state is None


def test_set_classes_uses_the_adapter_and_save_keeps_it(env, assets, tmp_path):
    from yw_ext.text.image import crop_box, image_encoder

    bus = assets / "bus.jpg"
    boxes = [[17, 231, 802, 768], [48, 398, 246, 905]]
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["bus"], images={"bus": [(bus, b) for b in boxes]}, use_text=False)
    plain = model.model.txt_feats[0, 0].clone()
    a = trained_adapter(5)
    write_adapter_file(tmp_path / "a.npz", a, image_encoder_id=image_encoder().identity)
    model.load_image_adapter(tmp_path / "a.npz")
    model.set_classes(["bus"], images={"bus": [(bus, b) for b in boxes]}, use_text=False)
    u = image_encoder().encode_images([crop_box(bus, b) for b in boxes])  # (2, D), normalised
    with torch.no_grad():
        want = F.normalize(a(u).mean(0), dim=-1)
    assert torch.allclose(model.model.txt_feats[0, 0], want, atol=TOL)
    assert torch.allclose(plain, F.normalize(u.mean(0), dim=-1), atol=TOL)  # without adapter: n(mean u)
    assert "+adapter:" in model.model.image_encoder_id

    # the adapter is pickled with the model; prompt files carry the image-derived vocabulary
    model.save(tmp_path / "m.pt")
    model.save_prompts(tmp_path / "v.npz")
    again = yw_ext.YOLOWorld(str(tmp_path / "m.pt"))
    state = again.model.image_adapter_state
    assert all(torch.equal(state["adapter"][k], torch.as_tensor(v)) for k, v in adapter_state(a).items())
    p = read_prompt_file(tmp_path / "v.npz")
    assert p["class_sources"] == ["image"] and p["image_encoder_id"] == model.model.image_encoder_id
    fresh = yw_ext.YOLOWorld("yw-v2-n.yaml").load_prompts(tmp_path / "v.npz")
    assert torch.equal(fresh.model.txt_feats[0], model.model.txt_feats[0])
    assert fresh.model.class_sources == ["image"] and fresh.model.image_encoder_id == model.model.image_encoder_id
    again.load_image_adapter(None)
    assert again.model.image_adapter_state is None


# ----------------------------------------------------------------------------------------------- the full run
TRAIN = dict(imgsz=96, batch=3, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True, warmup_epochs=0,
             lr0=0.01, mosaic=0.0, seed=0)


@pytest.mark.slow
def test_image_prompt_training_on_coco128(env, data):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    # (default BatchNorm statistics, mean 0 / var 1: a BatchNorm update in train mode would change them)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    seen = {}

    def grab(trainer):
        """At the start: a fixed batch (with its crops) and its loss under the untrained (identity) adapter."""
        ds = trainer.train_loader.dataset
        batch = trainer.preprocess_batch(ds.collate_fn([ds[i] for i in range(3)]))
        m = trainer.model
        m.train()
        with torch.no_grad():
            seen["loss0"] = {k: float(v) for k, v in m.loss(batch)[1].items()}  # box, cls, dfl
        seen["batch"], seen["detector"] = batch, {k: v.clone() for k, v in m.detector_state_dict().items()}
        seen["refs"] = trainer.references

    model.add_callback("on_train_start", grab)
    metrics = model.train(data=data["yaml"], mode="image_prompt", epochs=4, crops=3, project=str(env / "runs"),
                          name="ip", **TRAIN)
    t = model.trainer
    assert isinstance(t, YWImagePromptTrainer) and math.isfinite(metrics.box.map)
    wdir = t.wdir
    assert {"best_adapter.npz", "last_adapter.npz", "best_prompts.npz", "last_prompts.npz"} <= {
        f.name for f in wdir.iterdir()}

    # the loss on the fixed batch went down, with only the adapter trained
    m = t.model
    m.train()
    m.prompt.load_adapter_state(read_adapter_file(wdir / "last_adapter.npz")["adapter"])
    with torch.no_grad():
        loss1 = {k: float(v) for k, v in m.loss(seen["batch"])[1].items()}
    assert loss1["cls_loss"] < 0.98 * seen["loss0"]["cls_loss"], (seen["loss0"], loss1)
    assert sum(loss1.values()) < sum(seen["loss0"].values())
    after = m.detector_state_dict()
    assert after.keys() == seen["detector"].keys()
    assert all(torch.equal(after[k], seen["detector"][k]) for k in after), "detector tensors changed"
    assert all(torch.equal(v, before[k]) for k, v in model.model.state_dict().items()), "the user's model changed"
    last = read_adapter_file(wdir / "last_adapter.npz")
    assert np.abs(last["adapter"]["adapter.2.weight"]).max() > 0  # moved off the identity initialisation

    # the model now carries the best adapter and the best image-prompt vocabulary
    best = read_adapter_file(wdir / "best_adapter.npz")
    state = model.model.image_adapter_state
    assert all(np.array_equal(state["adapter"][k].numpy(), v) for k, v in best["adapter"].items())
    p = read_prompt_file(wdir / "best_prompts.npz")
    refs = seen["refs"]
    assert p["class_sources"] == ["image" if n in refs else "text" for n in data["names"].values()]
    assert model.vocabulary == list(data["names"].values()) and torch.equal(model.model.txt_feats[0], p["embeddings"])

    # the validation prompts of training equal the inference path (set_classes with the same crops + adapter)
    name = next(iter(refs))
    k = list(data["names"].values()).index(name)
    check = yw_ext.YOLOWorld("yw-v2-n.yaml")
    check.load_image_adapter(wdir / "best_adapter.npz")
    check.set_classes([name], images={name: refs[name]}, use_text=False)
    assert torch.allclose(check.model.txt_feats[0, 0], p["embeddings"][k], atol=TOL)

    # the adapter saves with the model and reloads
    model.save(env / "with_adapter.pt")
    again = yw_ext.YOLOWorld(str(env / "with_adapter.pt"))
    assert all(torch.equal(again.model.image_adapter_state["adapter"][k], state["adapter"][k]) for k in state["adapter"])

    # standalone validation with image prompts from the train split; the vocabulary is restored afterwards
    vocab = model.model.txt_feats.clone()
    val = model.val(data=data["yaml"], image_prompts=3, imgsz=96, batch=3, plots=False, verbose=False,
                    project=str(env / "runs"), name="v")
    assert math.isfinite(val.box.map) and torch.equal(model.model.txt_feats, vocab)


def test_image_prompt_argument_errors(env, data):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    common = dict(data=data["yaml"], mode="image_prompt", epochs=1, **TRAIN)
    with pytest.raises(ValueError, match="crops .* positive integer"):
        model.train(crops=0, **common)
    with pytest.raises(ValueError, match="jitter must satisfy"):
        model.train(jitter=(1.5, 0.8), **common)
    with pytest.raises(ValueError, match="init= applies to mode='prompt'"):
        model.train(init="text", **common)
    with pytest.raises(ValueError, match="crops= applies to mode='image_prompt'"):
        model.train(data=data["yaml"], crops=4, **TRAIN)
    with pytest.raises(ValueError, match="grounding_data"):
        model.train(grounding_data={"img_path": "x", "json_file": "y.json"}, **common)
    with pytest.raises(ValueError, match="image_prompts .* positive integer"):
        model.val(data=data["yaml"], image_prompts=0)
    with pytest.raises(ValueError, match="seed= applies to validation with image prompts"):
        model.val(data=data["yaml"], seed=1)


def test_text_only_clip_is_refused(env, data, tiny_clip_file):
    from yw_ext.text.clip import CLIPTextEncoder

    sd = torch.load(tiny_clip_file, map_location="cpu", weights_only=True)
    text_only = CLIPTextEncoder.from_openai_state_dict({k: v for k, v in sd.items() if not k.startswith("visual.")})
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(ValueError, match="image prompts need CLIP's image tower.*text-only"):
        model.train(data=data["yaml"], mode="image_prompt", epochs=1, clip=text_only, project=str(env / "runs"),
                    name="t", **TRAIN)


@pytest.mark.slow
def test_cli_image_prompt_train_and_val(env, data, capsys):
    from yw_ext.cli import entrypoint

    runs = env / "runs"
    common = ["imgsz=64", "batch=3", "workers=0", "plots=False", "device=cpu", "warmup_epochs=0", f"project={runs}"]
    assert entrypoint(["train", "model=yw-v2-n.yaml", f"data={data['yaml']}", "mode=image_prompt", "epochs=1",
                       "crops=2", "jitter=0.9,1.2", "name=cli", *common]) == 0
    best = runs / "cli" / "weights" / "best_adapter.npz"
    meta = read_adapter_file(best)["meta"]
    assert meta["crops"] == 2 and meta["jitter"] == [0.9, 1.2] and meta["mode"] == "image_prompt"
    assert entrypoint(["val", "model=yw-v2-n.yaml", f"data={data['yaml']}", "image_prompts=2",
                       f"image_adapter={best}", "name=v", *common]) == 0
    assert entrypoint(["val", "model=yw-v2-n.yaml", f"data={data['yaml']}", "image_prompts=2",
                       f"image_adapter={data['yaml']}", "name=v2", *common]) == 2
    assert "not a readable .npz image-adapter file" in capsys.readouterr().err


def test_image_embeddings_are_cached_on_disk(env, assets, monkeypatch):
    from yw_ext.text.image import CLIPImageEncoder

    bus = assets / "bus.jpg"
    encoded = []
    original = CLIPImageEncoder.preprocess

    def counting(self, images):
        encoded.append(len(images))
        return original(self, images)

    monkeypatch.setattr(CLIPImageEncoder, "preprocess", counting)
    images = {"bus": [(bus, [17, 231, 802, 768]), (bus, [0, 0, 400, 400])], "person": (bus, [48, 398, 246, 905])}
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["bus", "person"], images=images, use_text=False)
    first = model.model.txt_feats.clone()
    assert sum(encoded) == 3
    model.set_classes(["bus", "person"], images=images, use_text=False)  # all three crops from the cache
    assert sum(encoded) == 3 and torch.equal(model.model.txt_feats, first)
    model.set_classes(["bus", "person"], images=images, use_text=False, cache=False)  # cache off: encoded again
    assert sum(encoded) == 6 and torch.equal(model.model.txt_feats, first)
    model.set_classes(["bus", "person"], images=images, use_text=False, margin=0.1)  # other pixels: new keys
    assert sum(encoded) == 9 and not torch.equal(model.model.txt_feats, first)
