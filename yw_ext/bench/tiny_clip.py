# yw_ext, AGPL-3.0 license
"""Random-weight CLIPs in OpenAI's state-dict layout, built with open_clip (no download): the one builder of the
benchmarks' random text encoders and of the tests' tiny CLIP (``tests/_tiny_clip.py`` loads these weights into the
`clip` package's model).

Sizes: ``"tiny"`` (width 64, 2 layers, 1 head) or ``"vit-b-32"`` (width 512, 12 layers, 8 heads); the output is
``embed_dim``-d (512 like ViT-B, 768 like ViT-L). ``vision=True`` keeps an image tower: a tiny ViT (224 px, patch 32,
width 64, 2 layers, 1 head).

Notes:
    - Attention heads: the OpenAI layout does not store the number of heads; every loader (``clip.load``,
      ``open_clip``, ``yw_ext.text``) reads ``width // 64`` back. With width 64 that is 1 head, so the tiny towers are
      built with 1 head (a 2-head model in memory would not be the model that any loader reads back from its file).
    - Biases, class embeddings and LayerNorm weights are randomised (CLIP's init leaves them at 0/1), so that a wrong
      mapping of any of them shows up in the features.
    - Every weight is rounded to a float16-representable value: OpenAI's files (and the `clip` package) keep weights
      in float16 before ``.float()``, so every loader sees exactly the same numbers.
    - open_clip initialises the weights from the global RNG as the `clip` package does, and the randomisation above
      runs in the `clip` package's parameter order, so for a seed the weights are exactly those of a
      ``clip.model.CLIP`` built and randomised the same way (checked with open_clip 3.3 and clip-anytorch 2.6).

Examples:
    >>> sd = random_clip_state_dict("tiny", vision=True)
    >>> sd["text_projection"].shape, sd["visual.proj"].shape
    (torch.Size([64, 512]), torch.Size([64, 512]))
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

WIDTH = 64  # width of the tiny text tower and of every image tower
LAYERS = 2
HEADS = WIDTH // 64  # what OpenAI-layout loaders infer; see the module notes
CONTEXT = 77
VOCAB = 49408
IMAGE = 224
PATCH = 32
SIZES = {"tiny": (WIDTH, LAYERS, HEADS), "vit-b-32": (512, 12, 8)}
"""Text tower (width, layers, heads) per kind."""


_BLOCK_PART = re.compile(r"(.*resblocks\.\d+\.)(attn|ln_1|mlp|ln_2)\.")
_PARTS = ("attn", "ln_1", "mlp", "ln_2")  # OpenAI's ResidualAttentionBlock order (open_clip registers ln_1 first)


def _openai_order(names: list[str]) -> list[str]:
    """Parameter names in the `clip` package's module order: inside each residual block attn, ln_1, mlp, ln_2 (open_clip
    registers them as ln_1, attn, ln_2, mlp); everything else as given. Randomising in this order gives, for a seed,
    the very numbers the `clip` package's model gets."""
    index = {n: i for i, n in enumerate(names)}
    first: dict[str, int] = {}
    for n in names:
        m = _BLOCK_PART.match(n)
        if m:
            first.setdefault(m.group(1), index[n])

    def key(n: str) -> tuple[int, int, int]:
        m = _BLOCK_PART.match(n)
        return (first[m.group(1)], _PARTS.index(m.group(2)), index[n]) if m else (index[n], 0, 0)

    return sorted(names, key=key)


def _randomize_clip_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random biases / class embeddings (N(0, 0.05)) and LayerNorm weights (1 + N(0, 0.1)), then float16-exact."""
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in _openai_order(list(params)):
            p = params[name]
            if name.endswith("bias") or "class_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif "ln_" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            p.copy_(p.half().float())
    return model


def random_clip(kind: str = "vit-b-32", seed: int = 0, vision: bool = False, embed_dim: int = 512) -> Any:
    """A random-weight open_clip ``CLIP`` (float32, CPU, eval mode) of size ``kind``; see the module notes.

    Args:
        kind: ``"tiny"`` or ``"vit-b-32"`` (text tower size).
        seed: Random seed.
        vision: Build the tiny 224 px image tower (else a minimal 32 px one, dropped by ``random_clip_state_dict``).
        embed_dim: Joint embedding width.

    Examples:
        >>> random_clip("tiny").text_projection.shape
        torch.Size([64, 512])
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    width, layers, heads = SIZES[kind]
    torch.manual_seed(seed)
    vcfg = (CLIPVisionCfg(layers=LAYERS, width=WIDTH, head_width=WIDTH, patch_size=PATCH, image_size=IMAGE) if vision
            else CLIPVisionCfg(layers=1, width=WIDTH, patch_size=PATCH, image_size=32))  # fmt: skip
    model = CLIP(embed_dim, vision_cfg=vcfg, text_cfg=CLIPTextCfg(width=width, layers=layers, heads=heads,
                 context_length=CONTEXT, vocab_size=VOCAB), quick_gelu=True, cast_dtype=torch.float32)  # fmt: skip
    return _randomize_clip_(model, seed).eval()


def random_clip_state_dict(kind: str = "vit-b-32", seed: int = 0, vision: bool = False,
                           embed_dim: int = 512) -> dict[str, torch.Tensor]:
    """The weights of ``random_clip`` in OpenAI's state-dict layout; the image tower only with ``vision=True``.

    Examples:
        >>> sd = random_clip_state_dict("tiny")
        >>> sd["text_projection"].shape, any(k.startswith("visual.") for k in sd)
        (torch.Size([64, 512]), False)
        >>> random_clip_state_dict("tiny", vision=True)["visual.proj"].shape
        torch.Size([64, 512])
    """
    sd = random_clip(kind, seed, vision, embed_dim).state_dict()
    return {k: v for k, v in sd.items() if vision or not k.startswith("visual.")}


def save_random_clip(path: str | Path, kind: str = "tiny", seed: int = 0, vision: bool = False,
                     embed_dim: int = 512) -> Path:
    """Save ``random_clip_state_dict(kind, seed, vision, embed_dim)`` to ``path`` (loadable as ``$YW_CLIP`` /
    ``load_clip``).

    Examples:
        >>> save_random_clip("/tmp/yw_random_clip.pt").name
        'yw_random_clip.pt'
    """
    torch.save(random_clip_state_dict(kind, seed, vision, embed_dim), path)
    return Path(path)


def random_text_encoder(kind: str = "vit-b-32", seed: int = 0) -> Any:
    """A random-weight CLIP text encoder (``yw_ext.text.CLIPTextEncoder``): ``"vit-b-32"`` size or ``"tiny"``.

    Examples:
        >>> enc = random_text_encoder("tiny")
        >>> enc.encode(["a dog"]).shape
        torch.Size([1, 512])
    """
    from yw_ext.text import CLIPTextEncoder

    return CLIPTextEncoder.from_openai_state_dict(random_clip_state_dict(kind, seed),
                                                  source=f"random {kind} (open_clip)")


__all__ = ["CONTEXT", "HEADS", "IMAGE", "LAYERS", "PATCH", "SIZES", "VOCAB", "WIDTH", "random_clip",
           "random_clip_state_dict", "random_text_encoder", "save_random_clip"]  # fmt: skip
