"""Export and deployment (yw_ext.export, yw_ext.runtime): ONNX Runtime vs PyTorch, run-time vocabularies, NMS in the
graph, Ultralytics loading, the torch-free runtime, the CLIP text encoder, TensorRT's CPU-side parts, bad inputs.

Models are yw-v2-n with random weights whose head is made well-conditioned (``_detector``): spread class scores and
small, varied boxes. Plain random heads give near-constant scores and image-sized boxes, so NMS on them is decided
by float rounding and no two runtimes could agree on kept boxes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import yw_ext
from tests.conftest import ROOT, randomize_

SCORE_TOL = 1e-3  # class scores (sigmoid), ONNX Runtime vs PyTorch
BOX_TOL = 1e-2  # boxes, pixels of the network input
IMGSZ = 160
NAMES = ["person", "bus", "stop sign"]


def _detector(seed: int = 0) -> yw_ext.YOLOWorld:
    """yw-v2-n, random weights, head scaled so detections are sparse and distinct (see the module docstring)."""
    torch.manual_seed(seed)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(model.model, seed)
    head = model.model.model[-1]
    with torch.no_grad():
        for b in head.cv3:  # larger image embeddings: class scores spread over (0, 1)
            b[-1].weight.mul_(10.0)
        for b in head.cv2:  # DFL bins biased to short distances: boxes of 1-3 strides that vary with the image
            b[-1].weight.mul_(3.0)
            b[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
        for c in head.cv4:
            c.bias.fill_(-3.0)
    return model


def _emb(k: int, g: int = 1, seed: int = 1) -> torch.Tensor:
    e = F.normalize(torch.randn(k, g, 512, generator=torch.Generator().manual_seed(seed)), dim=-1)
    return e[:, 0] if g == 1 else e


def _letterboxed(path: Path, size: int = IMGSZ) -> torch.Tensor:
    """Image -> (1, 3, size, size) RGB [0, 1], Ultralytics' LetterBox (the static-shape ONNX input)."""
    from ultralytics.data.augment import LetterBox

    im = LetterBox((size, size), auto=False)(image=cv2.imread(str(path)))
    return torch.from_numpy(np.ascontiguousarray(im[..., ::-1].transpose(2, 0, 1))).float()[None] / 255


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _rows(r) -> np.ndarray:
    """Kept boxes of an Ultralytics Results / (N, 6) array as rows sorted by class, then coordinates."""
    d = r.boxes.data.numpy() if hasattr(r, "boxes") else np.asarray(r)
    d = d[:, :6].astype(np.float64)
    return d[np.lexsort(np.round(d[:, [3, 2, 1, 0, 5]].T, 1))]


def _same_kept(a, b, box_tol: float, score_tol: float = SCORE_TOL) -> None:
    a, b = _rows(a), _rows(b)
    assert len(a) == len(b), (len(a), len(b))
    if len(a):
        assert (a[:, 5] == b[:, 5]).all()
        assert np.abs(a[:, :4] - b[:, :4]).max() <= box_tol
        assert np.abs(a[:, 4] - b[:, 4]).max() <= score_tol


@pytest.fixture(scope="module")
def images(assets) -> dict[str, Path]:
    return {"bus": assets / "bus.jpg", "zidane": assets / "zidane.jpg"}


@pytest.fixture(scope="module")
def crops(images) -> list[np.ndarray]:
    """bus / zidane cropped so that rect letterboxing at IMGSZ needs no padding (padding rows are constant input,
    so a random model scores them all alike: exact score ties that NMS breaks by float rounding)."""
    return [cv2.imread(str(images["bus"]))[:1012], cv2.imread(str(images["zidane"]))[:768]]


@pytest.fixture(scope="module")
def fixed(tmp_path_factory):
    """A model with synonyms (3 classes x 2 prompts) and its exports: static, dynamic, dynamic + NMS."""
    d = tmp_path_factory.mktemp("fixed")
    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3, 2))
    kw = dict(imgsz=IMGSZ, verbose=False)
    files = {
        "static": model.export(format="onnx", out=d / "static.onnx", **kw),
        "dynamic": model.export(format="onnx", dynamic=True, out=d / "dynamic.onnx", **kw),
        "nms": model.export(format="onnx", dynamic=True, nms=True, conf=0.25, iou=0.7, out=d / "nms.onnx", **kw),
    }
    return model, {k: Path(v) for k, v in files.items()}


@pytest.fixture(scope="module")
def dynvocab(tmp_path_factory):
    """A model with a 3-class vocabulary and its run-time-vocabulary exports (raw and NMS), dynamic batch."""
    d = tmp_path_factory.mktemp("dynvocab")
    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))
    kw = dict(imgsz=IMGSZ, verbose=False, dynamic=True, dynamic_vocab=True)
    raw = model.export(format="onnx", out=d / "dv.onnx", **kw)
    nms = model.export(format="onnx", nms=True, out=d / "dv_nms.onnx", **kw)
    return model, Path(raw), Path(nms)


# ------------------------------------------------------------------------------------------- fixed vocabulary
def test_fixed_vocab_onnx_matches_pytorch(fixed, images):
    """Folded, baked vocabulary (synonyms reduced in the graph): one input, opset >= 17, metadata, ORT == PyTorch."""
    import onnx

    model, files = fixed
    proto = onnx.load(str(files["static"]))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & {"MatMul", "Einsum", "Gemm"}, ops  # folded: no text math
    meta = {p.key: p.value for p in proto.metadata_props}
    assert eval(meta["names"]) == dict(enumerate(NAMES)) and meta["task"] == "detect"
    assert meta["stride"] == "32" and eval(meta["imgsz"]) == [IMGSZ, IMGSZ] and meta["vocab"] == "fixed"
    assert not model.model.folded and model.model.prompts_per_class == 2  # the user's model is untouched
    sess = _session(files["static"])
    for path in images.values():
        x = _letterboxed(path)
        (y,) = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model.model.eval()(x)[0].numpy()
        assert y.shape == ref.shape == (1, 4 + 3, 525)
        assert np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL
        assert np.abs(y[:, :4] - ref[:, :4]).max() <= BOX_TOL
        assert ref[:, 4:].std() > 0.05  # the scores vary: a wrong graph cannot hide in a constant


def test_dynamic_batch_same_boxes_per_image(fixed, images):
    model, files = fixed
    sess = _session(files["dynamic"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    x = torch.cat([_letterboxed(p) for p in images.values()])  # (2, 3, 160, 160)
    singles = [sess.run(None, {"images": x[i : i + 1].numpy()})[0] for i in range(2)]
    (y4,) = sess.run(None, {"images": torch.cat([x, x.flip(0)]).numpy()})  # bus, zidane, zidane, bus
    with torch.no_grad():
        ref = model.model.eval()(x)[0].numpy()
    for j, i in enumerate([0, 1, 1, 0]):
        assert np.abs(y4[j] - singles[i][0]).max() <= 1e-4
        assert np.abs(y4[j, 4:] - ref[i, 4:]).max() <= SCORE_TOL and np.abs(y4[j, :4] - ref[i, :4]).max() <= BOX_TOL


def test_ultralytics_and_yw_ext_load_the_onnx(fixed, images):
    """``ultralytics.YOLO(file)`` and ``yw_ext.YOLOWorld(file)`` predict with our class names, as PyTorch does."""
    import ultralytics

    model, files = fixed
    kw = dict(imgsz=IMGSZ, conf=0.25, verbose=False)
    src = [str(p) for p in images.values()]
    ref = model.predict(src, **kw)
    for loaded in (ultralytics.YOLO(str(files["dynamic"]), task="detect"), yw_ext.YOLOWorld(files["dynamic"])):
        res = loaded.predict(src, **kw)
        assert all(r.names == dict(enumerate(NAMES)) for r in res)
        assert all(len(r.boxes) > 0 for r in res)
        for a, b in zip(ref, res):  # same rect letterbox as PyTorch (dynamic shapes); gain <= 1/6 -> px x 8
            _same_kept(a, b, box_tol=8 * BOX_TOL)
    r = ultralytics.YOLO(str(files["static"]), task="detect").predict(src, **kw)
    assert r[0].names == dict(enumerate(NAMES)) and len(r[0].boxes) > 0


def test_nms_variant_keeps_the_boxes_predict_keeps(fixed, crops):
    """``nms=True``: (B, max_det, 6) in the graph, dynamic batch; the same kept boxes as PyTorch ``predict``."""
    import ultralytics
    from ultralytics.utils.nms import non_max_suppression

    model, files = fixed
    sess = _session(files["nms"])
    assert [o.shape for o in sess.get_outputs()] == [["batch", 300, 6]]
    kw = dict(imgsz=IMGSZ, conf=0.25, iou=0.7, verbose=False)
    ref = model.predict(crops, **kw)
    res = ultralytics.YOLO(str(files["nms"]), task="detect").predict(crops, **kw)
    assert all(len(r.boxes) > 3 for r in ref)
    for a, b in zip(ref, res):
        _same_kept(a, b, box_tol=8 * BOX_TOL)
    # the graph's NMS is exactly Ultralytics' NMS of the same raw output, for every image of a batch
    pre = model.predictor.preprocess([crops[0]])  # (1, 3, 160, 128)
    x = np.concatenate([pre.numpy(), pre.numpy()[..., ::-1, :], pre.numpy()[..., ::-1]])  # 3 different images
    (y_raw,) = _session(files["dynamic"]).run(None, {"images": x})
    (y_nms,) = sess.run(None, {"images": x})
    ours = non_max_suppression(torch.from_numpy(y_raw), 0.25, 0.7, max_det=300)
    for a, b in zip(ours, y_nms):
        b = b[b[:, 4] > 0]
        assert len(a) == len(b) > 0
        assert np.abs(_rows(a.numpy()) - _rows(b)).max() <= 1e-4


# ----------------------------------------------------------------------------------------- run-time vocabulary
def test_dynamic_vocab_one_file_serves_k3_and_k80(dynvocab, images):
    model, raw, _ = dynvocab
    sess = _session(raw)
    assert [i.name for i in sess.get_inputs()] == ["images"]  # txt_feats has a default value (the vocabulary) ...
    assert [(i.name, i.shape) for i in sess.get_overridable_initializers()] == [("txt_feats", ["text_batch",
                                                                                              "prompts", 512])]
    x = torch.cat([_letterboxed(p) for p in images.values()])
    for k in (3, 80):
        t = _emb(k, seed=k)[None]  # (1, K, D)
        with torch.no_grad():
            ref = model.model.eval().predict(x, txt_feats=t)[0].numpy()
        for b in (1, 4):
            xb = torch.cat([x, x])[:b] if b == 4 else x[:1]
            (y,) = sess.run(None, {"images": xb.numpy(), "txt_feats": t.numpy()})
            r = np.concatenate([ref, ref])[:b]
            assert y.shape == (b, 4 + k, 525)
            assert np.abs(y[:, 4:] - r[:, 4:]).max() <= SCORE_TOL and np.abs(y[:, :4] - r[:, :4]).max() <= BOX_TOL
        (yb,) = sess.run(None, {"images": x.numpy(), "txt_feats": t.expand(2, -1, -1).numpy()})  # (B, K, D) text
        assert np.abs(yb[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL
    (y0,) = sess.run(None, {"images": x.numpy()})  # ... so images alone use the exported vocabulary
    with torch.no_grad():
        ref = model.model(x)[0].numpy()
    assert np.abs(y0[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL
    # NMS graph with a run-time vocabulary: K = 80, batch 2
    (n,) = _session(dynvocab[2]).run(None, {"images": x.numpy(), "txt_feats": _emb(80, seed=80)[None].numpy()})
    assert n.shape == (2, 300, 6) and (n[..., 4] > 0).sum() > 0 and n[..., 5].max() < 80


def test_dynamic_vocab_lvis_size_and_metadata(dynvocab, images):
    model, raw, _ = dynvocab
    meta = _session(raw).get_modelmeta().custom_metadata_map
    assert meta["vocab"] == "dynamic" and int(meta["embed_dim"]) == 512
    assert int(meta["max_prompts"]) == yw_ext.vocab.MAX_PROMPTS and eval(meta["default_classes"]) == NAMES
    x = _letterboxed(images["bus"], 96)
    t = _emb(1203, seed=3)[None]
    (y,) = _session(raw).run(None, {"images": x.numpy(), "txt_feats": t.numpy()})
    with torch.no_grad():
        ref = model.model.eval().predict(x, txt_feats=t)[0].numpy()
    assert y.shape == (1, 4 + 1203, 189) and np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL


@pytest.mark.parametrize("dynamic", [False, True], ids=["fixed", "dynamic"])
@pytest.mark.parametrize("batch", [1, 2])
def test_dynamic_vocab_export_batch(tmp_path, images, crops, batch, dynamic):
    """Run-time vocabulary exported with ``batch=B``: one ``(1, K, D)`` vocabulary is broadcast to every image in
    the graph. A fixed batch declares ``txt_feats`` ``(1, K, D)``; a dynamic batch takes ``(1 or B, K, D)``. ONNX
    Runtime == PyTorch, also with images alone (the stored vocabulary), through ``Detector`` and in the TensorRT
    profile. (A fixed batch of 2 used to declare a dynamic text batch that onnxslim had specialised to 2: the
    stored vocabulary and any ``(1, K, D)`` input failed in a Reshape.)"""
    from yw_ext.export.tensorrt import engine_build_args, onnx_inputs
    from yw_ext.runtime import Detector

    sz, tol = 96, SCORE_TOL
    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))
    f = model.export(format="onnx", dynamic_vocab=True, batch=batch, dynamic=dynamic, imgsz=sz, verbose=False,
                     out=tmp_path / "dv.onnx")
    sess = _session(f)
    x = torch.cat([_letterboxed(p, sz) for p in images.values()] * 2)  # bus, zidane, bus, zidane
    x = x + 0.05 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))  # four different images
    model.model.eval()
    for n in ([batch, 3] if dynamic else [batch]):  # image batches
        xb = x[:n]
        for k in (3, 80):
            for tb in ([1, n] if dynamic else [1]):  # text batches the input declares
                t = (_emb(k, seed=k)[None] if tb == 1 else torch.stack([_emb(k, seed=k + i) for i in range(tb)]))
                with torch.no_grad():
                    ref = model.model.predict(xb, txt_feats=t)[0].numpy()  # (n, 4 + k, A)
                (y,) = sess.run(None, {"images": xb.numpy(), "txt_feats": t.numpy()})
                assert y.shape == ref.shape == (n, 4 + k, 189)
                assert np.abs(y - ref).max() <= tol, (n, k, tb, np.abs(y - ref).max())
        (y0,) = sess.run(None, {"images": xb.numpy()})  # the stored (1, K, D) vocabulary, broadcast to n images
        with torch.no_grad():
            ref = model.model(xb)[0].numpy()
        assert y0.shape == (n, 7, 189) and np.abs(y0 - ref).max() <= tol
    txt = {i.name: i.shape for i in sess.get_overridable_initializers()}["txt_feats"]
    assert txt == (["text_batch", "prompts", 512] if dynamic else [1, "prompts", 512])
    assert sess.get_inputs()[0].shape == (["batch", 3, "height", "width"] if dynamic else [batch, 3, sz, sz])
    if not dynamic and batch > 1:  # one vocabulary per batch: a per-image text batch is refused, clearly
        with pytest.raises(Exception, match="txt_feats"):
            sess.run(None, {"images": x[:batch].numpy(), "txt_feats": _emb(3)[None].expand(batch, -1, -1).numpy()})
    # the torch-free runtime: 3 images through a (fixed or dynamic) batch of `batch`, a run-time vocabulary; one
    # image shape, so a batch letterboxes each image as a call with it alone does
    det = Detector(f).set_classes(["person", "bus", "tie", "car"], embeddings=_emb(4, seed=4).numpy())
    ims = [crops[0], np.ascontiguousarray(crops[0][:, ::-1]), np.ascontiguousarray(crops[0][::-1])]
    many = det(ims, conf=0.25, batch=batch)
    one = [det(im, conf=0.25)[0] for im in ims]
    assert sum(len(d.scores) for d in many) > 0
    for a, b in zip(many, one):
        _same_kept(np.c_[a.boxes, a.scores, a.class_ids], np.c_[b.boxes, b.scores, b.class_ids], box_tol=1e-2)
    if not dynamic and batch > 1:
        with pytest.raises(ValueError, match=r"\(1, P, D\)"):
            det.forward(x[:batch].numpy(), np.stack([_emb(4, seed=4).numpy()] * batch))
    # TensorRT profile from the exported inputs: the text batch follows the images' batch
    args = engine_build_args(onnx_inputs(f, include_defaults=True), batch=batch, imgsz=sz, dynamic=dynamic,
                             prompts=(1, 3, 80))
    prof = args["profiles"][0]
    if dynamic:
        assert prof["images"] == ((1, 3, 32, 32), (batch, 3, sz, sz), (batch, 3, 2 * sz, 2 * sz))
        assert prof["txt_feats"] == ((1, 1, 512), (1, 3, 512), (batch, 80, 512))
    else:
        assert "images" not in prof and prof["txt_feats"] == ((1, 1, 512), (1, 3, 512), (1, 80, 512))
    assert args["calibration_shapes"] == {"images": (batch, 3, sz, sz), "txt_feats": (1, 3, 512)}


def test_v1_exports_with_dynamic_batch(tmp_path):
    """YOLO-World v1 (image-pooling attention; Ultralytics exports no v1): partially folded or run-time vocabulary,
    dynamic batch at a fixed image size (adaptive pooling becomes explicit slices; 128 is not a multiple of 3 x 32)."""
    torch.manual_seed(0)
    model = yw_ext.YOLOWorld("yw-v1-n.yaml")
    randomize_(model.model)
    model.set_classes(["a", "b", "c", "d"], embeddings=_emb(4))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    kw = dict(imgsz=128, dynamic=True, verbose=False)
    sess = _session(model.export(format="onnx", out=tmp_path / "v1.onnx", **kw))
    assert sess.get_inputs()[0].shape == ["batch", 3, 128, 128]
    with torch.no_grad():
        ref = model.model.eval()(x)[0].numpy()
    (y,) = sess.run(None, {"images": x.numpy()})
    assert np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL and np.abs(y[:, :4] - ref[:, :4]).max() <= BOX_TOL
    t = _emb(9, seed=9)[None]
    with torch.no_grad():
        ref = model.model.predict(x, txt_feats=t)[0].numpy()
    (y,) = _session(model.export(format="onnx", dynamic_vocab=True, out=tmp_path / "v1d.onnx", **kw)).run(
        None, {"images": x.numpy(), "txt_feats": t.numpy()})
    assert y.shape == (2, 4 + 9, 336) and np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL
    # a fixed size (the pools become slices too) and a fixed batch of 2: one (1, K, D) vocabulary
    kw = {**kw, "dynamic": False, "batch": 2}
    (y,) = _session(model.export(format="onnx", dynamic_vocab=True, out=tmp_path / "v1f.onnx", **kw)).run(
        None, {"images": x.numpy(), "txt_feats": t.numpy()})
    assert y.shape == (2, 4 + 9, 336) and np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL


# --------------------------------------------------------------------------------------------------- runtime
def test_runtime_matches_ultralytics_predict(fixed, dynvocab, crops, images):
    """yw_ext.runtime's letterbox / NMS / scaling reproduce Ultralytics' predictor on the same file."""
    import ultralytics

    from yw_ext.runtime import Detector

    _, files = fixed
    kw = dict(imgsz=IMGSZ, conf=0.25, verbose=False)
    for f in (files["static"], files["dynamic"], files["nms"]):
        det = Detector(f)
        assert det.vocabulary == NAMES and not det.dynamic_vocab
        ours = det(crops, conf=0.25)
        ref = ultralytics.YOLO(str(f), task="detect").predict(crops, **kw)
        for a, b in zip(ours, ref):
            assert a.orig_shape == b.orig_shape
            _same_kept(np.c_[a.boxes, a.scores, a.class_ids], b, box_tol=1e-3, score_tol=1e-6)
    # synonyms at run time: 2 prompts per class = the max over them, as the PyTorch model does
    model, raw, _ = dynvocab
    det = Detector(raw).set_classes(NAMES, embeddings=_emb(3, 2).numpy())
    ref_model = _detector()
    ref_model.set_classes(NAMES, embeddings=_emb(3, 2))
    for a, b in zip(det(crops, conf=0.25), ref_model.predict(crops, **kw)):
        _same_kept(np.c_[a.boxes, a.scores, a.class_ids], b, box_tol=8 * BOX_TOL)


_NO_TORCH = r"""
import json, sys
sys.modules["torch"] = None          # `import torch` raises ImportError
sys.modules["ultralytics"] = None
import yw_ext
try:
    yw_ext.YOLOWorld
except ImportError as e:
    guard = str(e)
from yw_ext.runtime import Detector, TextEncoder
det, enc, images = sys.argv[1], sys.argv[2], sys.argv[3:]
d = Detector(det, text_encoder=enc).set_classes(["person", ["bus", "coach"], "stop sign"])
out = [dict(boxes=r.boxes.tolist(), scores=r.scores.tolist(), classes=r.class_ids.tolist(), labels=r.labels)
       for r in d(images, conf=0.25)]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "ultralytics"} and sys.modules[m] is not None)
print(json.dumps(dict(results=out, loaded=loaded, guard=guard, names=d.vocabulary)))
"""


def test_runtime_without_torch(dynvocab, images, tmp_path, tiny_clip_file):
    """A subprocess where importing torch (and ultralytics) fails: text encoder + tokenizer + detector, end to end."""
    from yw_ext.export.text import export_text_encoder
    from yw_ext.runtime import Detector
    from yw_ext.text import load_clip

    _, raw, _ = dynvocab
    enc = export_text_encoder(tiny_clip_file, tmp_path / "clip_text.onnx")
    assert (tmp_path / "bpe_simple_vocab_16e6.txt.gz").is_file()
    srcs = [str(p) for p in images.values()]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", _NO_TORCH, str(raw), enc, *srcs], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    assert got["loaded"] == [] and "needs PyTorch" in got["guard"] and got["names"] == NAMES
    # the same vocabulary encoded by PyTorch (open_clip tokenizer + CLIP) and fed as embeddings, in this process
    clip = load_clip(tiny_clip_file)
    prompts = ["person", "person", "bus", "coach", "stop sign", "stop sign"]  # class-major, padded with the first
    emb = clip.encode(prompts).view(3, 2, -1).numpy()
    ref = Detector(raw).set_classes(NAMES, embeddings=emb)(srcs, conf=0.25)
    assert sum(len(r["scores"]) for r in got["results"]) > 0
    for r, e in zip(got["results"], ref):
        _same_kept(np.c_[np.asarray(r["boxes"]).reshape(-1, 4), r["scores"], r["classes"]],
                   np.c_[e.boxes, e.scores, e.class_ids], box_tol=1e-2, score_tol=1e-4)


def test_tokenizer_equals_open_clip():
    from open_clip.tokenizer import SimpleTokenizer

    from yw_ext.runtime import Tokenizer

    texts = ["a photo of a dog", "Traffic Light", "hot-dog &amp; café", "  many   spaces\tand\nlines ",
             "naïve 日本語 🚌 bus", "it's 3 o'clock, 42nd street!!", "x" * 300, "", "person"]
    assert (Tokenizer()(texts) == SimpleTokenizer()(texts).numpy()).all()


def test_text_encoder_onnx_equals_pytorch(tmp_path, tiny_clip_file, monkeypatch):
    """``yw export model=clip``: tokens -> normalised embeddings, within 1e-4 of the PyTorch encoder."""
    from yw_ext.cli import run
    from yw_ext.runtime import TextEncoder
    from yw_ext.text import load_clip

    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))  # the clip= default
    out = run(["export", "model=clip", f"out={tmp_path / 'text.onnx'}"])
    enc = load_clip(tiny_clip_file)
    texts = ["person", "a photo of a traffic light", "bus", "x " * 100, "hot dog", "stop sign"]
    tokens = enc.tokenize(texts)
    (e,) = _session(out).run(None, {"tokens": tokens.numpy()})
    ref = enc.encode(texts).numpy()
    assert e.shape == (6, 512) and np.abs(e - ref).max() <= 1e-4
    te = TextEncoder(out)
    assert te.identity == enc.identity and np.abs(te.encode(texts) - ref).max() <= 1e-4
    with pytest.raises(SystemExit, match="unknown argument"):
        run(["export", "model=clip", "imgsz=320"])


# ------------------------------------------------------------------------------------------------- TensorRT
def test_tensorrt_profiles_and_builder_args():
    from yw_ext.export.tensorrt import engine_build_args

    static = engine_build_args({"images": [1, 3, 640, 640]}, precision=16)
    assert static == {"profiles": [{}], "flags": ["FP16"], "workspace_bytes": None,
                      "calibration_shapes": {"images": (1, 3, 640, 640)}}
    dyn = engine_build_args({"images": ["batch", 3, "height", "width"]}, batch=8, imgsz=640, dynamic=True,
                            precision=8, workspace=2)
    assert dyn["profiles"][0]["images"] == ((1, 3, 32, 32), (8, 3, 640, 640), (8, 3, 1280, 1280))
    assert dyn["flags"] == ["INT8", "FP16"] and dyn["workspace_bytes"] == 2 << 30
    dv = engine_build_args({"images": ["batch", 3, 640, 640], "txt_feats": ["text_batch", "prompts", 512]},
                           batch=4, imgsz=640, prompts=(1, 80, 1203))
    assert dv["profiles"][0] == {"images": ((1, 3, 640, 640), (4, 3, 640, 640), (4, 3, 640, 640)),
                                 "txt_feats": ((1, 1, 512), (1, 80, 512), (4, 1203, 512))}
    assert dv["calibration_shapes"]["txt_feats"] == (1, 80, 512)
    # fixed batch 2: txt_feats (1, K, D), broadcast in the graph; only K gets a range (whatever batch= says)
    fb = engine_build_args({"images": [2, 3, 640, 640], "txt_feats": [1, "prompts", 512]}, batch=4,
                           prompts=(1, 80, 1203))
    assert fb["profiles"][0] == {"txt_feats": ((1, 1, 512), (1, 80, 512), (1, 1203, 512))}
    assert fb["calibration_shapes"] == {"images": (2, 3, 640, 640), "txt_feats": (1, 80, 512)}
    # a dynamic text batch next to a fixed image batch ranges over [1, that batch], not over batch=
    tb = engine_build_args({"images": [2, 3, 640, 640], "txt_feats": ["text_batch", "prompts", 512]}, batch=1,
                           prompts=(1, 80, 1203))
    assert tb["profiles"][0]["txt_feats"] == ((1, 1, 512), (1, 80, 512), (2, 1203, 512))
    assert engine_build_args({"images": [2, 3, 64, 64], "txt_feats": [2, 3, 512]})["profiles"] == [{}]
    with pytest.raises(ValueError, match="neither 1 nor the images' batch"):
        engine_build_args({"images": [2, 3, 640, 640], "txt_feats": [3, "prompts", 512]}, prompts=(1, 80, 1203))
    with pytest.raises(ValueError, match="neither 1 nor the images' batch"):
        engine_build_args({"images": ["batch", 3, 640, 640], "txt_feats": [2, 3, 512]}, batch=4)
    with pytest.raises(ValueError, match="no optimisation profile for it: pass prompts"):
        engine_build_args({"images": [1, 3, 640, 640], "txt_feats": [1, "prompts", 512]})
    with pytest.raises(ValueError, match="dynamic=True"):
        engine_build_args({"images": [1, 3, "h", "w"]})


def test_onnx_prepared_for_tensorrt(dynvocab, tmp_path):
    """The default vocabulary is stripped (TensorRT would freeze it as weights); EfficientNMS_TRT is in the graph."""
    import onnx

    from yw_ext.export.tensorrt import onnx_inputs, prepare_onnx_for_tensorrt

    model, raw, _ = dynvocab
    info = prepare_onnx_for_tensorrt(raw, tmp_path / "trt.onnx")
    assert info["inputs"] == {"images": ["batch", 3, "height", "width"], "txt_feats": ["text_batch", "prompts", 512]}
    assert info["defaults"]["txt_feats"].shape == (1, 3, 512) and info["opset"] >= 17 and info["plugins"] == []
    assert onnx_inputs(tmp_path / "trt.onnx") == info["inputs"]
    assert "txt_feats" not in {i.name for i in onnx.load(str(tmp_path / "trt.onnx")).graph.initializer}
    with pytest.raises(Exception, match="txt_feats"):  # no default any more: the input is required
        _session(tmp_path / "trt.onnx").run(None, {"images": np.zeros((1, 3, 96, 96), np.float32)})
    f = model.export(format="onnx", dynamic_vocab=True, nms=True, trt_nms="efficient", imgsz=96, verbose=False,
                     out=tmp_path / "eff.onnx")
    info = prepare_onnx_for_tensorrt(f)
    assert info["plugins"] == ["EfficientNMS_TRT"]
    node = next(n for n in onnx.load(f).graph.node if n.op_type == "EfficientNMS_TRT")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["max_output_boxes"] == 300 and attrs["background_class"] == -1 and attrs["box_coding"] == 0
    assert abs(attrs["score_threshold"] - 0.25) < 1e-6 and abs(attrs["iou_threshold"] - 0.7) < 1e-6
    assert len(node.output) == 4


def test_int8_calibration_batches(coco128):
    """Calibration images: COCO128 through the inference letterbox (equal to Ultralytics' LetterBox)."""
    from ultralytics.data.augment import LetterBox

    from yw_ext.export.calib import calibration_batches, calibration_images

    files = calibration_images(coco128 / "coco128.yaml")
    assert len(files) == 128 and files[0].parent.name == "val2017"
    batches = list(calibration_batches(coco128 / "coco128.yaml", imgsz=96, batch=4, n_images=10))
    assert [b.shape for b in batches] == [(4, 3, 96, 96)] * 2 and batches[0].dtype == np.float32
    ref = LetterBox((96, 96), auto=False)(image=cv2.imread(str(files[5])))[..., ::-1].transpose(2, 0, 1) / 255
    assert np.abs(batches[1][1] - ref).max() < 1e-6
    assert len(calibration_images(coco128 / "images" / "train2017")) == 128


# ------------------------------------------------------------------------------------------------ bad inputs
def test_bad_inputs_clear_errors_no_files(tmp_path, dynvocab, fixed, images):
    from yw_ext.runtime import Detector

    model, raw, _ = dynvocab
    kw = dict(imgsz=96, verbose=False)

    def nothing_written():
        assert list(tmp_path.iterdir()) == []

    with pytest.raises(ValueError, match="needs the optimisation profile of the txt_feats input: pass prompts"):
        model.export(format="engine", dynamic_vocab=True, out=tmp_path / "a.engine", **kw)
    with pytest.raises(ValueError, match="INT8 needs calibration images"):
        model.export(format="engine", int8=True, out=tmp_path / "b.engine", **kw)
    with pytest.raises(FileNotFoundError, match="calibration data not found"):
        model.export(format="onnx", quantize=8, data=str(tmp_path / "missing.yaml"), out=tmp_path / "c.onnx", **kw)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="TensorRT export needs an NVIDIA GPU"):
            model.export(format="engine", out=tmp_path / "d.engine", **kw)
    with pytest.raises(ValueError, match="available for format='onnx' and 'engine'"):
        model.export(format="torchscript", dynamic_vocab=True, out=tmp_path / "e.torchscript", **kw)
    blank = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(RuntimeError, match="no vocabulary to fold"):
        blank.export(format="onnx", out=tmp_path / "f.onnx", **kw)
    from yw_ext.export.tensorrt import onnx_to_engine  # building from an exported ONNX (on the GPU machine)

    with pytest.raises(ValueError, match="needs the optimisation profile of the txt_feats input"):
        onnx_to_engine(raw, tmp_path / "g.engine")
    nothing_written()
    # run time: K above the maximum, wrong embedding width, a fixed vocabulary, no text encoder
    det = Detector(raw)
    with pytest.raises(ValueError, match="exceed this model's maximum of 4096"):
        det.set_classes([f"c{i}" for i in range(4097)], embeddings=np.ones((4097, 512), np.float32))
    with pytest.raises(ValueError, match="embedding width 256 != the model's 512"):
        det.set_classes(["a", "b"], embeddings=np.ones((2, 256), np.float32))
    with pytest.raises(ValueError, match="embedding width 768"):
        det.forward(np.zeros((1, 3, 96, 96), np.float32), txt_feats=np.ones((1, 2, 768), np.float32))
    with pytest.raises(ValueError, match="needs a text encoder"):
        det.set_classes(["a"])
    with pytest.raises(ValueError, match="fixed vocabulary folded into its weights"):
        Detector(fixed[1]["static"]).set_classes(["a"])


def test_failed_export_leaves_no_file(tmp_path, monkeypatch):
    import onnx

    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))

    def broken_save(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(onnx, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.export(format="onnx", imgsz=96, verbose=False, out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the file nor the staging folder
    assert not model.model.folded


def test_int8_onnx_quantisation(coco128, tmp_path, images):
    """ONNX Runtime static INT8 of the folded graph, calibrated on COCO128: runs, scores stay close."""
    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))
    kw = dict(imgsz=96, verbose=False)
    f32 = model.export(format="onnx", out=tmp_path / "m.onnx", **kw)
    i8 = model.export(format="onnx", quantize=8, data=str(coco128 / "coco128.yaml"), calib_images=8,
                      out=tmp_path / "m_int8.onnx", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_int8.onnx"]
    x = _letterboxed(images["bus"], 96).numpy()
    (a,), (b,) = _session(f32).run(None, {"images": x}), _session(i8).run(None, {"images": x})
    assert {n.op_type for n in __import__("onnx").load(i8).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert np.abs(a[:, 4:] - b[:, 4:]).max() < 0.25  # INT8 moves scores; the benchmark reports by how much


@pytest.mark.gpu
def test_tensorrt_engines_match_onnx_runtime(dynvocab, fixed, images, tmp_path):
    """GPU only: FP32 engines (fixed and run-time vocabulary) agree with ONNX Runtime; profiles are enforced."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("tensorrt")
    from yw_ext.runtime import Detector

    model, raw, _ = dynvocab
    x = torch.cat([_letterboxed(p) for p in images.values()]).numpy()
    eng = model.export(format="engine", dynamic_vocab=True, prompts=(1, 80, 1203), dynamic=True, batch=4,
                       imgsz=IMGSZ, verbose=False, out=tmp_path / "dv.engine")
    det, ref = Detector(eng), Detector(raw)
    for k in (3, 80):
        t = _emb(k, seed=k)[None].numpy()
        assert np.abs(det.forward(x, t)[:, 4:] - ref.forward(x, t)[:, 4:]).max() <= 1e-2
    with pytest.raises(ValueError, match="exceed this model's maximum of 1203 .the TensorRT engine's txt_feats"):
        det.forward(x, np.ones((1, 1300, 512), np.float32))  # the prompt count is checked first, against the profile
    with pytest.raises(ValueError, match=r"images: dim 0 = 5 is outside the engine's range \[1, 4\]"):
        det.forward(np.concatenate([x] * 3)[:5], _emb(3)[None].numpy())
    det.set_classes(NAMES, embeddings=_emb(3).numpy())
    assert len(det([str(p) for p in images.values()] * 3)) == 6  # split into calls of <= 4 images
    _, files = fixed
    eng = fixed[0].export(format="engine", dynamic=True, batch=4, imgsz=IMGSZ, verbose=False,
                          out=tmp_path / "fixed.engine")
    y = Detector(eng).forward(x)
    assert np.abs(y[:, 4:] - Detector(files["dynamic"]).forward(x)[:, 4:]).max() <= 1e-2


def test_openvino_export_runs(fixed, images, tmp_path):
    """format="openvino" on the folded copy (Ultralytics' exporter): loads in Ultralytics, equals ONNX Runtime."""
    ov = pytest.importorskip("openvino")
    import ultralytics

    model, files = fixed
    out = model.export(format="openvino", imgsz=IMGSZ, verbose=False, out=tmp_path / "m_openvino_model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_openvino_model"]
    res = ultralytics.YOLO(out, task="detect").predict([str(p) for p in images.values()], imgsz=IMGSZ, conf=0.25,
                                                       verbose=False)
    assert res[0].names == dict(enumerate(NAMES)) and len(res[0].boxes) > 0
    # f32 explicitly: OpenVINO's CPU plugin runs bf16 by default on CPUs with bf16 units (scores then move ~3e-3)
    net = ov.Core().compile_model(str(next(Path(out).glob("*.xml"))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    sess = _session(files["static"])
    for p in images.values():
        x = _letterboxed(p).numpy()
        y = net(x)[0]
        (ref,) = sess.run(None, {"images": x})
        assert np.abs(y[:, 4:] - ref[:, 4:]).max() <= SCORE_TOL and np.abs(y[:, :4] - ref[:, :4]).max() <= BOX_TOL
