"""Image prompts at inference: CLIP image embeddings of exemplars (crops) as class embeddings, alone or with text.

References are computed independently with the `clip` package (``clip.load(path, jit=False)`` and ITS preprocess)
on the same tiny random CLIP, and crops are checked against plain numpy slicing.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import yw_ext
from tests._tiny_clip import import_clip
from yw_ext.cli import entrypoint, parse_prompt_images
from yw_ext.text.clip import CLIPTextEncoder
from yw_ext.text.image import DEFAULT_ALPHA, crop_box, image_encoder

BUS = [17, 231, 802, 768]  # the bus in bus.jpg (810 x 1080), pixel xyxy
PERSON = [48, 398, 246, 905]  # the person on the left in bus.jpg
TOL = 1e-5


def _n(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def clip_env(tiny_clip_file, tmp_path_factory):
    """YW_CLIP = the tiny CLIP, a private embedding cache (module scope: one model serves every test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YW_CLIP", str(tiny_clip_file))
        mp.setenv("YW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield tiny_clip_file


@pytest.fixture(scope="module")
def ref(tiny_clip_file):
    """The `clip` package: (module, model, its own preprocess) on the same weights."""
    clip = import_clip()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, preprocess = clip.load(str(tiny_clip_file), device="cpu", jit=False)
    return clip, model.float().eval(), preprocess


def ref_image(ref, pil: Image.Image) -> np.ndarray:
    """Normalised `clip` image feature of a PIL image, (D,)."""
    _, model, preprocess = ref
    with torch.no_grad():
        return _n(model.encode_image(preprocess(pil)[None]).float().numpy()[0])


def ref_text(ref, texts: list[str]) -> np.ndarray:
    """Normalised `clip` text features, (N, D)."""
    clip, model, _ = ref
    with torch.no_grad():
        return _n(model.encode_text(clip.tokenize(texts)).float().numpy())


@pytest.fixture(scope="module")
def bus(assets):
    return assets / "bus.jpg"


@pytest.fixture(scope="module")
def bus_rgb(bus) -> np.ndarray:
    """bus.jpg decoded by PIL, (H, W, 3) RGB."""
    return np.asarray(Image.open(bus).convert("RGB"))


@pytest.fixture(scope="module")
def model(clip_env):
    """One small random detector for the module (building one takes seconds); tests set their own classes."""
    return yw_ext.YOLOWorld("yw-v2-n.yaml")


def feats(model) -> np.ndarray:
    """The model's vocabulary embeddings, (K * G, D)."""
    return model.model.txt_feats[0].numpy()


# ----- embeddings equal the reference ---------------------------------------------------------------------------------
def test_box_embedding_matches_clip_package(model, ref, bus, bus_rgb):
    model.set_classes(["bus"], images={"bus": [(str(bus), BUS)]}, use_text=False)
    x1, y1, x2, y2 = BUS
    expected = ref_image(ref, Image.fromarray(bus_rgb[y1:y2, x1:x2]))  # hand crop, clip's preprocess
    assert np.abs(feats(model)[0] - expected).max() < TOL
    m = model.model
    assert m.class_sources == ["image"] and m.prompts_per_class == 1 and m.names == {0: "bus"}
    assert m.image_encoder_id.startswith("openai-clip-image:") and m.text_encoder_id is None


def test_encode_images_inputs_and_colour_order(clip_env, ref, bus, bus_rgb):
    ienc = image_encoder()
    expected = ref_image(ref, Image.fromarray(bus_rgb))
    bgr = np.ascontiguousarray(bus_rgb[..., ::-1])  # BGR, as cv2.imread gives
    inputs = [str(bus), bus, bgr, Image.open(bus), Image.fromarray(bus_rgb).convert("L").convert("RGB")]
    emb = ienc.encode_images(inputs, batch=2)  # several batches
    assert emb.dtype == torch.float32 and emb.shape == (5, 512)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-6)
    for i in range(4):
        assert np.abs(emb[i].numpy() - expected).max() < TOL, i
    assert np.abs(emb[4].numpy() - expected).max() > 1e-3  # grayscale is another image
    rgb_as_bgr = ienc.encode_images(bus_rgb)[0].numpy()  # an RGB array read as BGR: channels swapped
    assert np.abs(rgb_as_bgr - expected).max() > 1e-3
    assert ienc.encode_images([]).shape == (0, 512)


def test_averaging_exemplars(model, ref, bus, bus_rgb, assets):
    zidane = assets / "zidane.jpg"
    model.set_classes(["thing"], images={"thing": [(bus, BUS), (str(bus), PERSON), zidane]}, use_text=False)
    crops = [bus_rgb[y1:y2, x1:x2] for x1, y1, x2, y2 in (BUS, PERSON)]
    crops.append(np.asarray(Image.open(zidane).convert("RGB")))
    f = np.stack([ref_image(ref, Image.fromarray(c)) for c in crops])  # (3, D)
    expected = _n(_n(f).mean(0))
    assert np.abs(feats(model)[0] - expected).max() < TOL


def test_text_image_fusion_with_synonyms(model, ref, bus, bus_rgb):
    alpha = 0.3
    model.set_classes(
        ["bus", ["person", "man"], "car"],
        images={"bus": (bus, BUS), "person": [(bus, PERSON)]},
        alpha=alpha,
    )
    m = model.model
    assert m.prompts_per_class == 2 and m.class_sources == ["text+image", "text+image", "text"]
    t = ref_text(ref, ["bus", "person", "man", "car"])
    v_bus = ref_image(ref, Image.fromarray(bus_rgb[231:768, 17:802]))
    v_person = ref_image(ref, Image.fromarray(bus_rgb[398:905, 48:246]))
    expected = np.stack([
        _n(alpha * t[0] + (1 - alpha) * v_bus), _n(alpha * t[0] + (1 - alpha) * v_bus),  # padded with the first prompt
        _n(alpha * t[1] + (1 - alpha) * v_person), _n(alpha * t[2] + (1 - alpha) * v_person),  # each synonym fused
        t[3], t[3],  # text only
    ])
    assert np.abs(feats(model) - expected).max() < TOL
    assert m.class_prompts == [["bus"], ["person", "man"], ["car"]] and m.text_encoder_id is not None

    model.set_classes(["bus"], images={"bus": (bus, BUS)})  # default alpha
    assert DEFAULT_ALPHA == 0.5
    assert np.abs(feats(model)[0] - _n(0.5 * t[0] + 0.5 * v_bus)).max() < TOL


def test_alpha_extremes(model, ref, bus, bus_rgb):
    t = ref_text(ref, ["bus", "car"])
    v = ref_image(ref, Image.fromarray(bus_rgb[231:768, 17:802]))
    model.set_classes(["bus", "car"], images={"bus": (bus, BUS)}, alpha=1.0)
    assert model.model.class_sources == ["text", "text"] and model.model.image_encoder_id is None
    assert np.abs(feats(model) - t).max() < TOL
    model.set_classes(["bus", "car"], images={"bus": (bus, BUS)}, alpha=0.0)
    assert model.model.class_sources == ["image", "text"]
    assert np.abs(feats(model) - np.stack([v, t[1]])).max() < TOL


# ----- crops ----------------------------------------------------------------------------------------------------------
def test_crops_are_the_right_pixels(bus, bus_rgb):
    x1, y1, x2, y2 = BUS
    assert np.array_equal(np.asarray(crop_box(bus, BUS)), bus_rgb[y1:y2, x1:x2])
    assert np.array_equal(np.asarray(crop_box(str(bus), np.array(BUS))), bus_rgb[y1:y2, x1:x2])
    # fractional box: floor(x1), floor(y1) to ceil(x2), ceil(y2)
    assert np.array_equal(np.asarray(crop_box(bus, [17.4, 231.6, 801.2, 767.9])), bus_rgb[231:768, 17:802])
    # margin 0.1 of (785, 537): x 17-78.5 -> 0 (clipped), 802+78.5 -> 810 (clipped); y 231-53.7 -> 177, 768+53.7 -> 822
    assert np.array_equal(np.asarray(crop_box(bus, BUS, margin=0.1)), bus_rgb[177:822, 0:810])
    # a box 0.5 px past the border is allowed (rounding) and clipped
    assert np.array_equal(np.asarray(crop_box(bus, [700, 1000, 810.5, 1080.4])), bus_rgb[1000:1080, 700:810])
    # a BGR ndarray (cv2 order) is cropped from its own pixels and returned as RGB
    bgr = cv2.imread(str(bus))
    assert np.array_equal(np.asarray(crop_box(bgr, torch.tensor(BUS))), bgr[y1:y2, x1:x2, ::-1])


def test_training_crops_equal_exemplar_crops(clip_env, coco128):
    """A COCO128 box through image-prompt training's crop path and through ``set_classes``: the same embedding."""
    from yw_ext.engine.image_prompt_trainer import sample_prompt_boxes
    from yw_ext.text.image import clip_crops

    im = sorted((coco128 / "images" / "train2017").glob("*.jpg"))[0]
    rows = np.loadtxt(coco128 / "labels" / "train2017" / f"{im.stem}.txt", ndmin=2)  # (N, 5) class cx cy w h
    bgr = cv2.imread(str(im))  # as Ultralytics' dataset reads it
    batch = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1)[None]  # (1, 3, H, W) RGB uint8
    n = len(rows)
    rois, slots = sample_prompt_boxes(torch.zeros(n), torch.from_numpy(rows[:, 0]), torch.from_numpy(rows[:, 1:]),
                                      80, tuple(batch.shape[2:]), generator=torch.Generator().manual_seed(0))
    assert len(rois) >= 2 and (rois[:, 1:] != rois[:, 1:].round()).any()  # jittered, fractional pixel boxes
    ienc = image_encoder()
    train = ienc.encode_crops(clip_crops(batch, rois, ienc.image_size))  # (M, D): the trainer's path
    assert torch.equal(train, ienc.encode_crops(clip_crops(batch.float() / 255, rois, ienc.image_size)))

    model = yw_ext.YOLOWorld("yw-v2-n.yaml")  # no image adapter: a class's embedding is its crop's n(u)
    names = [f"box{i}" for i in range(len(rois))]
    model.set_classes(names, images={c: (bgr, r[1:].tolist()) for c, r in zip(names, rois)}, use_text=False)
    assert np.abs(feats(model) - train.numpy()).max() < TOL


def test_margin_is_used_by_set_classes(model, ref, bus, bus_rgb):
    model.set_classes(["bus"], images={"bus": (bus, BUS)}, margin=0.1, use_text=False)
    assert np.abs(feats(model)[0] - ref_image(ref, Image.fromarray(bus_rgb[177:822, 0:810]))).max() < TOL


# ----- predict --------------------------------------------------------------------------------------------------------
def test_predict_with_image_prompts_restores_vocabulary(model, bus):
    model.set_classes(["person", "car"])
    before = model.model.txt_feats.clone()
    kw = dict(imgsz=160, conf=0.0001, verbose=False, save=False)
    results = model.predict(bus, image_prompts={"bus": [(bus, BUS)], "person": (bus, PERSON)}, **kw)
    assert len(results) == 1 and results[0].names == {0: "bus", 1: "person"}
    assert results[0].boxes.cls.numel() == 0 or int(results[0].boxes.cls.max()) <= 1  # random weights: maybe none
    m = model.model
    assert m.names == {0: "person", 1: "car"} and model.names == {0: "person", 1: "car"}
    assert torch.equal(m.txt_feats, before) and m.class_sources == ["text", "text"] and m.image_encoder_id is None
    assert model.predict(bus, **kw)[0].names == {0: "person", 1: "car"}

    # stream=True with alpha: fused classes while streaming, previous vocabulary once the generator ends
    gen = model.predict([bus, bus], stream=True, image_prompts={"bus": (bus, BUS)}, alpha=0.5, **kw)
    first = next(gen)
    assert first.names == {0: "bus"} and m.class_sources == ["text+image"]
    assert len(list(gen)) == 1
    assert m.names == {0: "person", 1: "car"} and torch.equal(m.txt_feats, before)

    # a bad prompt raises and changes nothing
    with pytest.raises(ValueError, match="class 'bus'.*outside the image"):
        model.predict(bus, image_prompts={"bus": (bus, [900, 0, 950, 10])}, **kw)
    assert m.names == {0: "person", 1: "car"} and torch.equal(m.txt_feats, before)


# ----- bad input ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "box, match",
    [
        ([700, 100, 900, 200], "class 'bus', exemplar 1: box .* is outside the image .* 810x1080"),
        ([-5, 0, 100, 100], "outside the image"),
        ([0, 1000, 100, 1100], "outside the image"),
        ([820, 10, 830, 20], "outside the image"),
        ([100, 100, 100, 200], "class 'bus', exemplar 1: box .* zero or negative area"),
        ([200, 100, 100, 200], "zero or negative area"),
        ([100, 300, 200, 200], "zero or negative area"),
        ([1, 2, 3], "class 'bus', exemplar 0: box must be 4"),
        ([1, 2, 3, float("nan")], "4 finite numbers"),
    ],
)
def test_bad_boxes(model, bus, box, match):
    model.set_classes(["person"], embeddings=torch.randn(1, 512))
    with pytest.raises(ValueError, match=match):
        model.set_classes(["bus"], images={"bus": [bus, (bus, box)]} if box != [1, 2, 3] else {"bus": [(bus, box)]})
    assert model.names == {0: "person"}  # unchanged


def test_bad_images(model, bus, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match=r"class 'dog', exemplar 1: image file not found: .*nope\.jpg"):
        model.set_classes(["dog"], images={"dog": [bus, missing]})
    text = tmp_path / "text.jpg"
    text.write_text("this is not a jpeg\n")
    with pytest.raises(ValueError, match=r"class 'dog', exemplar 0: cannot read image .*text\.jpg"):
        model.set_classes(["dog"], images={"dog": (text, [0, 0, 1, 1])})
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(bus.read_bytes()[:2000])
    with pytest.raises(ValueError, match="class 'dog', exemplar 0: cannot read image"):
        model.set_classes(["dog"], images={"dog": truncated})
    with pytest.raises(ValueError, match="class 'dog', exemplar 0: an ndarray exemplar must be uint8"):
        model.set_classes(["dog"], images={"dog": np.zeros((10, 10, 3), np.float32)})
    with pytest.raises(TypeError, match="class 'dog', exemplar 0: expected a path"):
        model.set_classes(["dog"], images={"dog": [123]})
    with pytest.raises(TypeError, match="class 'dog': images must be"):
        model.set_classes(["dog"], images={"dog": 123})
    with pytest.raises(ValueError, match="class 'dog': empty list"):
        model.set_classes(["dog"], images={"dog": []})


def test_bad_vocabularies(model, bus):
    with pytest.raises(ValueError, match="images given for class 'bus', which is not among the class names"):
        model.set_classes(["person"], images={"bus": bus})
    with pytest.raises(ValueError, match="class 'person' has neither text nor images"):
        model.set_classes(["bus", "person"], images={"bus": bus}, use_text=False)
    with pytest.raises(ValueError, match="class 'person' has neither text nor images"):
        model.set_classes(["person"], use_text=False)
    with pytest.raises(ValueError, match="class 'car' has synonyms"):
        model.set_classes([["car", "automobile"]], images={"car": bus}, use_text=False)
    for alpha in (1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="alpha"):
            model.set_classes(["bus"], images={"bus": bus}, alpha=alpha)
    with pytest.raises(ValueError, match="margin must be a number >= 0"):
        model.set_classes(["bus"], images={"bus": (bus, BUS)}, margin=-0.1)
    with pytest.raises(ValueError, match="alpha= and margin= apply to image prompts"):
        model.set_classes(["bus"], alpha=0.5)
    with pytest.raises(ValueError, match="either as embeddings= or from images="):
        model.set_classes(["bus"], embeddings=torch.randn(1, 512), images={"bus": bus})
    with pytest.raises(TypeError, match="images must be a dict"):
        model.set_classes(["bus"], images=[bus])
    with pytest.raises(ValueError, match="image_prompts must be a non-empty dict"):
        model.predict(bus, image_prompts={})
    with pytest.raises(ValueError, match="apply to image_prompts"):
        model.predict(bus, alpha=0.5)


def test_text_only_clip_has_no_image_tower(model, tiny_clip_file, bus):
    sd = torch.load(tiny_clip_file, map_location="cpu", weights_only=True)
    text_only = CLIPTextEncoder.from_openai_state_dict({k: v for k, v in sd.items() if not k.startswith("visual.")})
    assert not text_only.has_vision
    with pytest.raises(ValueError, match="image prompts need CLIP's image tower.*text-only"):
        model.set_classes(["bus"], images={"bus": bus}, encoder=text_only)
    model.set_classes(["bus"], images={"bus": bus}, alpha=1.0, encoder=text_only)  # alpha=1: text only, no tower
    assert model.model.class_sources == ["text"]


# ----- CLI ------------------------------------------------------------------------------------------------------------
def test_cli_prompt_images(clip_env, bus, tmp_path, capsys):
    assert parse_prompt_images(f"bus:{bus}@17,231,802,768; person:{bus}@48,398,246,905 ;bus:{bus}") == {
        "bus": [(str(bus), [17.0, 231.0, 802.0, 768.0]), str(bus)],
        "person": [(str(bus), [48.0, 398.0, 246.0, 905.0])],
    }
    with pytest.raises(ValueError, match="4 numbers"):
        parse_prompt_images("bus:a.jpg@1,2,3")
    with pytest.raises(ValueError, match="class:image_path"):
        parse_prompt_images("a.jpg")
    common = ["model=yw-v2-n.yaml", f"source={bus}", "imgsz=160", "conf=0.0001", f"project={tmp_path}",
              "verbose=False"]
    assert entrypoint(["predict", *common, "name=img", f"prompt_images=bus:{bus}@17,231,802,768", "margin=0.05"]) == 0
    assert (tmp_path / "img" / "bus.jpg").is_file()
    assert entrypoint(["predict", *common, "name=both", "classes=bus,person",
                       f"prompt_images=bus:{bus}@17,231,802,768", "alpha=0.7"]) == 0
    assert entrypoint(["predict", *common, f"prompt_images=bus:{bus}@900,0,950,10"]) == 2
    assert "class 'bus', exemplar 0: box" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="predict mode only"):
        entrypoint(["val", "model=yw-v2-n.yaml", f"prompt_images=bus:{bus}"])
    with pytest.raises(SystemExit, match="apply to image prompts"):
        entrypoint(["predict", "model=yw-v2-n.yaml", "classes=bus", "alpha=0.5"])


def test_val_restores_image_prompt_bookkeeping(monkeypatch, tiny_clip_file, tmp_path, coco128):
    """Standalone val swaps in the dataset's names and puts back the image-prompt vocabulary exactly."""
    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    from ultralytics.utils import ASSETS

    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["bus"], images={"bus": (ASSETS / "bus.jpg", [0, 200, 800, 800])})
    before = (model.model.class_sources, model.model.image_encoder_id, model.model.txt_feats.clone())
    subset = tmp_path / "sub"
    for split in ("images", "labels"):
        (subset / split).mkdir(parents=True)
    for im in sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:2]:
        (subset / "images" / im.name).symlink_to(im)
        lab = coco128 / "labels" / "val2017" / (im.stem + ".txt")
        if lab.exists():
            (subset / "labels" / lab.name).symlink_to(lab)
    data = tmp_path / "d.yaml"
    import yaml

    names = yaml.safe_load((coco128 / "coco128.yaml").read_text())["names"]
    data.write_text(yaml.safe_dump({"path": str(subset), "train": "images", "val": "images", "names": names}))
    model.val(data=str(data), imgsz=64, batch=2, workers=0, plots=False, verbose=False)
    assert model.model.class_sources == before[0] and model.model.image_encoder_id == before[1]
    assert torch.equal(model.model.txt_feats, before[2]) and model.vocabulary == ["bus"]
