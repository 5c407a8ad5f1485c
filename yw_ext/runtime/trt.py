"""TensorRT backend of ``yw_ext.runtime.Detector`` (``Detector("model.engine")``).

Reads Ultralytics' ``.engine`` layout (``<int32 length><JSON metadata><engine>``, written by
``yw_ext.export.tensorrt`` and by Ultralytics), deserialises the engine, and runs it with the TensorRT >= 8.5 tensor
API (``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``). Device buffers are torch CUDA tensors:
this backend needs ``tensorrt``, ``torch`` with CUDA, and a GPU (the ONNX Runtime path stays torch-free). Input
shapes are checked against the engine's optimisation profile first, so a batch or a K outside it gives a clear
error instead of a TensorRT failure; so is TensorRT's answer to ``set_input_shape``. The engine is deserialised and
run with its CUDA device current (``device=``). A truncated or corrupt file is named as such. TensorRT 8.6 to 10
(names added in 10, such as ``int64``, are looked up, not assumed).

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

    Raises:
        FileNotFoundError: no such file.
        ValueError: an empty file, or one whose metadata header announces more bytes than the file holds
            (truncated).

    Examples:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.engine")
        >>> meta = b'{"stride": 32}'
        >>> _ = open(p, "wb").write(len(meta).to_bytes(4, "little") + meta + b"ENGINE")
        >>> read_engine_file(p)
        ({'stride': 32}, b'ENGINE')
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"TensorRT engine not found: {p}")
    data = p.read_bytes()
    if not data:
        raise ValueError(f"{p} is empty: a truncated or corrupt TensorRT engine file; export it again.")
    if len(data) > 4:
        n = int.from_bytes(data[:4], byteorder="little", signed=True)
        if n >= len(data) - 4 and data[4:5] == b"{":
            raise ValueError(f"{p} is truncated or corrupt: its metadata header announces {n} bytes but only "
                             f"{len(data) - 4} follow (no engine); export it again.")
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


def torch_dtypes(trt: Any, torch: Any) -> dict[Any, Any]:
    """TensorRT data types -> torch dtypes, for the names this TensorRT has (``int64`` and ``bool`` appeared in 10 /
    8.x: looked up, never assumed).

    Examples:
        >>> import types, torch
        >>> fake = types.SimpleNamespace(float32="f32", float16="f16", int32="i32", int8="i8")  # no int64
        >>> torch_dtypes(fake, torch)["i32"]
        torch.int32
    """
    pairs = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int32": torch.int32,
             "int64": torch.int64, "int8": torch.int8, "uint8": torch.uint8, "bool": torch.bool}
    return {getattr(trt, name): dtype for name, dtype in pairs.items() if getattr(trt, name, None) is not None}


class TRTBackend:
    """A deserialised engine with its metadata, input shapes and optimisation-profile ranges.

    Args:
        path: ``.engine`` file.
        device: CUDA device index (or ``"cuda:i"``); selected before the engine is deserialised and for every run.

    Attributes:
        max_batch (int | None): Largest image batch the engine takes (its profile's maximum, or its static batch).

    Raises:
        RuntimeError: no tensorrt / CUDA, or the engine cannot be deserialised (truncated or corrupt file, another
            TensorRT version or GPU).

    Examples:
        >>> b = TRTBackend("yolo_world.engine", device=1)  # doctest: +SKIP
        >>> b.run({"images": np.zeros((1, 3, 640, 640), np.float32)}).shape  # doctest: +SKIP
        (1, 84, 8400)
    """

    def __init__(self, path: str | Path, device: int | str = 0):
        """Load the engine on ``device`` and create an execution context."""
        try:
            import tensorrt as trt
            import torch
        except ImportError as e:
            raise RuntimeError("TensorRT engines need the `tensorrt` and `torch` (CUDA) packages; use the ONNX export "
                               "with ONNX Runtime elsewhere.") from e
        if not torch.cuda.is_available():
            raise RuntimeError("TensorRT engines need a CUDA GPU, and torch.cuda.is_available() is False.")
        self.trt, self.torch, self.path = trt, torch, Path(path)
        self.device = torch.device(device if isinstance(device, str) else f"cuda:{int(device)}")
        self.metadata, blob = read_engine_file(path)
        self.dtypes = torch_dtypes(trt, torch)
        with self._on_device():  # TensorRT deserialises onto the current CUDA device
            self._deserialise(blob)
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
        self.output_shape = [int(d) if d >= 0 else "?" for d in self.engine.get_tensor_shape(self.outputs[0])]
        first = "images" if "images" in self.inputs else next(iter(self.inputs))
        b0 = self.inputs[first][0]
        self.max_batch = int(self.profile[first][2][0]) if first in self.profile else (b0 if b0 != "?" else None)

    def _on_device(self) -> Any:
        """Context manager making ``self.device`` the current CUDA device."""
        return self.torch.cuda.device(self.device)

    def _deserialise(self, blob: bytes) -> None:
        """Deserialise ``blob`` (the runtime is kept: the engine must not outlive it) and create a context."""
        trt = self.trt
        self.logger = trt.Logger(trt.Logger.WARNING)  # kept with the runtime (TensorRT holds a pointer to it)
        trt.init_libnvinfer_plugins(self.logger, "")
        self.runtime = trt.Runtime(self.logger)
        why = (f"could not deserialise {self.path} ({len(blob)} engine bytes): the file is truncated or corrupt, or "
               f"was built by another TensorRT version (this is {getattr(trt, '__version__', '?')}) or for another "
               "GPU; export it again on this machine.")
        try:
            self.engine = self.runtime.deserialize_cuda_engine(blob)
        except Exception as e:  # noqa: BLE001 - some TensorRT versions raise instead of returning None
            raise RuntimeError(f"{why} ({type(e).__name__}: {e})") from e
        if self.engine is None:
            raise RuntimeError(why)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise RuntimeError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?).")

    def shape(self, name: str) -> list | None:
        """The input's shape (``"?"`` for dynamic dims), None when the engine has no such input."""
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
        """Run with numpy inputs; returns the first output as numpy (float32, or the output's integer type)."""
        with self._on_device():
            keep, outs = self._bind(feeds)
            self._execute()
            y = outs[self.outputs[0]]
            return (y.float() if y.is_floating_point() else y).cpu().numpy()

    def run_all(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run with numpy inputs; every output as numpy, in the engine's output order (``output0``, ``output1``, ...
        sorted by name when so named: a seg engine's predictions, then its prototypes)."""
        with self._on_device():
            keep, outs = self._bind(feeds)
            self._execute()
            names = sorted(self.outputs) if all(n.startswith("output") for n in self.outputs) else self.outputs
            return [(outs[n].float() if outs[n].is_floating_point() else outs[n]).cpu().numpy() for n in names]

    def prepared(self, feeds: dict[str, np.ndarray]) -> Any:
        """A zero-argument call running the engine on ``feeds`` kept on the device (no host copies; it waits for the
        GPU): what latency comparisons between engines time.

        Examples:
            >>> x = np.zeros((1, 3, 640, 640), np.float32)
            >>> run = TRTBackend("m.engine").prepared({"images": x})  # doctest: +SKIP
            >>> run()  # doctest: +SKIP
        """
        with self._on_device():
            bound = self._bind(feeds)

        def call() -> None:
            with self._on_device():
                for name, t in {**dict(zip(feeds, bound[0])), **bound[1]}.items():  # another call may have rebound
                    self.context.set_tensor_address(name, int(t.data_ptr()))
                for name, t in zip(feeds, bound[0]):
                    self.context.set_input_shape(name, tuple(t.shape))
                self._execute()

        return call

    def _bind(self, feeds: dict[str, np.ndarray]) -> tuple[list, dict]:
        """Inputs copied to the device and outputs allocated, all bound to the context: ``(inputs, outputs)``."""
        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise ValueError(f"missing engine inputs {missing}.")
        keep = [self._bind_input(name, x) for name, x in feeds.items()]
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"output {name} has an unresolved shape {shape} after setting the inputs.")
            dtype = self.dtypes.get(self.engine.get_tensor_dtype(name), self.torch.float32)
            outs[name] = self.torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, int(outs[name].data_ptr()))
        return keep, outs

    def _execute(self) -> None:
        """Enqueue the bound engine on the current stream and wait for it."""
        stream = self.torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.path.name} failed.")
        stream.synchronize()

    def _bind_input(self, name: str, x: np.ndarray) -> Any:
        """Check ``x`` against the profile, copy it to the device, set its shape and address; returns the tensor."""
        self.check(name, tuple(x.shape))
        dtype = self.dtypes.get(self.engine.get_tensor_dtype(name), self.torch.float32)
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(device=self.device, dtype=dtype)
        if not self.context.set_input_shape(name, tuple(t.shape)):
            raise ValueError(f"TensorRT rejected shape {tuple(t.shape)} for input {name} of {self.path.name} "
                             f"(profile {self.profile.get(name, self.inputs[name])}).")
        self.context.set_tensor_address(name, int(t.data_ptr()))
        return t


__all__ = ["TRTBackend", "read_engine_file", "torch_dtypes"]
