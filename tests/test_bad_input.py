# yw_ext, AGPL-3.0 license
"""Bad input, clearly refused (issue 16, items 8, 9, 11): unreadable single images, odd image modes, bad labels and
class-text JSONs that do not match the names. Each case is its own test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import yw_ext

IMGSZ = 96
NAMES = ["person", "bus", "car"]


@pytest.fixture(scope="module")
def model():
    """yw-v2-n with random weights and a 3-class vocabulary from fixed embeddings (no CLIP needed)."""
    torch.manual_seed(0)
    m = yw_ext.YOLOWorld("yw-v2-n.yaml")
    emb = torch.nn.functional.normalize(torch.randn(3, 512, generator=torch.Generator().manual_seed(1)), dim=-1)
    m.set_classes(NAMES, embeddings=emb)
    return m


@pytest.fixture(scope="module")
def images(tmp_path_factory, assets) -> dict:
    """bus.jpg (small) as RGB, and the same content as grayscale, RGBA, 16-bit, CMYK; broken files."""
    d = tmp_path_factory.mktemp("modes")
    rgb = np.asarray(Image.open(assets / "bus.jpg").convert("RGB").resize((120, 160)))
    gray = rgb.mean(2).astype(np.uint8)
    out = {}

    def save(name, array):
        Image.fromarray(array).save(d / name)
        out[name] = d / name

    save("rgb.png", rgb)
    save("gray.png", gray)
    save("gray_as_rgb.png", np.repeat(gray[..., None], 3, 2))
    save("rgba.png", np.dstack([rgb, np.full(gray.shape, 255, np.uint8)]))
    cv2.imwrite(str(d / "rgb16.png"), rgb[..., ::-1].astype(np.uint16) * 257)  # 16-bit, same content
    out["rgb16.png"] = d / "rgb16.png"
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    out["cmyk.jpg"] = d / "cmyk.jpg"
    Image.open(d / "cmyk.jpg").convert("RGB").save(d / "cmyk_as_rgb.png")
    out["cmyk_as_rgb.png"] = d / "cmyk_as_rgb.png"
    Image.fromarray(rgb).save(d / "full.jpg", quality=95)
    full = (d / "full.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (d / "notes.jpg").write_text("not an image\n" * 10)
    (d / "empty.png").write_bytes(b"")
    out.update({n: d / n for n in ("full.jpg", "truncated.jpg", "notes.jpg", "empty.png")})
    return out


def _boxes(model, path) -> np.ndarray:
    return model.predict(str(path), imgsz=IMGSZ, conf=0.0, max_det=30, verbose=False)[0].boxes.data.numpy()


# ---------------------------------------------------------------------------------------------------- item 8
@pytest.mark.parametrize("name", ["notes.jpg", "empty.png", "truncated.jpg"])
def test_predict_single_unreadable_file_names_it(model, images, name):
    with pytest.raises(ValueError, match=rf"cannot read image '.*{name}'"):
        model.predict(str(images[name]), imgsz=IMGSZ, verbose=False)
    with pytest.raises(ValueError, match=rf"cannot read image '.*{name}'"):  # stream: raised once exhausted
        list(model.predict(str(images[name]), imgsz=IMGSZ, verbose=False, stream=True))


def test_predict_folder_skips_unreadable_files(model, images, tmp_path):
    for name in ("rgb.png", "notes.jpg", "truncated.jpg"):
        shutil.copy(images[name], tmp_path / name)
    results = model.predict(str(tmp_path), imgsz=IMGSZ, verbose=False)  # a warning for each bad file, no error
    assert [Path(r.path).name for r in results] == ["rgb.png"]


# ---------------------------------------------------------------------------------------------------- item 9
@pytest.mark.parametrize("odd, same_as", [("gray.png", "gray_as_rgb.png"), ("rgba.png", "rgb.png"),
                                          ("rgb16.png", "rgb.png"), ("cmyk.jpg", "cmyk_as_rgb.png")])
def test_image_modes_predict_like_rgb(model, images, odd, same_as):
    """PyTorch predict and the torch-free runtime's reader see the RGB version of each image."""
    from yw_ext.runtime.ops import load_image

    ref = _boxes(model, images[same_as])
    assert len(ref) > 0
    got = _boxes(model, images[odd])
    assert got.shape == ref.shape and np.allclose(got, ref, atol=1e-4)
    a, b = load_image(images[odd]).astype(int), load_image(images[same_as]).astype(int)  # runtime.Detector's input
    assert a.shape == b.shape and np.abs(a - b).max() <= (1 if odd == "cmyk.jpg" else 0)  # OpenCV's vs PIL's CMYK


def test_runtime_refuses_truncated_and_unreadable(images):
    from yw_ext.runtime.ops import load_image

    assert load_image(images["full.jpg"]).shape == (160, 120, 3)
    with pytest.raises(ValueError, match=r"truncated\.jpg: the JPEG is truncated"):
        load_image(images["truncated.jpg"])  # cv2.imread returned a half-grey image here
    with pytest.raises(ValueError, match=r"notes\.jpg: not an image OpenCV can decode"):
        load_image(images["notes.jpg"])
    with pytest.raises(ValueError, match=r"empty\.png: the file is empty"):
        load_image(images["empty.png"])


# --------------------------------------------------------------------------------------------------- item 11
GOOD = "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n"


def _dataset(root: Path, labels: list[str], text_json: str | None = None) -> Path:
    """A 4-image dataset (64 x 64 noise) with the given label texts; returns its YAML."""
    from ultralytics.utils import YAML

    for sub in ("images", "labels"):
        (root / sub / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, lb in enumerate(labels):
        cv2.imwrite(str(root / "images" / "train" / f"im{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        (root / "labels" / "train" / f"im{i}.txt").write_text(lb)
    extra = {}
    if text_json is not None:
        (root / "texts.json").write_text(text_json)
        extra["text_json"] = "texts.json"
    YAML.save(root / "data.yaml", {"path": str(root), "train": "images/train", "val": "images/train",
                                   "names": dict(enumerate(NAMES)), **extra})
    return root / "data.yaml"


def _train_until_start(env: Path, data: Path, name: str):
    """Train 1 epoch, stopping at the first epoch's start; returns True if training got there."""
    m = yw_ext.YOLOWorld("yw-v2-n.yaml")
    started = []

    def stop(trainer):
        started.append(True)
        raise KeyboardInterrupt  # (never reached when the data is refused)

    m.add_callback("on_train_epoch_start", stop)
    try:
        m.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False,
                exist_ok=True, val=False, project=str(env / "runs"), name=name)
    except KeyboardInterrupt:
        pass
    return bool(started)


def test_label_class_id_out_of_range_fails_before_training(env):
    data = _dataset(env / "big", [GOOD, "0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.1 0.1\n", GOOD, GOOD])
    with pytest.raises(ValueError, match=r"labels/train/im1\.txt:2: class id 5, but the dataset has 3 names"):
        _train_until_start(env, data, "big")  # Ultralytics dropped im1 with a warning and trained
    assert not list((env / "runs").rglob("*.pt"))


def test_all_label_files_empty_fails_before_training(env):
    data = _dataset(env / "empty", ["", "", "\n", ""])
    with pytest.raises(ValueError, match=r"no labels: all 4 label files are empty or missing \(in .*labels/train"):
        _train_until_start(env, data, "empty")  # Ultralytics warned "Labels are missing or empty" and trained


def test_one_empty_label_file_is_a_background_image(env):
    from yw_ext.engine.dataset import check_labels

    root = env / "bg" / "labels"
    root.mkdir(parents=True)
    (root / "a.txt").write_text(GOOD)
    (root / "b.txt").write_text("")
    check_labels([str(root / "a.txt"), str(root / "b.txt"), str(root / "missing.txt")], NAMES)  # no error


@pytest.mark.parametrize("line, why", [("0 0.5 0.5", "3 values"), ("0 0.5 0.5 0.2 x", "not numbers"),
                                       ("1.5 0.5 0.5 0.2 0.2", "not a non-negative integer"),
                                       ("0 0.5 0.5 1.2 0.2", "not normalised")])
def test_malformed_label_line_names_file_and_line(env, line, why):
    from yw_ext.engine.dataset import check_labels

    f = env / "x.txt"
    f.write_text(f"{GOOD}\n{line}\n")
    with pytest.raises(ValueError, match=rf"x\.txt:4: .*{why}"):
        check_labels([str(f)], NAMES)


def test_text_json_in_another_order_fails_before_training(env):
    swapped = '[\n  ["person", "human"],\n  ["car"],\n  ["bus", "coach"]\n]\n'
    data = _dataset(env / "swap", [GOOD] * 4, text_json=swapped)
    with pytest.raises(ValueError, match=r"texts\.json', line 3: entry 1 \['car'\] is the prompts of class 2"):
        _train_until_start(env, data, "swap")  # trained with 'car' prompts for the bus class before


def test_text_json_wrong_length_and_bad_entry_name_the_line(tmp_path):
    from yw_ext.engine.dataset import load_class_texts

    f = tmp_path / "t.json"
    f.write_text(json.dumps([["person"], ["bus"], ["car"], ["extra"]], indent=1))
    with pytest.raises(ValueError, match=r"has 4 entries .* \(line \d+: entry 3 is one too many\)"):
        load_class_texts(f, NAMES)
    f.write_text('[\n ["person"],\n [],\n ["car"]\n]')
    with pytest.raises(ValueError, match=r"t\.json', line 3: entry 1 \(class 'bus'\) is \[\]"):
        load_class_texts(f, NAMES)
    f.write_text('[["person", "pedestrian"], ["coach", "car"], ["car"]]')  # a shared synonym is not a mismatch
    assert load_class_texts(f, NAMES)[1] == ["coach", "car"]
