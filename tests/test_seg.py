"""YOLO-World-Seg: model build and outputs, prediction with masks, training (finetune / seghead), validation, to_seg,
folding, and bad input.

Segmentation data is synthetic: filled shapes with known polygons pasted onto COCO128 photos
(``yw_ext.bench.seg_data``); ../shared has box labels only. Text embeddings come from the tiny random CLIP (``env``).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

import yw_ext
from tests.conftest import randomize_
from yw_ext.bench.seg_data import SHAPES, make_shapes_dataset, write_data_yaml
from yw_ext.engine.seg_trainer import SegDataError, check_polygons
from yw_ext.nn.seg import RepWorldSegment, WorldSegment, YWSegmentationModel

TRAIN_ARGS = dict(epochs=1, imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True)


@pytest.fixture(scope="module")
def seg_data(coco128, tmp_path_factory) -> Path:
    """Six COCO128 photos with 1-3 filled shapes each and their polygons (YOLO-seg labels); returns the YAML."""
    root = tmp_path_factory.mktemp("segdata")
    make_shapes_dataset(sorted((coco128 / "images" / "train2017").glob("*.jpg"))[:6], root / "ds", imgsz=96)
    return write_data_yaml(root / "seg.yaml", root / "ds")


def mask_branch_params(ch: tuple[int, ...], nm: int = 32, npr: int = 256) -> int:
    """Parameters of Proto(ch0, npr, nm) + per-level Conv3x3-Conv3x3-Conv1x1 coefficient branches (Conv = conv + BN)."""
    conv = lambda ci, co, k: ci * co * k * k + 2 * co  # noqa: E731  (no conv bias, BN weight + bias)
    proto = conv(ch[0], npr, 3) + (npr * npr * 4 + npr) + conv(npr, npr, 3) + conv(npr, nm, 1)
    c5 = max(ch[0] // 4, nm)
    return proto + sum(conv(c, c5, 3) + conv(c5, c5, 3) + c5 * nm + nm for c in ch)


def test_seg_model_outputs_and_parameter_count():
    m = YWSegmentationModel("yw-v2-seg-n.yaml", verbose=False)
    det = yw_ext.nn.model.YWDetectionModel("yw-v2-n.yaml", verbose=False)
    head = m.model[-1]
    assert type(head) is WorldSegment and m.task == "segment" and head.nm == 32 and head.npr == 256
    n_seg, n_det = (sum(p.numel() for p in x.parameters()) for x in (m, det))
    assert n_seg == 4_864_367 and n_det == 3_695_183  # README table
    assert n_seg - n_det == mask_branch_params((64, 128, 256))
    m.set_classes(["a", "b", "c"], embeddings=torch.randn(3, 2, 512))  # K = 3 classes, G = 2 prompts each
    m.eval()
    (y, proto), preds = m(torch.rand(2, 3, 64, 64))
    assert tuple(y.shape) == (2, 4 + 3 + 32, 84) and tuple(proto.shape) == (2, 32, 16, 16)
    assert tuple(preds["scores"].shape) == (2, 3, 84) and tuple(preds["mask_coefficient"].shape) == (2, 32, 84)
    # class score = max over the class's 2 prompts; the mask coefficients follow the scores unchanged
    raw = m.predict(torch.rand(1, 3, 64, 64), txt_feats=m.txt_feats)[0][0]  # (1, 4 + 6 + 32, A)
    assert raw.shape[1] == 4 + 6 + 32
    m.train()
    out = m(torch.rand(2, 3, 64, 64))
    assert {"boxes", "scores", "mask_coefficient", "proto"} <= set(out)
    with pytest.raises(ValueError, match="detection YAML"):
        YWSegmentationModel("yw-v2-n.yaml", verbose=False)


def test_seg_predict_returns_masks(assets):
    model = _seg_detector(k=2)  # seeded: unseeded random weights and prompts can score every anchor 0.0 exactly
    assert model.task == "segment"
    res = model.predict(str(assets / "bus.jpg"), imgsz=64, conf=0.0, verbose=False)
    r = res[0]
    assert r.masks is not None and len(r.masks) == len(r.boxes) > 0
    assert tuple(r.masks.data.shape[1:]) == (64, 64) and r.names == {0: "person", 1: "bus"}


def test_reparameterize_seg_exact():
    m = YWSegmentationModel("yw-v2-seg-n.yaml", verbose=False)
    randomize_(m)
    m.eval().set_classes(["a", "b", "c"], embeddings=torch.randn(3, 2, 512))
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        (y0, p0), _ = m(x)
        folded = copy.deepcopy(m).reparameterize()
        (y1, p1), _ = folded(x)
    assert type(folded.model[-1]) is RepWorldSegment and folded.folded
    k = 3
    assert (y0[:, :4] - y1[:, :4]).abs().max() <= 1e-3  # boxes, px
    assert (y0[:, 4 : 4 + k] - y1[:, 4 : 4 + k]).abs().max() <= 1e-4  # scores
    masks0 = torch.einsum("bna,bnhw->bahw", y0[:, 4 + k :], p0).sigmoid()  # mask probabilities per anchor
    masks1 = torch.einsum("bna,bnhw->bahw", y1[:, 4 + k :], p1).sigmoid()
    assert (masks0 - masks1).abs().max() <= 1e-4


@pytest.mark.slow
def test_seg_train_finetune_and_val(env, seg_data):
    model = yw_ext.YOLOWorld("yw-v2-seg-n.yaml")
    metrics = model.train(data=str(seg_data), project=str(env / "runs"), name="seg", **TRAIN_ARGS)
    assert type(model.trainer).__name__ == "YWSegTrainer" and "seg_loss" in model.trainer.loss_names
    assert math.isfinite(metrics.box.map) and math.isfinite(metrics.seg.map50)
    reloaded = yw_ext.YOLOWorld(str(Path(model.trainer.save_dir) / "weights" / "best.pt"))
    assert reloaded.task == "segment" and reloaded.vocabulary == list(SHAPES)
    val = reloaded.val(data=str(seg_data), imgsz=64, batch=2, plots=False, project=str(env / "runs"), name="v")
    assert len(val.box.maps) == len(val.seg.maps) == 3  # per class, box and mask
    assert all(math.isfinite(v) for v in (val.box.map, val.box.map50, val.seg.map, val.seg.map50))


@pytest.mark.slow
def test_to_seg_then_seghead_keeps_detector_bitwise(env, seg_data):
    det = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(det.model)
    det.set_classes(["x", "y"], embeddings=torch.randn(2, 512))
    seg = det.to_seg()
    assert seg.task == "segment" and det.task == "detect" and seg.vocabulary == ["x", "y"]
    sd_det, sd_seg = det.model.state_dict(), seg.model.state_dict()
    assert all(torch.equal(v, sd_seg[k]) for k, v in sd_det.items())  # every detector tensor carried over
    new = [k for k in sd_seg if k not in sd_det]
    assert new and all(".proto." in k or ".cv5." in k for k in new)

    before = {k: v.clone() for k, v in sd_seg.items()}
    seg.train(data=str(seg_data), mode="seghead", project=str(env / "runs"), name="sh", **TRAIN_ARGS)
    trainer = seg.trainer
    assert type(trainer).__name__ == "YWSegHeadTrainer"
    branch = trainer.mask_prefixes()
    for net in (yw_ext.seam.unwrap_model(trainer.model), trainer.ema.ema):
        sd = net.state_dict()
        frozen = [k for k in before if not k.startswith(branch)]
        changed = [k for k in frozen if not torch.equal(sd[k].cpu().float(), before[k].float())]
        assert not changed, changed[:5]  # the detector is bitwise unchanged (weights and BatchNorm statistics)
        assert any(not torch.equal(sd[k].cpu(), before[k]) for k in before if k.startswith(branch))


def test_seg_bad_input(env, seg_data, coco128, tmp_path):
    with pytest.raises(ValueError, match="to_seg"):
        yw_ext.YOLOWorld("yw-v2-n.yaml").train(data=str(seg_data), mode="seghead", **TRAIN_ARGS)
    with pytest.raises(ValueError, match="already"):
        yw_ext.YOLOWorld("yw-v2-seg-n.yaml").to_seg()
    # a detection dataset (box labels only) for a seg model
    from tests.test_train import coco_names, link_subset, write_yaml

    root = tmp_path / "det"
    link_subset(coco128, root, n=2)
    data = write_yaml(tmp_path / "det.yaml", coco_names(coco128), root)
    with pytest.raises(ValueError, match="(?i)segment dataset|polygon"):  # Ultralytics' check, or SegDataError
        yw_ext.YOLOWorld("yw-v2-seg-n.yaml").train(data=str(data), project=str(tmp_path / "runs"), **TRAIN_ARGS)


def test_check_polygons_refuses_box_only_labels():
    class Box:  # a dataset whose labels carry boxes but no polygons
        labels = [{"cls": [0], "bboxes": [[0.5, 0.5, 0.2, 0.2]], "segments": []}]

    with pytest.raises(SegDataError, match="polygon"):
        check_polygons(Box(), "det.yaml")
    Box.labels[0]["segments"] = [[[0.1, 0.1], [0.2, 0.1], [0.2, 0.2]]]
    check_polygons(Box(), "seg.yaml")


# ------------------------------------------------------------------------------------------- official seg checkpoints
class OfficialSegBranches(torch.nn.Module):
    """Independent re-implementation of the official seg head additions (as documented in
    ../shared/docs/official-yolo-world.md): per level ``seg_preds.i`` = ConvModule 3x3, ConvModule 3x3, Conv2d 1x1
    (hidden ``max(C0 // 4, nm)``); ``proto_pred`` = conv1 3x3 -> nearest x2 -> conv2 3x3 -> conv3 1x1 (all
    ConvModule, SiLU), from P3."""

    def __init__(self, ch, nm=32, npr=256):
        super().__init__()
        from tests.test_official import ConvModule

        hid = max(ch[0] // 4, nm)
        self.seg_preds = torch.nn.ModuleList(
            torch.nn.Sequential(ConvModule(c, hid, 3, 1, 1), ConvModule(hid, hid, 3, 1, 1), torch.nn.Conv2d(hid, nm, 1))
            for c in ch)
        self.proto_pred = torch.nn.Module()
        self.proto_pred.conv1 = ConvModule(ch[0], npr, 3, 1, 1)
        self.proto_pred.conv2 = ConvModule(npr, npr, 3, 1, 1)
        self.proto_pred.conv3 = ConvModule(npr, nm, 1)

    def forward(self, feats):
        b = feats[0].shape[0]
        coeff = torch.cat([m(x).permute(0, 2, 3, 1).reshape(b, -1, m[-1].out_channels)  # (B, HW, nm), row-major
                           for m, x in zip(self.seg_preds, feats)], 1)
        p = self.proto_pred
        proto = p.conv3(p.conv2(torch.nn.functional.interpolate(p.conv1(feats[0]), scale_factor=2, mode="nearest")))
        return coeff, proto


def test_official_seg_checkpoint_parity_float64(tmp_path, monkeypatch):
    from tests.test_official import official_checkpoint, randomize, save_with_hash, text_embeddings
    from yw_ext.checkpoints.layout import detect_layout
    from yw_ext.checkpoints.official import convert_official

    ref, _ = official_checkpoint("vlpan", False, True, 512, "n", seed=5)
    ref.bbox_head.head_module.add_module("seg", OfficialSegBranches((64, 128, 256)))
    hm = ref.bbox_head.head_module
    hm.seg_preds, hm.proto_pred = hm.seg.seg_preds, hm.seg.proto_pred
    del hm.seg
    randomize(ref, 5)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    assert any(k.startswith("bbox_head.head_module.proto_pred.conv2.bn.") for k in sd)
    layout = detect_layout(sd)
    assert layout.seg == (32, 256) and layout.family == "v2-seg"
    model = convert_official({"meta": {}, "state_dict": sd}, names=["a"])
    assert type(model).__name__ == "YWSegmentationModel"
    txt = text_embeddings(4, 512)
    model.set_classes([f"c{i}" for i in range(4)], embeddings=txt)
    x = torch.rand(2, 3, 96, 128, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref, model = ref.double().eval(), model.double().eval()
    with torch.no_grad():
        boxes, scores = ref(x, txt[None].expand(2, -1, -1).double())
        feats = ref.neck(ref.backbone.image_model(x), txt[None].expand(2, -1, -1).double())
        coeff, proto = OfficialSegBranches.forward(ref.bbox_head.head_module, feats)
        (y, p), _ = model(x)
    xy, wh = y[:, :2].transpose(1, 2), y[:, 2:4].transpose(1, 2)
    ours = torch.cat([xy - wh / 2, xy + wh / 2], -1)  # (B, A, 4) xyxy
    assert (ours - boxes).abs().max() <= 1e-4
    assert (y[:, 4:8].transpose(1, 2) - scores).abs().max() <= 1e-4 and scores.std() > 0.01
    assert (y[:, 8:].transpose(1, 2) - coeff).abs().max() <= 1e-4  # mask coefficients
    assert (p - proto).abs().max() <= 1e-4 and proto.std() > 0.01  # prototypes (nearest x2 == identity ConvT)
    probs = lambda c, q: torch.einsum("ban,bnhw->bahw", c, q).sigmoid()  # noqa: E731 official step 1 at proto size
    assert (probs(y[:, 8:].transpose(1, 2), p) - probs(coeff, proto)).abs().max() <= 1e-4
    # the same file through the public loader: a seg model with task "segment"
    yolo = yw_ext.YOLOWorld(str(save_with_hash({"meta": {}, "state_dict": sd}, tmp_path, "yolo_world_v2_seg_n_test")))
    assert yolo.task == "segment" and type(yolo.model.model[-1]) is WorldSegment
    # a hub alias finds the official file name in the weights folder (no network) and the loader checks its hash:
    # this random file cannot carry the real one's, so it is refused, naming the URL to download again
    from yw_ext.checkpoints.errors import CheckpointError
    from yw_ext.hub import resolve_alias

    monkeypatch.setenv("YW_WEIGHTS_DIR", str(tmp_path / "weights"))
    (tmp_path / "weights").mkdir()
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "weights" / resolve_alias("seg-l-seghead").name)
    with pytest.raises(CheckpointError, match="not with the 5a642d30 .*huggingface.co/wondervictor/YOLO-World/"):
        yw_ext.YOLOWorld("seg-l-seghead")


# ------------------------------------------------------------------------------------------------------------ export
def _box_iou_masks(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-instance IoU of two boolean mask stacks ``(N, H, W)``."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))  # both empty: equal


@pytest.mark.parametrize("dynamic_vocab", [False, True])
def test_seg_onnx_matches_pytorch(tmp_path, dynamic_vocab):
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    model = yw_ext.YOLOWorld("yw-v2-seg-n.yaml")
    randomize_(model.model)
    model.set_classes(["a", "b", "c"], embeddings=torch.randn(3, 2, 512))  # K = 3, two prompts each
    f = model.export(format="onnx", imgsz=(96, 128), dynamic=True, dynamic_vocab=dynamic_vocab,
                     out=str(tmp_path / "seg.onnx"))
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1"]
    net = model.model.eval()
    x = torch.rand(2, 3, 64, 96)  # another batch and size than traced
    feeds = {"images": x.numpy()}
    with torch.no_grad():
        if dynamic_vocab:
            txt = torch.randn(1, 5, 512)  # another vocabulary: P = 5 prompts
            feeds["txt_feats"] = txt.numpy()
            (y, proto), _ = net.predict(x, txt_feats=txt)
        else:
            (y, proto), _ = net(x)
    o0, o1 = sess.run(None, feeds)
    assert o0.shape == tuple(y.shape) and o1.shape == tuple(proto.shape) == (2, 32, 16, 24)
    k = y.shape[1] - 4 - 32
    assert np.abs(o0[:, 4 : 4 + k] - y[:, 4 : 4 + k].numpy()).max() <= 1e-3  # scores
    assert np.abs(o0[:, :4] - y[:, :4].numpy()).max() <= 1e-2  # boxes, px
    p_ort = torch.einsum("bna,bnhw->bahw", torch.from_numpy(o0[:, 4 + k :]), torch.from_numpy(o1)).sigmoid()
    p_pt = torch.einsum("bna,bnhw->bahw", y[:, 4 + k :], proto).sigmoid()  # (B, A, h, w) mask probabilities
    assert (p_ort - p_pt).abs().max() <= 1e-3
    thr = p_pt.median()  # random weights: threshold where masks are neither empty nor full
    m_ort, m_pt = p_ort > thr, p_pt > thr
    iou = _box_iou_masks(m_ort.flatten(0, 1), m_pt.flatten(0, 1))
    assert m_pt.any() and not m_pt.all()  # the masks are not trivially empty or full
    assert iou.min() >= 0.99  # per instance (every anchor's mask at prototype resolution)
    with pytest.raises(NotImplementedError, match="not 'tflite'"):
        model.export(format="tflite")  # seg exports: ONNX, OpenVINO, TensorRT (tests/test_seg_deploy.py)


def _seg_detector(k: int = 3, seed: int = 0) -> yw_ext.YOLOWorld:
    """yw-v2-seg-n, random weights, head scaled as tests/test_export.py's ``_detector`` so that bus.jpg gives a few
    distinct detections (plain random weights score everything far below any threshold)."""
    torch.manual_seed(seed)
    model = yw_ext.YOLOWorld("yw-v2-seg-n.yaml")
    randomize_(model.model, seed)
    head = model.model.model[-1]
    with torch.no_grad():
        for b in head.cv3:  # larger image embeddings: class scores spread over (0, 1)
            b[-1].weight.mul_(10.0)
        for b in head.cv2:  # DFL bins biased to short distances: boxes of 1-3 strides
            b[-1].weight.mul_(3.0)
            b[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
        for c in head.cv4:
            c.bias.fill_(-3.0)
    emb = torch.nn.functional.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(seed + 1)), dim=-1)
    model.set_classes(["person", "bus", "stop sign"][:k], embeddings=emb)
    return model


def _spread_masks_(model: yw_ext.YOLOWorld, x: torch.Tensor) -> None:
    """Random weights give nearly constant prototypes (per-channel spatial std ~2e-3), so every mask is its whole box
    or empty. Amplify the prototype conv and make the coefficient bias orthogonal to the prototypes' mean on ``x``:
    mask logits then vary in sign inside each box (masks fill ~65-75% of it)."""
    head = model.model.model[-1]
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        head.proto.cv3.conv.weight.mul_(30.0)
        (_, proto), _ = model.model.eval()(x)
        mu = proto[0].mean((1, 2))  # (nm,) mean prototype
        for c in head.cv5:
            b = torch.randn(c[-1].bias.shape, generator=g)
            c[-1].bias.copy_(b - (b @ mu) / (mu @ mu) * mu)


def _nms_masks(y: torch.Tensor, proto: torch.Tensor, k: int, hw: tuple[int, int], conf: float = 0.25):
    """Ultralytics' NMS + ``process_mask`` (crop, upsample, > 0.5) on one image: ``(N, 6)`` rows and ``(N, H, W)``."""
    from ultralytics.utils import nms, ops

    det = nms.non_max_suppression(y, conf, 0.7, nc=k, max_det=100)[0]  # (N, 6 + nm)
    masks = ops.process_mask(proto[0], det[:, 6:], det[:, :4], hw, upsample=True) > 0.5  # (N, H, W)
    return det[:, :6], masks


def _pair(d_a: torch.Tensor, d_b: torch.Tensor) -> torch.Tensor:
    """Index into ``d_b`` of each row of ``d_a``: the same class and the nearest box (NMS order may swap near-ties)."""
    dist = (d_a[:, None, :4] - d_b[None, :, :4]).abs().amax(-1)  # (Na, Nb) box distance, px
    dist[d_a[:, None, 5] != d_b[None, :, 5]] = float("inf")
    idx = dist.argmin(1)
    assert len(set(idx.tolist())) == len(idx), "two detections matched the same one"
    return idx


def test_seg_onnx_matches_pytorch_on_bus(tmp_path, assets):
    """ONNX Runtime == PyTorch on bus.jpg after NMS and mask assembly: scores <= 1e-3, boxes <= 1e-2 px, per-instance
    mask IoU >= 0.99 (masks at input size, Ultralytics' ``process_mask``).

    conf 0.5: random weights give the letterbox's flat gray border a plateau of equal scores near 0.31, and NMS
    breaks such ties in an order that differs between backends; above it, the scores are distinct."""
    ort = pytest.importorskip("onnxruntime")
    from tests.test_export import _letterboxed

    model = _seg_detector()
    x = _letterboxed(assets / "bus.jpg", 160)  # (1, 3, 160, 160)
    _spread_masks_(model, x)
    f = model.export(format="onnx", imgsz=160, out=str(tmp_path / "seg.onnx"))
    with torch.no_grad():
        (y, proto), _ = model.model.eval()(x)
    o0, o1 = ort.InferenceSession(f, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    d_pt, m_pt = _nms_masks(y, proto, 3, (160, 160), conf=0.5)
    d_ort, m_ort = _nms_masks(torch.from_numpy(o0), torch.from_numpy(o1), 3, (160, 160), conf=0.5)
    assert 3 <= len(d_pt) <= 100 and len(d_ort) == len(d_pt)  # a few detections, as many
    j = _pair(d_pt, d_ort)
    d_ort, m_ort = d_ort[j], m_ort[j]  # the same ones, in PyTorch's order
    assert torch.equal(d_ort[:, 5], d_pt[:, 5])  # classes
    assert (d_ort[:, 4] - d_pt[:, 4]).abs().max() <= 1e-3  # scores
    assert (d_ort[:, :4] - d_pt[:, :4]).abs().max() <= 1e-2  # boxes, px
    assert m_pt.flatten(1).any(1).all()  # every instance has a non-empty mask
    box = d_pt[:, :4].clamp(0, 160)
    fill = m_pt.flatten(1).sum(1) / ((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]))  # mask area / box area
    assert fill.max() < 0.95  # and not just its box
    assert _box_iou_masks(m_ort, m_pt).min() >= 0.99  # per instance
