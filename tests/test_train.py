"""Training and validation: YWTrainer / YWValidator on COCO128 subsets, class texts, grounding data, modes, errors.

Datasets here are a handful of COCO128 images linked (symlinks, never copies) into tmp folders, so the label caches
Ultralytics writes next to the labels land in tmp and not in ../shared. Text embeddings come from the tiny random
CLIP of tests/_tiny_clip.py (``YW_CLIP``), cached in a tmp ``YW_CACHE_DIR``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import yw_ext
from yw_ext.engine.dataset import DatasetNotAvailableError, YWMultiModalDataset, class_texts
from yw_ext.engine.grounding import GroundingDataError
from yw_ext.engine.modes import ModeNotAvailableError, UnknownModeError, available_modes, get_trainer, register_mode
from yw_ext.engine.trainer import YWTrainer

TRAIN_ARGS = dict(epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True)
SYNONYMS = {0: ["person", "human", "pedestrian"], 2: ["car", "automobile"]}  # class index -> prompts


def coco_names(coco128: Path) -> dict[int, str]:
    """COCO128's 80 class names."""
    from ultralytics.utils import YAML

    return YAML.load(coco128 / "coco128.yaml")["names"]


def link_subset(coco128: Path, root: Path, n: int = 4, start: int = 0) -> Path:
    """Symlink ``n`` COCO128 train images and their labels into ``root/images/train`` and ``root/labels/train``."""
    src = coco128 / "images" / "train2017"
    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True, exist_ok=True)
    for im in sorted(src.glob("*.jpg"))[start : start + n]:
        lb = coco128 / "labels" / "train2017" / f"{im.stem}.txt"
        (root / "images" / "train" / im.name).symlink_to(im)
        if lb.is_file():
            (root / "labels" / "train" / lb.name).symlink_to(lb)
    return root / "images" / "train"


def write_yaml(path: Path, names: dict, root: Path, **extra) -> Path:
    """A dataset YAML training and validating on ``root/images/train``."""
    from ultralytics.utils import YAML

    YAML.save(path, {"path": str(root), "train": "images/train", "val": "images/train", "names": names, **extra})
    return path


def synonym_json(names: dict, path: Path) -> list[list[str]]:
    """Official class-text JSON: SYNONYMS for some classes, the plain name for the rest."""
    texts = [SYNONYMS.get(i, [n]) for i, n in names.items()]
    path.write_text(json.dumps(texts))
    return texts


@pytest.fixture
def subset(coco128, tmp_path) -> dict:
    """Four COCO128 images as a dataset, plain and with a class-text JSON (synonyms)."""
    names = coco_names(coco128)
    root = tmp_path / "subset"
    link_subset(coco128, root)
    texts = synonym_json(names, tmp_path / "class_texts.json")
    return {
        "names": names,
        "texts": texts,
        "root": root,
        "yaml": write_yaml(tmp_path / "subset.yaml", names, root),
        "yaml_texts": write_yaml(tmp_path / "subset_texts.yaml", names, root, text_json="class_texts.json"),
    }


# ------------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_train_one_epoch_checkpoint_keeps_vocabulary(env, subset):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    metrics = model.train(data=str(subset["yaml_texts"]), project=str(env / "runs"), name="ft", **TRAIN_ARGS)
    save_dir = Path(model.trainer.save_dir)
    best, last = save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt"
    assert best.is_file() and last.is_file() and (save_dir / "results.csv").is_file()
    assert math.isfinite(metrics.box.map) and math.isfinite(metrics.box.map50)

    # best.pt holds the dataset vocabulary with every synonym (what validation used during training)
    reloaded = yw_ext.YOLOWorld(str(best))
    names = [t[0] for t in subset["texts"]]
    assert reloaded.vocabulary == names == list(subset["names"].values())
    assert reloaded.model.prompts_per_class == 3 and reloaded.model.class_prompts == subset["texts"]
    assert reloaded.model.txt_feats.shape == (1, 80 * 3, 512)
    image = str(next((subset["root"] / "images" / "train").iterdir()))
    res = reloaded.predict(image, imgsz=64, conf=0.0, verbose=False)
    assert res[0].names[0] == "person" and len(res[0].boxes) > 0
    assert int(res[0].boxes.cls.max()) < 80  # scores reduced over synonyms to 80 classes

    val = reloaded.val(data=str(subset["yaml"]), imgsz=64, batch=2, plots=False, project=str(env / "runs"), name="v")
    assert all(math.isfinite(v) for v in (val.box.map, val.box.map50)) and len(val.box.maps) == 80
    assert reloaded.model.prompts_per_class == 3  # the model's own vocabulary is back after validation


def test_val_uses_every_synonym(env, subset, monkeypatch):
    from yw_ext.nn.model import YWDetectionModel

    seen = []
    original = YWDetectionModel._max_over_prompts

    def spy(self, out):
        seen.append((self.prompts_per_class, list(self.names.values())))
        return original(self, out)

    monkeypatch.setattr(YWDetectionModel, "_max_over_prompts", spy)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["cat", "dog"], embeddings=torch.randn(2, 512))
    metrics = model.val(data=str(subset["yaml_texts"]), imgsz=64, batch=4, plots=False, project=str(env / "runs"))
    assert math.isfinite(metrics.box.map50)
    assert seen and all(g == 3 for g, _ in seen)  # max over 3 prompts per class while validating
    assert seen[0][1] == [t[0] for t in subset["texts"]]
    assert model.vocabulary == ["cat", "dog"] and model.model.prompts_per_class == 1  # restored


def test_class_text_sampling_one_synonym_per_class(subset):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(subset["yaml_texts"]))
    assert class_texts(data) == subset["texts"]
    hyp = get_cfg(overrides=dict(imgsz=64, mosaic=0.0, translate=0.0, scale=0.0, fliplr=0.0, hsv_h=0, hsv_s=0, hsv_v=0))
    ds = YWMultiModalDataset(
        img_path=str(subset["root"] / "images" / "train"), imgsz=64, augment=True, hyp=hyp, data=data, task="detect"
    )
    owner = {t: c for c, texts in enumerate(subset["texts"]) for t in texts}
    counts = Counter()
    for draw in range(60):
        i = draw % len(ds)
        sample = ds[i]
        texts = sample["texts"]
        classes = [owner[t] for t in texts]
        assert len(texts) == 80 and len(set(classes)) == len(classes)  # one prompt per class per image
        counts.update(texts)
        present = {int(c) for c in ds.labels[i]["cls"].reshape(-1)}
        assert {classes[int(c)] for c in sample["cls"].reshape(-1)} == present  # boxes point at their class's prompt
    for c, prompts in SYNONYMS.items():
        assert all(counts[p] > 0 for p in prompts), (prompts, counts)  # every synonym gets drawn
    assert sum(counts[p] for p in SYNONYMS[0]) == 60


@pytest.mark.slow
def test_grounding_mixed_with_detection_and_freeze(env, subset, coco128):
    from ultralytics.data.dataset import GroundingDataset

    img_dir = coco128 / "images" / "train2017"
    gjson = grounding_json(coco128, env / "grounding.json", start=4, n=4)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    frozen_before = model.model.model[0].conv.weight.detach().clone()
    metrics = model.train(
        data=str(subset["yaml"]),
        grounding_data=[{"img_path": str(img_dir), "json_file": str(gjson)}],
        freeze=10,
        project=str(env / "runs"),
        name="mixed",
        **TRAIN_ARGS,
    )
    assert math.isfinite(metrics.box.map50)
    train_set = model.trainer.train_loader.dataset
    assert any(isinstance(d, GroundingDataset) for d in train_set.datasets)
    assert len(train_set) == 4 + len(json.loads(gjson.read_text())["images"])
    assert not any("in this picture" in t for t in model.trainer.text_embeddings)  # phrases are spans, not captions
    assert any(t.startswith("the ") for t in model.trainer.text_embeddings)  # grounding phrases were embedded
    trained = model.trainer.model
    assert not any(p.requires_grad for m in trained.model[:10] for p in m.parameters())  # freeze=10: backbone
    assert all(p.requires_grad for p in trained.model[12].parameters())
    after = model.model.model[0].conv.weight.detach().float()
    assert torch.allclose(after, frozen_before.half().float(), atol=1e-3)  # freeze=10 kept the backbone
    assert model.vocabulary == list(subset["names"].values())


def grounding_json(coco128: Path, path: Path, start: int = 0, n: int = 4, bad_span: bool = False) -> Path:
    """An mdetr-format grounding JSON for COCO128 images: a caption naming the objects, one span per box's phrase."""
    from PIL import Image

    names = coco_names(coco128)
    images, annotations = [], []
    for image_id, im in enumerate(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[start : start + n]):
        w, h = Image.open(im).size
        rows = [r.split() for r in (coco128 / "labels" / "train2017" / f"{im.stem}.txt").read_text().splitlines()]
        present = list(dict.fromkeys(names[int(r[0])] for r in rows if r))
        caption = "in this picture: " + ", ".join(f"the {p}" for p in present) + "."
        spans = {p: [caption.index(f"the {p}"), caption.index(f"the {p}") + 4 + len(p)] for p in present}
        images.append({"id": image_id, "file_name": im.name, "height": h, "width": w, "caption": caption})
        for r in rows:
            if not r:
                continue
            cx, cy, bw, bh = (float(v) for v in r[1:5])
            span = [len(caption) - 2, len(caption) + 10] if bad_span else spans[names[int(r[0])]]
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": image_id,
                    "bbox": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                    "iscrowd": 0,
                    "tokens_positive": [span],
                }
            )
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


# ----------------------------------------------------------------------------------------------------- bad input
def test_class_text_json_wrong_length(env, subset):
    (env / "short.json").write_text(json.dumps([["person"], ["bicycle"]]))
    bad = write_yaml(env / "short.yaml", subset["names"], subset["root"], text_json="short.json")
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(ValueError, match=r"has 2 entries but the dataset has 80 classes"):
        model.train(data=str(bad), project=str(env / "runs"), name="bad", **TRAIN_ARGS)
    assert not list((env / "runs").rglob("*.pt"))  # nothing trained
    with pytest.raises(ValueError, match=r"has 2 entries"):
        model.val(data=str(bad), imgsz=64, plots=False)


def test_missing_images_offline_names_folder_and_url(env, monkeypatch):
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(DatasetNotAvailableError, match=r"images\.cocodataset\.org/zips/val2017\.zip") as e:
        model.train(data="coco.yaml", project=str(env / "runs"), name="coco", **TRAIN_ARGS)
    assert "/coco/train2017.txt" in str(e.value)  # the missing image list, under the datasets folder
    assert "YOLO_OFFLINE" in str(e.value)
    url = "https://example.com/mydata.zip"
    own = write_yaml(env / "own.yaml", {0: "a"}, env / "nowhere", download=url)
    with pytest.raises(FileNotFoundError, match=r"nowhere/images/train.*" + url.replace(".", r"\.")):
        model.val(data=str(own), imgsz=64)
    with pytest.raises(FileNotFoundError, match="nowhere/images/train"):
        model.train(data=str(own), project=str(env / "runs"), name="own", **TRAIN_ARGS)


def test_grounding_bad_span_and_missing_files(env, subset, coco128):
    img_dir = str(coco128 / "images" / "train2017")
    bad = grounding_json(coco128, env / "bad.json", n=2, bad_span=True)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    kw = dict(data=str(subset["yaml"]), project=str(env / "runs"), name="g", **TRAIN_ARGS)
    with pytest.raises(GroundingDataError, match=r"span \[\d+, \d+\] is outside its caption \(length \d+"):
        model.train(grounding_data=[{"img_path": img_dir, "json_file": str(bad)}], **kw)
    with pytest.raises(FileNotFoundError, match="grounding JSON"):
        model.train(grounding_data={"img_path": img_dir, "json_file": str(env / "nope.json")}, **kw)
    with pytest.raises(GroundingDataError, match="img_path"):
        model.train(grounding_data=[{"json_file": str(bad)}], **kw)
    assert not list((env / "runs").rglob("*.pt"))


# ---------------------------------------------------------------------------------------------------------- modes
def test_modes_registry():
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(ValueError, match=r"unknown training mode 'nope'; modes: finetune.*prompt") as e:
        model.train(data="coco128.yaml", mode="nope")
    assert isinstance(e.value, UnknownModeError)
    from yw_ext.engine.prompt_trainer import YWPromptTrainer

    from yw_ext.engine.image_prompt_trainer import YWImagePromptTrainer

    assert get_trainer("prompt") is YWPromptTrainer  # available (tests/test_prompt_tuning.py)
    assert get_trainer("image_prompt") is YWImagePromptTrainer  # tests/test_image_prompt_train.py
    with pytest.raises(ValueError, match="either trainer"):
        model.train(data="coco128.yaml", mode="finetune", trainer=YWTrainer)
    assert get_trainer() is YWTrainer and get_trainer("finetune") is YWTrainer
    assert {"finetune", "prompt", "image_prompt", "rep"} <= set(available_modes())

    register_mode("test_custom", "yw_ext.engine.trainer:YWTrainer", description="test")
    try:
        assert get_trainer("test_custom") is YWTrainer
        register_mode("test_broken", "yw_ext.engine.no_such_module:Nope", description="broken")
        with pytest.raises(ModeNotAvailableError, match="cannot import"):
            get_trainer("test_broken")
        register_mode("test_later", description="a later feature", unavailable="it lands later.")
        with pytest.raises(NotImplementedError, match="'test_later' .* not available: it lands later"):
            model.train(data="coco128.yaml", mode="test_later")
    finally:
        from yw_ext.engine import modes

        for name in ("test_custom", "test_broken", "test_later"):
            modes._MODES.pop(name, None)


@pytest.mark.slow
def test_rep_mode_trains_folded_model(env, subset):
    from yw_ext.nn.rep import RepC2fAttn, RepWorldDetect

    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    data = str(subset["yaml_texts"])
    metrics = model.train(data=data, mode="rep", project=str(env / "runs"), name="rep", **TRAIN_ARGS)
    assert math.isfinite(metrics.box.map50)
    trained = model.trainer.model
    assert any(isinstance(m, RepC2fAttn) for m in trained.modules())
    guides = [p for n, p in trained.named_parameters() if "guide" in n]  # the folded text guides of the neck
    assert guides and all(g.requires_grad for g in guides)  # the folded guide convs train too
    in_optimizer = {id(p) for group in model.trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(g) in in_optimizer for g in guides)
    reloaded = yw_ext.YOLOWorld(str(model.trainer.best))
    assert reloaded.model.folded and isinstance(reloaded.model.model[-1], RepWorldDetect)
    assert reloaded.vocabulary == list(subset["names"].values()) and reloaded.model.model[-1].nc == 80 * 3
    image = str(next((subset["root"] / "images" / "train").iterdir()))
    res = reloaded.predict(image, imgsz=64, conf=0.0, verbose=False)
    assert len(res[0].boxes) > 0 and int(res[0].boxes.cls.max()) < 80
    with pytest.raises(ValueError, match="re-parameterised"):  # finetune needs the text path
        reloaded.train(data=str(subset["yaml"]), project=str(env / "runs"), name="again", **TRAIN_ARGS)


def test_upstream_set_classes_callback_works_with_yw_model(env):
    """Ultralytics' WorldTrainer callback (``ema.set_classes(names)``) runs on a YWDetectionModel."""
    from types import SimpleNamespace

    from ultralytics.models.yolo.world.train import on_pretrain_routine_end

    from yw_ext.nn.model import YWDetectionModel

    model = YWDetectionModel("yw-v2-n.yaml", verbose=False)
    data = {"names": {0: "person", 1: "car/automobile"}}
    trainer = SimpleNamespace(
        ema=SimpleNamespace(ema=model), test_loader=SimpleNamespace(dataset=SimpleNamespace(data=data))
    )
    on_pretrain_routine_end(trainer)
    assert model.names == {0: "person", 1: "car"} and model.txt_feats.shape == (1, 2, 512)
    assert np.isfinite(model.txt_feats.numpy()).all()
