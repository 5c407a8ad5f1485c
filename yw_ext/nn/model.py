"""The yw_ext detection model: a YOLO-World network built by Ultralytics' parser, driven by class embeddings.

``YWDetectionModel`` is a ``DetectionModel`` (not a subclass of Ultralytics' ``WorldModel``, on purpose: upstream
re-routes any ``WorldModel`` checkpoint to ``ultralytics.YOLOWorld`` and its exporter special-cases the class).
Its forward routes the text embeddings exactly as ``WorldModel.predict`` does (C2fAttn and WorldDetect get the
embeddings, ImagePoolingAttn rewrites them for the layers after it, the head gets the original ones), so a model
with the same weights gives the same outputs. On top it carries a vocabulary: names, prompts (synonyms), the
text-encoder identity, and a class score that is the max over each class's prompts.
"""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.nn.modules import C2fAttn, ImagePoolingAttn, WorldDetect
from ultralytics.nn.tasks import DetectionModel

from yw_ext.nn.build import DEFAULT_EMBED_DIM, load_model_cfg
from yw_ext.vocab import check_embeddings, names_dict, pad_prompts, parse_classes


class YWDetectionModel(DetectionModel):
    """YOLO-World detector consuming class embeddings ``(B, K, D)``.

    Attributes:
        txt_feats (torch.Tensor): Current vocabulary embeddings, ``(1, K * G, D)`` (G prompts per class).
        prompts_per_class (int): G; class scores are the max over each class's G prompts.
        class_prompts (list[list[str]] | None): The prompts of each class, when set from text.
        text_encoder_id (str | None): Identity of the encoder that produced ``txt_feats`` (None: user embeddings).
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
        self.prompts_per_class = 1
        self.class_prompts = None
        self.text_encoder_id = None
        self.clip_model = None  # Ultralytics' trainers and exporter look for this attribute
        self.folded = False  # True once the vocabulary is folded into the weights (yw_ext.nn.rep)
        # CLIP text tower that came with the weights (official checkpoints embed one; see yw_ext.convert): a plain
        # dict of float32 tensors + config, pickled with the model, used by encode_text when no encoder is given.
        self.text_encoder_state = None
        self.vocab_set = False  # True once set_vocabulary ran (txt_feats is a vocabulary, not the placeholder)
        # Trained image-prompt adapter (yw_ext.image_adapter): a plain dict pickled with the model; None: raw CLIP.
        self.image_adapter_state = None
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
        if isinstance(head, WorldDetect) and head.nc != tf.shape[1]:
            head.nc = tf.shape[1]  # the head splits its output by nc
        ori_tf = tf  # the head always gets the original embeddings (v1's enhanced text feeds only the neck)
        y, dt, embeddings = [], [], []
        embed = frozenset(embed) if embed else {-1}
        max_idx = max(embed)
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            if profile:
                self._profile_one_layer(m, x, dt)
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
        if own and self.prompts_per_class > 1:
            x = self._max_over_prompts(x)
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
    @property
    def num_classes(self) -> int:
        """K, the number of classes of the current vocabulary."""
        return self.txt_feats.shape[1] // self.prompts_per_class

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
        """Install checked embeddings ``(K * G, D)`` as the vocabulary (low level; use ``set_classes``).

        ``class_sources`` records where each class embedding came from (``"text"``, ``"image"``, ``"text+image"``
        or ``"embedding"``; default ``"text"`` when ``class_prompts`` is given, else ``"embedding"``), and
        ``image_encoder_id`` the CLIP image tower used for image prompts (None: none used).

        Examples:
            >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m.set_vocabulary(["a", "b"], torch.randn(2, 512))
            >>> m.names
            {0: 'a', 1: 'b'}
        """
        if getattr(self, "folded", False):
            raise RuntimeError(
                f"this model is re-parameterised: its vocabulary {list(self.names.values())[:5]}... is folded into "
                "its weights, so classes cannot be changed. Reload the original (unfolded) checkpoint, or keep a "
                "copy made before reparameterize(), to use another vocabulary."
            )
        k = len(names)
        if embeddings.dim() != 2 or embeddings.shape[0] != k * prompts_per_class:
            raise ValueError(f"expected ({k * prompts_per_class}, D) embeddings, got {tuple(embeddings.shape)}.")
        if embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"embedding width {embeddings.shape[1]} != model's {self.embed_dim}.")
        self.txt_feats = embeddings.detach().float()[None]  # (1, K * G, D)
        self.prompts_per_class = int(prompts_per_class)
        self.class_prompts = class_prompts
        self.text_encoder_id = encoder_id
        self.names = names_dict(names)
        self.vocab_set = True
        if class_sources is not None and len(class_sources) != k:
            raise ValueError(f"class_sources has {len(class_sources)} entries for {k} classes.")
        self.class_sources = list(class_sources or (["text" if class_prompts is not None else "embedding"] * k))
        self.image_encoder_id = image_encoder_id
        head = self.model[-1]
        if isinstance(head, WorldDetect):
            head.nc = k * prompts_per_class

    def set_classes(
        self,
        classes: Any,
        embeddings: Any = None,
        encoder: Any = None,
        batch: int = 256,
        cache: Any = None,
        images: dict | None = None,
        alpha: float | None = None,
        margin: float = 0.0,
        use_text: bool = True,
    ) -> None:
        """Set the vocabulary from class names (CLIP text prompts), image prompts, or precomputed embeddings.

        Image prompts (``images=``) are CLIP image embeddings of exemplars (see ``yw_ext.text.image``), from the
        image tower of the same CLIP as the text (``encoder`` / ``$YW_CLIP``; a text-only CLIP raises):

        - exemplars of a class: ``v = n(mean_j u_j)``, ``u_j = n(CLIP_image(x_j))`` with ``n(x) = x / ||x||``; with
          a trained image adapter (``image_adapter_state``, see ``yw_ext.image_adapter``) ``u_j`` is replaced by
          ``A(u_j) = n(u_j + MLP(u_j))`` before the mean;
        - ``use_text=True`` (default): a class with images gets ``n(alpha * t + (1 - alpha) * v)`` for each of its
          text prompts ``t`` (normalised CLIP text; synonyms are each fused with the same ``v``, the class score
          stays the max over them); ``alpha=1`` gives the text alone (images are checked but not used), ``alpha=0``
          the image alone. Classes without images use their text;
        - ``use_text=False``: every class must have images and its embedding is ``v`` (no text encoded; ``alpha``
          is ignored).

        ``self.class_sources`` records per class ``"text"``, ``"image"``, ``"text+image"`` or ``"embedding"``, and
        ``self.image_encoder_id`` the CLIP image tower used (None when no image was encoded).

        Args:
            classes: Class names; an item may be a list of synonyms (first = display name), see ``parse_classes``.
            embeddings: Optional ``(K, D)`` / ``(K, G, D)`` tensor, ndarray or ``.npy`` path used instead of text.
            encoder: A ``CLIPTextEncoder`` or a CLIP source (path); default ``yw_ext.text.load_clip()``. Image prompts
                use the image tower of this CLIP (default ``$YW_CLIP``).
            batch: Text-encoding batch size.
            cache: ``EmbeddingCache`` to use, ``False`` to disable (default: the on-disk cache). Image prompts use
                it too (keyed by the CLIP image tower and a hash of each crop's pixels).
            images: ``{class_name: exemplar or [exemplars]}``; an exemplar is an image path, a BGR uint8 ndarray
                (cv2 / Ultralytics order), a PIL image, or ``(image, [x1, y1, x2, y2])`` (a pixel box of the original
                image to crop). Keys must be class names from ``classes``.
            alpha: Text weight for classes with text and images, in ``[0, 1]``; default 0.5.
            margin: Context added around boxes before cropping, as a fraction of the box width / height (>= 0,
                default 0); the grown box is clipped to the image.
            use_text: Encode the class names as text (default). False: image-only vocabulary.

        Raises:
            ValueError: bad names; ``images`` keys not in the names; a class with neither text nor images
                (``use_text=False``); boxes outside the image or with no area; unreadable images; bad ``alpha`` or
                ``margin``; a text-only CLIP with images; embedding width not the model's.
            FileNotFoundError: an exemplar image or the CLIP weights are missing.

        Examples:
            >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
            >>> m.set_classes(["car", "bus"], embeddings=torch.randn(2, 2, 512))  # (K, G, D): 2 prompts per class
            >>> m.prompts_per_class, m.names
            (2, {0: 'car', 1: 'bus'})
            >>> m.set_classes(["dog", "cat"], images={"dog": ["dog1.jpg", ("scene.jpg", [10, 20, 200, 220])]})
            >>> m.class_sources
            ['text+image', 'text']
            >>> m.set_classes(["dog"], images={"dog": "dog1.jpg"}, use_text=False)  # image only
        """
        names, prompts = parse_classes(classes)
        if images is None and use_text:
            if embeddings is not None:
                if any(len(p) > 1 for p in prompts):
                    raise ValueError("give synonyms either as text prompts or as (K, G, D) embeddings, not both.")
                emb, g = check_embeddings(embeddings, len(names), self.embed_dim)
                self.set_vocabulary(names, emb, g, None, None)
                return
            flat, g = pad_prompts(prompts)
            emb, encoder_id = self.encode_text(flat, encoder=encoder, batch=batch, cache=cache)
            self.set_vocabulary(names, emb, g, prompts, encoder_id)
            return
        self._set_classes_with_images(
            names, prompts, embeddings, encoder, batch, cache, images, alpha, margin, use_text
        )

    def _set_classes_with_images(self, names, prompts, embeddings, encoder, batch, cache, images, alpha, margin,
                                 use_text) -> None:
        """Image-prompt part of ``set_classes`` (arguments already split by ``parse_classes``)."""
        from ultralytics.utils import LOGGER

        from yw_ext.image_adapter import adapter_digest, model_adapter
        from yw_ext.text.image import DEFAULT_ALPHA, average_embeddings, fuse_embeddings, image_encoder, load_exemplars

        if embeddings is not None:
            raise ValueError("give class embeddings either as embeddings= or from images=, not both.")
        alpha = DEFAULT_ALPHA if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha (text weight of text+image classes) must be a number in [0, 1], got {alpha!r}.")
        images = {} if images is None else images
        if not isinstance(images, dict):
            raise TypeError(f"images must be a dict {{class_name: exemplars}}, got {type(images).__name__}.")
        unknown = [c for c in images if c not in names]
        if unknown:
            raise ValueError(
                f"images given for class {unknown[0]!r}, which is not among the class names {names[:10]}; every key of "
                "images must be a class name in classes (image-only classes: list them and pass use_text=False)."
            )
        if not use_text:
            missing = [n for n in names if n not in images]
            if missing:
                raise ValueError(f"class {missing[0]!r} has neither text nor images: with use_text=False every class "
                                 "needs exemplar images (add images for it, or use_text=True).")
            syn = [p[0] for p in prompts if len(p) > 1]
            if syn:
                raise ValueError(
                    f"class {syn[0]!r} has synonyms, which are text prompts: not usable with use_text=False."
                )
        crops = load_exemplars(images, margin=margin)  # every file and box is checked before anything is encoded
        k, d = len(names), self.embed_dim
        need = [n for n in names if n in crops and (not use_text or alpha < 1)]  # classes whose images are encoded
        img, image_id, ienc = {}, None, None
        if need:
            ienc = image_encoder(encoder)
            if ienc.dim != d:
                raise ValueError(f"CLIP image encoder gives {ienc.dim}-d embeddings but this model expects {d}-d.")
            flat_crops = [c for n in need for c in crops[n]]
            feats = ienc.encode_images(flat_crops, batch=32, cache=cache).float().cpu()  # (M, D), cached on disk
            image_id = ienc.identity
            adapter = model_adapter(self)
            if adapter is not None:  # trained projector (train(mode="image_prompt")): v_j = n(u_j + MLP(u_j))
                with torch.no_grad():
                    feats = adapter(feats)  # (M, D)
                trained_on = self.image_adapter_state.get("image_encoder_id")
                if trained_on and trained_on != ienc.identity:
                    LOGGER.warning(f"the image adapter was trained on CLIP image tower {trained_on}, but the exemplars "
                                   f"are encoded by {ienc.identity} ({ienc.clip.source}); use the same CLIP.")
                image_id = f"{image_id}+adapter:{adapter_digest(self.image_adapter_state['adapter'])}"
            i = 0
            for n in need:
                img[n] = average_embeddings(feats[i: i + len(crops[n])])  # (D,)
                i += len(crops[n])
        if use_text:
            flat, g = pad_prompts(prompts)
            text, encoder_id = self.encode_text(flat, encoder=encoder, batch=batch, cache=cache)
            out = text.float().view(k, g, d).clone()  # (K, G, D)
            sources = ["text"] * k
            for j, n in enumerate(names):
                if n not in img:
                    continue
                if alpha == 0:
                    out[j], sources[j] = img[n].expand(g, d), "image"
                else:
                    try:
                        out[j] = fuse_embeddings(out[j], img[n], alpha)  # (G, D)
                    except ValueError as e:
                        raise ValueError(f"class {n!r}: {e}") from None
                    sources[j] = "text+image"
            if ienc is not None and any(s == "text+image" for s in sources) and encoder_id != ienc.clip.identity:
                LOGGER.warning(
                    f"image prompts come from the CLIP at {ienc.clip.source} but the text embeddings from another text "
                    f"encoder ({encoder_id}); fused embeddings assume one CLIP (set YW_CLIP or pass encoder=...)."
                )
            self.set_vocabulary(names, out.reshape(k * g, d), g, prompts, encoder_id, sources, image_id)
        else:
            out = torch.stack([img[n] for n in names])  # (K, D)
            self.set_vocabulary(names, out, 1, None, None, ["image"] * k, image_id)

    def encode_text(self, texts: list[str], encoder: Any = None, batch: int = 256, cache: Any = None):
        """Encode prompts with the CLIP text encoder (cached on disk); returns ``((N, D) tensor, encoder id)``.

        Encoder: ``encoder`` when given; else ``$YW_CLIP`` when set; else the model's own text tower
        (``text_encoder_state``, e.g. from an official checkpoint); else ``yw_ext.text.load_clip()``.
        """
        import os

        from yw_ext.text import encode_texts, load_clip
        from yw_ext.text.clip import ENV_CLIP

        state = getattr(self, "text_encoder_state", None)
        if hasattr(encoder, "encode"):
            enc = encoder
        elif encoder is None and state is not None and not os.environ.get(ENV_CLIP, "").strip():
            from yw_ext.convert import text_encoder_from_state

            enc = text_encoder_from_state(state)
        else:
            enc = load_clip(encoder)
        if enc.dim != self.embed_dim:
            raise ValueError(
                f"text encoder gives {enc.dim}-d embeddings but this model expects {self.embed_dim}-d "
                "(use the CLIP the model was trained with: ViT-B/32 for 512, ViT-L/14 for 768)."
            )
        emb = encode_texts(enc, texts, cache=cache, batch=batch)
        return emb.float().cpu(), enc.identity

    def reparameterize(self, partial_v1: bool = False) -> YWDetectionModel:
        """Fold the current vocabulary into the neck and head weights, in place (see ``yw_ext.nn.rep``)."""
        from yw_ext.nn.rep import reparameterize

        reparameterize(self, partial_v1=partial_v1)
        return self

    def get_text_pe(self, text: list[str], batch: int = 80, cache_clip_model: bool = False) -> torch.Tensor:
        """Ultralytics ``WorldModel`` API: text embeddings ``(1, N, D)`` from yw_ext's encoder."""
        emb, _ = self.encode_text(list(text), batch=batch)
        return emb[None]  # (1, N, D)
