# yw_ext, AGPL-3.0 license
"""Official detector tensors -> a complete, checked yw_ext state dict, and the detector built from it.

Every official tensor goes through the explicit key map (``yw_ext.checkpoints.keymaps``); the model tensors with no
official counterpart (the fixed DFL conv, the held-open gate of an efficient neck, the placeholders a folded
checkpoint replaces) are generated here. Anything missing, unexpected or mis-shaped is listed in one
``CheckpointError``.

Examples:
    >>> model = build_detector(det_sd, layout, "x.pth")  # doctest: +SKIP
"""

from __future__ import annotations

import re

import torch

from yw_ext.checkpoints.errors import raise_problems
from yw_ext.checkpoints.keymaps import official_target, stored_layout
from yw_ext.checkpoints.layout import OfficialLayout, model_cfg
from yw_ext.nn.model import YWDetectionModel

# EfficientCSPLayerWithTwoConv's attn_block is a bare 3x3 conv + BN branch (VanillaSigmoidBlock, no text). It is
# built as a one-head C2fAttn whose text gate is held open: guide_fc = 0 so every similarity is 0, and the attention
# bias is large, so sigmoid(0 + bias) == 1.0 exactly in float32 and float16 and the block returns project_conv(x).
OPEN_GATE_BIAS = 1.0e4


def _rename(
    det_sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], layout: OfficialLayout
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Official tensors under their yw_ext names, plus the unexpected and the mis-shaped ones (described)."""
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unexpected, shapes = [], []
    for key, t in det_sd.items():
        target = official_target(key, layout.layers)
        if target is None or target not in expected:
            unexpected.append(key if target is None else f"{key} (-> {target}, which this architecture lacks)")
            continue
        if target in out:
            unexpected.append(f"{key} (-> {target}, already given by {origin[target]})")
            continue
        t = stored_layout(target, t)
        if tuple(t.shape) != tuple(expected[target].shape):
            shapes.append(f"{key} -> {target}: checkpoint {tuple(t.shape)} vs model {tuple(expected[target].shape)}")
            continue
        out[target] = t
        origin[target] = key
    return out, unexpected, shapes


def _generated(model: YWDetectionModel, expected: dict[str, torch.Tensor], layout: OfficialLayout) -> dict:
    """The model tensors with no official counterpart, by layout."""
    out = {k: v.clone() for k, v in expected.items() if k.endswith(".dfl.conv.weight")}  # fixed arange(reg_max)
    attn = [f"model.{m.i}.attn." for m in model.model if type(m).__name__ == "C2fAttn"]
    if layout.neck == "efficient":
        for p in attn:
            out[p + "gl.weight"] = torch.zeros_like(expected[p + "gl.weight"])  # (c, D): guide == 0
            out[p + "gl.bias"] = torch.zeros_like(expected[p + "gl.bias"])
            out[p + "bias"] = torch.full_like(expected[p + "bias"], OPEN_GATE_BIAS)  # sigmoid(...) == 1
    if layout.neck == "rep":  # placeholders: the folded guides replace the text path (see yw_ext.checkpoints.folded)
        for p in attn:
            for k in (p + "gl.weight", p + "gl.bias"):
                out[k] = torch.zeros_like(expected[k])
    for k in expected:  # seg: Ultralytics' Proto upsamples by a ConvTranspose, the official one by nearest x2
        if re.fullmatch(r"model\.\d+\.proto\.upsample\.weight", k):
            w = torch.zeros_like(expected[k])  # (C, C, 2, 2): weight[c, c] = 1 copies each pixel to its 2x2 block
            w[torch.arange(w.shape[0]), torch.arange(w.shape[0])] = 1.0
            out[k], out[k[: -len("weight")] + "bias"] = w, torch.zeros_like(expected[k[: -len("weight")] + "bias"])
    if layout.head == "rep":  # placeholders: the folded K-output conv replaces the contrastive scalars
        for k in expected:
            if re.fullmatch(r"model\.\d+\.cv4\.\d+\.(bias|logit_scale)", k):
                out[k] = torch.zeros_like(expected[k])
    return out


def map_official_state_dict(
    det_sd: dict[str, torch.Tensor], model: YWDetectionModel, layout: OfficialLayout, source: str = "<checkpoint>"
) -> dict[str, torch.Tensor]:
    """Rename and reshape official detector tensors into ``model``'s state dict, checking every name and shape.

    Args:
        det_sd: Official detector tensors (no text tower, no ignored keys).
        model: The yw_ext model built for ``layout`` (its own ``dfl.conv`` and, for an efficient neck, the open-gate
            tensors are taken from it / generated).
        layout: From ``detect_layout``.
        source: For messages.

    Returns:
        A complete state dict for ``model`` (``load_state_dict(strict=True)`` accepts it).

    Raises:
        CheckpointError: listing every official tensor that maps nowhere (unexpected), every model tensor that got no
            value (missing) and every shape mismatch (with both names), all at once.

    Examples:
        >>> sd = map_official_state_dict(det_sd, model, layout)  # doctest: +SKIP
        >>> model.load_state_dict(sd, strict=True)  # doctest: +SKIP
    """
    expected = model.state_dict()
    out, unexpected, shapes = _rename(det_sd, expected, layout)
    out.update(_generated(model, expected, layout))
    missing = sorted(k for k in expected if k not in out and not k.endswith("num_batches_tracked"))
    for k in expected:  # BatchNorm counters are not used in eval; keep the model's when a file lacks them
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = expected[k].clone()
    raise_problems(
        f"{source} (official YOLO-World {layout.family}, scale {layout.scale}, {layout.embed_dim}-d text)",
        missing,
        sorted(unexpected),
        sorted(shapes),
        hint="Tensor names are listed as official name -> yw_ext name where both are known.",
    )
    return {k: out[k] for k in expected}


def build_detector(det_sd: dict[str, torch.Tensor], layout: OfficialLayout, source: str) -> YWDetectionModel:
    """The ``YWDetectionModel`` of ``layout`` with the official detector tensors loaded (float32, eval mode).

    Raises:
        CheckpointError: see ``map_official_state_dict``.

    Examples:
        >>> model = build_detector(det_sd, detect_layout(sd), "x.pth")  # doctest: +SKIP
    """
    from yw_ext.nn.seg import YWSegmentationModel, is_seg_cfg

    d = model_cfg(layout)
    model = (YWSegmentationModel if is_seg_cfg(d) else YWDetectionModel)(d, verbose=False)
    model.load_state_dict(map_official_state_dict(det_sd, model, layout, source), strict=True)
    return model.float().eval()


__all__ = ["OPEN_GATE_BIAS", "build_detector", "map_official_state_dict"]
