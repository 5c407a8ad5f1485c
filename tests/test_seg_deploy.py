"""YOLO-World-Seg deployment: NMS in the ONNX graph (with the kept boxes' mask coefficients), the torch-free runtime's
masks, OpenVINO, and the CPU side of the TensorRT build.

Models are the seeded ``_seg_detector`` of tests/test_seg.py with ``_spread_masks_`` (masks neither empty nor their
whole box) on the real bus.jpg.
"""

from __future__ import annotations

import importlib.machinery
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_seg import _box_iou_masks, _nms_masks, _pair, _seg_detector, _spread_masks_

IMGSZ = 160
CONF = 0.5  # above the letterbox border's plateau of equal random-weight scores (see test_seg_onnx_matches_pytorch_on_bus)


@pytest.fixture(scope="module")
def bus_x(assets) -> torch.Tensor:
    from tests.test_export import _letterboxed

    return _letterboxed(assets / "bus.jpg", IMGSZ)  # (1, 3, 160, 160)


def _seg_model(bus_x):
    model = _seg_detector()
    _spread_masks_(model, bus_x)
    return model


def _rows_masks(rows: torch.Tensor, proto: torch.Tensor, hw: tuple[int, int]):
    """NMS rows ``(N, 6 + nm)`` of one image + its prototypes -> ``(N, 6)`` and masks ``(N, H, W)`` (process_mask)."""
    from ultralytics.utils import ops

    masks = ops.process_mask(proto, rows[:, 6:], rows[:, :4], hw, upsample=True) > 0.5
    return rows[:, :6], masks


@pytest.mark.parametrize("dynamic_vocab", [False, True])
def test_seg_onnx_graph_nms_matches_pytorch(tmp_path, bus_x, dynamic_vocab):
    """ORT graph NMS == PyTorch + Ultralytics NMS on bus.jpg: same classes, boxes <= 1e-2 px, scores <= 1e-3, masks
    (``process_mask`` of the graph's kept coefficients) IoU >= 0.99 per instance."""
    ort = pytest.importorskip("onnxruntime")
    model = _seg_model(bus_x)
    f = model.export(format="onnx", imgsz=IMGSZ, nms=True, conf=CONF, max_det=100, dynamic_vocab=dynamic_vocab,
                     out=str(tmp_path / "seg_nms.onnx"))
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1"]
    with torch.no_grad():
        (y, proto), _ = model.model.eval()(bus_x)
    o0, o1 = sess.run(None, {"images": bus_x.numpy()})
    assert o0.shape == (1, 100, 6 + 32) and o1.shape == (1, 32, 40, 40)
    d_pt, m_pt = _nms_masks(y, proto, 3, (IMGSZ, IMGSZ), conf=CONF)
    rows = torch.from_numpy(o0[0])
    rows = rows[rows[:, 4] > 0]  # zero-padded after the kept rows
    d_ort, m_ort = _rows_masks(rows, torch.from_numpy(o1[0]), (IMGSZ, IMGSZ))
    assert 3 <= len(d_pt) < 100 and len(d_ort) == len(d_pt)
    assert torch.all(rows[:-1, 4] >= rows[1:, 4])  # by decreasing score
    j = _pair(d_pt, d_ort)
    d_ort, m_ort = d_ort[j], m_ort[j]
    assert torch.equal(d_ort[:, 5], d_pt[:, 5])  # classes
    assert (d_ort[:, 4] - d_pt[:, 4]).abs().max() <= 1e-3  # scores
    assert (d_ort[:, :4] - d_pt[:, :4]).abs().max() <= 1e-2  # boxes, px
    assert m_pt.flatten(1).any(1).all()  # non-empty masks
    assert _box_iou_masks(m_ort, m_pt).min() >= 0.99  # per instance


def test_seg_graph_nms_refuses_unknown_options(tmp_path, bus_x):
    model = _seg_model(bus_x)
    with pytest.raises(NotImplementedError, match="does not support"):
        model.export(format="onnx", imgsz=IMGSZ, nms=True, trt_nms="efficient", out=str(tmp_path / "x.onnx"))
    assert not list(tmp_path.iterdir())  # nothing written


def _ul_results(model, path, **kw):
    """Ultralytics ``predict`` on a seg model: ``(N, 6)`` rows ``[xyxy, score, class]`` and bool masks ``(N, H, W)``."""
    r = model.predict(str(path), imgsz=IMGSZ, conf=CONF, verbose=False, **kw)[0]
    d = torch.cat((r.boxes.xyxy, r.boxes.conf[:, None], r.boxes.cls[:, None]), 1)
    return d, r.masks.data.bool(), r.orig_shape


@pytest.mark.parametrize("nms", [False, True])
def test_runtime_seg_masks_match_ultralytics(tmp_path, bus_x, assets, nms):
    """The torch-free runtime on a seg ONNX (raw, or NMS in the graph) == ``YOLOWorld.predict(retina_masks=True)`` on
    bus.jpg: the same classes, boxes <= 1e-2 px and scores <= 1e-3 in original pixels, and per-instance IoU >= 0.99
    between the runtime's masks and ``Results.masks.data``, both at the original 1080 x 810 (rect letterbox to
    160 x 128 in both)."""
    pytest.importorskip("onnxruntime")
    from yw_ext.runtime import Detector

    model = _seg_model(bus_x)
    f = model.export(format="onnx", imgsz=IMGSZ, dynamic=True, nms=nms, conf=0.25, out=str(tmp_path / "seg.onnx"))
    det = Detector(f)
    assert det.nm == 32 and det.end2end == nms and det.names == {0: "person", 1: "bus", 2: "stop sign"}
    out = det(str(assets / "bus.jpg"), conf=CONF)[0]
    d_ul, m_ul, shape = _ul_results(model, assets / "bus.jpg", retina_masks=True)
    assert out.masks is not None and out.masks.dtype == bool and out.masks.shape == (len(out), *shape) == (
        len(out), 1080, 810)
    d_rt = torch.from_numpy(np.concatenate((out.boxes, out.scores[:, None], out.class_ids[:, None]), 1)).float()
    assert 3 <= len(d_ul) and len(d_rt) == len(d_ul)
    j = _pair(d_ul, d_rt)
    d_rt, m_rt = d_rt[j], torch.from_numpy(out.masks)[j]
    assert torch.equal(d_rt[:, 5], d_ul[:, 5])  # classes
    assert (d_rt[:, 4] - d_ul[:, 4]).abs().max() <= 1e-3  # scores
    assert (d_rt[:, :4] - d_ul[:, :4]).abs().max() <= 1e-2  # boxes, original px
    assert m_ul.flatten(1).any(1).all()
    assert _box_iou_masks(m_rt, m_ul).min() >= 0.99  # per instance, at the original image size


def test_seg_openvino_matches_onnx(tmp_path, bus_x):
    """format="openvino" (the seg ONNX converted): a folder with the XML and metadata.yaml; OpenVINO (CPU, f32) ==
    ONNX Runtime on bus.jpg for both outputs (scores <= 1e-3, boxes <= 1e-2 px, coefficients and prototypes
    <= 1e-3), raw and with graph NMS."""
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed")
    ort = pytest.importorskip("onnxruntime")
    import yaml

    model = _seg_model(bus_x)
    x = bus_x.numpy()
    for nms in (False, True):
        kw = dict(imgsz=IMGSZ, nms=nms, conf=CONF, max_det=100)
        f_onnx = model.export(format="onnx", out=str(tmp_path / f"s{nms:d}.onnx"), **kw)
        d = model.export(format="openvino", out=str(tmp_path / f"s{nms:d}_openvino_model"), **kw)
        xml = Path(d) / f"s{nms:d}.xml"
        assert xml.is_file() and (Path(d) / "metadata.yaml").is_file()
        meta = yaml.safe_load((Path(d) / "metadata.yaml").read_text())
        assert meta["task"] == "segment" and meta["nm"] == 32 and meta["end2end"] is nms
        net = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        res = net(x)
        o0, o1 = (res[net.output(i)] for i in range(2))
        r0, r1 = ort.InferenceSession(f_onnx, providers=["CPUExecutionProvider"]).run(None, {"images": x})
        assert o0.shape == r0.shape and o1.shape == r1.shape
        if nms:  # rows [xyxy, score, class, coefficients]: the same kept boxes
            assert (r0[0, :, 4] > 0).sum() >= 3
            o0, r0 = o0[0].T, r0[0].T  # (6 + nm, max_det)
        else:
            o0, r0 = o0[0], r0[0]  # (4 + K + nm, A)
        k = 3 if not nms else 2
        assert np.abs(o0[:4] - r0[:4]).max() <= 1e-2  # boxes, px
        assert np.abs(o0[4:k + 4] - r0[4:k + 4]).max() <= 1e-3  # scores (and classes after NMS)
        assert np.abs(o0[-32:] - r0[-32:]).max() <= 1e-3 and np.abs(o1 - r1).max() <= 1e-3  # coefficients, protos
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind


# ------------------------------------------------------------------------------------- TensorRT, CPU side (fake module)
from tests.test_tensorrt_cpu import _on_cpu, cuda_on_cpu, fake_trt  # noqa: E402, F401  (cuda_on_cpu: a fixture)


class _OrtEngine:
    """A fake deserialised engine that runs an ONNX file with ONNX Runtime on the host buffers TRTBackend binds.

    Outputs are declared in the order ``output1``, ``output0`` (TensorRT's order need not be the ONNX's)."""

    def __init__(self, trt, onnx_file):
        import onnxruntime as ort

        self.trt, self.sess = trt, ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
        prof = ((1, 3, 32, 32), (1, 3, IMGSZ, IMGSZ), (2, 3, 2 * IMGSZ, 2 * IMGSZ))
        self.io = {"images": ("in", (-1, 3, -1, -1), prof), "output1": ("out", (-1, 32, -1, -1), None),
                   "output0": ("out", (-1, -1, -1), None)}
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if self.io[name][0] == "in" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return self.io[name][1]

    def get_tensor_dtype(self, name):
        return "f32"

    def get_tensor_profile_shape(self, name, index):
        return self.io[name][2]

    def create_execution_context(self):
        return _OrtContext(self)


class _OrtContext:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.out = engine, {}, {}, None

    def set_input_shape(self, name, shape):
        self.shapes[name], self.out = tuple(shape), None
        return True

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def _run(self):
        import ctypes

        if self.out is None:
            shape = self.shapes["images"]
            buf = (ctypes.c_float * int(np.prod(shape))).from_address(self.addresses["images"])
            x = np.ctypeslib.as_array(buf).reshape(shape).copy()
            self.out = dict(zip(("output0", "output1"), self.engine.sess.run(None, {"images": x})))
        return self.out

    def get_tensor_shape(self, name):
        return self._run()[name].shape

    def execute_async_v3(self, stream):
        import ctypes

        for name, y in self._run().items():
            y = np.ascontiguousarray(y, np.float32)
            ctypes.memmove(self.addresses[name], y.ctypes.data, y.nbytes)
        return True


@pytest.mark.parametrize("nms", [False, True])
def test_seg_engine_build_and_runtime_cpu(tmp_path, monkeypatch, cuda_on_cpu, bus_x, assets, nms):
    """format="engine" on a seg model goes through the detection builder (fake ``tensorrt``: the seg ONNX is parsed,
    the image profile set, the metadata carried into the engine header), and ``Detector("seg.engine")`` hands both
    outputs through: on an engine that runs the seg ONNX, its boxes, scores, classes and masks equal the ONNX
    Runtime Detector's exactly."""
    pytest.importorskip("onnxruntime")
    from yw_ext.runtime import Detector
    from yw_ext.runtime.trt import read_engine_file

    state: dict = {}
    trt = fake_trt(state=state)
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # torch._dynamo's import (by the ONNX export) asks
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    model = _seg_model(bus_x)
    kw = dict(imgsz=IMGSZ, dynamic=True, batch=2, nms=nms, conf=0.25)
    eng = model.export(format="engine", half=True, out=str(tmp_path / "seg.engine"), **kw)
    assert state["parsed"].endswith("seg.onnx") and "FP16" in state["config"].flags
    assert state["config"].profiles[0].shapes["images"] == ((1, 3, 32, 32), (2, 3, 160, 160), (2, 3, 320, 320))
    meta, blob = read_engine_file(eng)
    assert blob == b"ENGINE" and meta["task"] == "segment" and meta["nm"] == 32 and meta["end2end"] is nms
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.engine"]  # the staged ONNX is gone

    f = model.export(format="onnx", out=str(tmp_path / "ref" / "seg.onnx"), **kw)
    trt.Runtime = type("Runtime", (), {"__init__": lambda self, logger: None,
                                       "deserialize_cuda_engine": lambda self, blob: _OrtEngine(trt, f)})
    det = Detector(eng, device=0)
    _on_cpu(det.backend)
    assert det.nm == 32 and det.end2end is nms and det.max_batch == 2
    ims = [str(assets / "bus.jpg"), str(assets / "zidane.jpg")]
    got, ref = det(ims, conf=CONF), Detector(f)(ims, conf=CONF)
    assert len(got[0]) >= 3
    for a, b in zip(got, ref):
        assert a.masks.shape == b.masks.shape == (len(b), *b.orig_shape)
        for k in ("boxes", "scores", "class_ids", "masks"):
            assert np.array_equal(getattr(a, k), getattr(b, k)), k


@pytest.mark.parametrize("nms", [False, True])
def test_runtime_seg_dynamic_vocab_synonyms(tmp_path, bus_x, assets, nms):
    """A run-time-vocabulary seg ONNX in the runtime: ``set_classes`` with 2 prompts per class (class score = max over
    its prompts, in numpy) == ``YOLOWorld.predict(retina_masks=True)`` with the same vocabulary: classes equal, boxes
    <= 1e-2 px, scores <= 1e-3, per-instance mask IoU >= 0.99 at the original size; the file's default vocabulary
    is used before ``set_classes``."""
    pytest.importorskip("onnxruntime")
    from yw_ext.runtime import Detector

    model = _seg_model(bus_x)
    f = model.export(format="onnx", imgsz=IMGSZ, dynamic=True, dynamic_vocab=True, nms=nms, conf=0.25,
                     out=str(tmp_path / "seg_dv.onnx"))
    det = Detector(f)
    assert det.dynamic_vocab and det.has_default_vocab and det.nm == 32
    default = det(str(assets / "bus.jpg"), conf=CONF)[0]
    d_ul, _, _ = _ul_results(model, assets / "bus.jpg", retina_masks=True)
    assert len(default) == len(d_ul) >= 3  # the stored vocabulary is the model's
    g = torch.Generator().manual_seed(11)
    base = model.model.txt_feats[0, :3].detach()  # (K, D), unit norm
    other = torch.nn.functional.normalize(torch.randn(512, generator=g), dim=0)
    # (K, G, D), G = 2: class 0 = its own prompt or class 2's old one (the one scoring highest on bus.jpg); class 2
    # gets a new random prompt; so the detections that were class 2 come back as class 0 through its synonym
    emb = torch.stack((torch.stack((base[0], base[2])), base[1].expand(2, -1), other.expand(2, -1)))
    names = ["person", "bus", "stop sign"]
    det.set_classes(names, embeddings=emb.numpy())
    out = det(str(assets / "bus.jpg"), conf=CONF)[0]
    model.set_classes(names, embeddings=emb)
    d_ul, m_ul, shape = _ul_results(model, assets / "bus.jpg", retina_masks=True)
    d_rt = torch.from_numpy(np.concatenate((out.boxes, out.scores[:, None], out.class_ids[:, None]), 1)).float()
    assert len(d_rt) == len(d_ul) >= 3 and out.masks.shape == (len(out), *shape)
    j = _pair(d_ul, d_rt)
    assert torch.equal(d_rt[j, 5], d_ul[:, 5]) and d_ul[:, 5].unique().numel() >= 1
    assert (d_rt[j, 4] - d_ul[:, 4]).abs().max() <= 1e-3 and (d_rt[j, :4] - d_ul[:, :4]).abs().max() <= 1e-2
    assert _box_iou_masks(torch.from_numpy(out.masks)[j], m_ul).min() >= 0.99
    assert (out.class_ids == 0).sum() > (default.class_ids == 0).sum()  # the synonym scores: max over its prompts


@pytest.mark.parametrize("nms", [False, True])
def test_yoloworld_predicts_masks_from_seg_onnx(tmp_path, assets, nms):
    """``YOLOWorld("seg.onnx").predict`` takes the task from the ONNX metadata (it used to load seg ONNX as a detector:
    no masks and coefficients read as class scores) and equals the PyTorch model's Results: boxes <= 1e-2 px, scores
    <= 1e-3, masks IoU >= 0.99 per instance. A square crop of bus.jpg so that both letterbox to the same 160x160."""
    import cv2

    import yw_ext
    from yw_ext.model import exported_task

    src = tmp_path / "bus_square.jpg"
    cv2.imwrite(str(src), cv2.imread(str(assets / "bus.jpg"))[:810])  # 810 x 810
    from tests.test_export import _letterboxed

    model = _seg_model(_letterboxed(src, IMGSZ))
    ref = model.predict(str(src), imgsz=IMGSZ, conf=CONF, verbose=False)[0]
    f = model.export(format="onnx", imgsz=IMGSZ, nms=nms, out=str(tmp_path / "seg.onnx"))
    assert exported_task(f) == "segment" and exported_task(assets / "bus.jpg") == "detect"
    onnx_model = yw_ext.YOLOWorld(f)
    assert onnx_model.task == "segment"
    r = onnx_model.predict(str(src), imgsz=IMGSZ, conf=CONF, verbose=False)[0]
    assert r.masks is not None and 3 <= len(r.boxes) == len(ref.boxes)
    j = _pair(ref.boxes.data, r.boxes.data)
    assert (r.boxes.xyxy[j] - ref.boxes.xyxy).abs().max() <= 1e-2
    assert (r.boxes.conf[j] - ref.boxes.conf).abs().max() <= 1e-3 and torch.equal(r.boxes.cls[j], ref.boxes.cls)
    assert _box_iou_masks(r.masks.data[j] > 0.5, ref.masks.data > 0.5).min() >= 0.99
