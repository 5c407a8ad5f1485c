# yw_ext, AGPL-3.0 license
"""The segmentation runners of one benchmark group (``--seg``): yw_ext's YOLO-World-Seg and Ultralytics' YOLOE-seg.

For every K, ``add_seg_runners`` adds to a ``models.Group``:

- ``pt_seg`` / ``ort_seg``: ``yw-v2-seg-<scale>.yaml`` with the group's detection weights (the Ultralytics
  YOLO-World state dict the detection rows use; the mask branch random), the same K embeddings, folded
  (``reparameterize``) and Conv+BN fused, in PyTorch; its ``YOLOWorld.export(format="onnx")`` graph in ONNX Runtime.
  Their box and class-score channels equal the detection model's (``max_score_diff``).
- ``yoloe_seg`` / ``yoloe_seg_onnx``: Ultralytics' ``YOLOE("yoloe-v8<scale>-seg.yaml")`` built offline from its
  YAML (no weights, no MobileCLIP: random prompt embeddings are installed with ``set_classes(names, embeddings)``),
  saved and loaded back, run as its predictor runs it (``fuse()``: Conv+BN, the prompts stay a contrastive product);
  Ultralytics' own ONNX export of it (which folds the prompts into the head) in ONNX Runtime.

A model that cannot be built records ``skipped`` (Ultralytics without YOLOE) or ``error`` with the reason for its
backends; the run goes on.

Examples:
    >>> add_seg_runners(group, 80, emb, det_state, tmp / "k80", ekw)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from yw_ext.bench.models import Group, randomize_

YOLOE_CFG = "yoloe-v8{scale}-seg.yaml"
"""Ultralytics' YOLOE-seg YAML of a scale: the YOLOv8 body, as YOLO-World v2's (``yoloe-11`` / ``yoloe-26`` also
ship in 8.4.190)."""
YOLOE_NOTE = "Ultralytics YOLOE-seg ({cfg}), random weights and prompt embeddings; {how}"
SEG_NOTE = "yw-v2-seg-{scale}, folded; detection weights as pt_folded, mask branch random"


def yoloe_seg(scale: str, names: list[str], emb: torch.Tensor, d: Path, seed: int = 0) -> Any:
    """Ultralytics' YOLOE-seg of ``scale`` with random weights and the prompt embeddings ``emb``, saved and loaded.

    Args:
        scale: Model size (``n``, ``s``, ...).
        names: K class names.
        emb: ``(K, D)`` prompt embeddings (installed as YOLOE's ``pe``, ``(1, K, D)``; no text model is loaded).
        d: Folder for the ``.pt`` (and, later, Ultralytics' ONNX export next to it).
        seed: Random seed of the weights.

    Raises:
        ImportError: the installed Ultralytics has no YOLOE.

    Examples:
        >>> ye = yoloe_seg("n", ["a", "b"], torch.randn(2, 512), Path("/tmp/ye"))  # doctest: +SKIP
        >>> ye.model.pe.shape  # doctest: +SKIP
        torch.Size([1, 2, 512])
    """
    from yw_ext import seam

    if seam.UltralyticsYOLOE is None:
        raise ImportError(f"Ultralytics {seam.ULTRALYTICS_VERSION} has no YOLOE (added in 8.3.99)")
    cfg = YOLOE_CFG.format(scale=scale)
    torch.manual_seed(seed)
    ye = seam.UltralyticsYOLOE(cfg)
    randomize_(ye.model, seed)
    ye.set_classes(names, emb[None].clone())  # (1, K, D): given embeddings, so no MobileCLIP is built
    d.mkdir(parents=True, exist_ok=True)
    pt = d / Path(cfg).with_suffix(".pt").name
    ye.save(pt)
    return seam.UltralyticsYOLOE(str(pt))  # as a user loads it


def yw_seg(scale: str, names: list[str], emb: torch.Tensor, det_state: dict, seed: int = 0) -> Any:
    """yw_ext's YOLO-World-Seg of ``scale`` holding the detection weights ``det_state`` and the embeddings ``emb``.

    Raises:
        RuntimeError: ``det_state`` has keys the seg model lacks (not a detection model of the same scale).

    Examples:
        >>> seg = yw_seg("n", ["a"], torch.randn(1, 512), det_state)  # doctest: +SKIP
    """
    import yw_ext

    torch.manual_seed(seed)
    seg = yw_ext.YOLOWorld(f"yw-v2-seg-{scale}.yaml")
    randomize_(seg.model, seed)  # the mask branch keeps these
    res = seg.model.load_state_dict(det_state, strict=False)
    bad = list(res.unexpected_keys) + [k for k in res.missing_keys if ".proto." not in k and ".cv5." not in k]
    if bad:
        raise RuntimeError(f"seg model does not take the detection weights: {bad[:5]}")
    seg.set_classes(names, embeddings=emb)
    return seg


def _build(group: Group, backends: tuple[str, ...], k: int, make: Callable[[], Any]) -> Any:
    """``make()``, or None with ``skipped`` (ImportError) / ``error`` recorded for those of ``backends`` that run."""
    wanted = [b for b in backends if b in group.cfg.backends]
    if not wanted:
        return None
    try:
        return make()
    except Exception as e:  # noqa: BLE001 - recorded in the CSV, the run goes on
        status = "skipped" if isinstance(e, ImportError) else "error"
        for b in wanted:
            group.note(b, k, status, f"{type(e).__name__}: {e}"[:300])
        return None


def _with_fused(yolo: Any, imgsz: int, fold: bool = False) -> tuple[Any, torch.nn.Module, float]:
    """``(yolo, fused, GFLOPs)``: an eval copy of ``yolo.model``, folded (``reparameterize``) when ``fold``, Conv+BN
    fused, and its FLOPs at ``imgsz``."""
    from yw_ext.seam import get_flops

    m = copy.deepcopy(yolo.model).eval()
    if fold:
        m.reparameterize()
    m = m.fuse(verbose=False)
    return yolo, m, float(get_flops(copy.deepcopy(m), imgsz))


def _noted(group: Group, backend: str, k: int, note: str) -> None:
    """Put ``note`` on a backend that was built (status ``ok``)."""
    if group.status.get((backend, k), ("",))[0] == "ok":
        group.note(backend, k, "ok", note)


def add_seg_runners(group: Group, k: int, emb: torch.Tensor, det_state: dict, d: Path, ekw: dict) -> None:
    """Add the ``SEG_BACKENDS`` runners the run asks for at K (see the module docstring).

    Args:
        group: The group being built (its ``_attempt`` records each backend's status).
        k: Vocabulary size.
        emb: ``(K, D)`` embeddings, the ones of the detection rows.
        det_state: The detection model's state dict (the Ultralytics YOLO-World loaded back from its ``.pt``).
        d: This K's folder.
        ekw: Export options (``imgsz``, ``batch``, ``simplify``, ``verbose``).

    Examples:
        >>> add_seg_runners(group, 3, emb, det_state, tmp / "k3", ekw)  # doctest: +SKIP
        >>> ("pt_seg", 3) in group.runners  # doctest: +SKIP
        True
    """
    scale, seed, feeds = group.scale, group.cfg.seed, {"images": group.xn}
    names = [f"class{i}" for i in range(k)]
    built = _build(group, ("yoloe_seg", "yoloe_seg_onnx"), k, lambda: _with_fused(
        yoloe_seg(scale, names, emb, d / "yoloe", seed), group.imgsz))
    if built is not None:
        ye, ye_fused, gf = built
        group._attempt("yoloe_seg", k, lambda: group._torch_runner(ye_fused, gf, "yoloe_seg", k))
        group._attempt("yoloe_seg_onnx", k, lambda: group._onnx_runner(
            str(Path(ye.export(format="onnx", **ekw)).resolve()), gf, feeds, k))
        cfg = YOLOE_CFG.format(scale=scale)
        _noted(group, "yoloe_seg", k, YOLOE_NOTE.format(cfg=cfg, how="fused as its predictor runs it"))
        _noted(group, "yoloe_seg_onnx", k, YOLOE_NOTE.format(cfg=cfg, how="Ultralytics' ONNX export"))
    built = _build(group, ("pt_seg", "ort_seg"), k, lambda: _with_fused(
        yw_seg(scale, names, emb, det_state, seed), group.imgsz, fold=True))
    if built is not None:
        seg, folded, gf = built
        group._attempt("pt_seg", k, lambda: group._torch_runner(folded, gf, "pt_seg", k))
        group._attempt("ort_seg", k, lambda: group._onnx_runner(
            seg.export(format="onnx", out=d / "yw_seg.onnx", **ekw), gf, feeds, k))
        for b in ("pt_seg", "ort_seg"):
            _noted(group, b, k, SEG_NOTE.format(scale=scale))

__all__ = ["YOLOE_CFG", "add_seg_runners", "yoloe_seg", "yw_seg"]
