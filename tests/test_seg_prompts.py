"""YOLO-World-Seg with the other prompt kinds and starting points: image prompts, tuned prompts (prompt files and
``mode="prompt"`` on a seg model), ``train(pretrained=<detection checkpoint>)`` on a seg YAML, and the demo's masks.

Models are random ``yw-v2-seg-n`` networks scaled as tests/test_seg.py's ``_seg_detector`` (so that bus.jpg gives
distinct detections); text and image embeddings come from the tiny random CLIP (``env``); segmentation data is
test_seg's synthetic shapes on COCO128 photos (``seg_data``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import yw_ext
from tests.conftest import randomize_
from tests.test_seg import _seg_detector, seg_data  # noqa: F401  (seg_data: a module fixture, imported to use it)
from yw_ext.bench.seg_data import SHAPES
from yw_ext.checkpoints import load_model
from yw_ext.nn.seg import YWSegmentationModel
from yw_ext.prompts import detector_hash, read_prompt_file
from yw_ext.seam import unwrap_model

BUS = [17, 231, 802, 768]  # the bus in bus.jpg (810 x 1080), pixel xyxy
PERSON = [48, 398, 246, 905]  # the person on the left
ARGS = dict(imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True)


def _same_results(a, b) -> None:
    """Two ``Results`` with the same boxes, scores, classes and masks (exactly: same model, same input)."""
    assert torch.equal(a.boxes.data, b.boxes.data)
    assert torch.equal(a.masks.data, b.masks.data)


def _eval_out(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Decoded eval output ``(B, 4 + K [+ nm], A)`` on one thread (the trainer changes the thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = net.eval()(x)[0]
        return out[0] if isinstance(out, tuple) else out
    finally:
        torch.set_num_threads(n)


# ------------------------------------------------------------------------------------------------------ image prompts
def test_seg_predict_with_image_prompts_returns_masks(env, assets):
    bus = str(assets / "bus.jpg")
    model = _seg_detector(k=2)
    prompts = {"bus": [(bus, BUS)], "person": [(bus, PERSON)]}
    r = model.predict(bus, image_prompts=prompts, imgsz=64, conf=0.0, verbose=False)[0]
    assert r.masks is not None and len(r.masks) == len(r.boxes) > 0
    assert tuple(r.masks.data.shape[1:]) == (64, 64) and r.names == {0: "bus", 1: "person"}
    assert model.vocabulary == ["person", "bus"]  # the text vocabulary is back after the call
    # the same as setting the image-prompt vocabulary (image-only sources) and predicting with it
    model.set_classes(list(prompts), images=prompts, use_text=False)
    assert model.model.class_sources == ["image", "image"]
    same = model.predict(bus, imgsz=64, conf=0.0, verbose=False)[0]
    _same_results(r, same)
    # fused text + image prompts also give masks
    fused = model.predict(bus, image_prompts=prompts, alpha=0.5, imgsz=64, conf=0.0, verbose=False)[0]
    assert fused.masks is not None and len(fused.masks) == len(fused.boxes) > 0


# ------------------------------------------------------------------------------------------------------ tuned prompts
def test_seg_prompt_file_gives_masks(env, assets, tmp_path):
    """A prompt file (``save_prompts`` / ``load_prompts``, what prompt tuning writes) on a seg model predicts masks."""
    bus = str(assets / "bus.jpg")
    model = _seg_detector(k=2)
    want = model.predict(bus, imgsz=64, conf=0.0, verbose=False)[0]
    f = model.save_prompts(tmp_path / "p.npz")
    model.set_classes(["cat"], embeddings=torch.randn(1, 512))
    model.load_prompts(f)
    r = model.predict(bus, imgsz=64, conf=0.0, verbose=False)[0]
    assert r.masks is not None and len(r.masks) == len(r.boxes) > 0 and r.names == {0: "person", 1: "bus"}
    _same_results(r, want)


def test_seg_prompt_tuning_keeps_seg_model_and_predicts_masks(env, seg_data, tmp_path):  # noqa: F811
    model = _seg_detector(k=2)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    metrics = model.train(data=str(seg_data), mode="prompt", epochs=1, project=str(tmp_path / "runs"), name="pt",
                          **ARGS)  # fmt: skip
    assert np.isfinite(metrics.box.map50)
    trainer = model.trainer
    assert "mask" not in " ".join(trainer.loss_names)  # box, class and DFL losses: the mask branch takes no part
    # the seg model is the same object with every tensor (detector and mask branch) bitwise unchanged
    assert isinstance(model.model, YWSegmentationModel) and model.task == "segment"
    after = model.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items() if k in after)
    assert set(before) <= set(after)
    # it now holds the tuned prompts of the dataset's classes
    best = Path(trainer.wdir) / "best_prompts.npz"
    p = read_prompt_file(best)
    assert model.vocabulary == p["names"] == list(SHAPES) and model.model.class_sources == ["prompt"] * 3
    assert torch.equal(model.model.txt_feats[0], p["embeddings"])
    assert p["detector_sha256"] == detector_hash(model.model)  # the file names the seg model (mask branch included)
    # scores of the seg model = scores of the detector part the prompts were tuned against
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y_seg, y_det = _eval_out(model.model, x), _eval_out(model.model.detector_part(), x)
    assert y_seg.shape[1] == 4 + 3 + 32 and y_det.shape[1] == 4 + 3
    assert (y_seg[:, : 4 + 3] - y_det).abs().max() <= 1e-5
    # predictions carry masks, with the tuned classes; the detector the prompt file names is the seg model
    image = str(next((Path(seg_data).parent / "ds" / "images" / "train").iterdir()))
    r = model.predict(image, imgsz=64, conf=0.0, verbose=False)[0]
    assert r.masks is not None and len(r.masks) == len(r.boxes) > 0 and list(r.names.values()) == list(SHAPES)
    reloaded = yw_ext.YOLOWorld(p["detector"]).load_prompts(best)  # no hash warning: same tensors
    assert reloaded.task == "segment"
    _same_results(reloaded.predict(image, imgsz=64, conf=0.0, verbose=False)[0], r)


# ------------------------------------------------------------------------------------ seg YAML + detection checkpoint
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_train_seg_yaml_from_detection_checkpoint(env, seg_data, tmp_path, suffix):  # noqa: F811
    det = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(det.model, seed=4)
    ckpt = tmp_path / f"det{suffix}"
    det.save(ckpt)
    ref = load_model(ckpt).state_dict()  # the tensors as the file holds them

    seg = yw_ext.YOLOWorld("yw-v2-seg-n.yaml")
    built = {k: v.clone() for k, v in seg.model.state_dict().items()}
    branch = seg.model.mask_prefixes()
    seen = {}
    seg.add_callback("on_train_start", lambda t: seen.update(
        {k: v.detach().cpu().clone() for k, v in unwrap_model(t.model).state_dict().items()}))
    seg.train(data=str(seg_data), pretrained=str(ckpt), epochs=1, project=str(tmp_path / "runs"), name="p", **ARGS)
    assert seen.keys() == built.keys()
    shared = [k for k in built if not k.startswith(branch)]
    new = [k for k in built if k.startswith(branch)]
    assert set(shared) == set(ref) and len(new) == 62  # Proto 20 + 3 levels x 14 coefficient-branch tensors
    assert all(torch.equal(seen[k], ref[k].float()) for k in shared)  # every detector tensor from the checkpoint
    assert any(not torch.equal(built[k], ref[k]) for k in shared)  # (which the seg YAML did not have already)
    assert all(torch.equal(seen[k], built[k]) for k in new)  # the mask branch as built: fresh
    assert type(seg.trainer).__name__ == "YWSegTrainer" and seg.task == "segment"
    assert seg.trainer.args.pretrained is True  # read by yw_ext's loader, not Ultralytics' load_checkpoint


def test_pretrained_bad_input(env, seg_data, tmp_path):  # noqa: F811
    seg = yw_ext.YOLOWorld("yw-v2-seg-n.yaml")
    with pytest.raises(ValueError, match="pretrained= does not apply to mode='prompt'"):
        seg.train(data=str(seg_data), mode="prompt", pretrained="det.pt", **ARGS)
    with pytest.raises(FileNotFoundError):
        seg.train(data=str(seg_data), pretrained=str(tmp_path / "missing.pt"), **ARGS)
    assert isinstance(seg.model, YWSegmentationModel) and seg.trainer is None  # nothing started


# --------------------------------------------------------------------------------------------------------------- demo
def test_demo_shows_masks_of_a_seg_model(env, assets, tmp_path):
    from yw_ext.demo import Demo

    bus = str(assets / "bus.jpg")
    model = _seg_detector(k=2)
    demo = Demo(model, imgsz=64, out_dir=tmp_path / "out")
    image, rows, status = demo.detect(bus, "person, bus", conf=0.0)
    r = model.predict(bus, imgsz=64, conf=0.0, iou=demo.iou, verbose=False)[0]  # the same vocabulary, as the demo
    assert len(rows) == len(r.boxes) > 0 and r.masks is not None
    assert f"{len(rows)} masks" in status and "detections in bus.jpg" in status, status
    with_masks, boxes_only = r.plot()[..., ::-1], r.plot(masks=False)[..., ::-1]  # RGB, as the demo returns
    assert np.array_equal(image, with_masks)  # the page shows Results.plot() with the masks drawn
    assert (image != boxes_only).any(axis=-1).mean() > 0.01  # and they change the picture
