"""TensorRT code paths on a machine without a GPU or the ``tensorrt`` package: a fake ``tensorrt`` module (the names
yw_ext calls, recording what it is given) and CUDA calls patched to the CPU.

Each test stands for a defect found by reading the code (issue 15): INT8 calibration buffers of the declared shapes
(K_opt != P, fewer images than the batch), TensorRT without ``int64`` (8.6), ``Detector`` chunking by the engine's
profile, the device selected before deserialising, ``set_input_shape``'s answer, a truncated engine, and the ModelOpt
path that would leave ``txt_feats`` uncalibrated. Real engines are checked by ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from yw_ext.export import tensorrt as T
from yw_ext.runtime import trt as RT

D = 512


# ------------------------------------------------------------------------------------------------ the fake module
class _Engine:
    """Inputs ``images`` (and ``txt_feats``) with profile ranges, one output ``(B, 4 + K, A)``."""

    def __init__(self, trt, state, max_batch=2, dynamic_vocab=False, out_dtype="f32"):
        self.trt, self.state = trt, state
        self.io = {"images": ("in", (-1, 3, 64, 64), "f32", ((1, 3, 64, 64), (1, 3, 64, 64), (max_batch, 3, 64, 64)))}
        if dynamic_vocab:
            self.io["txt_feats"] = ("in", (-1, -1, D), "f32", ((1, 1, D), (1, 80, D), (max_batch, 1203, D)))
        self.io["output0"] = ("out", (-1, -1, 84), out_dtype, None)
        self.num_io_tensors = len(self.io)

    def get_tensor_name(self, i):
        return list(self.io)[i]

    def get_tensor_mode(self, name):
        return self.trt.TensorIOMode.INPUT if self.io[name][0] == "in" else self.trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return self.io[name][1]

    def get_tensor_dtype(self, name):
        return self.io[name][2]

    def get_tensor_profile_shape(self, name, index):
        assert index == 0
        return self.io[name][3]

    def create_execution_context(self):
        return _Context(self)


class _Context:
    def __init__(self, engine):
        self.engine, self.shapes, self.addresses, self.calls = engine, {}, {}, []
        self.accept = True  # what set_input_shape answers

    def set_input_shape(self, name, shape):
        self.shapes[name] = tuple(shape)
        return self.accept

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr

    def get_tensor_shape(self, name):
        b = self.shapes["images"][0]
        k = self.shapes["txt_feats"][1] if "txt_feats" in self.shapes else 3
        return (b, 4 + k, 84)

    def execute_async_v3(self, stream):
        self.calls.append(dict(self.shapes))
        b, c, a = self.get_tensor_shape("output0")
        size = {"f32": 4, "f16": 2, "i32": 4, "i64": 8}[self.engine.io["output0"][2]]
        ctypes.memset(self.addresses["output0"], 0, b * c * a * size)  # CPU memory in these tests
        return True


def fake_trt(version: str = "10.13.0", int64: bool = True, state: dict | None = None, **engine_kw):
    """A ``tensorrt`` stand-in: data types, logger, runtime, builder, parser, calibrator base class."""
    state = {} if state is None else state
    m = types.ModuleType("tensorrt")
    m.__version__ = version
    m.float32, m.float16, m.int32, m.int8, m.bool = "f32", "f16", "i32", "i8", "b"
    if int64:
        m.int64 = "i64"
    m.Logger = type("Logger", (), {"WARNING": 2, "VERBOSE": 4, "__init__": lambda self, s=None: None})
    m.init_libnvinfer_plugins = lambda logger, ns: True
    m.TensorIOMode = types.SimpleNamespace(INPUT="in", OUTPUT="out")
    m.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    m.MemoryPoolType = types.SimpleNamespace(WORKSPACE="ws")
    m.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    m.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (), {"__init__": lambda self: None})

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            state["device_at_deserialise"] = state.get("current_device")
            return _Engine(m, state, **engine_kw) if blob == b"ENGINE" else None

    m.Runtime = Runtime
    m.Builder, m.OnnxParser = _builder_classes(state)
    return m


def _builder_classes(state: dict):
    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"CACHE"

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.int8_calibrator, self.builder_optimization_level = [], [], None, None

        def set_memory_pool_limit(self, pool, size):
            state["workspace"] = size

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

        def create_timing_cache(self, blob):
            state["cache_in"] = bytes(blob)
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

        def get_timing_cache(self):
            return Cache()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return types.SimpleNamespace()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            state["config"] = config
            cal, fed = config.int8_calibrator, []
            while cal is not None and cal.get_batch(["images", "txt_feats"]) is not None:  # TensorRT calibrating
                fed.append({n: tuple(t.shape) for n, t in cal.keep.items()})
            state["calibration_batches"] = fed
            return b"ENGINE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            state["parsed"] = str(path)
            return True

    return Builder, OnnxParser


@pytest.fixture
def cuda_on_cpu(monkeypatch):
    """``torch.cuda`` calls of the TensorRT code made harmless on the CPU; the current device is recorded."""
    state: dict = {}

    @contextlib.contextmanager
    def device(d):
        old = state.get("current_device")
        state["current_device"] = str(d)
        yield
        state["current_device"] = old

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda d=None: types.SimpleNamespace(cuda_stream=0, synchronize=lambda: None))
    return state


def _install(monkeypatch, state, **kw):
    trt = fake_trt(state=state, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return trt


def _engine_file(tmp_path: Path, dynamic_vocab: bool = False) -> Path:
    meta = {"names": {0: "a", 1: "b", 2: "c"}, "stride": 32, "imgsz": [64, 64], "embed_dim": D}
    if dynamic_vocab:
        meta.update(max_prompts=4096, default_classes=["a", "b", "c"], prompts=[1, 80, 1203])
    p = tmp_path / ("dv.engine" if dynamic_vocab else "m.engine")
    T.write_engine_file(p, b"ENGINE", meta)
    return p


def _on_cpu(backend):
    backend.device = torch.device("cpu")  # the fake engine writes its outputs into host memory
    return backend


# ------------------------------------------------------------------------------------------------- INT8 calibration
def test_calibrator_feeds_the_declared_shapes(monkeypatch, assets):
    """K_opt = 80 with a 3-prompt stored vocabulary, profile batch 2 with one calibration image: every buffer has the
    declared shape (TensorRT reads declared-shape bytes from each pointer)."""
    from yw_ext.export.calib import calibration_batches

    trt = fake_trt()
    shapes = T.engine_build_args({"images": ["batch", 3, 64, 64], "txt_feats": ["text_batch", "prompts", D]},
                                 batch=2, imgsz=64, prompts=(1, 80, 1203))["calibration_shapes"]
    assert shapes == {"images": (2, 3, 64, 64), "txt_feats": (1, 80, D)}
    stored = np.random.default_rng(0).standard_normal((1, 3, D)).astype(np.float32)  # (1, P, D), P = 3
    feeds = T.calibration_feeds(shapes, {"txt_feats": stored})
    assert feeds["txt_feats"].shape == (1, 80, D) and np.array_equal(feeds["txt_feats"][0, 3], stored[0, 0])
    batches = calibration_batches([assets / "bus.jpg"], imgsz=(64, 64), batch=2)
    cal = T._calibrator(trt, batches, shapes, feeds, device="cpu")
    assert cal.get_batch_size() == 2
    ptrs = cal.get_batch(["images", "txt_feats"])
    assert {n: tuple(t.shape) for n, t in cal.keep.items()} == shapes
    assert ptrs == [cal.keep["images"].data_ptr(), cal.keep["txt_feats"].data_ptr()]
    assert cal.get_batch(["images", "txt_feats"]) is None  # one image, repeated into one full batch
    with pytest.raises(ValueError, match="declared"):
        T._calibrator(trt, [], shapes, {"txt_feats": stored}, device="cpu")
    with pytest.raises(ValueError, match="default_vocab=True"):
        T.calibration_feeds(shapes, {})


def test_calibration_batches_always_full(assets):
    from yw_ext.export.calib import calibration_batches

    files = [assets / "bus.jpg", assets / "zidane.jpg"]
    assert [b.shape for b in calibration_batches(files, imgsz=64, batch=4)] == [(4, 3, 64, 64)]
    x = next(calibration_batches(files, imgsz=64, batch=3))
    assert np.array_equal(x[0], x[2])  # the images repeat, in order
    assert [b.shape for b in calibration_batches(files * 3, imgsz=64, batch=4)] == [(4, 3, 64, 64)]  # 6: one full


def _tiny_onnx(path: Path) -> Path:
    """A dynamic-vocabulary-shaped ONNX (images, txt_feats with a stored (1, 3, D) default), opset 17."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    img = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    txt = helper.make_tensor_value_info("txt_feats", TensorProto.FLOAT, ["text_batch", "prompts", D])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)
    node = helper.make_node("ReduceMean", ["txt_feats"], ["output0"], keepdims=1)
    init = numpy_helper.from_array(np.ones((1, 3, D), np.float32), "txt_feats")
    graph = helper.make_graph([node], "g", [img, txt], [out], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"names": "{0: 'a', 1: 'b', 2: 'c'}", "stride": "32", "imgsz": "[64, 64]"})
    onnx.save(model, str(path))
    return path


def test_build_engine_wiring_int8_dynamic_vocab(tmp_path, monkeypatch, cuda_on_cpu, assets):
    """build_engine with a fake TensorRT: profile, flags, optimisation level, timing cache, and calibration batches
    of the profile's optimum shapes for both inputs."""
    state: dict = {}
    _install(monkeypatch, state)
    calibrator = T._calibrator
    monkeypatch.setattr(T, "_calibrator", lambda *a, **k: calibrator(*a, device="cpu"))
    req = T.check_engine_request(dynamic_vocab=True, quantize=8, data=[assets / "bus.jpg"], prompts=(1, 80, 1203))
    cache = tmp_path / "trt.cache"
    out = T.build_engine(_tiny_onnx(tmp_path / "dv.onnx"), tmp_path / "dv.engine", req, imgsz=64, batch=2,
                         data=[assets / "bus.jpg", assets / "zidane.jpg"], timing_cache=cache, opt_level=1)
    config = state["config"]
    assert config.flags == ["FP16", "INT8"] and config.builder_optimization_level == 1
    assert config.profiles[0].shapes["txt_feats"] == ((1, 1, D), (1, 80, D), (2, 1203, D))
    assert state["calibration_batches"] == [{"images": (2, 3, 64, 64), "txt_feats": (1, 80, D)}]
    assert cache.read_bytes() == b"CACHE" and state["cache_in"] == b""
    meta, blob = RT.read_engine_file(out)
    assert blob == b"ENGINE" and meta["prompts"] == [1, 80, 1203] and meta["precision"] == 8
    T.build_engine(_tiny_onnx(tmp_path / "dv2.onnx"), tmp_path / "dv2.engine", req, imgsz=64, batch=2,
                   data=[assets / "bus.jpg"], timing_cache=cache)
    assert state["cache_in"] == b"CACHE"  # the second build starts from the first one's timings


def test_modelopt_path_refuses_dynamic_vocab(tmp_path, monkeypatch, cuda_on_cpu):
    """TensorRT >= 11 (ModelOpt) would leave txt_feats uncalibrated: refused before any work, clearly."""
    state: dict = {}
    _install(monkeypatch, state, version="11.4.0")
    req = T.check_engine_request(dynamic_vocab=True, quantize=16, prompts=(1, 80, 1203))
    with pytest.raises(ValueError, match="txt_feats input of a dynamic-vocabulary engine uncalibrated"):
        T.build_engine(_tiny_onnx(tmp_path / "dv.onnx"), tmp_path / "dv.engine", req, imgsz=64)
    assert "parsed" not in state and not (tmp_path / "dv.engine").exists()
    assert T.check_precision_path("11.4.0", T.EngineRequest(False, 8, None)) is True  # fixed vocabulary: ModelOpt
    assert T.check_precision_path("11.4.0", T.EngineRequest(True, None, (1, 3, 3))) is False  # FP32: plain build
    assert T.check_precision_path("10.13.0", T.EngineRequest(True, 8, (1, 3, 3))) is False


# ------------------------------------------------------------------------------------------------- engine runtime
def test_runtime_without_int64_selects_device_and_checks_shapes(tmp_path, monkeypatch, cuda_on_cpu):
    """TensorRT 8.6 has no trt.int64; the device is current while deserialising; set_input_shape's False is an
    error naming the input."""
    _install(monkeypatch, cuda_on_cpu, int64=False)
    b = RT.TRTBackend(_engine_file(tmp_path), device=1)
    assert cuda_on_cpu["device_at_deserialise"] == "cuda:1" and b.max_batch == 2
    y = _on_cpu(b).run({"images": np.ones((2, 3, 64, 64), np.float32)})
    assert y.shape == (2, 7, 84) and y.dtype == np.float32 and not y.any()
    call = b.prepared({"images": np.ones((1, 3, 64, 64), np.float32)})  # device-resident, for timing
    call()
    call()
    assert [c["images"] for c in b.context.calls] == [(2, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64)]
    b.context.accept = False
    with pytest.raises(ValueError, match="TensorRT rejected shape .* for input images"):
        b.run({"images": np.ones((1, 3, 64, 64), np.float32)})


def test_truncated_or_corrupt_engine_named(tmp_path, monkeypatch, cuda_on_cpu):
    _install(monkeypatch, cuda_on_cpu)
    good = _engine_file(tmp_path).read_bytes()
    cut = tmp_path / "cut.engine"
    cut.write_bytes(good[:20])  # inside the metadata header
    with pytest.raises(ValueError, match=r"cut\.engine is truncated or corrupt"):
        RT.TRTBackend(cut)
    bad = tmp_path / "bad.engine"
    bad.write_bytes(good[:-2])  # metadata intact, engine cut: TensorRT's deserialiser returns None
    with pytest.raises(RuntimeError, match=r"could not deserialise .*bad\.engine.*truncated or corrupt"):
        RT.TRTBackend(bad)
    empty = tmp_path / "empty.engine"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.engine is empty"):
        RT.TRTBackend(empty)


def test_detector_chunks_by_engine_profile(tmp_path, monkeypatch, cuda_on_cpu):
    """A list of 5 images on an engine whose profile takes at most 2: calls of 2, 2 and 1, one result per image."""
    from yw_ext.runtime import Detector

    _install(monkeypatch, cuda_on_cpu)
    det = Detector(_engine_file(tmp_path), device=0)
    _on_cpu(det.backend)
    assert det.max_batch == 2 and det.names == {0: "a", 1: "b", 2: "c"}
    ims = [np.full((48 + 8 * i, 64, 3), 10 * i, np.uint8) for i in range(5)]
    out = det(ims)
    assert len(out) == 5 and [c["images"][0] for c in det.backend.context.calls] == [2, 2, 1]
    assert [d.orig_shape for d in out] == [im.shape[:2] for im in ims]


def test_engine_limits_clear_errors(tmp_path, monkeypatch, cuda_on_cpu):
    """The engine's K range is the model's prompt maximum (checked first); a batch over the profile is the engine's
    range error. (tests/test_export.py's GPU test expects these messages.)"""
    from yw_ext.runtime import Detector

    _install(monkeypatch, cuda_on_cpu, dynamic_vocab=True, max_batch=4)
    det = Detector(_engine_file(tmp_path, dynamic_vocab=True))
    _on_cpu(det.backend)
    assert det.dynamic_vocab and (det.min_prompts, det.max_prompts, det.max_batch) == (1, 1203, 4)
    x = np.zeros((2, 3, 64, 64), np.float32)
    t = np.random.default_rng(0).standard_normal((1, 80, D)).astype(np.float32)
    assert det.forward(x, t).shape == (2, 84, 84)
    with pytest.raises(ValueError, match="exceed this model's maximum of 1203 .the TensorRT engine's txt_feats"):
        det.forward(x, np.ones((1, 1300, D), np.float32))
    with pytest.raises(ValueError, match=r"images: dim 0 = 5 is outside the engine's range \[1, 4\]"):
        det.forward(np.zeros((5, 3, 64, 64), np.float32), t)
