"""Architecture: parameter counts, YAML resolution, numerical parity with Ultralytics' WorldModel, .pt loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ultralytics.nn.tasks import WorldModel

import yw_ext
from tests.conftest import randomize_
from yw_ext.convert import CheckpointError, from_ultralytics
from yw_ext.nn.build import load_model_cfg, resolve_yaml
from yw_ext.nn.model import YWDetectionModel

# Ultralytics' own parameter counts for the same architectures (nc=80), from the issue / upstream YAML comments.
PARAMS = {
    ("yw-v2", "s"): 12_759_880,
    ("yw-v2", "m"): 28_376_158,
    ("yw-v2", "l"): 46_832_050,
    ("yw-v2", "x"): 72_886_377,
    ("yw-v1", "s"): 13_383_496,
    ("yw-v1", "m"): 29_065_310,
    ("yw-v1", "l"): 47_553_970,
    ("yw-v1", "x"): 73_690_217,
}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("family,scale", sorted(PARAMS))
def test_param_counts_match_ultralytics(family, scale):
    assert n_params(YWDetectionModel(f"{family}-{scale}.yaml", verbose=False)) == PARAMS[(family, scale)]


@pytest.mark.parametrize("family", ["yw-v2", "yw-v1", "yw-v2-effneck"])
def test_every_scale_builds_and_xl_is_wider(family):
    counts = {s: n_params(YWDetectionModel(f"{family}-{s}.yaml", verbose=False)) for s in ["n", "x", "xl"]}
    assert counts["n"] < counts["x"] < counts["xl"]


def test_xl_scale_is_official_widen_1_5():
    d = load_model_cfg("yw-v2.yaml", scale="xl")
    assert d["scales"]["xl"] == [1.0, 1.5, 512] and d["scales"]["x"] == [1.0, 1.25, 512]
    m = YWDetectionModel(d, verbose=False)
    assert m.model[0].conv.out_channels == 96  # 64 * 1.5
    assert m.model[9].cv2.conv.out_channels == 768  # min(1024, 512) * 1.5


def test_efficient_neck_has_no_text_in_neck():
    m = YWDetectionModel("yw-v2-effneck-s.yaml", verbose=False)
    kinds = {type(x).__name__ for x in m.model}
    assert "C2fAttn" not in kinds and "WorldDetect" in kinds


@pytest.mark.parametrize("dim", [512, 768])
def test_embed_dim_configurable(dim):
    m = YWDetectionModel(load_model_cfg("yw-v2-n.yaml", embed_dim=dim), verbose=False).eval()
    assert m.embed_dim == dim and m.model[12].attn.gl.in_features == dim
    assert m.model[-1].cv3[0][-1].out_channels == dim
    m.set_classes(["a", "b", "c"], embeddings=torch.randn(3, dim))
    y = m(torch.zeros(1, 3, 64, 64))[0]
    assert y.shape == (1, 4 + 3, 84)


def test_yaml_resolution_and_errors():
    assert resolve_yaml("yw-v2-l.yaml")[1] == "l"
    assert resolve_yaml("yw-v2-xl.yaml")[1] == "xl"
    assert resolve_yaml("yw-v2.yaml")[1] is None
    with pytest.raises(FileNotFoundError, match="yw-v2.yaml"):
        resolve_yaml("nope-s.yaml")
    with pytest.raises(ValueError, match="Unknown scale"):
        load_model_cfg("yw-v2.yaml", scale="q")
    assert "world" not in " ".join(p.name for p in (resolve_yaml("yw-v2.yaml")[0].parent).glob("*.yaml"))


def _upstream(yaml: str, k: int, seed: int = 0):
    torch.manual_seed(seed)
    up = randomize_(WorldModel(yaml, verbose=False), seed).eval()
    txt = F.normalize(torch.randn(1, k, 512, generator=torch.Generator().manual_seed(seed + 1)), dim=-1)
    up.txt_feats = txt
    up.model[-1].nc = k
    return up, txt


@pytest.mark.parametrize(
    "upstream_yaml,ours",
    [("yolov8s-worldv2.yaml", "yw-v2-s.yaml"), ("yolov8l-worldv2.yaml", "yw-v2-l.yaml"), ("yolov8s-world.yaml", "yw-v1-s.yaml")],
)
def test_parity_with_ultralytics_worldmodel(upstream_yaml, ours):
    """Our YAML + forward == Ultralytics' WorldModel on the same random weights and embeddings (<= 1e-5)."""
    k = 5
    up, txt = _upstream(upstream_yaml, k)
    m = YWDetectionModel(ours, verbose=False).eval()
    m.load_state_dict(up.state_dict(), strict=True)
    m.set_classes([f"c{i}" for i in range(k)], embeddings=txt[0])
    x = torch.rand(2, 3, 160, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (ya, pa), (yb, pb) = up(x), m(x)
    assert ya.shape == yb.shape == (2, 4 + k, 20 * 16 + 10 * 8 + 5 * 4)
    assert pa["scores"].abs().max() > 0.5  # logits are not trivially small: the check below can fail
    assert (ya - yb).abs().max().item() <= 1e-5
    assert (pa["scores"] - pb["scores"]).abs().max().item() <= 1e-5
    # the converter path (Ultralytics model object -> yw_ext) gives the same too
    conv = from_ultralytics(up)
    with torch.no_grad():
        assert (conv(x)[0] - ya).abs().max().item() <= 1e-5


def test_synonyms_score_is_max_over_prompts():
    k = 3
    up, txt = _upstream("yolov8s-worldv2.yaml", 4)
    m = from_ultralytics(up)
    e = txt[0]  # (4, D): class 0 has prompts 0 and 3; classes 1 and 2 one prompt each
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ref = up(x)[0]  # (1, 4 + 4, A) scores of the 4 prompts
        g = torch.stack([e[[0, 3]], e[[1, 1]], e[[2, 2]]])  # (K, G, D) padded by repetition
        m.set_classes(["a", "b", "c"], embeddings=g)
        y = m(x)[0]
    assert y.shape[1] == 4 + k and m.prompts_per_class == 2
    assert torch.allclose(y[:, 4], torch.maximum(ref[:, 4], ref[:, 7]), atol=1e-6)
    assert torch.allclose(y[:, 5:7], ref[:, 5:7], atol=1e-6)
    assert torch.allclose(y[:, :4], ref[:, :4], atol=1e-4)


def test_ultralytics_saved_pt_loads_and_matches(tmp_path, assets):
    """A .pt saved by ultralytics.YOLOWorld loads in yw_ext and gives the same outputs and detections."""
    from ultralytics import YOLOWorld as UYOLOWorld

    torch.manual_seed(0)
    ul = UYOLOWorld("yolov8s-worldv2.yaml")
    randomize_(ul.model)
    names = ["person", "bus", "stop sign"]
    ul.model.txt_feats = F.normalize(torch.randn(1, 3, 512), dim=-1)
    ul.model.model[-1].nc = 3
    ul.model.names = dict(enumerate(names))
    path = tmp_path / "yolov8s-worldv2-random.pt"
    ul.save(path)

    ours = yw_ext.YOLOWorld(path)
    theirs = UYOLOWorld(path)
    assert type(ours.model).__name__ == "YWDetectionModel"
    assert list(ours.model.names.values()) == names
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        a, b = ours.model(x)[0], theirs.model(x)[0]
    assert (a - b).abs().max().item() <= 1e-5
    ra = ours.predict(assets / "bus.jpg", imgsz=160, conf=0.01, verbose=False)[0]
    rb = theirs.predict(assets / "bus.jpg", imgsz=160, conf=0.01, verbose=False)[0]
    assert ra.names == rb.names == dict(enumerate(names))
    assert len(ra.boxes) == len(rb.boxes) and len(ra.boxes) > 0
    assert torch.allclose(ra.boxes.data, rb.boxes.data, atol=1e-3)


def test_yw_checkpoint_roundtrip_keeps_vocabulary(tmp_path):
    m = yw_ext.YOLOWorld("yw-v2-n.yaml")
    emb = F.normalize(torch.randn(2, 2, 512), dim=-1)
    m.set_classes(["car", "dog"], embeddings=emb)
    path = tmp_path / "n.pt"
    m.save(path)
    assert not list(tmp_path.glob("*.tmp"))
    m2 = yw_ext.YOLOWorld(path)
    assert m2.model.names == {0: "car", 1: "dog"} and m2.model.prompts_per_class == 2
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a = m.model.eval().half().float()(x)[0]  # saved weights are fp16, as Ultralytics saves them
        b = m2.model(x)[0]
    assert (a - b).abs().max().item() <= 1e-4


def test_bad_checkpoints(tmp_path):
    from ultralytics import YOLO

    det = tmp_path / "plain.pt"
    YOLO("yolov8n.yaml").save(det)
    with pytest.raises(CheckpointError, match="not a YOLO-World model"):
        yw_ext.YOLOWorld(det)
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(det.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        yw_ext.YOLOWorld(bad)
    pth = tmp_path / "yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth"
    torch.save({"meta": {}, "state_dict": {}}, pth)
    with pytest.raises(CheckpointError, match="official YOLO-World"):
        yw_ext.YOLOWorld(pth)


@pytest.mark.parametrize("cfg", ["yw-v2-n.yaml", "yw-v2-seg-n.yaml"])
def test_same_seed_same_weights_whatever_ultralytics_built_before(cfg):
    """Ultralytics' parser leaves ``Detect.legacy`` set on the class after a YOLOv8 build, and ``WorldDetect`` inherits
    it: the same seed used to give other initial weights after ``YOLO("yolov8n.yaml")`` (the seg bus.jpg tests then
    found no detection). yw_ext builds with the class default and puts Ultralytics' value back."""
    from ultralytics import YOLO
    from ultralytics.nn.modules.head import Detect

    def weights():
        torch.manual_seed(0)
        return yw_ext.YOLOWorld(cfg).model.state_dict()

    before = weights()
    YOLO("yolov8n.yaml")  # sets Detect.legacy = True on the class
    assert Detect.legacy is True
    after = weights()
    assert Detect.legacy is True  # restored for Ultralytics
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
