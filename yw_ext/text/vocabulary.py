# yw_ext, AGPL-3.0 license
"""Vocabulary builders: class names (+ a text encoder), exemplar images, or embeddings -> a ``Vocabulary``.

This is where text and images are encoded; the detector only installs the result
(``YWDetectionModel.install_vocabulary``). Which text encoder: the one given (``encoder=`` / ``clip=``: CLIP,
Sentence-Transformers, M-CLIP or a projected encoder, see ``yw_ext.text.encoders``); else ``$YW_TEXT_ENCODER``; else
``$YW_CLIP`` when set; else the text tower embedded in the checkpoint (official weights carry one); else
``yw_ext.text.load_clip()``.

Examples:
    >>> import torch
    >>> v = build_vocabulary(["car", "bus"], dim=512, embeddings=torch.randn(2, 512))
    >>> v.names, v.sources
    (('car', 'bus'), ('embedding', 'embedding'))
"""

from __future__ import annotations

import os
from typing import Any

import torch

from yw_ext.core.log import LOGGER
from yw_ext.vocab import Vocabulary, check_embeddings, pad_prompts, parse_classes


def resolve_text_encoder(encoder: Any = None, embedded_state: dict | None = None, clip: Any = None) -> Any:
    """The text encoder to use, in this order: ``encoder`` (or its alias ``clip``), ``$YW_TEXT_ENCODER``, ``$YW_CLIP``,
    the checkpoint's embedded tower, the default CLIP.

    A path may be any format of ``yw_ext.text.encoders.load_text_encoder``: an OpenAI CLIP file, a Hugging Face
    CLIP folder, a Sentence-Transformers folder, an M-CLIP folder, or a projection file from ``yw align-text``.

    Args:
        encoder: An object with ``encode`` (used as is), a path, ``"clip"``, or None.
        embedded_state: A checkpoint's embedded CLIP text tower (``text_encoder_state``), used when no encoder is
            given and neither ``$YW_TEXT_ENCODER`` nor ``$YW_CLIP`` is set.
        clip: Alias of ``encoder`` (the older name); give one of them.

    Raises:
        ValueError: both ``encoder`` and ``clip`` given (and different); a path of no known format.

    Examples:
        >>> enc = resolve_text_encoder("ViT-B-32.pt")  # doctest: +SKIP
        >>> enc = resolve_text_encoder("clip-ViT-B-32-multilingual-v1")  # Sentence-Transformers  # doctest: +SKIP
    """
    from yw_ext.text.clip import ENV_CLIP, load_clip
    from yw_ext.text.encoders import ENV_TEXT_ENCODER, load_text_encoder

    if encoder is not None and clip is not None and encoder is not clip and str(encoder) != str(clip):
        raise ValueError(f"give the text encoder once: encoder={encoder!r} and clip={clip!r} differ.")
    encoder = encoder if encoder is not None else clip
    if encoder is not None:
        return load_text_encoder(encoder)
    env = os.environ.get(ENV_TEXT_ENCODER, "").strip()
    if env:
        return load_text_encoder(env)
    if embedded_state is not None and not os.environ.get(ENV_CLIP, "").strip():
        from yw_ext.text.embedded import text_encoder_from_state

        return text_encoder_from_state(embedded_state)
    return load_clip(None)


def encode_prompts(texts: list[str], dim: int, encoder: Any = None, batch: int = 256, cache: Any = None,
                   embedded_state: dict | None = None) -> tuple[torch.Tensor, str]:
    """Encode prompts (cached on disk); returns ``((N, D) float32 CPU tensor, encoder identity)``.

    Raises:
        ValueError: the encoder's width is not ``dim``.

    Examples:
        >>> emb, enc_id = encode_prompts(["person", "bus"], 512, encoder="ViT-B-32.pt")  # doctest: +SKIP
    """
    from yw_ext.text.cache import encode_texts

    enc = resolve_text_encoder(encoder, embedded_state)
    if enc.dim != dim:
        raise ValueError(
            f"text encoder {getattr(enc, 'source', type(enc).__name__)} gives {enc.dim}-d embeddings but this model "
            f"expects {dim}-d. Use the CLIP the model was trained with (ViT-B/32 for 512, ViT-L/14 for 768), a "
            "student distilled into its text space, or fit a projection for this encoder with `yw align-text`."
        )
    emb = encode_texts(enc, texts, cache=cache, batch=batch)
    return emb.float().cpu(), enc.identity


def _check_image_args(names: list[str], prompts: list[list[str]], images: Any, alpha: Any, use_text: bool) -> None:
    """Bad ``images`` / ``alpha`` / ``use_text`` combinations, refused before anything is read or encoded."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (text weight of text+image classes) must be a number in [0, 1], got {alpha!r}.")
    if not isinstance(images, dict):
        raise TypeError(f"images must be a dict {{class_name: exemplars}}, got {type(images).__name__}.")
    unknown = [c for c in images if c not in names]
    if unknown:
        raise ValueError(
            f"images given for class {unknown[0]!r}, which is not among the class names {names[:10]}; every key of "
            "images must be a class name in classes (image-only classes: list them and pass use_text=False)."
        )
    if use_text:
        return
    missing = [n for n in names if n not in images]
    if missing:
        raise ValueError(f"class {missing[0]!r} has neither text nor images: with use_text=False every class "
                         "needs exemplar images (add images for it, or use_text=True).")
    syn = [p[0] for p in prompts if len(p) > 1]
    if syn:
        raise ValueError(f"class {syn[0]!r} has synonyms, which are text prompts: not usable with use_text=False.")


def _image_embeddings(crops: dict, need: list[str], dim: int, encoder: Any, cache: Any,
                      adapter_state: dict | None) -> tuple[dict, str | None, Any]:
    """``{class: n(mean_j u_j)}`` for the classes in ``need``, the image-tower identity, and the image encoder."""
    from yw_ext.image_adapter import adapter_digest
    from yw_ext.nn.adapter import adapter_from_state
    from yw_ext.text.image import average_embeddings, image_encoder

    if not need:
        return {}, None, None
    ienc = image_encoder(encoder)
    if ienc.dim != dim:
        raise ValueError(f"CLIP image encoder gives {ienc.dim}-d embeddings but this model expects {dim}-d.")
    flat_crops = [c for n in need for c in crops[n]]
    feats = ienc.encode_images(flat_crops, batch=32, cache=cache).float().cpu()  # (M, D), cached on disk
    image_id = ienc.identity
    if adapter_state:  # trained projector (train(mode="image_prompt")): u_j -> n(u_j + MLP(u_j))
        adapter = adapter_from_state(adapter_state["adapter"], what="image_adapter_state").eval()
        with torch.no_grad():
            feats = adapter(feats)  # (M, D)
        trained_on = adapter_state.get("image_encoder_id")
        if trained_on and trained_on != ienc.identity:
            LOGGER.warning(f"the image adapter was trained on CLIP image tower {trained_on}, but the exemplars "
                           f"are encoded by {ienc.identity} ({ienc.clip.source}); use the same CLIP.")
        image_id = f"{image_id}+adapter:{adapter_digest(adapter_state['adapter'])}"
    out, i = {}, 0
    for n in need:
        out[n] = average_embeddings(feats[i: i + len(crops[n])])  # (D,)
        i += len(crops[n])
    return out, image_id, ienc


def _fuse(text: torch.Tensor, names: list[str], img: dict, alpha: float) -> tuple[torch.Tensor, list[str]]:
    """Per class: text alone, image alone (``alpha == 0``) or ``n(alpha t + (1 - alpha) v)``; ``(K, G, D)``."""
    from yw_ext.text.image import fuse_embeddings

    out, sources = text.clone(), ["text"] * len(names)
    g, d = text.shape[1:]
    for j, n in enumerate(names):
        if n not in img:
            continue
        if alpha == 0:
            out[j], sources[j] = img[n].expand(g, d), "image"
            continue
        try:
            out[j] = fuse_embeddings(out[j], img[n], alpha)  # (G, D)
        except ValueError as e:
            raise ValueError(f"class {n!r}: {e}") from None
        sources[j] = "text+image"
    return out, sources


def vocabulary_from_images(names: list[str], prompts: list[list[str]], images: dict, dim: int, encoder: Any = None,
                           batch: int = 256, cache: Any = None, alpha: float | None = None, margin: float = 0.0,
                           use_text: bool = True, embedded_state: dict | None = None,
                           adapter_state: dict | None = None) -> Vocabulary:
    """Image prompts, alone (``use_text=False``) or fused with text; see ``YWDetectionModel.set_classes``.

    Examples:
        >>> v = vocabulary_from_images(["dog"], [["dog"]], {"dog": "dog.jpg"}, 512, use_text=False)  # doctest: +SKIP
    """
    from yw_ext.text.image import DEFAULT_ALPHA, load_exemplars

    alpha = DEFAULT_ALPHA if alpha is None else alpha
    images = {} if images is None else images
    _check_image_args(names, prompts, images, alpha, use_text)
    crops = load_exemplars(images, margin=margin)  # every file and box is checked before anything is encoded
    need = [n for n in names if n in crops and (not use_text or alpha < 1)]  # classes whose images are encoded
    img, image_id, ienc = _image_embeddings(crops, need, dim, encoder, cache, adapter_state)
    k = len(names)
    if not use_text:
        out = torch.stack([img[n] for n in names])  # (K, D)
        return Vocabulary(names, out, 1, None, ["image"] * k, None, image_id)
    flat, g = pad_prompts(prompts)
    text, encoder_id = encode_prompts(flat, dim, encoder, batch, cache, embedded_state)
    out, sources = _fuse(text.view(k, g, dim), names, img, alpha)  # (K, G, D)
    if ienc is not None and "text+image" in sources and encoder_id != ienc.clip.identity:
        LOGGER.warning(
            f"image prompts come from the CLIP at {ienc.clip.source} but the text embeddings from another text "
            f"encoder ({encoder_id}); fused embeddings assume one CLIP (set YW_CLIP or pass encoder=...)."
        )
    return Vocabulary(names, out.reshape(k * g, dim), g, prompts, sources, encoder_id, image_id)


def build_vocabulary(classes: Any, dim: int, embeddings: Any = None, encoder: Any = None, batch: int = 256,
                     cache: Any = None, images: dict | None = None, alpha: float | None = None, margin: float = 0.0,
                     use_text: bool = True, embedded_state: dict | None = None,
                     adapter_state: dict | None = None, clip: Any = None) -> Vocabulary:
    """A ``Vocabulary`` from class names and text, embeddings, or exemplar images (arguments as ``set_classes``).

    Args:
        classes: Class names; an item may be a list of synonyms (first = display name), see ``parse_classes``.
        dim: The detector's embedding width D.
        embeddings: ``(K, D)`` / ``(K, G, D)`` tensor, ndarray or ``.npy`` path, used instead of text.
        encoder: Text encoder or CLIP source (see ``resolve_text_encoder``); image prompts use its image tower.
        batch: Text-encoding batch size.
        cache: ``EmbeddingCache``, ``False`` to disable, None for the on-disk default.
        images: ``{class_name: exemplar or [exemplars]}`` (see ``yw_ext.text.image``).
        alpha: Text weight of text+image classes (default 0.5).
        margin: Context around exemplar boxes, as a fraction of the box size.
        use_text: Encode class names as text (default); False for an image-only vocabulary.
        embedded_state: The checkpoint's embedded text tower, if any.
        adapter_state: A trained image-prompt adapter (``image_adapter_state``), if any.
        clip: Alias of ``encoder``.

    Examples:
        >>> v = build_vocabulary(["a", "b"], 512, embeddings=torch.randn(2, 3, 512))
        >>> v.prompts_per_class, v.num_prompts
        (3, 6)
    """
    names, prompts = parse_classes(classes)
    if clip is not None:
        if encoder is not None and str(encoder) != str(clip) and encoder is not clip:
            raise ValueError(f"give the text encoder once: encoder={encoder!r} and clip={clip!r} differ.")
        encoder = clip
    if images is not None or not use_text:
        if embeddings is not None:
            raise ValueError("give class embeddings either as embeddings= or from images=, not both.")
        return vocabulary_from_images(names, prompts, images, dim, encoder, batch, cache, alpha, margin, use_text,
                                      embedded_state, adapter_state)
    if embeddings is not None:
        if any(len(p) > 1 for p in prompts):
            raise ValueError("give synonyms either as text prompts or as (K, G, D) embeddings, not both.")
        emb, g = check_embeddings(embeddings, len(names), dim)
        return Vocabulary(names, emb, g)
    flat, g = pad_prompts(prompts)
    emb, encoder_id = encode_prompts(flat, dim, encoder, batch, cache, embedded_state)
    return Vocabulary(names, emb, g, prompts, None, encoder_id)


__all__ = ["build_vocabulary", "encode_prompts", "resolve_text_encoder", "vocabulary_from_images"]
