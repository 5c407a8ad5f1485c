# yw_ext, AGPL-3.0 license
"""The model of prompt tuning (``train(mode="prompt")``): a frozen detector whose class embeddings are learnable.

``PromptTuningModel`` is a ``YWDetectionModel`` built like any other (same YAML, so the same network) holding a
bitwise copy of a trained detector's tensors (``copy_network``: ``load_state_dict``, never a class swap on a live
object) plus the learnable prompts as its submodule ``prompt`` (``yw_ext.prompts.PromptEmbeddings``). Its detector
tensors never train: they have ``requires_grad=False``, ``train()`` keeps every detector module in eval mode
(BatchNorm uses and never updates its running statistics) and the backbone (the layers before the first
text-consuming one) runs under ``torch.no_grad``. The trainer is ``yw_ext.engine.prompt_trainer.YWPromptTrainer``.

Examples:
    >>> from yw_ext.nn.model import YWDetectionModel
    >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
    >>> m = PromptTuningModel.from_detector(det, torch.randn(2, 512), ["cat", "dog"])
    >>> [n for n, p in m.named_parameters() if p.requires_grad]
    ['prompt.embeddings']
"""

from __future__ import annotations

import contextlib
from copy import deepcopy
from typing import Any, Iterator, TypeVar

import torch
from torch import nn

from yw_ext.nn.model import YWDetectionModel
from yw_ext.prompts import PromptEmbeddings
from yw_ext.seam import C2fAttn, ImagePoolingAttn, WorldDetect

PROMPT_SOURCE = "prompt"
"""``class_sources`` value of tuned embeddings."""

CARRIED = ("args", "text_encoder_state", "image_adapter_state")
"""Plain (non-tensor) attributes of a detector that a copy of its network keeps (the vocabulary is set apart)."""

M = TypeVar("M", bound=YWDetectionModel)


def copy_network(cls: type[M], src: YWDetectionModel, state: dict[str, torch.Tensor] | None = None) -> M:
    """A new ``cls`` model with ``src``'s network: built from ``src.yaml``, its tensors loaded bitwise.

    The copy is built by ``cls.__init__`` (so a subclass is a real instance of itself), fused first when ``src`` is
    (Ultralytics' predictor fuses Conv + BatchNorm in place), then given ``src``'s parameters and buffers with a strict
    ``load_state_dict``, its device and dtype, and the plain attributes in ``CARRIED``. ``src`` is not modified.

    Args:
        cls: ``YWDetectionModel`` or a subclass.
        src: The detector to copy.
        state: The tensors to load instead of ``src.state_dict()`` (e.g. without a subclass's extra submodules).

    Returns:
        The copy, in eval mode, without a vocabulary (the caller sets one).

    Raises:
        RuntimeError: the tensors do not fit the network built from ``src.yaml`` (``load_state_dict``'s message).

    Examples:
        >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> twin = copy_network(YWDetectionModel, det)
        >>> all(torch.equal(a, b) for a, b in zip(det.state_dict().values(), twin.state_dict().values()))
        True
    """
    yaml = deepcopy(src.yaml)
    model = cls(yaml, ch=int(yaml.get("channels", 3)), nc=yaml.get("nc"), verbose=False)
    if src.is_fused() and not model.is_fused():
        model.fuse(verbose=False)
    model.load_state_dict(src.state_dict() if state is None else state, strict=True)
    p = next(src.parameters())
    model.to(device=p.device, dtype=p.dtype)
    for name in CARRIED:
        if getattr(src, name, None) is not None:
            setattr(model, name, deepcopy(getattr(src, name)))
    return model.eval()


class PromptTuningModel(YWDetectionModel):
    """A frozen ``YWDetectionModel`` whose class embeddings come from a learnable ``PromptEmbeddings`` (``prompt``).

    Build it with ``from_detector`` (a copy: the given detector is never modified). Its forward, loss and validation
    use ``prompt()`` as the vocabulary (``(K * G, D)``, scores reduced to K classes by the max over each class's G
    prompts); the installed vocabulary (``txt_feats``) is only refreshed by ``sync_vocabulary``.

    Attributes:
        prompt (PromptEmbeddings): The learnable embeddings (and adapter).

    Examples:
        >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> m = PromptTuningModel.from_detector(det, torch.randn(2, 512), ["cat", "dog"])
        >>> y = m.eval()(torch.zeros(1, 3, 64, 64))[0]  # (B, 4 + K, anchors)
        >>> tuple(y.shape)
        (1, 6, 84)
    """

    prompt: PromptEmbeddings

    @classmethod
    def from_detector(
        cls,
        detector: YWDetectionModel,
        embeddings: torch.Tensor,
        names: list[str],
        prompts_per_class: int = 1,
        adapter: bool = False,
        adapter_state: dict | None = None,
        class_prompts: list[list[str]] | None = None,
        encoder_id: str | None = None,
    ) -> PromptTuningModel:
        """A frozen copy of ``detector`` with learnable class embeddings.

        Args:
            detector: The trained detector (copied, not modified). A YOLO-World-Seg model gives its detector part
                (``YWSegmentationModel.detector_part``): the mask branch takes no part in prompt tuning.
            embeddings: Initial embeddings ``(K * G, D)``.
            names: K class names.
            prompts_per_class: G.
            adapter: Add the residual MLP adapter.
            adapter_state: Adapter tensors to start from (``adapter.0.weight`` ...).
            class_prompts: Each class's text prompts (recorded in the vocabulary).
            encoder_id: Identity of the text encoder whose space the embeddings live in.

        Raises:
            TypeError: ``detector`` is not a ``YWDetectionModel``.
            ValueError: the detector is re-parameterised, or the embeddings do not fit it.

        Examples:
            >>> det = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m = PromptTuningModel.from_detector(det, torch.randn(4, 512), ["a", "b"], prompts_per_class=2)
            >>> m.prompts_per_class, tuple(m.prompt().shape)
            (2, (4, 512))
        """
        if isinstance(detector, PromptTuningModel):
            detector = detector.to_detector()
        if hasattr(detector, "detector_part"):  # a YOLO-World-Seg model: tune against its detector (no mask branch)
            detector = detector.detector_part()
        if not isinstance(detector, YWDetectionModel):
            raise TypeError(f"prompt tuning needs a yw_ext YWDetectionModel, got {type(detector).__name__}.")
        if getattr(detector, "folded", False):
            raise ValueError(
                "this model is re-parameterised (its vocabulary is folded into its weights): it has no text path for "
                "prompts. Prompt-tune the unfolded model, then reparameterize() with the tuned vocabulary."
            )
        k, g = len(names), int(prompts_per_class)
        if embeddings.dim() != 2 or embeddings.shape != (k * g, detector.embed_dim):
            raise ValueError(f"initial embeddings must be ({k * g}, {detector.embed_dim}) for {k} classes x {g} "
                             f"prompts, got {tuple(embeddings.shape)}.")
        model = copy_network(cls, detector)  # the caller's detector is never touched
        model.requires_grad_(False)
        model.prompt = cls.make_prompt(embeddings.to(next(detector.parameters()).device), k, g, adapter)
        if adapter_state is not None:
            model.prompt.load_adapter_state(adapter_state)
        model.criterion = None
        model.set_vocabulary(names, embeddings.detach().cpu().float(), g, class_prompts, encoder_id,
                             [PROMPT_SOURCE] * k)
        model.sync_vocabulary()
        model.train(False)
        return model

    @classmethod
    def make_prompt(cls, embeddings: torch.Tensor, num_classes: int, prompts_per_class: int, adapter: bool) -> nn.Module:
        """The trainable prompt module (here ``PromptEmbeddings``) for initial embeddings ``(K * G, D)``.

        Examples:
            >>> PromptTuningModel.make_prompt(torch.randn(2, 8), 2, 1, adapter=False)().shape
            torch.Size([2, 8])
        """
        return PromptEmbeddings(embeddings, adapter=adapter)

    # ----------------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> PromptTuningModel:
        """Keep the detector in eval mode (BatchNorm frozen) whatever ``mode``; the prompts follow ``mode``.

        The head's own ``training`` flag follows ``mode`` (raw predictions for the loss vs decoded boxes); it selects
        an output format and changes no tensor. Its submodules (convolutions, BatchNorm) stay in eval mode.
        """
        super().train(False)  # nn.Module.train: every submodule in eval mode
        self.training = mode
        self.model[-1].training = mode
        if "prompt" in self._modules:  # (absent while __init__ builds the network)
            self.prompt.train(mode)
        return self

    def _first_text_layer(self) -> int | None:
        """Index of the first layer that consumes the class embeddings (everything before it is text-free)."""
        for i, m in enumerate(self.model):
            if isinstance(m, (C2fAttn, ImagePoolingAttn, WorldDetect)):
                return i
        return None

    @contextlib.contextmanager
    def backbone_no_grad(self) -> Iterator[None]:
        """Run the layers before the first text-consuming layer under ``torch.no_grad``; restore the mode after.

        Examples:
            >>> with m.backbone_no_grad():  # doctest: +SKIP
            ...     out = m.predict(x, txt_feats=tf)
        """
        first = self._first_text_layer()
        state = torch.is_grad_enabled()
        if not state or not first:
            yield
            return

        def off(module, args):  # a pre-hook must return None (a value would replace the layer's input)
            torch.set_grad_enabled(False)

        def on(module, args):
            torch.set_grad_enabled(state)

        handles = [self.model[0].register_forward_pre_hook(off), self.model[first].register_forward_pre_hook(on)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            torch.set_grad_enabled(state)

    # ---------------------------------------------------------------------------------------------------- forward
    def predict(self, x: torch.Tensor, profile: bool = False, augment: bool = False, embed: list | None = None,
                txt_feats: torch.Tensor | None = None, visualize: bool = False):
        """As ``YWDetectionModel.predict``, with ``prompt()`` as the vocabulary when no ``txt_feats`` are given.

        While ``__init__`` builds the network (its stride probe runs a forward) there is no ``prompt`` yet: the
        installed placeholder vocabulary is used, as by any ``YWDetectionModel``.

        Returns:
            As the parent, with scores reduced to K classes (max over each class's G prompts).
        """
        if txt_feats is not None or "prompt" not in self._modules:
            return super().predict(x, profile, augment, embed, txt_feats, visualize)
        tf = self.prompt()  # (K * G, D)
        with self.backbone_no_grad():
            out = super().predict(x, profile, augment, embed, tf, visualize)
        if embed or self.prompts_per_class == 1:
            return out
        return self._max_over_prompts(out)

    # ------------------------------------------------------------------------------------------------- vocabulary
    @torch.no_grad()
    def sync_vocabulary(self, sources: list[str] | None = None, image_encoder_id: str | None = None) -> None:
        """Install the current ``prompt()`` output as the vocabulary (what other code reads), through
        ``set_vocabulary``; names, prompts and encoder identities are kept, ``sources`` / ``image_encoder_id``
        replace the installed ones when given.

        Examples:
            >>> m.sync_vocabulary()  # doctest: +SKIP
        """
        self.set_vocabulary(list(self.names.values()), self.prompt().detach().float().cpu(), self.prompts_per_class,
                            self.class_prompts, self.text_encoder_id, sources or self.class_sources,
                            image_encoder_id or self.image_encoder_id)  # fmt: skip

    def detector_state_dict(self) -> dict[str, torch.Tensor]:
        """The detector's parameters and buffers (the state dict without ``prompt.*``).

        Examples:
            >>> any(k.startswith("prompt.") for k in m.detector_state_dict())  # doctest: +SKIP
            False
        """
        return {k: v for k, v in self.state_dict().items() if not k.startswith("prompt.")}

    @torch.no_grad()
    def prompt_arrays(self) -> dict[str, Any]:
        """What a prompt file stores of the prompts: ``embeddings`` / ``raw_embeddings`` ``(K * G, D)``, ``adapter``.

        Examples:
            >>> sorted(m.prompt_arrays())  # doctest: +SKIP
            ['adapter', 'embeddings', 'raw_embeddings']
        """
        return {
            "embeddings": self.prompt().detach().float().cpu(),
            "raw_embeddings": self.prompt.embeddings.detach().float().cpu(),
            "adapter": self.prompt.adapter_state(),
        }

    def to_detector(self) -> YWDetectionModel:
        """A plain ``YWDetectionModel`` (detector tensors identical) with the current prompts as its vocabulary.

        Examples:
            >>> type(m.to_detector()).__name__  # doctest: +SKIP
            'YWDetectionModel'
        """
        arrays = self.prompt_arrays()
        det = copy_network(YWDetectionModel, self, self.detector_state_dict())
        det.criterion = None
        det.set_vocabulary(list(self.names.values()), arrays["embeddings"], self.prompts_per_class, self.class_prompts,
                           self.text_encoder_id, self.class_sources, self.image_encoder_id)
        return det


__all__ = ("CARRIED", "PROMPT_SOURCE", "PromptTuningModel", "copy_network")
