"""Trainer for yw_ext models: Ultralytics' YOLO-World fine-tuning with yw_ext's model and text encoder."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.models.yolo.world.train import WorldTrainer
from ultralytics.utils import RANK

from yw_ext.nn.model import YWDetectionModel


class YWTrainer(WorldTrainer):
    """Fine-tuning trainer building ``YWDetectionModel`` and encoding class texts with yw_ext's CLIP + cache.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> YOLOWorld("yw-v2-n.yaml").train(data="coco128.yaml", epochs=1, imgsz=320)  # doctest: +SKIP
    """

    def get_model(self, cfg=None, weights=None, verbose: bool = True) -> YWDetectionModel:
        """Build a ``YWDetectionModel`` (nc = max texts per image, capped at 80 as officially) and load weights."""
        model = YWDetectionModel(
            cfg if cfg is not None else self.args.model,
            ch=self.data["channels"],
            nc=min(self.data["nc"], 80),
            verbose=verbose and RANK == -1,
        )
        if weights:
            model.load(weights)
        from ultralytics.models.yolo.world.train import on_pretrain_routine_end

        if on_pretrain_routine_end not in self.callbacks["on_pretrain_routine_end"]:
            self.add_callback("on_pretrain_routine_end", on_pretrain_routine_end)
        return model

    def generate_text_embeddings(self, texts: list[str], batch: int, cache_dir: Path) -> dict[str, torch.Tensor]:
        """Encode texts with yw_ext's encoder; the on-disk cache is keyed by encoder identity and text."""
        from yw_ext.text import encode_texts, load_clip

        enc = load_clip()
        emb = encode_texts(enc, list(texts), batch=batch)
        return dict(zip(texts, emb.to(self.device)))
