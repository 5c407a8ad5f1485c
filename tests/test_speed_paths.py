"""Speed paths of issue 20 compute what the paths they shortcut compute.

- In-graph class reduction (export ``scores="max"``): each anchor's best logit and class per prompt group, one
  sigmoid; the same raw rows and NMS detections as the full-score graph with ``multi_label=False``, for fixed
  (folded, synonyms) and run-time vocabularies, in ONNX Runtime and in PyTorch.
- The eager fast path of folded models in ``predict`` (``YWPredictor``: head ``score_mode = "max"``) against the
  unmodified full path, and the banded head reduction against the plain one.
- ``yw_ext.runtime.ops.non_max_suppression`` (now reduced along the class axis without a transposed copy).
- The export layout of the reduction (``grouped_max``: a MatMul in ``(B, H * W, C)`` layout, a grouped max over the
  contiguous class axis, padded vocabularies) keeps the first index of the maximum, in PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import pytest
import torch

from tests.test_export import IMGSZ, NAMES, _detector, _emb, _rows, _session, crops, images  # noqa: F401 (fixtures)
from yw_ext.engine.predictor import YWPredictor
from yw_ext.export.quant import head_tail_nodes
from yw_ext.nn import rep as rep_module
from yw_ext.runtime import Detector
from yw_ext.runtime.ops import non_max_suppression

EXACT = 1e-6  # scores of the reduced path vs the full path (the bound)


def _same_rows(a, b) -> None:
    """Identical detections: same count, boxes, classes; scores within ``EXACT``."""
    a, b = _rows(a), _rows(b)
    assert len(a) == len(b), (len(a), len(b))
    if len(a):
        assert (a[:, 5] == b[:, 5]).all()
        assert np.abs(a[:, :4] - b[:, :4]).max() <= 1e-4
        assert np.abs(a[:, 4] - b[:, 4]).max() <= EXACT


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Fixed (3 classes x 2 synonyms, folded) and run-time-vocabulary exports, full and reduced, raw and NMS."""
    d = tmp_path_factory.mktemp("speed")
    fixed = _detector()
    fixed.set_classes(NAMES, embeddings=_emb(3, 2))
    dyn = _detector()
    dyn.set_classes(NAMES, embeddings=_emb(3))
    kw = dict(imgsz=IMGSZ, verbose=False, dynamic=True)
    files = {}
    for name, model, extra in (("fixed", fixed, {}), ("dyn", dyn, {"dynamic_vocab": True})):
        for scores in ("full", "max"):
            files[name, scores, "raw"] = model.export(format="onnx", scores=scores, out=d / f"{name}_{scores}.onnx",
                                                      **kw, **extra)
            files[name, scores, "nms"] = model.export(format="onnx", nms=True, scores=scores, conf=0.25, iou=0.7,
                                                      out=d / f"{name}_{scores}_nms.onnx", **kw, **extra)
    return fixed, files


def _inputs(crops) -> np.ndarray:
    from yw_ext.runtime.ops import letterbox, preprocess

    x = preprocess([letterbox(im, (IMGSZ, IMGSZ))[0] for im in crops])  # (2, 3, IMGSZ, IMGSZ)
    return np.concatenate([x, x[..., ::-1].copy()])  # 4 different images


@pytest.mark.parametrize("vocab", ["fixed", "dyn"])
def test_reduced_graph_equals_full_graph(exports, crops, vocab):
    """Raw rows: max / argmax of the full graph's scores; NMS rows and runtime detections identical."""
    fixed, files = exports
    x = _inputs(crops)
    feeds = {"images": x}
    if vocab == "dyn":  # synonyms at run time: 3 classes x 2 prompts through txt_feats
        feeds["txt_feats"] = _emb(3, 2).reshape(1, 6, 512).numpy()
    full, red = (_session(files[vocab, s, "raw"]).run(None, feeds)[0] for s in ("full", "max"))
    assert full.shape[1] == 4 + (3 if vocab == "fixed" else 6) and red.shape == (4, 6, full.shape[2])
    assert np.array_equal(full[:, :4], red[:, :4])
    assert np.abs(full[:, 4:].max(1) - red[:, 4]).max() <= EXACT
    assert np.array_equal(full[:, 4:].argmax(1), red[:, 5])
    nms_full, nms_red = (_session(files[vocab, s, "nms"]).run(None, feeds)[0] for s in ("full", "max"))
    assert (nms_full[..., 4] > 0).sum() > 8  # the comparison below has rows to compare
    for a, b in zip(nms_full, nms_red):
        _same_rows(a[a[:, 4] > 0], b[b[:, 4] > 0])
    # the torch-free runtime: the same detections from either file (synonyms mapped to classes for "dyn")
    for kind in ("raw", "nms"):
        det_full, det_red = Detector(files[vocab, "full", kind]), Detector(files[vocab, "max", kind])
        if vocab == "dyn":
            for det in (det_full, det_red):
                det.set_classes(NAMES, embeddings=_emb(3, 2).numpy())
        assert det_red.metadata["scores"] == "max" and det_full.metadata["scores"] == "full"
        for a, b in zip(det_full(crops, conf=0.25), det_red(crops, conf=0.25)):
            assert len(a) > 0
            _same_rows(np.c_[a.boxes, a.scores, a.class_ids], np.c_[b.boxes, b.scores, b.class_ids])


def test_reduced_graph_matches_pytorch(exports, crops):
    """ONNX Runtime's reduced rows equal the folded PyTorch head's reduced rows (synonyms: class = prompt // G)."""
    fixed, files = exports
    x = _inputs(crops)
    (y_ort,) = _session(files["fixed", "max", "raw"]).run(None, {"images": x})
    m = copy.deepcopy(fixed.model).eval()
    rep_module.reparameterize(m)
    head = m.model[-1]
    with torch.no_grad():
        y_full = m(torch.from_numpy(x))[0]  # (4, 4 + 3, A): synonyms reduced by the model
        head.score_mode, head.score_groups = "max", 2
        y_red = m(torch.from_numpy(x))[0]  # (4, 6, A)
    assert y_red.shape == (4, 6, y_full.shape[2])
    assert torch.equal(y_red[:, 5], y_full[:, 4:].argmax(1).float())
    assert (y_red[:, 4] - y_full[:, 4:].amax(1)).abs().max().item() <= EXACT
    assert np.abs(y_ort[:, 4] - y_red[:, 4].numpy()).max() <= 1e-3
    agree = (y_ort[:, 5] == y_red[:, 5].numpy()).mean()  # runtimes: equal unless two logits are within rounding
    assert agree >= 0.999 and np.abs(y_ort[:, :4] - y_red[:, :4].numpy()).max() <= 1e-2


@pytest.mark.parametrize("band_bytes", [rep_module.BAND_BYTES, 4096])
def test_eager_head_reduction_equals_full(monkeypatch, band_bytes):
    """The folded head's banded max / argmax (eager fast path) equals the max / argmax of its full output."""
    monkeypatch.setattr(rep_module, "BAND_BYTES", band_bytes)
    torch.manual_seed(0)
    head = rep_module.RepWorldDetect(nc=12, hidden=32, embed=16, with_bn=True, ch=(16, 32, 64)).eval()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    for b in head.cv3:
        torch.nn.init.normal_(b[-1].weight, std=0.5)
    x = [torch.randn(2, c, s, s) for c, s in ((16, 20), (32, 10), (64, 5))]
    with torch.no_grad():
        y_full = head(x)[0]  # (2, 4 + 12, A)
        head.score_mode, head.score_groups = "max", 3
        y_red, preds = head(x)
    assert y_red.shape == (2, 6, y_full.shape[2]) and preds["scores"].shape == (2, 1, y_full.shape[2])
    assert torch.equal(y_red[:, :4], y_full[:, :4])
    assert (y_red[:, 4] - y_full[:, 4:].amax(1)).abs().max().item() <= EXACT
    assert torch.equal(y_red[:, 5], torch.div(y_full[:, 4:].argmax(1), 3, rounding_mode="floor").float())


def _padded(x: torch.Tensor, group: int) -> torch.Tensor:
    """``x`` ``(B, N, K)`` padded on the last axis to a multiple of ``group`` with ``finfo.min`` (``_matmul_max``)."""
    return torch.cat((x, x.new_full((*x.shape[:2], -x.shape[2] % group), torch.finfo(x.dtype).min)), 2)


@pytest.mark.parametrize("k", [3, 80, 300, 1203])
def test_grouped_max_first_index_of_max(k, tmp_path):
    """``grouped_max`` = max over the last axis and the FIRST index of the maximum, also with many exact ties,
    eager and traced to ONNX (ONNX Runtime); the padding never wins."""
    import onnxruntime as ort

    group = rep_module.score_group(k)
    assert group == (16 if k <= 256 else 32)
    x = torch.randint(-2, 3, (2, 40, k), generator=torch.Generator().manual_seed(k)).float()  # ties everywhere
    x[0, 0] = -1e30  # a row below every other value but above the padding
    first = (x == x.amax(2, keepdim=True)).float().argmax(2)  # (2, 40): first index of the max, independently
    best, idx = rep_module.grouped_max(_padded(x, group), group)
    assert torch.equal(best, x.amax(2)) and torch.equal(idx, first)
    assert (first > 0).float().mean() > 0.5 if k > 3 else True  # the first index is not trivially 0

    class Wrap(torch.nn.Module):
        def forward(self, t):
            return rep_module.grouped_max(t, group)

    f = tmp_path / "g.onnx"
    torch.onnx.export(Wrap(), (_padded(x, group),), str(f), input_names=["t"], dynamo=False,
                      dynamic_axes={"t": {0: "b", 1: "n"}})
    xb = torch.cat([x, x.flip(1), x]).numpy()  # another batch size and row count than traced
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    b_ort, i_ort = sess.run(None, {"t": _padded(torch.from_numpy(xb), group).numpy()})
    assert np.array_equal(b_ort, xb.max(2)) and np.array_equal(i_ort, xb.argmax(2))  # numpy: first index too


@pytest.mark.parametrize("with_bn", [True, False])
def test_export_layout_head_reduction_equals_full(with_bn):
    """The folded head's traced path (``export = True``: each last 1x1 conv as a matmul over ``(B, H * W, C + 1)``,
    the bias in the matmul, K = 300 padded to 320) gives the full output's max and first argmax."""
    torch.manual_seed(0)
    head = rep_module.RepWorldDetect(nc=300, hidden=32, embed=16, with_bn=with_bn, ch=(16, 32, 64)).eval()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    for b in head.cv3:
        torch.nn.init.normal_(b[-1].weight, std=0.5)
        torch.nn.init.normal_(b[-1].bias, std=0.3)
    x = [torch.randn(2, c, s, s) for c, s in ((16, 20), (32, 10), (64, 5))]
    with torch.no_grad():
        y_full = head(x)[0]  # (2, 4 + 300, A)
        head.score_mode, head.score_groups, head.export = "max", 2, True
        y_red = head(x)  # export mode: y only
    assert y_red.shape == (2, 6, y_full.shape[2])
    assert torch.equal(y_red[:, :4], y_full[:, :4])
    assert (y_red[:, 4] - y_full[:, 4:].amax(1)).abs().max().item() <= EXACT
    assert torch.equal(y_red[:, 5], torch.div(y_full[:, 4:].argmax(1), 2, rounding_mode="floor").float())
    assert y_full[:, 4:].argmax(1).unique().numel() > 20  # the winners spread over the vocabulary


@pytest.fixture(scope="module")
def large_vocab(tmp_path_factory):
    """A fixed vocabulary of 150 classes x 2 prompts (P = 300: groups of 32, 20 padded scores): raw full / max files."""
    d = tmp_path_factory.mktemp("large")
    model = _detector()
    names = [f"c{i}" for i in range(150)]
    model.set_classes(names, embeddings=_emb(150, 2))
    kw = dict(imgsz=96, verbose=False, dynamic=True)
    return {s: model.export(format="onnx", scores=s, out=d / f"{s}.onnx", **kw) for s in ("full", "max")}


def test_large_vocab_reduced_graph_layout_and_equality(large_vocab, crops):
    """``scores="max"`` at P = 300: the class branches end in one MatMul each with constant ``(C + 1, 320)`` weights,
    every ArgMax reduces a last axis, INT8 placement keeps the same float tail as the full graph, and ONNX Runtime
    gives the full graph's boxes, best scores (within 1e-6) and classes."""
    import onnx

    from yw_ext.runtime.ops import letterbox, preprocess

    full, red = (onnx.load(str(large_vocab[s])).graph for s in ("full", "max"))
    dims = {t.name: list(t.dims) for t in red.initializer}
    mm = [n for n in red.node if n.op_type == "MatMul"]
    assert len(mm) == 3 and all(dims.get(n.input[1], [0, 0])[1] == 320 for n in mm), [dims.get(n.input[1]) for n in mm]
    assert not any(n.op_type == "MatMul" for n in full.node)  # the full graph stays convolutions only
    shapes = {v.name: len(v.type.tensor_type.shape.dim) for v in onnx.shape_inference.infer_shapes(
        onnx.load(str(large_vocab["max"]))).graph.value_info}
    for n in red.node:
        if n.op_type == "ArgMax":
            axis = next(a.i for a in n.attribute if a.name == "axis")
            assert axis in (-1, shapes[n.input[0]] - 1), (n.name, axis, shapes[n.input[0]])

    def tail_ops(g):
        t = head_tail_nodes(g)
        return sorted(n.op_type for n in g.node if n.name in t and n.op_type in ("Conv", "MatMul", "Gemm"))

    assert tail_ops(full) == ["Conv"] * 7 and tail_ops(red) == ["Conv"] * 4 + ["MatMul"] * 3
    x = preprocess([letterbox(im, (96, 96))[0] for im in crops])
    x = np.concatenate([x, x[..., ::-1].copy()])  # 4 images
    y_full, y_red = (_session(large_vocab[s]).run(None, {"images": x})[0] for s in ("full", "max"))
    assert y_full.shape[1] == 4 + 150 and y_red.shape == (4, 6, y_full.shape[2])
    assert np.array_equal(y_full[:, :4], y_red[:, :4])
    assert np.abs(y_full[:, 4:].max(1) - y_red[:, 4]).max() <= EXACT
    assert np.array_equal(y_full[:, 4:].argmax(1), y_red[:, 5])
    assert np.unique(y_red[:, 5]).size >= 3 and y_red[:, 4].std() > 0.01  # varied winners and scores


def test_dynamic_vocab_reduced_graph_large_prompt_counts(exports, crops):
    """The run-time-vocabulary graph (max over the prompts of the same einsum as the full graph): P = 1, 31, 32, 33
    and 300 prompts, one an exact duplicate, give the full graph's first best prompts and best scores within 1e-6.
    (A transposed-matmul layout as in the fixed-vocabulary graph was tried and rounded 1-2 ulps differently at small
    P, up to 1.1e-6 in score: not adopted for run-time vocabularies.)"""
    _, files = exports
    x = _inputs(crops)
    full, red = _session(files["dyn", "full", "raw"]), _session(files["dyn", "max", "raw"])
    for p in (1, 31, 32, 33, 300):
        t = _emb(p, 1, seed=p).reshape(1, p, 512).numpy()
        if p == 33:
            t[0, 32] = t[0, 5]  # an exact duplicate prompt: the first of the two must win
        feeds = {"images": x, "txt_feats": t}
        (a,), (b,) = full.run(None, feeds), red.run(None, feeds)
        assert a.shape[1] == 4 + p and b.shape == (4, 6, a.shape[2])
        assert np.array_equal(a[:, :4], b[:, :4])
        assert np.abs(a[:, 4:].max(1) - b[:, 4]).max() <= EXACT
        assert np.array_equal(a[:, 4:].argmax(1), b[:, 5]) and b[:, 5].max() < p


def test_eager_predict_fast_path_equals_full_path(exports, crops, monkeypatch):
    """``predict`` with a folded model: the reduced path is taken and keeps exactly the full path's detections."""
    fixed, _ = exports
    model = copy.deepcopy(fixed)
    model.reparameterize()
    kw = dict(imgsz=IMGSZ, conf=0.25, iou=0.7, verbose=False)
    fast = model.predict(crops, **kw)
    assert model.predictor._reduced and model.model.model[-1].score_mode == "full"  # restored after the call
    monkeypatch.setattr(YWPredictor, "_reducing_head", lambda self: None)
    slow = model.predict(crops, **kw)
    assert not model.predictor._reduced
    for a, b in zip(slow, fast):
        assert len(a.boxes) > 3
        _same_rows(a.boxes.data.numpy(), b.boxes.data.numpy())
    with torch.no_grad():  # a plain forward after predict is the full output again
        assert model.model.eval()(torch.zeros(1, 3, IMGSZ, IMGSZ))[0].shape[1] == 4 + 3


def test_runtime_nms_matches_ultralytics():
    """``runtime.ops.non_max_suppression`` (class axis reduced in place) equals Ultralytics' NMS."""
    from ultralytics.utils.nms import non_max_suppression as ul_nms

    g = np.random.default_rng(0)
    y = np.concatenate([g.uniform(20, 140, (2, 2, 400)), g.uniform(4, 40, (2, 2, 400)),
                        g.uniform(0, 1, (2, 7, 400)) ** 3], 1).astype(np.float32)
    ours = non_max_suppression(y, 0.25, 0.5)
    ref = ul_nms(torch.from_numpy(y), 0.25, 0.5)
    for a, b in zip(ours, ref):
        assert len(a) == len(b) > 5
        assert np.abs(_rows(a) - _rows(b.numpy())).max() <= 1e-4


def test_int8_body_placement_is_fusable(coco128, tmp_path, images):
    """``quantize=8`` (placement "body"): ONNX Runtime runs every Conv before the head's decoding as QLinearConv
    (integer convolutions) and SiLU as QLinearSigmoid / QLinearMul, the decoding stays float, and
    scores stay close to FP32. The old Conv-only placement leaves most convs in FP32 (the reason it was slower)."""
    import onnx

    from tests.test_export import _letterboxed
    from yw_ext.export.quant import head_tail_nodes, quantize_onnx_static

    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))
    f32 = model.export(format="onnx", out=tmp_path / "m.onnx", imgsz=96, verbose=False)
    data = str(coco128 / "coco128.yaml")

    def fused(path) -> Counter:
        """Op counts of the graph ONNX Runtime actually runs (after its QDQ fusions)."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.optimized_model_filepath = str(path) + ".opt.onnx"
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)

    tail = head_tail_nodes(onnx.load(f32).graph)
    n_convs = sum(n.op_type == "Conv" for n in onnx.load(f32).graph.node)
    assert 7 <= len(tail) < 80  # the head's 6 last convs, the DFL, the decoding
    body = quantize_onnx_static(f32, tmp_path / "body.onnx", data, n_images=4)
    conv = quantize_onnx_static(f32, tmp_path / "conv.onnx", data, n_images=4, placement="conv")
    ops_body, ops_conv = fused(body), fused(conv)
    assert ops_body["QLinearConv"] == n_convs - 7 and ops_body["Conv"] == 7, ops_body  # float: 6 last convs + DFL
    assert ops_body["QLinearSigmoid"] > 0 and ops_body["QLinearMul"] > 0  # SiLU in integers too
    assert ops_conv["Conv"] > n_convs // 2, ops_conv  # Conv-only placement: most convs still run in FP32
    x = _letterboxed(images["bus"], 96).numpy()
    (a,), (b,) = _session(f32).run(None, {"images": x}), _session(body).run(None, {"images": x})
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < 0.1 and np.abs(a[:, :4] - b[:, :4]).max() < 8


@pytest.mark.parametrize("n,classes", [(700, 1), (900, 40)])
def test_runtime_blocked_nms_equals_torchvision(n, classes):
    """``runtime.ops.nms_indices`` (blocked IoU matrix, early stop at ``max_keep``) keeps torchvision's boxes."""
    import torchvision

    from yw_ext.runtime.ops import nms_indices

    g = np.random.default_rng(n)
    xy = g.uniform(0, 320, (n, 2))
    b = np.concatenate([xy, xy + g.uniform(4, 120, (n, 2))], 1).astype(np.float32)
    b += (g.integers(0, classes, n) * 7680.0)[:, None].astype(np.float32)  # class-aware offsets, as predict
    s = g.random(n).astype(np.float32)
    ref = torchvision.ops.nms(torch.from_numpy(b), torch.from_numpy(s), 0.5).numpy()
    ours = nms_indices(b, s, 0.5)
    assert 300 < len(ref) < n and np.array_equal(ours, ref)  # several blocks of 256, some boxes suppressed
    assert np.array_equal(nms_indices(b, s, 0.5, max_keep=100), ref[:100])


def test_runtime_preprocess_one_pass_equals_reference():
    """``runtime.ops.preprocess`` (one strided pass) equals the two-pass float conversion and Ultralytics' formula."""
    from yw_ext.runtime.ops import preprocess

    ims = [np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8) for i in range(2)]
    ref = np.ascontiguousarray(np.stack(ims)[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) / 255.0
    ul = torch.from_numpy(np.ascontiguousarray(np.stack(ims)[..., ::-1].transpose(0, 3, 1, 2))).float() / 255
    out = preprocess(ims)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (2, 3, 48, 64)
    assert np.array_equal(out, ref) and np.array_equal(out, ul.numpy())
