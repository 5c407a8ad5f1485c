# yw_ext, AGPL-3.0 license
"""Re-parameterised (folded) official checkpoints -> a folded yw_ext model (``yw_ext.nn.rep`` modules), exactly.

Official folded tensors (text embeddings ``E``, ``(N, D)``, baked in by the official
``tools/reparameterize_yoloworld.py`` or trained folded):

* neck ``attn_block.guide_convs.{h}.weight`` ``(N, hc, 1, 1)``: head ``h``'s slice of ``guide = E @ W.T + b``;
  or ``attn_block.guide_weight`` ``(N, hc, heads)`` = the tool's ``guide.view(N, D // heads, heads)`` of the
  same ``(N, heads * hc)`` guide, read back with a reshape. -> ``RepC2fAttn.attn.set_guide(guide)``.
* head ``cls_contrasts.{i}.norm`` (BatchNorm on the D-dim image embedding) + ``cls_contrasts.{i}.conv``
  ``(N, D, 1, 1)``: with the preceding ``cls_preds.{i}.2`` conv (hidden -> D) this is affine in the hidden
  features and folds (float64) into ``RepWorldDetect``'s single ``Conv2d(hidden, N)``.

Examples:
    >>> model = convert_folded(ckpt, sd, detect_layout(sd), names=None, source="x.pth")  # doctest: +SKIP
    >>> model.folded  # doctest: +SKIP
    True
"""

from __future__ import annotations

import re
from typing import Any

import torch

from yw_ext.checkpoints.errors import CheckpointError, raise_problems
from yw_ext.checkpoints.keymaps import ADAPTER_PREFIX, HEAD_PREFIX, PROMPT_KEYS, TEXT_PREFIX, ignored_reason
from yw_ext.checkpoints.layout import OfficialLayout
from yw_ext.checkpoints.names import coco_names, meta_names, parse_names
from yw_ext.checkpoints.statemap import build_detector
from yw_ext.nn.model import YWDetectionModel

# Re-parameterised tensors (official tools/reparameterize_yoloworld.py, or re-parameterised fine-tuning).
REP_NECK_GUIDE_CONV = re.compile(r"(neck\.(?:top_down|bottom_up)_layers\.\d+)\.attn_block\.guide_convs\.(\d+)\.weight")
REP_NECK_GUIDE_MATRIX = re.compile(r"(neck\.(?:top_down|bottom_up)_layers\.\d+)\.attn_block\.guide_weight")
REP_HEAD_CONV = re.compile(r"bbox_head\.head_module\.cls_contrasts\.(\d+)\.conv\.(weight|bias)")


def _check_foldable(layout: OfficialLayout, source: str) -> None:
    """Refuse re-parameterised layouts yw_ext cannot fold exactly (v1; a half-folded model)."""
    if layout.dual:
        raise CheckpointError(
            f"{source}: a re-parameterised v1 (image-pooling) checkpoint: its bottom-up guides depend on the image "
            "and cannot be folded (the official runtime cannot run it either)."
        )
    if layout.head != "rep" or layout.neck == "vlpan":
        raise CheckpointError(
            f"{source}: the head is {'' if layout.head == 'rep' else 'not '}re-parameterised but the neck is "
            f"{layout.neck}; yw_ext converts checkpoints folded throughout (official tool output, or re-parameterised "
            "fine-tuning with a folded or efficient neck)."
        )


def _split(sd: dict[str, torch.Tensor], n: int) -> tuple[dict, dict, dict, list[str]]:
    """(detector tensors, neck guides by layer prefix, head convs by level, shape problems) of a folded state dict.

    A guide is a ``{head: (N, hc, 1, 1)}`` dict (``guide_convs``) or an ``(N, heads * hc)`` matrix (``guide_weight``).
    """
    det_sd, guides, head_convs, shapes = {}, {}, {}, []
    for k, v in sd.items():
        if k.startswith((TEXT_PREFIX, ADAPTER_PREFIX)) or k in PROMPT_KEYS or ignored_reason(k):
            continue
        m = REP_NECK_GUIDE_CONV.fullmatch(k)
        if m:
            guides.setdefault(m.group(1), {})[int(m.group(2))] = v
            continue
        m = REP_NECK_GUIDE_MATRIX.fullmatch(k)
        if m:
            if v.dim() != 3 or v.shape[0] != n:
                shapes.append(f"{k}: {tuple(v.shape)}, expected ({n}, head channels, heads)")
            else:
                guides[m.group(1)] = v.reshape(n, -1)  # (N, hc, heads) -> (N, heads * hc): the tool's view undone
            continue
        m = REP_HEAD_CONV.fullmatch(k)
        if m:
            head_convs.setdefault(int(m.group(1)), {})[m.group(2)] = v
            continue
        det_sd[k] = v
    return det_sd, guides, head_convs, shapes


def _vocabulary(ckpt: Any, names: Any, n: int, source: str) -> list[str]:
    """The N class names: ``names``, else the checkpoint's ``meta`` classes, else COCO's 80 when N == 80."""
    given = [g if isinstance(g, str) else g[0] for g in parse_names(names)] if names is not None else None
    meta = meta_names(ckpt)
    vocab = given or (meta if meta and len(meta) == n else None) or (coco_names() if n == 80 else None)
    if vocab is None or len(vocab) != n:
        raise CheckpointError(f"{source}: this re-parameterised checkpoint has {n} classes folded in; pass their "
                              f"{n} names (names=... as a list, a comma string or a .txt/.json file)"
                              + (f", not {len(vocab)}." if vocab else "."))
    return vocab


def _guide_matrix(prefix: str, guide: Any, nh: int, hc: int, n: int, shapes: list[str]) -> torch.Tensor | None:
    """One neck layer's guide as ``(N, nh * hc)`` (head-major), or None after recording why it does not fit."""
    if isinstance(guide, dict):  # guide_convs: one (N, hc, 1, 1) conv per head
        bad = [f"{prefix}.attn_block.guide_convs.{h}.weight: {tuple(w.shape)}, expected ({n}, {hc}, 1, 1)"
               for h, w in sorted(guide.items()) if tuple(w.shape) != (n, hc, 1, 1)]
        if bad or sorted(guide) != list(range(nh)):
            shapes += bad or [f"{prefix}.attn_block.guide_convs: heads {sorted(guide)}, expected 0..{nh - 1}"]
            return None
        guide = torch.cat([guide[h].flatten(1) for h in range(nh)], 1)  # nh x (N, hc) -> (N, nh * hc)
    if tuple(guide.shape) != (n, nh * hc):
        shapes.append(f"{prefix}.attn_block.guide_weight: {tuple(guide.shape)} as (N, heads * hc), expected "
                      f"({n}, {nh * hc})")
        return None
    return guide


def _fold_neck(model: YWDetectionModel, layout: OfficialLayout, guides: dict, n: int, shapes: list[str]) -> None:
    """Replace each text-guided neck layer by a ``RepC2fAttn`` holding its official guide."""
    from yw_ext.nn.rep import RepC2fAttn

    layers = {prefix: idx for prefix, idx, kind in layout.layers if kind == "csp" and prefix.startswith("neck.")}
    missing = sorted(set(layers) - set(guides))
    if missing:
        shapes.append(f"no guide_convs / guide_weight for {missing}")
    for prefix, guide in sorted(guides.items()):
        idx = layers.get(prefix)
        layer = model.model[idx] if idx is not None else None
        if layer is None or type(layer).__name__ != "C2fAttn":
            shapes.append(f"{prefix}.attn_block: guide tensors for a layer without attention")
            continue
        guide = _guide_matrix(prefix, guide, layer.attn.nh, layer.attn.hc, n, shapes)
        if guide is not None:
            rep = RepC2fAttn.from_c2fattn(layer, torch.zeros(n, layout.embed_dim))
            rep.attn.set_guide(guide.float())
            model.model[idx] = rep


def _fold_head(model: YWDetectionModel, head_convs: dict, n: int, d: int, shapes: list[str]) -> torch.nn.Module:
    """``RepWorldDetect`` with each level's ``Conv2d(hidden, N)`` = cls_preds[i][2] (hidden -> D), BN(D), conv (D -> N).

    Problems (missing or mis-shaped convs, extra levels) are appended to ``shapes``.
    """
    from yw_ext.nn.rep import RepWorldDetect

    head = model.model[-1]
    rep_head = RepWorldDetect.from_world_detect(head, torch.zeros(n, d))
    for i, (branch, ctr) in enumerate(zip(head.cv3, head.cv4)):
        conv = head_convs.get(i, {})
        w2, b2 = conv.get("weight"), conv.get("bias")
        if w2 is None or b2 is None or tuple(w2.shape) != (n, d, 1, 1) or tuple(b2.shape) != (n,):
            shapes.append(f"{HEAD_PREFIX}cls_contrasts.{i}.conv.weight/bias: "
                          f"{None if w2 is None else tuple(w2.shape)} / {None if b2 is None else tuple(b2.shape)}, "
                          f"expected ({n}, {d}, 1, 1) / ({n},)")
            continue
        last, bn = branch[-1], ctr.norm
        a = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()  # (D,) BatchNorm scale
        w1 = a[:, None] * last.weight.double().flatten(1)  # (D, hidden, 1, 1) -> (D, hidden): conv then BN
        b1 = a * (last.bias.double() - bn.running_mean.double()) + bn.bias.double()  # (D,)
        w2 = w2.double().flatten(1)  # (N, D, 1, 1) -> (N, D)
        out = rep_head.cv3[i][-1]  # Conv2d(hidden, N)
        out.weight.data = (w2 @ w1).view(n, -1, 1, 1).to(out.weight.dtype)  # (N, hidden) -> (N, hidden, 1, 1)
        out.bias.data = (w2 @ b1 + b2.double()).to(out.bias.dtype)  # (N,)
    extra = sorted(set(head_convs) - set(range(len(head.cv3))))
    if extra:
        shapes.append(f"{HEAD_PREFIX}cls_contrasts.{extra}.conv: more levels than the head has")
    return rep_head


def convert_folded(ckpt: Any, sd: dict, layout: OfficialLayout, names: Any, source: str) -> YWDetectionModel:
    """A re-parameterised official checkpoint as a folded ``YWDetectionModel`` (``model.folded`` is True).

    Args:
        ckpt: The whole checkpoint (for its ``meta`` class names).
        sd: Its state dict (``layout.folded`` is True).
        layout: From ``detect_layout``.
        names: The N folded classes' names (list, comma string, ``.txt`` / ``.json``); default the checkpoint's
            ``meta`` classes, else COCO's 80 when N == 80.
        source: For messages.

    Returns:
        The folded model (float32, eval mode) with the N names installed; it has no text path.

    Raises:
        CheckpointError: a v1 or half-folded checkpoint, names that do not count N, or any tensor missing /
            unexpected / mis-shaped (all listed at once).

    Examples:
        >>> model = convert_folded(ckpt, sd, detect_layout(sd), ["person", "bus"], "x.pth")  # doctest: +SKIP
    """
    try:
        import yw_ext.nn.rep  # noqa: F401 - the folded modules
    except ImportError as e:  # pragma: no cover - rep.py ships with yw_ext
        raise CheckpointError(f"{source} is a re-parameterised official YOLO-World checkpoint; converting those needs "
                              f"yw_ext.nn.rep, which is not available here ({e}).") from e
    _check_foldable(layout, source)
    n, d = layout.folded_prompts, layout.embed_dim
    det_sd, guides, head_convs, shapes = _split(sd, n)
    model = build_detector(det_sd, layout, source)
    model.set_vocabulary(_vocabulary(ckpt, names, n, source), torch.zeros(n, d), 1, None, "folded-official-checkpoint")
    if layout.neck == "rep":
        _fold_neck(model, layout, guides, n, shapes)
    rep_head = _fold_head(model, head_convs, n, d, shapes)
    raise_problems(f"{source} (re-parameterised official YOLO-World, scale {layout.scale}, {n} folded classes)",
                   [], [], shapes)
    model.model[-1] = rep_head
    model.folded = True
    return model


__all__ = ["REP_HEAD_CONV", "REP_NECK_GUIDE_CONV", "REP_NECK_GUIDE_MATRIX", "convert_folded"]
