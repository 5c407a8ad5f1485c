# yw_ext, AGPL-3.0 license
"""The models of one benchmark group: random weights, the Ultralytics baseline, and one runner per backend and K.

A group is one (model size, image size, batch). For every K, the Ultralytics ``YOLOWorld`` of that size gets random
weights (``randomize_``), is saved as a ``.pt`` and loaded back as a user loads it; the yw_ext model loads the same
state dict and vocabulary, and each backend (``config.BACKENDS``) becomes a ``Runner`` (the seg backends through a
builder the suite adds, ``seg_models.add_seg_runners``). A backend that cannot be built is recorded (``skipped`` /
``error`` with the reason) and left out; the run goes on.

Examples:
    >>> import torch
    >>> lin = randomize_(torch.nn.Linear(2, 2))
    >>> torch.equal(lin.weight, lin.weight.half().float())
    True
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from yw_ext.bench.config import BenchConfig
from yw_ext.bench.records import version_of
from yw_ext.bench.timing import cuda_sync, ort_session
from yw_ext.core.log import LOGGER


def randomize_(model: torch.nn.Module, seed: int = 0, fp16_exact: bool = True) -> torch.nn.Module:
    """Non-default BatchNorm statistics, head scalars and attention biases, then (``fp16_exact``) every float tensor
    rounded to float16 values.

    The non-default values make parity tests able to fail (a wrong fold or mapping changes the outputs); rounding
    makes Ultralytics' half-precision ``.pt`` save / load exact, so both sides hold the very same weights.

    Args:
        model: Any module; BatchNorm2d layers, contrastive heads (``logit_scale`` and a ``bias`` parameter) and
            ``MaxSigmoidAttnBlock`` biases are changed in place.
        seed: Random seed.
        fp16_exact: Round every floating-point parameter and buffer to a float16-representable value.

    Returns:
        ``model``.

    Examples:
        >>> import torch
        >>> bn = randomize_(torch.nn.BatchNorm2d(4), seed=1, fp16_exact=False)
        >>> bool((bn.running_var >= 0.5).all())
        True
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            if hasattr(m, "logit_scale") and isinstance(getattr(m, "bias", None), torch.nn.Parameter):
                m.bias.fill_(-1.0)
                m.logit_scale.fill_(1.0)
            if type(m).__name__ == "MaxSigmoidAttnBlock":
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
        if fp16_exact:
            for t in list(model.parameters()) + list(model.buffers()):
                if t.is_floating_point():
                    t.copy_(t.half().float())
    return model


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Ultralytics' logger at WARNING (export chatter), restored afterwards.

    Examples:
        >>> with quiet():
        ...     LOGGER.info("not shown")
    """
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def first_output(y: Any) -> torch.Tensor:
    """The decoded predictions ``(B, 4 + K, A)`` of a detection model's output (the first tensor of nested tuples).

    Examples:
        >>> first_output(([1, 2], 3))
        1
    """
    while isinstance(y, (list, tuple)):
        y = y[0]
    return y


def trt_status(device: str) -> str | None:
    """Why TensorRT cannot run here (None when it can).

    Examples:
        >>> trt_status("cpu") in {"no CUDA GPU", "no CUDA device selected (device=cpu)"}
        True
    """
    if not str(device).startswith("cuda"):
        return "no CUDA device selected (device=cpu)" if torch.cuda.is_available() else "no CUDA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not version_of("tensorrt"):
        return "tensorrt package not installed"
    return None


def _reduced(folded: torch.nn.Module) -> torch.nn.Module:
    """A copy of a folded model whose head outputs each anchor's best class only (``score_mode = "max"``).

    It shares the weights of ``folded``; only the head object is new.
    """
    model = copy.copy(folded)
    model._modules = dict(folded._modules)  # copy.copy shares the submodule dict: give the copy its own
    model.model = torch.nn.Sequential(*folded.model)  # same layers (and their bookkeeping), a new last one
    head = copy.copy(folded.model[-1])
    head.score_mode, head.score_groups = "max", int(getattr(folded, "prompts_per_class", 1) or 1)
    model.model[-1] = head
    return model


@dataclasses.dataclass
class Runner:
    """One timed variant: its call, a call returning its output, FLOPs and what the memory child needs.

    Examples:
        >>> r = Runner(lambda: None, lambda: np.zeros((1, 5, 4)), gflops=0.0)
        >>> r.output().shape, r.mem
        ((1, 5, 4), None)
    """

    fn: Callable[[], Any]
    output: Callable[[], np.ndarray]
    gflops: float
    mem: dict | None = None  # {"kind": "torch" | "onnx", "path": ..., ...} for the memory subprocess


@dataclasses.dataclass
class _Models:
    """The models of one K, all holding the same weights and vocabulary."""

    ultralytics: Any  # the Ultralytics YOLOWorld loaded back from its .pt
    ours: Any  # the yw_ext YOLOWorld
    ul_fused: torch.nn.Module
    eager: torch.nn.Module
    folded: torch.nn.Module
    gf_text: float  # GFLOPs of the unfolded models
    gf_folded: float


class Group:
    """All models of one (scale, imgsz, batch): every K and backend, built from the same random weights.

    Args:
        cfg: The run's configuration.
        scale: Model size.
        imgsz: Image size.
        batch: Batch size.
        tmp: Folder for the saved ``.pt``, ONNX and engine files (the caller removes it).

    Examples:
        >>> group = Group(BenchConfig(scales=["n"], imgsz=[64], ks=[1]), "n", 64, 1, Path("/tmp/g"))  # doctest: +SKIP
        >>> group.build()  # doctest: +SKIP
    """

    def __init__(self, cfg: BenchConfig, scale: str, imgsz: int, batch: int, tmp: Path):
        self.cfg, self.scale, self.imgsz, self.batch, self.tmp = cfg, scale, imgsz, batch, tmp
        self.runners: dict[tuple[str, int], Runner] = {}
        self.status: dict[tuple[str, int | None], tuple[str, str]] = {}  # (backend, K or None) -> (status, note)
        self.mem_k = cfg.mem_k if cfg.mem_k in cfg.ks else max(cfg.ks)
        self.device = cfg.device
        g = torch.Generator().manual_seed(cfg.seed)
        self.x = torch.rand(batch, 3, imgsz, imgsz, generator=g)
        self.xd = self.x.to(self.device)
        self.xn = self.x.numpy()
        self.sync = cuda_sync(self.device)
        self._dyn: Any = None  # the dynamic-vocabulary session, shared by every K
        self.builders: list[Callable[..., None]] = []
        """More runners per K: ``build(group, k, emb, det_state_dict, folder, export_kwargs)`` after the others."""

    def build(self) -> None:
        """Build every (backend, K) runner; a backend that fails is recorded as an error and left out.

        Examples:
            >>> group.build()  # doctest: +SKIP
            >>> sorted(group.runners)[:1]  # doctest: +SKIP
            [('ort_dynvocab', 1)]
        """
        for k in self.cfg.ks:
            self._build_k(k)

    def note(self, backend: str, k: int | None, status: str, note: str) -> None:
        """Record the status (``ok`` / ``skipped`` / ``error``) and note of a backend at K (None: every K).

        Examples:
            >>> group.note("trt_fp16", None, "skipped", "no CUDA GPU")  # doctest: +SKIP
        """
        self.status[(backend, k)] = (status, note)

    def _torch_runner(self, model: torch.nn.Module, gflops: float, name: str, k: int) -> Runner:
        model = model.to(self.device).eval()
        x = self.xd

        def fn() -> Any:
            with torch.inference_mode():
                return model(x)

        mem = None
        if k == self.mem_k and self.cfg.memory:
            path = self.tmp / f"{name}_k{k}.pt"
            torch.save(model, path)
            mem = {"kind": "torch", "path": str(path)}
        return Runner(fn, lambda: first_output(fn()).float().cpu().numpy(), gflops, mem)

    def _onnx_runner(self, path: str | Path, gflops: float, feeds: dict, k: int, session: Any = None) -> Runner:
        sess = session or ort_session(path, self.cfg.threads, self.device)

        def fn() -> Any:
            return sess.run(None, feeds)

        mem = None
        if k == self.mem_k and self.cfg.memory:
            mem = {"kind": "onnx", "path": str(path), "feeds": {n: list(v.shape) for n, v in feeds.items()}}
        return Runner(fn, lambda: np.asarray(fn()[0]), gflops, mem)

    def _attempt(self, backend: str, k: int, make: Callable[[], Runner]) -> None:
        if backend not in self.cfg.backends:
            return
        try:
            self.runners[(backend, k)] = make()
            self.note(backend, k, "ok", "")
        except ImportError as e:  # e.g. onnxruntime not installed
            self.note(backend, k, "skipped", f"{type(e).__name__}: {e}"[:300])
        except Exception as e:  # noqa: BLE001 - recorded in the CSV, the run goes on
            self.note(backend, k, "error", f"{type(e).__name__}: {e}"[:300])

    def _models(self, k: int, emb: torch.Tensor, d: Path) -> _Models:
        """The Ultralytics model with random weights and the K embeddings, saved and loaded back; ours with the same
        state dict and vocabulary; fused / folded copies and their FLOPs."""
        import yw_ext
        from yw_ext.seam import UltralyticsYOLOWorld, get_flops

        scale, seed = self.scale, self.cfg.seed
        names = [f"class{i}" for i in range(k)]
        torch.manual_seed(seed)
        ul = UltralyticsYOLOWorld(f"yolov8{scale}-worldv2.yaml")
        randomize_(ul.model, seed)
        ul.model.txt_feats = emb[None].clone()
        ul.model.model[-1].nc = k
        ul.model.names = dict(enumerate(names))
        pt = d / f"yolov8{scale}-worldv2.pt"
        ul.save(pt)
        ul = UltralyticsYOLOWorld(str(pt))  # as a user loads it; the fp16 round trip is exact (randomize_)
        ours = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
        ours.model.load_state_dict(ul.model.state_dict(), strict=True)
        ours.set_classes(names, embeddings=emb)
        ul_fused = copy.deepcopy(ul.model).eval().fuse(verbose=False)
        eager = copy.deepcopy(ours.model).eval().fuse(verbose=False)
        folded = copy.deepcopy(ours.model).eval()
        folded.reparameterize()
        folded = folded.fuse(verbose=False)
        gf_text = float(get_flops(copy.deepcopy(ul_fused), self.imgsz))
        gf_folded = float(get_flops(copy.deepcopy(folded), self.imgsz))
        return _Models(ul, ours, ul_fused, eager, folded, gf_text, gf_folded)

    def _build_k(self, k: int) -> None:
        cfg = self.cfg
        d = self.tmp / f"k{k}"
        d.mkdir(parents=True, exist_ok=True)
        emb = F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(cfg.seed + 1000 + k)), dim=-1)
        with quiet():
            m = self._models(k, emb, d)
            ekw = {"imgsz": self.imgsz, "batch": self.batch, "simplify": True, "verbose": False}
            self._attempt("ultralytics", k, lambda: self._torch_runner(m.ul_fused, m.gf_text, "ultralytics", k))
            self._attempt("pt_eager", k, lambda: self._torch_runner(m.eager, m.gf_text, "pt_eager", k))
            self._attempt("pt_folded", k, lambda: self._torch_runner(m.folded, m.gf_folded, "pt_folded", k))
            self._attempt("pt_folded_max", k, lambda: self._torch_runner(_reduced(m.folded), m.gf_folded,
                                                                         "pt_folded_max", k))
            feeds = {"images": self.xn}
            self._attempt("ultralytics_onnx", k, lambda: self._onnx_runner(
                str(Path(m.ultralytics.export(format="onnx", **ekw)).resolve()), m.gf_text, feeds, k))
            self._attempt("ort_fixed", k, lambda: self._onnx_runner(
                m.ours.export(format="onnx", out=d / "yw_fixed.onnx", **ekw), m.gf_folded, feeds, k))
            self._attempt("ort_max", k, lambda: self._onnx_runner(
                m.ours.export(format="onnx", scores="max", out=d / "yw_max.onnx", **ekw), m.gf_folded, feeds, k))
            if "ort_dynvocab" in cfg.backends:
                self._attempt("ort_dynvocab", k, lambda: self._dyn_runner(m.ours, emb, m.gf_text, k, ekw))
            self._trt(m.ours, m.gf_folded, k, d, ekw)
            for build in self.builders:  # e.g. seg_models.add_seg_runners
                build(self, k, emb, m.ultralytics.model.state_dict(), d, ekw)

    def _dyn_runner(self, ours: Any, emb: torch.Tensor, gflops: float, k: int, ekw: dict) -> Runner:
        if self._dyn is None:  # one file serves every K
            try:
                path = ours.export(format="onnx", dynamic_vocab=True, out=self.tmp / "yw_dynvocab.onnx", **ekw)
                self._dyn = (path, ort_session(path, self.cfg.threads, self.device))
            except Exception as e:  # noqa: BLE001 - recorded per K, not retried for the other K
                self._dyn = e
        if isinstance(self._dyn, Exception):
            raise self._dyn
        path, sess = self._dyn
        txt = emb[None].numpy().astype(np.float32)  # (1, K, D): one vocabulary, broadcast to the batch in the graph
        feeds = {"images": self.xn, "txt_feats": txt}
        return self._onnx_runner(path, gflops, feeds, k, session=sess)

    def _trt(self, ours: Any, gflops: float, k: int, d: Path, ekw: dict) -> None:
        for backend, q in (("trt_fp16", 16), ("trt_int8", 8)):
            if backend not in self.cfg.backends:
                continue
            why = trt_status(self.device)
            if why is None and q == 8 and not self.cfg.data:
                why = "INT8 calibration needs data=<dataset.yaml>"
            if why is not None:
                self.note(backend, None, "skipped", why)
                continue

            def make(q: int = q, backend: str = backend) -> Runner:
                from yw_ext.runtime.trt import TRTBackend

                kw = {**ekw, "device": self.device}
                if q == 8:
                    kw["data"] = self.cfg.data
                path = ours.export(format="engine", quantize=q, out=d / f"{backend}.engine", **kw)
                eng = TRTBackend(path, device=torch.device(self.device).index or 0)
                feeds = {"images": self.xn}
                return Runner(lambda: eng.run(feeds), lambda: np.asarray(eng.run(feeds)), gflops, None)

            self._attempt(backend, k, make)


__all__ = ["Group", "Runner", "first_output", "quiet", "randomize_", "trt_status"]
