"""The yw_ext detection model: a YOLO-World network built by Ultralytics' parser, driven by class embeddings.

``YWDetectionModel`` is a ``DetectionModel`` (not a subclass of Ultralytics' ``WorldModel``, on purpose: upstream
re-routes any ``WorldModel`` checkpoint to ``ultralytics.YOLOWorld`` and its exporter special-cases the class).
Its forward routes the text embeddings exactly as ``WorldModel.predict`` does (C2fAttn and WorldDetect get the
embeddings, ImagePoolingAttn rewrites them for the layers after it, the head gets the original ones), so a model
with the same weights gives the same outputs. On top it carries one ``Vocabulary`` (``yw_ext.vocab``): names,
prompts (synonyms), embeddings, sources and encoder identities; a class's score is the max over its prompts.

The network installs a vocabulary; it never builds one: encoding text or images happens in
``yw_ext.text.vocabulary`` (``set_classes`` here is a convenience that calls it), and nothing here reads the
environment or loads an encoder.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from yw_ext.nn.build import DEFAULT_EMBED_DIM, load_model_cfg
from yw_ext.seam import C2fAttn, DetectionModel, ImagePoolingAttn, WorldDetect, default_head_style, profile_layer
from yw_ext.vocab import Vocabulary

_LEGACY_VOCAB = ("prompts_per_class", "class_prompts", "text_encoder_id", "vocab_set", "class_sources",
                 "image_encoder_id", "prompt_state")
"""Loose vocabulary attributes of models pickled before ``Vocabulary`` existed (migrated by ``__setstate__``)."""


class YWDetectionModel(DetectionModel):
    """YOLO-World detector consuming class embeddings ``(B, K, D)``.

    Attributes:
        vocab (Vocabulary | None): The installed vocabulary (None: the random placeholder of a fresh model).
        txt_feats (torch.Tensor): The installed embeddings as the network consumes them, ``(1, K * G, D)``.
        prompts_per_class, class_prompts, text_encoder_id, class_sources, image_encoder_id, vocab_set: Read-only
            views of ``vocab``.
        embed_dim (int): Text-embedding width D.

    Examples:
        >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False).eval()
        >>> m.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> y = m(torch.zeros(1, 3, 64, 64))[0]
        >>> tuple(y.shape)  # (B, 4 + K, anchors)
        (1, 6, 84)
    """

    def __init__(self, cfg: str | dict = "yw-v2-s.yaml", ch: int = 3, nc: int | None = None, verbose: bool = True):
        """Build the network from a yw_ext (or Ultralytics world) YAML or a prepared model dict.

        Args:
            cfg: YAML name / path or model dict (see ``yw_ext.nn.build.load_model_cfg``).
            ch: Input channels.
            nc: Number of classes to build the head with (default: the YAML's, 80). Build with 80 and change the
                vocabulary with ``set_classes``: the head's hidden width follows ``min(nc, 100)`` as officially.
            verbose: Print the model summary.
        """
        d = load_model_cfg(cfg)
        self.embed_dim = int(d.get("embed_dim", DEFAULT_EMBED_DIM))
        n = nc or d.get("nc", 80)
        # Placeholder vocabulary set before building: the stride probe in DetectionModel runs a forward pass.
        self.txt_feats = torch.randn(1, n, self.embed_dim)
        self.vocab = None  # Vocabulary | None; install_vocabulary is the only writer
        self.clip_model = None  # Ultralytics' trainers and exporter look for this attribute
        self.folded = False  # True once the vocabulary is folded into the weights (yw_ext.nn.rep)
        # CLIP text tower that came with the weights (official checkpoints embed one; see yw_ext.checkpoints): a plain
        # dict of float32 tensors + config, pickled with the model, used by encode_text when no encoder is given.
        self.text_encoder_state = None
        # Trained image-prompt adapter (yw_ext.image_adapter): a plain dict pickled with the model; None: raw CLIP.
        self.image_adapter_state = None
        with default_head_style():  # same seed, same weights, whatever Ultralytics built before in this process
            super().__init__(cfg=d, ch=ch, nc=nc, verbose=verbose)

    # ------------------------------------------------------------------ forward
    def predict(
        self,
        x: torch.Tensor,
        profile: bool = False,
        augment: bool = False,
        embed: list | None = None,
        txt_feats: torch.Tensor | None = None,
        visualize: bool = False,
    ):
        """Run the network with class embeddings.

        Args:
            x: Images ``(B, 3, H, W)``.
            profile: Profile each layer's time.
            visualize: Unused (Ultralytics 8.4 dropped feature visualization), kept for API compatibility.
            augment: Unused (no TTA for open-vocabulary models), kept for API compatibility.
            embed: Layer indices whose pooled features to return instead of detections.
            txt_feats: Embeddings ``(1 or B, P, D)`` to use instead of the stored vocabulary; no synonym max is
                applied to them (P outputs).

        Returns:
            As Ultralytics' Detect head: training dict, or ``(y, preds)`` in eval, or ``y`` in export mode, where
            ``y`` is ``(B, 4 + K, A)``.
        """
        own = txt_feats is None
        if not own and getattr(self, "folded", False):
            raise RuntimeError("this model is re-parameterised (its vocabulary is in its weights): no txt_feats.")
        tf = (self.txt_feats if own else txt_feats).to(device=x.device, dtype=x.dtype)
        if tf.dim() == 2:
            tf = tf[None]  # (1, P, D)
        head = self.model[-1]
        if tf.shape[0] != x.shape[0] or getattr(head, "export", False):
            tf = tf.expand(x.shape[0], -1, -1)  # (B, P, D)
        with self.head_prompts(tf.shape[1]):
            x = self._run_layers(x, tf, profile, embed)
        reduced = getattr(head, "score_mode", "full") == "max" and not self.training  # head did it (yw_ext.nn.rep)
        if own and self.prompts_per_class > 1 and not embed and not reduced:  # pooled features are not scores
            x = self._max_over_prompts(x)
        return x

    def _run_layers(self, x: torch.Tensor, tf: torch.Tensor, profile: bool, embed: list | None) -> Any:
        """The layer loop of ``predict``: text to C2fAttn / ImagePoolingAttn / WorldDetect, images to the rest."""
        ori_tf = tf  # the head always gets the original embeddings (v1's enhanced text feeds only the neck)
        y, dt, embeddings = [], [], []
        embed = frozenset(embed) if embed else {-1}
        max_idx = max(embed)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                profile_layer(self, m, x, dt)
            if isinstance(m, C2fAttn):
                x = m(x, tf)
            elif isinstance(m, WorldDetect):
                x = m(x, ori_tf)
            elif isinstance(m, ImagePoolingAttn):
                tf = m(x, tf)
            else:
                x = m(x)
            y.append(x if m.i in self.save else None)
            if m.i in embed:
                embeddings.append(torch.nn.functional.adaptive_avg_pool2d(x, (1, 1)).squeeze(-1).squeeze(-1))
                if m.i == max_idx:
                    return torch.unbind(torch.cat(embeddings, 1), dim=0)
        return x

    def _max_over_prompts(self, out: Any) -> Any:
        """Reduce head outputs over each class's G prompts (class-major layout) to K class scores."""
        g = self.prompts_per_class

        def reduce_scores(s: torch.Tensor) -> torch.Tensor:
            b, p, a = s.shape  # (B, K * G, A)
            return s.view(b, p // g, g, a).amax(2)  # (B, K, A)

        def reduce_y(t: torch.Tensor) -> torch.Tensor:
            return torch.cat((t[:, :4], reduce_scores(t[:, 4:])), 1)  # (B, 4 + K, A)

        if isinstance(out, dict):  # training: raw scores only
            return {**out, "scores": reduce_scores(out["scores"])}
        if isinstance(out, tuple):
            y, preds = out
            return reduce_y(y), {**preds, "scores": reduce_scores(preds["scores"])}
        return reduce_y(out)

    def load(self, weights: Any, verbose: bool = True) -> None:
        """Ultralytics ``load`` (tensor transfer), also carrying over the source model's ``text_encoder_state``."""
        super().load(weights, verbose=verbose)
        src = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        state = getattr(src, "text_encoder_state", None)
        if state is not None and getattr(self, "text_encoder_state", None) is None:
            self.text_encoder_state = state
        adapter = getattr(src, "image_adapter_state", None)
        if adapter is not None and getattr(self, "image_adapter_state", None) is None:
            self.image_adapter_state = adapter

    def loss(self, batch: dict, preds: Any = None):
        """Detection loss with the batch's own text embeddings (``batch["txt_feats"]``, ``(B, K, D)``)."""
        if getattr(self, "criterion", None) is None:
            self.criterion = self.init_criterion()
        if preds is None:
            txt = batch.get("txt_feats")  # None: the model's own vocabulary (validation loss), synonyms reduced
            preds = self.forward(batch["img"], txt_feats=txt) if txt is not None else self.forward(batch["img"])
        self._sync_criterion(preds)
        return self.criterion(preds, batch)

    def _sync_criterion(self, preds: Any) -> None:
        """Match the loss's class count to the score channels (K varies with the vocabulary; Ultralytics reads it once)."""
        raw = preds[1] if isinstance(preds, tuple) else preds
        c = self.criterion
        if not isinstance(raw, dict) or "scores" not in raw or not hasattr(c, "nc"):
            return
        n = raw["scores"].shape[1]
        if c.nc != n:
            c.nc, c.no = n, n + c.reg_max * 4
            if hasattr(getattr(c, "assigner", None), "num_classes"):
                c.assigner.num_classes = n


    # --------------------------------------------------------------- vocabulary
    @contextlib.contextmanager
    def head_prompts(self, p: int) -> Iterator[None]:
        """Let the head split its output into ``p`` score channels for one forward, then restore the installed count.

        The installed count is the vocabulary's ``K * G`` (``install_vocabulary``); explicit ``txt_feats`` (training
        batches, exports) may carry another P for the duration of a forward only.
        """
        head = self.model[-1]
        saved = getattr(head, "nc", None)
        if not isinstance(head, WorldDetect) or saved == p:
            yield
            return
        head.nc = p
        try:
            yield
        finally:
            head.nc = saved

    @property
    def vocab_set(self) -> bool:
        """True once a vocabulary is installed (``txt_feats`` is a vocabulary, not the placeholder)."""
        return self.vocab is not None

    @property
    def prompts_per_class(self) -> int:
        """G; class scores are the max over each class's G prompts (1 without a vocabulary)."""
        return self.vocab.prompts_per_class if self.vocab is not None else 1

    @property
    def class_prompts(self) -> list[list[str]] | None:
        """The prompts of each class, when the vocabulary was set from text."""
        return self.vocab.class_prompts if self.vocab is not None else None

    @property
    def text_encoder_id(self) -> str | None:
        """Identity of the text encoder that produced the vocabulary (None: user embeddings or none)."""
        return self.vocab.text_encoder_id if self.vocab is not None else None

    @property
    def class_sources(self) -> list[str] | None:
        """Per class ``"text"``, ``"image"``, ``"text+image"``, ``"embedding"`` or ``"prompt"``."""
        return list(self.vocab.sources) if self.vocab is not None else None

    @property
    def image_encoder_id(self) -> str | None:
        """Identity of the CLIP image tower used for image prompts (None: none)."""
        return self.vocab.image_encoder_id if self.vocab is not None else None

    @property
    def prompt_state(self) -> dict | None:
        """Prompt-tuning extras of the installed embeddings (raw embeddings, adapter, detector reference), or None."""
        return self.vocab.tuning if self.vocab is not None else None

    @property
    def num_classes(self) -> int:
        """K, the number of classes of the current vocabulary."""
        return self.txt_feats.shape[1] // self.prompts_per_class

    def install_vocabulary(self, vocab: Vocabulary) -> None:
        """Install ``vocab``: its embeddings become ``txt_feats`` ``(1, K * G, D)``, its names the model's names.

        The only writer of the vocabulary state; the head's class count is derived from it (``K * G``).

        Raises:
            RuntimeError: the model is re-parameterised (its vocabulary is folded into its weights).
            TypeError: ``vocab`` is not a ``Vocabulary``.
            ValueError: the embedding width is not the model's.

        Examples:
            >>> import numpy as np
            >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m.install_vocabulary(Vocabulary(["a", "b"], np.random.rand(2, 512).astype("float32")))
            >>> m.names, m.model[-1].nc
            ({0: 'a', 1: 'b'}, 2)
        """
        if getattr(self, "folded", False):
            raise RuntimeError(
                f"this model is re-parameterised: its vocabulary {list(self.names.values())[:5]}... is folded into "
                "its weights, so classes cannot be changed. Reload the original (unfolded) checkpoint, or keep a "
                "copy made before reparameterize(), to use another vocabulary."
            )
        if not isinstance(vocab, Vocabulary):
            raise TypeError(f"install_vocabulary takes a yw_ext.vocab.Vocabulary, got {type(vocab).__name__}.")
        if vocab.dim != self.embed_dim:
            raise ValueError(f"embedding width {vocab.dim} != model's {self.embed_dim}.")
        self.vocab = vocab
        self.txt_feats = torch.from_numpy(vocab.embeddings.copy())[None]  # (1, K * G, D)
        self.names = vocab.names_dict()
        head = self.model[-1]
        if isinstance(head, WorldDetect):
            head.nc = vocab.num_prompts

    def snapshot_vocabulary(self) -> dict:
        """Everything ``restore_vocabulary`` needs to put the current vocabulary (or the placeholder) back."""
        return {"vocab": self.vocab, "txt_feats": self.txt_feats, "names": dict(self.names),
                "head_nc": getattr(self.model[-1], "nc", None)}

    def restore_vocabulary(self, snap: dict) -> None:
        """Put back a vocabulary saved by ``snapshot_vocabulary``."""
        self.vocab, self.txt_feats, self.names = snap["vocab"], snap["txt_feats"], dict(snap["names"])
        if snap["head_nc"] is not None:
            self.model[-1].nc = snap["head_nc"]

    def set_vocabulary(
        self,
        names: list[str],
        embeddings: torch.Tensor,
        prompts_per_class: int = 1,
        class_prompts: list[list[str]] | None = None,
        encoder_id: str | None = None,
        class_sources: list[str] | None = None,
        image_encoder_id: str | None = None,
    ) -> None:
        """Install checked embeddings ``(K * G, D)`` as the vocabulary (low level; ``Vocabulary`` + install).

        ``class_sources`` records where each class embedding came from (default ``"text"`` when ``class_prompts``
        is given, else ``"embedding"``), and ``image_encoder_id`` the CLIP image tower used for image prompts.

        Examples:
            >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m.set_vocabulary(["a", "b"], torch.randn(2, 512))
            >>> m.names
            {0: 'a', 1: 'b'}
        """
        if getattr(self, "folded", False):
            self.install_vocabulary(None)  # raises the folded-model error
        k = len(names)
        if embeddings.dim() != 2 or embeddings.shape[0] != k * prompts_per_class:
            raise ValueError(f"expected ({k * prompts_per_class}, D) embeddings, got {tuple(embeddings.shape)}.")
        if embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"embedding width {embeddings.shape[1]} != model's {self.embed_dim}.")
        self.install_vocabulary(Vocabulary(names, embeddings, prompts_per_class, class_prompts, class_sources,
                                           encoder_id, image_encoder_id))

    def set_classes(self, classes: Any, embeddings: Any = None, **kwargs: Any) -> None:
        """Build a vocabulary from class names, image prompts or embeddings, and install it.

        A convenience over ``yw_ext.text.vocabulary.build_vocabulary`` (which encodes; see its arguments:
        ``encoder``, ``batch``, ``cache``, ``images``, ``alpha``, ``margin``, ``use_text``), given this model's
        width, embedded text tower and image adapter. Image prompts: exemplars of a class give
        ``v = n(mean_j u_j)`` with ``u_j = n(CLIP_image(x_j))`` (through the trained adapter when the model has one);
        with text, ``n(alpha * t + (1 - alpha) * v)`` per text prompt ``t``; ``use_text=False``: ``v`` alone.

        Raises:
            ValueError / TypeError: bad names, embeddings, images, ``alpha`` or ``margin`` (see ``build_vocabulary``).
            FileNotFoundError: an exemplar image or the CLIP weights are missing.

        Examples:
            >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m.set_classes(["car", "bus"], embeddings=torch.randn(2, 2, 512))  # (K, G, D): 2 prompts per class
            >>> m.prompts_per_class, m.names
            (2, {0: 'car', 1: 'bus'})
            >>> m.set_classes(["dog", "cat"], images={"dog": ["dog1.jpg", ("scene.jpg", [10, 20, 200, 220])]})
            >>> m.class_sources
            ['text+image', 'text']
        """
        from yw_ext.text.vocabulary import build_vocabulary

        if getattr(self, "folded", False):
            self.install_vocabulary(None)  # raises the folded-model error before anything is encoded
        self.install_vocabulary(build_vocabulary(
            classes, self.embed_dim, embeddings=embeddings, embedded_state=getattr(self, "text_encoder_state", None),
            adapter_state=getattr(self, "image_adapter_state", None), **kwargs))

    def encode_text(self, texts: list[str], encoder: Any = None, batch: int = 256, cache: Any = None):
        """Encode prompts with this model's text encoder (see ``yw_ext.text.vocabulary.encode_prompts``).

        Returns ``((N, D) tensor, encoder id)``.
        """
        from yw_ext.text.vocabulary import encode_prompts

        return encode_prompts(texts, self.embed_dim, encoder, batch, cache, getattr(self, "text_encoder_state", None))

    def reparameterize(self, partial_v1: bool = False) -> YWDetectionModel:
        """Fold the current vocabulary into the neck and head weights, in place (see ``yw_ext.nn.rep``)."""
        from yw_ext.nn.rep import reparameterize

        reparameterize(self, partial_v1=partial_v1)
        return self

    def get_text_pe(self, text: list[str], batch: int = 80, cache_clip_model: bool = False) -> torch.Tensor:
        """Ultralytics ``WorldModel`` API: text embeddings ``(1, N, D)`` from yw_ext's encoder."""
        emb, _ = self.encode_text(list(text), batch=batch)
        return emb[None]  # (1, N, D)

    def __setstate__(self, state: dict) -> None:
        """Unpickle, migrating the loose vocabulary attributes of older checkpoints into one ``Vocabulary``."""
        legacy = {k: state.pop(k) for k in _LEGACY_VOCAB if k in state}
        super().__setstate__(state)
        if "vocab" in state:
            return
        self.vocab = None
        tf = state.get("txt_feats")
        if not legacy.get("vocab_set", bool(legacy)) or tf is None or tf.dim() != 3 or tf.shape[0] != 1:
            return
        names = [str(n) for n in dict(state.get("names") or {}).values()]
        g = int(legacy.get("prompts_per_class", 1) or 1)
        if len(names) * g != tf.shape[1]:
            return
        tuning = legacy.get("prompt_state") or None
        self.vocab = Vocabulary(names, tf[0], g, legacy.get("class_prompts"), legacy.get("class_sources"),
                                legacy.get("text_encoder_id"), legacy.get("image_encoder_id"), tuning)
