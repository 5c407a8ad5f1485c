"""Traceable graph pieces for export: the run-time-vocabulary head, batched NMS, and TensorRT's EfficientNMS plugin.

* ``DynamicVocabDetect`` takes the place of each ``WorldDetect`` in an export copy (``make_vocab_dynamic``).
  Ultralytics' forward reshapes with ``self.no = nc + 4 * reg_max``, a Python int, so a traced graph would keep the
  vocabulary size K it was traced with; this subclass's forward flattens each level and concatenates boxes and scores
  separately (the same numbers), so K stays a graph dimension. The neck (``MaxSigmoidAttnBlock``) and the contrastive
  heads already use shape-derived reshapes.
* ``BatchedNMS``: ``(B, 4 + K, A)`` decoded xyxy boxes and scores -> ``(B, max_det, 6)`` rows ``[x1, y1, x2, y2,
  score, class]``, zero-padded, by decreasing score. It does what Ultralytics' ``non_max_suppression`` does for
  ``predict`` (best class per box, ``score > conf``, class-aware NMS through a ``7680 * class`` box offset, IoU
  ``> iou`` suppressed, at most ``max_det``) with one ONNX ``NonMaxSuppression`` node over the whole batch and a
  scatter into the padded output, so batch and K stay dynamic (Ultralytics' ``NMSModel`` unrolls a Python loop over a
  fixed batch and splits by ``len(names)``).
* ``EfficientNMS``: the same contract through TensorRT's ``EfficientNMS_TRT`` plugin (only TensorRT can run it).
  Scores are masked to each box's best class first, so the plugin's per-class NMS keeps the predict semantics.

Examples:
    >>> y = torch.zeros(1, 6, 3)  # (B, 4 + K, A), K = 2
    >>> y[0, :, 0] = torch.tensor([10.0, 10, 50, 50, 0.9, 0.1])
    >>> BatchedNMS(conf=0.25, iou=0.7, max_det=5)(y)[0, 0].tolist()
    [10.0, 10.0, 50.0, 50.0, 0.8999999761581421, 0.0]
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.ops import nms as _tv_nms  # imported here: importing torchvision while tracing fails

from yw_ext.nn.rep import reduce_scores
from yw_ext.seam import ImagePoolingAttn, WorldDetect, decode_boxes, detect_inference

MAX_WH = 7680  # Ultralytics' class offset for class-aware NMS (ultralytics.utils.nms.non_max_suppression)


class DynamicVocabDetect(WorldDetect):
    """``WorldDetect`` whose forward keeps the prompt count K a graph dimension (export copies only; module notes).

    Built from a live head by ``from_head``, which shares that head's submodules, parameters, buffers and settings
    (the export flags Ultralytics' exporter set, anchors, strides): the numbers are the head's, only the reshapes of
    ``forward`` differ.
    """

    @classmethod
    def from_head(cls, head: WorldDetect) -> DynamicVocabDetect:
        """A ``DynamicVocabDetect`` with the state of ``head`` (no copy: use it in place of ``head``)."""
        new = cls.__new__(cls)
        new.__dict__.update(head.__dict__)  # nn.Module keeps parameters, buffers and children in its __dict__
        return new

    def forward(self, x: list[torch.Tensor], text: torch.Tensor):
        """``WorldDetect.forward`` without the vocabulary size baked into reshapes.

        Args:
            x: Feature maps per level, ``(B, C_i, H_i, W_i)``.
            text: Prompt embeddings ``(B, P, D)``.

        Returns:
            Decoded ``(B, 4 + P, A)`` in export mode, else ``(y, preds)`` as ``WorldDetect``; with ``score_mode =
            "max"`` (set by the exporter) ``(B, 6, A)`` rows ``[box, best score, best prompt]`` instead.
        """
        feats = list(x)
        boxes = torch.cat([self.cv2[i](x[i]).flatten(2) for i in range(self.nl)], 2)  # (B, 4 * reg_max, A)
        if getattr(self, "score_mode", "full") == "max" and not self.training:  # best prompt per anchor only
            best, idx = zip(*(self.cv4[i](self.cv3[i](x[i]), text).flatten(2).max(1) for i in range(self.nl)))
            best, idx = torch.cat(best, 1), torch.cat(idx, 1)  # (B, A): best logit, its prompt
            preds = {"boxes": boxes, "scores": best.unsqueeze(1), "feats": feats}
            y = torch.cat((decode_boxes(self, preds), reduce_scores(best, idx)), 1)  # (B, 6, A)
            return y if self.export else (y, preds)
        scores = torch.cat([self.cv4[i](self.cv3[i](x[i]), text).flatten(2) for i in range(self.nl)], 2)  # (B, P, A)
        preds = {"boxes": boxes, "scores": scores, "feats": feats}
        if self.training:
            return preds
        y = detect_inference(self, preds)  # (B, 4 + P, A)
        return y if self.export else (y, preds)


def make_vocab_dynamic(model: nn.Module) -> nn.Module:
    """Put a ``DynamicVocabDetect`` in place of every ``WorldDetect`` of ``model`` (an export copy), in place.

    Raises:
        TypeError: ``model`` has no ``WorldDetect`` (a folded model has no text path).
    """
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if isinstance(child, WorldDetect)]
    if not swaps:
        raise TypeError("dynamic_vocab needs a model with a text path (a WorldDetect head); this one is folded.")
    for parent, name, child in swaps:
        if not isinstance(child, DynamicVocabDetect):
            setattr(parent, name, DynamicVocabDetect.from_head(child))  # same key, same position in the parent
    return model


class ExplicitAdaptiveMaxPool2d(nn.Module):
    """``nn.AdaptiveMaxPool2d`` written as max over explicit slices, for a fixed input size (exportable to ONNX).

    ONNX has no adaptive pooling; PyTorch's exporter handles only output sizes that divide the input size, and
    YOLO-World v1's ``ImagePoolingAttn`` pools every level to 3 x 3 (a 640 input gives 80 / 40 / 20). Bins are
    PyTorch's: rows ``floor(i * H / oh)`` to ``ceil((i + 1) * H / oh)``, the same for columns, so results are equal.

    Examples:
        >>> x = torch.randn(2, 4, 20, 13)
        >>> bool(torch.equal(ExplicitAdaptiveMaxPool2d(3)(x), nn.AdaptiveMaxPool2d(3)(x)))
        True
    """

    def __init__(self, output_size: int | tuple[int, int]):
        """Store the output size."""
        super().__init__()
        self.out = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, oh, ow)``; H and W become constants of a traced graph."""
        h, w = int(x.shape[2]), int(x.shape[3])
        oh, ow = self.out
        rows = []
        for i in range(oh):
            h0, h1 = (i * h) // oh, -(-(i + 1) * h // oh)
            cols = [x[:, :, h0:h1, (j * w) // ow : -(-(j + 1) * w // ow)].amax((2, 3)) for j in range(ow)]
            rows.append(torch.stack(cols, -1))  # (B, C, ow)
        return torch.stack(rows, -2)  # (B, C, oh, ow)


def make_pooling_exportable(model: nn.Module) -> int:
    """Replace the ``AdaptiveMaxPool2d`` of v1's ``ImagePoolingAttn`` layers by ``ExplicitAdaptiveMaxPool2d``.

    Returns:
        The number of layers changed (0 for v2 models).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, ImagePoolingAttn):
            for i, p in enumerate(m.im_pools):
                if isinstance(p, nn.AdaptiveMaxPool2d):
                    m.im_pools[i] = ExplicitAdaptiveMaxPool2d(p.output_size)
                    n += 1
    return n


class _NMSOp(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` over a batch with one score channel: selected ``(M, 3)`` [batch, 0, box] indices.

    Eager: per image, ``score > conf`` then ``torchvision.ops.nms``, at most ``max_det``; ordered by image, then by
    decreasing score, as ONNX Runtime orders its output.
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou: float, conf: float):
        """boxes ``(B, A, 4)`` xyxy, scores ``(B, 1, A)`` -> ``(M, 3)`` int64."""
        out = []
        for b in range(boxes.shape[0]):
            s = scores[b, 0]
            idx = torch.nonzero(s > conf).flatten()
            keep = idx[_tv_nms(boxes[b, idx], s[idx], iou)[:max_det]]
            out.append(torch.stack((torch.full_like(keep, b), torch.zeros_like(keep), keep), 1))
        return torch.cat(out) if out else torch.zeros((0, 3), dtype=torch.long, device=boxes.device)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou: float, conf: float):
        """ONNX ``NonMaxSuppression`` (opset >= 11), corner boxes."""
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_det], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([conf], dtype=torch.float32)),
            center_point_box_i=0,
        )


class BatchedNMS(nn.Module):
    """Ultralytics' predict NMS as a graph: ``(B, 4 + K, A)`` xyxy predictions -> ``(B, max_det, 6)``.

    Args:
        conf: Score threshold (kept: ``score > conf``).
        iou: IoU threshold (suppressed: ``IoU > iou``).
        max_det: Rows per image (zero-padded).
        agnostic: Class-agnostic NMS.
        reduced: The input is ``(B, 6, A)`` ``[box, best score, class]`` (a head with ``score_mode = "max"``), not
            ``(B, 4 + K, A)`` per-class scores.
        extra: Trailing channels carried through for the kept boxes, not scored (a seg head's ``nm`` mask
            coefficients): input ``(B, 4 + K + extra, A)``, output ``(B, max_det, 6 + extra)``.

    Examples:
        >>> nms = BatchedNMS(conf=0.1, iou=0.5, max_det=3)
        >>> y = torch.rand(2, 4 + 5, 50) * torch.tensor([60.0] * 4 + [1.0] * 5)[:, None]
        >>> y[:, 2:4] = y[:, :2] + 20  # xyxy
        >>> tuple(nms(y).shape)
        (2, 3, 6)
    """

    def __init__(self, conf: float = 0.25, iou: float = 0.7, max_det: int = 300, agnostic: bool = False,
                 reduced: bool = False, extra: int = 0):
        """Store the thresholds (they are constants of the exported graph)."""
        super().__init__()
        if not 0 <= conf <= 1 or not 0 <= iou <= 1 or max_det < 1 or extra < 0:
            raise ValueError(f"need 0 <= conf ({conf}), iou ({iou}) <= 1, max_det ({max_det}) >= 1, extra >= 0.")
        if reduced and extra:
            raise ValueError("reduced (B, 6, A) inputs carry no extra channels.")
        self.conf, self.iou, self.max_det, self.agnostic = float(conf), float(iou), int(max_det), bool(agnostic)
        self.reduced, self.extra = bool(reduced), int(extra)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """NMS of decoded predictions ``(B, 4 + K [+ extra], A)`` (or ``(B, 6, A)`` when ``reduced``; boxes xyxy)."""
        boxes = y[:, :4].transpose(1, 2)  # (B, A, 4)
        if self.reduced:
            scores, cls = y[:, 4], y[:, 5]  # (B, A)
        else:
            scores, cls = (y[:, 4 : -self.extra] if self.extra else y[:, 4:]).max(1)  # (B, A)
            cls = cls.to(y.dtype)
        nms_boxes = boxes if self.agnostic else boxes + (cls * MAX_WH).unsqueeze(-1)  # class-aware, as predict
        sel = _NMSOp.apply(nms_boxes, scores.unsqueeze(1), self.max_det, self.iou, self.conf)  # (M, 3)
        bi, ai = sel[:, 0], sel[:, 2]  # image, anchor
        b = torch._shape_as_tensor(y)[0]
        per = (bi.unsqueeze(1) == torch.arange(b, device=y.device).unsqueeze(0)).to(torch.int64)  # (M, B)
        counts = per.sum(0)  # (B,) kept boxes per image (<= max_det)
        start = counts.cumsum(0) - counts  # (B,) first row of each image in sel
        pos = torch.arange(sel.shape[0], device=y.device) - start[bi]  # (M,) rank within its image
        table = [boxes, scores.unsqueeze(-1), cls.unsqueeze(-1)]  # (B, A, 4), (B, A, 1), (B, A, 1)
        if self.extra:
            table.append(y[:, -self.extra :].transpose(1, 2))  # (B, A, extra): e.g. the mask coefficients
        rows = torch.cat(table, -1)[bi, ai]  # (M, 6 + extra): one gather (OpenVINO mis-shapes a 2-D [bi, ai] gather)
        c = 6 + self.extra
        out = y.new_zeros((b * self.max_det, c))
        out = out.index_put((bi * self.max_det + pos,), rows)
        return out.view(-1, self.max_det, c)  # (B, max_det, 6 + extra)


class _EfficientNMSOp(torch.autograd.Function):
    """TensorRT ``EfficientNMS_TRT`` plugin (exported as a ``TRT::EfficientNMS_TRT`` node).

    Outputs: ``num_dets (B, 1) int32``, ``boxes (B, max_det, 4)``, ``scores (B, max_det)``, ``classes (B, max_det)
    int32``. The eager forward computes the same with ``BatchedNMS`` (scores are one-hot masked to the best class).
    """

    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_det: int, iou: float, conf: float):
        """boxes ``(B, A, 4)``, scores ``(B, A, K)``."""
        y = torch.cat((boxes.transpose(1, 2), scores.transpose(1, 2)), 1)  # (B, 4 + K, A)
        out = BatchedNMS(conf, iou, max_det)(y)  # (B, max_det, 6)
        num = (out[..., 4] > 0).sum(1, keepdim=True).to(torch.int32)
        return num, out[..., :4].contiguous(), out[..., 4].contiguous(), out[..., 5].to(torch.int32)

    @staticmethod
    def symbolic(g, boxes, scores, max_det: int, iou: float, conf: float):
        """The plugin node; TensorRT's ONNX parser finds the plugin by op type."""
        return g.op(
            "TRT::EfficientNMS_TRT",
            boxes,
            scores,
            background_class_i=-1,
            box_coding_i=0,
            iou_threshold_f=iou,
            max_output_boxes_i=max_det,
            plugin_version_s="1",
            score_activation_i=0,
            score_threshold_f=conf,
            class_agnostic_i=0,
            outputs=4,
        )


class EfficientNMS(BatchedNMS):
    """``BatchedNMS``'s contract (``(B, max_det, 6)``) through TensorRT's ``EfficientNMS_TRT`` plugin.

    The graph can only be run by TensorRT. Scores are masked to each box's best class (``score * [class ==
    argmax]``), so the plugin's per-class NMS equals predict's best-class-per-box NMS.
    """

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """NMS of decoded predictions ``(B, 4 + K, A)``."""
        if self.agnostic:
            raise ValueError("EfficientNMS_TRT export here supports class-aware NMS only (agnostic_nms=False).")
        boxes = y[:, :4].transpose(1, 2)  # (B, A, 4)
        s = y[:, 4:].transpose(1, 2)  # (B, A, K)
        best = s.max(-1, keepdim=True)[0]
        s = s * (s >= best).to(s.dtype)  # only the best class survives (ties: all of them)
        num, b, sc, c = _EfficientNMSOp.apply(boxes, s, self.max_det, self.iou, self.conf)
        valid = (torch.arange(self.max_det, device=y.device).unsqueeze(0) < num).to(y.dtype)  # (B, max_det)
        out = torch.cat((b, sc.unsqueeze(-1), c.to(y.dtype).unsqueeze(-1)), -1)  # (B, max_det, 6)
        return out * valid.unsqueeze(-1)


class ExportGraph(nn.Module):
    """The exported function: images (+ prompt embeddings) -> raw predictions or NMS rows.

    Args:
        model: A prepared ``YWDetectionModel`` (fused, heads in export mode).
        nms: ``BatchedNMS`` / ``EfficientNMS`` or None (raw ``(B, 4 + K, A)`` output).
        dynamic_vocab: Take ``txt_feats`` ``(1 or B, P, D)`` as a second input (no synonym max in the graph). It is
            broadcast to the B images by ``YWDetectionModel.predict``, which always traces that ``Expand`` while the
            head is in export mode (whatever the example batches were).
    """

    def __init__(self, model: nn.Module, nms: nn.Module | None = None, dynamic_vocab: bool = False):
        """Wrap the model."""
        super().__init__()
        self.model, self.nms, self.dynamic_vocab = model, nms, dynamic_vocab

    def forward(self, images: torch.Tensor, txt_feats: torch.Tensor | None = None) -> torch.Tensor:
        """``images`` ``(B, 3, H, W)`` in [0, 1]; ``txt_feats`` ``(1 or B, P, D)`` for dynamic vocabularies."""
        if self.dynamic_vocab:
            y = self.model.predict(images, txt_feats=txt_feats)
        else:
            y = self.model(images)
        y = y[0] if isinstance(y, (tuple, list)) else y  # (B, 4 + K, A)
        return self.nms(y) if self.nms is not None else y


__all__ = ["BatchedNMS", "DynamicVocabDetect", "EfficientNMS", "ExportGraph", "ExplicitAdaptiveMaxPool2d",
           "make_pooling_exportable", "make_vocab_dynamic", "MAX_WH"]
