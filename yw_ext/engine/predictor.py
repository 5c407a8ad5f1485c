"""Predictor for yw_ext models: Ultralytics' detection predictor, results named by the current vocabulary.

Folded models (``yw_ext.nn.rep``) predict through a shorter path: Ultralytics' ``predict`` keeps only each box's best
class (``non_max_suppression`` with ``multi_label=False``), so during ``inference`` the folded head runs with
``score_mode = "max"`` (each anchor's best logit and class, one sigmoid per anchor, no ``(B, 4 + K, A)`` output)
and ``postprocess`` runs the same best-class NMS on the ``(B, 6, A)`` rows (``best_class_nms``). The detections are
those of the full path.
"""

from __future__ import annotations

import torch

from yw_ext.seam import DetectionPredictor


def best_class_nms(
    pred: torch.Tensor,
    conf: float,
    iou: float,
    classes: list[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
    max_wh: int = 7680,
) -> list[torch.Tensor]:
    """Ultralytics' ``non_max_suppression`` (``multi_label=False``) on reduced ``(B, 6, A)`` ``[xywh, score, class]``.

    The same steps as Ultralytics' best-class branch: ``score > conf``, class filter, at most ``max_nms`` boxes by
    score, class-aware ``torchvision.ops.nms`` through a ``max_wh * class`` box offset, at most ``max_det`` kept.

    Returns:
        Per image ``(N, 6)`` rows ``[x1, y1, x2, y2, score, class]``.

    Examples:
        >>> p = torch.zeros(1, 6, 2)
        >>> p[0, :, 0] = torch.tensor([50.0, 50, 20, 20, 0.9, 3])
        >>> best_class_nms(p, 0.25, 0.7)[0].tolist()
        [[40.0, 40.0, 60.0, 60.0, 0.8999999761581421, 3.0]]
    """
    import torchvision

    out = []
    for p in pred:  # (6, A)
        x = p[:, p[4] > conf].T  # (N, 6)
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
        if x.shape[0] > max_nms:
            x = x[x[:, 4].argsort(descending=True)[:max_nms]]
        xy, wh = x[:, :2], x[:, 2:4] / 2
        x = torch.cat((xy - wh, xy + wh, x[:, 4:]), 1)  # xyxy
        off = x[:, 5:6] * (0 if agnostic else max_wh)
        out.append(x[torchvision.ops.nms(x[:, :4] + off, x[:, 4], iou)[:max_det]])
    return out


class YWPredictor(DetectionPredictor):
    """Ultralytics ``DetectionPredictor`` for yw_ext models.

    The model's forward already returns one score per class (max over each class's prompts), so Ultralytics'
    NMS, ``Results`` and plotting apply unchanged; ``Results.names`` are the vocabulary's class names. A folded
    model's head reduces over classes itself during ``predict`` (module notes); ``embed`` / ``visualize`` requests
    and other models take the full path.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> model = YOLOWorld("yw-v2-n.yaml")
        >>> results = model.predict("bus.jpg", predictor=YWPredictor)  # doctest: +SKIP
    """

    def _reducing_head(self):
        """The folded head that may run with ``score_mode = "max"`` for this call, or None."""
        from yw_ext.nn.rep import RepWorldDetect

        if self.args.embed or self.args.visualize or getattr(self, "_feats", None) is not None \
                or getattr(getattr(self, "source_type", None), "tensor", False):
            return None
        if getattr(self.model, "format", "pt") != "pt":
            return None
        net = getattr(self.model, "model", None)  # AutoBackend's PyTorch model
        layers = getattr(net, "model", None)
        head = layers[-1] if isinstance(layers, torch.nn.Sequential) else None
        if not isinstance(head, RepWorldDetect) or head.score_mode != "full" or head.export:
            return None
        if getattr(self.model, "fp16", False) and head.nc > 2048:  # class ids above 2048 are not exact in float16
            return None
        self._groups = int(getattr(net, "prompts_per_class", 1) or 1)  # class = best prompt // G
        return head

    def inference(self, im: torch.Tensor, *args, **kwargs):
        """The model's forward; a folded head outputs ``(B, 6, A)`` best-class rows for this call only."""
        head = self._reducing_head()
        self._reduced = head is not None
        if head is None:
            return super().inference(im, *args, **kwargs)
        head.score_mode = "max"
        head.score_groups = self._groups
        try:
            return super().inference(im, *args, **kwargs)
        finally:
            head.score_mode, head.score_groups = "full", 1

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        """Ultralytics' postprocess, or the best-class NMS of ``best_class_nms`` on a folded head's reduced rows."""
        if not getattr(self, "_reduced", False):
            return super().postprocess(preds, img, orig_imgs, **kwargs)
        y = preds[0] if isinstance(preds, (list, tuple)) else preds  # (B, 6, A)
        dets = best_class_nms(y, self.args.conf, kwargs.pop("iou", self.args.iou), self.args.classes,
                              self.args.agnostic_nms, max_det=self.args.max_det)
        return self.construct_results(dets, img, orig_imgs, **kwargs)
