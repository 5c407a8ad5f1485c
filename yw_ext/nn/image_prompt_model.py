# yw_ext, AGPL-3.0 license
"""The model of image-prompt adapter training (``train(mode="image_prompt")``): a frozen detector, a trainable adapter.

``ImagePrompts`` makes the class embeddings: a residual MLP adapter (``yw_ext.nn.adapter.ResidualAdapter``, the only
trainable tensors) maps frozen CLIP image embeddings of exemplar crops into the detector's text space; classes
without exemplars keep their text embeddings. ``ImagePromptModel`` is prompt tuning's frozen detector
(``yw_ext.nn.prompt_model.PromptTuningModel``) with ``ImagePrompts`` as its ``prompt``. The trainer (crops, CLIP,
files) is ``yw_ext.engine.image_prompt_trainer.YWImagePromptTrainer``.

Examples:
    >>> from yw_ext.nn.model import YWDetectionModel
    >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
    >>> m = ImagePromptModel.from_detector(det, torch.randn(2, 512), ["cat", "dog"])
    >>> m.vocab_sources()  # no reference crops yet: text
    ['text', 'text']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from yw_ext.image_adapter import install_adapter
from yw_ext.nn.adapter import ResidualAdapter, adapter_state, load_adapter_state
from yw_ext.nn.model import YWDetectionModel
from yw_ext.nn.prompt_model import PromptTuningModel

IMAGE_SOURCE, TEXT_SOURCE = "image", "text"
"""``class_sources`` values of classes made from reference crops / kept from text."""


class ImagePrompts(nn.Module):
    """Class embeddings of image-prompt training: adapted CLIP image embeddings where there are exemplars, else text.

    Args:
        text: ``(K * G, D)`` text embeddings of the K classes (G prompts each).
        prompts_per_class: G.

    Attributes:
        adapter (ResidualAdapter): The trainable projector.
        text, ref_feats, ref_cls: Non-persistent buffers: the text embeddings, the CLIP embeddings ``(R, D)`` of the
            reference crops that make the vocabulary (``set_references``) and their class ids ``(R,)``.

    Examples:
        >>> p = ImagePrompts(torch.nn.functional.normalize(torch.randn(3, 8), dim=-1), 1)
        >>> p.set_references(torch.randn(4, 8), torch.tensor([0, 0, 2, 2]))
        >>> p().shape  # (K * G, D): classes 0 and 2 from images, class 1 from text
        torch.Size([3, 8])
        >>> list(p.state_dict())  # only the adapter is state
        ['adapter.0.weight', 'adapter.0.bias', 'adapter.2.weight', 'adapter.2.bias']
    """

    def __init__(self, text: torch.Tensor, prompts_per_class: int = 1):
        """Keep the text embeddings and build a fresh (identity) adapter."""
        super().__init__()
        if text.dim() != 2 or text.shape[0] % prompts_per_class:
            raise ValueError(f"text embeddings must be (K * G, D) with G={prompts_per_class}, got {tuple(text.shape)}.")
        d = text.shape[1]
        self.g = int(prompts_per_class)
        self.register_buffer("text", text.detach().float().clone(), persistent=False)  # (K * G, D)
        self.register_buffer("ref_feats", torch.zeros(0, d), persistent=False)  # (R, D)
        self.register_buffer("ref_cls", torch.zeros(0, dtype=torch.long), persistent=False)  # (R,)
        self.adapter = ResidualAdapter(d)

    @property
    def num_classes(self) -> int:
        """K."""
        return self.text.shape[0] // self.g

    def set_references(self, feats: torch.Tensor, cls: torch.Tensor) -> None:
        """Install the CLIP embeddings ``(R, D)`` of the reference crops and their class ids ``(R,)``.

        Examples:
            >>> p = ImagePrompts(torch.randn(3, 8), 1)
            >>> p.set_references(torch.randn(2, 8), torch.tensor([1, 1]))
            >>> p.has_images().tolist()
            [False, True, False]
        """
        if feats.dim() != 2 or feats.shape[0] != cls.numel() or feats.shape[1] != self.text.shape[1]:
            raise ValueError(f"reference features {tuple(feats.shape)} do not fit {cls.numel()} class ids of "
                             f"{self.text.shape[1]}-d embeddings.")
        self.ref_feats = nn.functional.normalize(feats.detach().float(), dim=-1).to(self.text.device)  # (R, D)
        self.ref_cls = cls.detach().long().view(-1).to(self.text.device)  # (R,)

    def has_images(self) -> torch.Tensor:
        """``(K,)`` bool: classes whose vocabulary embedding comes from reference crops."""
        return torch.bincount(self.ref_cls.cpu(), minlength=self.num_classes)[: self.num_classes] > 0

    def forward(self) -> torch.Tensor:
        """The vocabulary ``(K * G, D)``: ``n(mean_j A(u_j))`` per class with reference crops, text otherwise."""
        k, g, d = self.num_classes, self.g, self.text.shape[1]
        out = self.text.view(k, g, d)  # (K, G, D)
        if self.ref_cls.numel() == 0:
            return self.text
        a = self.adapter(self.ref_feats.to(self.text.dtype)).to(self.text.dtype)  # (R, D), unit norm (autocast)
        sums = torch.zeros(k, d, dtype=a.dtype, device=a.device).index_add(0, self.ref_cls, a)  # (K, D)
        counts = torch.bincount(self.ref_cls, minlength=k)[:k]  # (K,)
        img = nn.functional.normalize(sums, dim=-1)  # (K, D): n(mean) = n(sum)
        out = torch.where((counts > 0).view(k, 1, 1), img.view(k, 1, d).expand(k, g, d), out)  # (K, G, D)
        return out.reshape(k * g, d)  # (K * G, D)

    def batch_embeddings(self, feats: torch.Tensor | None, slots: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Per-image embeddings ``(B, K * G, D)``: text, with each (image, class) slot replaced by ``A(feats)``.

        Args:
            feats: ``(M, D)`` CLIP embeddings of this batch's crops (None or empty: text only).
            slots: ``(M, 2)`` ``[image, class]`` of each crop.
            batch: B.

        Examples:
            >>> p = ImagePrompts(torch.randn(3, 8), 1)
            >>> p.batch_embeddings(torch.randn(1, 8), torch.tensor([[1, 2]]), 2).shape  # (B, K * G, D)
            torch.Size([2, 3, 8])
        """
        k, g, d = self.num_classes, self.g, self.text.shape[1]
        out = self.text.view(1, k, g, d).expand(batch, k, g, d)  # (B, K, G, D)
        if feats is not None and feats.numel():
            a = self.adapter(feats.to(self.text.dtype)).to(self.text.dtype)  # (M, D); fp16 under autocast
            bi, ci = slots[:, 0].to(a.device), slots[:, 1].to(a.device)
            out = out.index_put((bi, ci), a.view(-1, 1, d).expand(-1, g, d))  # (B, K, G, D), new tensor
        return out.reshape(batch, k * g, d)  # (B, K * G, D)

    def adapter_state(self) -> dict[str, np.ndarray]:
        """The adapter's tensors keyed ``adapter.0.weight`` ... (the file layout)."""
        return adapter_state(self.adapter)

    def load_adapter_state(self, state: dict[str, Any]) -> None:
        """Load adapter tensors keyed ``adapter.0.weight`` ... (checked)."""
        load_adapter_state(self.adapter, state)


class ImagePromptModel(PromptTuningModel):
    """A frozen ``YWDetectionModel`` whose training vocabulary mixes adapted image prompts and text (``ImagePrompts``).

    Training (``loss``) uses per-image embeddings: each class present in an image gets the adapted CLIP embedding of
    one of its boxes in that image (``batch["prompt_feats"]`` / ``batch["prompt_slots"]``, made by the trainer);
    evaluation uses ``prompt()``, the vocabulary built from the reference crops.

    Examples:
        >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> m = ImagePromptModel.from_detector(det, torch.randn(2, 512), ["cat", "dog"])
        >>> [n for n, p in m.named_parameters() if p.requires_grad][:1]
        ['prompt.adapter.0.weight']
    """

    prompt: ImagePrompts

    @classmethod
    def make_prompt(cls, embeddings: torch.Tensor, num_classes: int, prompts_per_class: int, adapter: bool) -> nn.Module:
        """``ImagePrompts`` over the text embeddings (the adapter is always there; ``adapter`` is ignored)."""
        return ImagePrompts(nn.functional.normalize(embeddings.float(), dim=-1), prompts_per_class)

    def loss(self, batch: dict, preds: Any = None):
        """Detection loss; without ``preds``, a forward with the batch's per-image image-prompt embeddings.

        Examples:
            >>> loss, items = m.loss(batch)  # batch["prompt_feats"] (M, D), batch["prompt_slots"] (M, 2)  # doctest: +SKIP
        """
        if preds is None:
            tf = self.prompt.batch_embeddings(batch.get("prompt_feats"), batch.get("prompt_slots"),
                                              batch["img"].shape[0])  # (B, K * G, D)
            with self.backbone_no_grad():
                preds = self.predict(batch["img"], txt_feats=tf)  # explicit embeddings: no prompt() here
            if self.prompts_per_class > 1:
                preds = self._max_over_prompts(preds)
        return super().loss(batch, preds)

    def vocab_sources(self) -> list[str]:
        """``"image"`` for classes whose vocabulary embedding comes from reference crops, else ``"text"``.

        Examples:
            >>> m.vocab_sources()  # doctest: +SKIP
            ['image', 'text']
        """
        return [IMAGE_SOURCE if h else TEXT_SOURCE for h in self.prompt.has_images().tolist()]

    @torch.no_grad()
    def sync_vocabulary(self, sources: list[str] | None = None, image_encoder_id: str | None = None) -> None:
        """Install the current vocabulary, each class's source (image or text) recorded (``vocab_sources``).

        Examples:
            >>> m.sync_vocabulary(image_encoder_id=ienc.identity)  # doctest: +SKIP
        """
        super().sync_vocabulary(sources or self.vocab_sources(), image_encoder_id)

    @torch.no_grad()
    def prompt_arrays(self) -> dict[str, Any]:
        """The vocabulary ``(K * G, D)`` and the adapter arrays."""
        return {"embeddings": self.prompt().detach().float().cpu(), "raw_embeddings": None,
                "adapter": self.prompt.adapter_state()}  # fmt: skip

    def to_detector(self) -> YWDetectionModel:
        """A plain ``YWDetectionModel`` copy with the current vocabulary and the adapter installed.

        Examples:
            >>> m.to_detector().image_adapter_state is not None  # doctest: +SKIP
            True
        """
        det = super().to_detector()
        install_adapter(det, {"adapter": self.prompt.adapter_state(), "dim": self.embed_dim,
                              "image_encoder_id": self.image_encoder_id})  # fmt: skip
        return det


__all__ = ("IMAGE_SOURCE", "TEXT_SOURCE", "ImagePromptModel", "ImagePrompts")
