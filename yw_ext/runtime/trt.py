"""TensorRT backend of ``yw_ext.runtime.Detector`` (``Detector("model.engine")``).

Reads Ultralytics' ``.engine`` layout (``<int32 length><JSON metadata><engine>``, written by
``yw_ext.export.tensorrt`` and by Ultralytics), deserialises the engine, and runs it with the TensorRT >= 8.5 tensor
API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Device buffers are torch CUDA tensors:
this backend needs ``tensorrt``, ``torch`` with CUDA, and a GPU (the ONNX Runtime path stays torch-free). Input
shapes are checked against the engine's optimisation profile first, so a batch or a K outside it gives a clear
error instead of a TensorRT failure.

Examples:
    >>> from yw_ext.runtime import Detector
    >>> det = Detector("yolo_world_dynvocab.engine", text_encoder="clip_text.onnx")  # doctest: +SKIP
    >>> det.set_classes(["person", "bus"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def read_engine_file(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """``(metadata, serialized engine)`` of an Ultralytics-layout ``.engine`` (metadata ``{}`` for a bare engine).

    Examples:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.engine")
        >>> meta = b'{"stride": 32}'
        >>> _ = open(p, "wb").write(len(meta).to_bytes(4, "little") + meta + b"ENGINE")
        >>> read_engine_file(p)
        ({'stride': 32}, b'ENGINE')
    """
    data = Path(path).read_bytes()
    if len(data) > 4:
        n = int.from_bytes(data[:4], byteorder="little", signed=True)
        if 0 < n < len(data) - 4:
            try:
                meta = json.loads(data[4 : 4 + n].decode("utf-8"))
                if isinstance(meta, dict):
                    names = meta.get("names")
                    if isinstance(names, dict):
                        meta["names"] = {int(k): v for k, v in names.items()}
                    return meta, data[4 + n :]
            except (UnicodeDecodeError, json.JSONDecodeError):
                pass
    return {}, data


class TRTBackend:
    """A deserialised engine with its metadata, input shapes and optimisation-profile ranges.

    Args:
        path: ``.engine`` file.
        device: CUDA device index.

    Raises:
        RuntimeError: no tensorrt / CUDA, or the engine cannot be deserialised.
    """

    def __init__(self, path: str | Path, device: int = 0):
        """Load the engine and create an execution context."""
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise RuntimeError("TensorRT engines need the `tensorrt` and `torch` (CUDA) packages; use the ONNX export "
                               "with ONNX Runtime elsewhere.") from e
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT engines need a CUDA GPU, and torch.cuda.is_available() is False.")
        self.trt, self.torch = trt, torch
        self.device = torch.device(f"cuda:{device}")
        self.metadata, blob = read_engine_file(path)
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(blob)
        if self.engine is None:
            raise RuntimeError(f"could not deserialise {path} (built with another TensorRT version or GPU?).")
        self.context = self.engine.create_execution_context()
        self.inputs: dict[str, list] = {}
        self.outputs: list[str] = []
        self.profile: dict[str, tuple] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = [int(d) if d >= 0 else "?" for d in self.engine.get_tensor_shape(name)]
                if any(d == "?" for d in self.inputs[name]):
                    lo, opt, hi = self.engine.get_tensor_profile_shape(name, 0)
                    self.profile[name] = (tuple(lo), tuple(opt), tuple(hi))
            else:
                self.outputs.append(name)
        self.defaults: dict[str, list] = {}
        out0 = self.outputs[0]
        self.output_shape = [int(d) if d >= 0 else "?" for d in self.engine.get_tensor_shape(out0)]

    def shape(self, name: str) -> list | None:
        return self.inputs.get(name)

    def check(self, name: str, shape: tuple) -> None:
        """Raise ValueError if ``shape`` is outside the engine's profile (or static shape) for input ``name``."""
        if name not in self.inputs:
            raise ValueError(f"the engine has no input {name!r} (inputs: {list(self.inputs)}).")
        want = self.inputs[name]
        if len(shape) != len(want):
            raise ValueError(f"{name}: expected {len(want)} dims, got shape {shape}.")
        lo, _, hi = self.profile.get(name, (tuple(want),) * 3)
        for i, (s, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= s <= b:
                what = {("txt_feats", 1): "K (prompts)", ("txt_feats", 2): "embedding width"}.get((name, i), f"dim {i}")
                raise ValueError(f"{name}: {what} = {s} is outside the engine's range [{a}, {b}] (shape {shape}); "
                                 "rebuild the engine with a profile that covers it.")

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run with numpy inputs; returns the first output as numpy."""
        torch = self.torch
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"missing engine inputs {missing}.")
        keep = []
        for name, x in feeds.items():
            self.check(name, tuple(x.shape))
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, int(t.data_ptr()))
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = {self.trt.int32: torch.int32, self.trt.float16: torch.float16,
                     self.trt.int64: torch.int64}.get(self.engine.get_tensor_dtype(name), torch.float32)
            outs[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, int(outs[name].data_ptr()))
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed.")
        stream.synchronize()
        return outs[self.outputs[0]].float().cpu().numpy()


__all__ = ["TRTBackend", "read_engine_file"]
