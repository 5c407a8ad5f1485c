# yw_ext, AGPL-3.0 license
"""Text encoders and the text-embedding cache.

Examples:
    >>> from yw_ext.text import load_clip, encode_texts
    >>> enc = load_clip()  # $YW_CLIP, or the `clip` package's ~/.cache/clip/ViT-B-32.pt
    >>> emb = encode_texts(enc, ["person", "bus"])  # (2, 512) float32, L2-normalised, cached on disk
"""

from yw_ext.text.cache import EmbeddingCache, encode_texts
from yw_ext.text.clip import CLIPTextEncoder, load_clip
from yw_ext.text.encoders import TextEncoder, detect_format, load_text_encoder

__all__ = ("CLIPTextEncoder", "load_clip", "EmbeddingCache", "encode_texts", "TextEncoder", "detect_format",
           "load_text_encoder")
