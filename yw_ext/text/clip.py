# yw_ext, AGPL-3.0 license
"""CLIP text encoder on top of ``open_clip``, loaded offline from OpenAI or Hugging Face weights.

The encoder always runs the OpenAI CLIP architecture as implemented by ``open_clip`` (float32), whatever the file
format of the weights:

- OpenAI form: the TorchScript archive ``ViT-B-32.pt`` that the ``clip`` package downloads, or a plain state dict in
  the same layout saved with ``torch.save``.
- Hugging Face form: a folder written by ``transformers.CLIPModel.save_pretrained`` (``config.json`` plus
  ``model.safetensors`` or ``pytorch_model.bin``), or the text-only ``CLIPTextModelWithProjection`` form. The tensors
  are mapped into the OpenAI layout with an explicit key map; ``transformers`` is not needed at run time.

Examples:
    >>> from yw_ext.text import load_clip
    >>> enc = load_clip("~/.cache/clip/ViT-B-32.pt")
    >>> emb = enc.encode(["person", "bus"])  # (2, 512), L2-normalised
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ("CLIPTextEncoder", "load_clip")

ENV_CLIP = "YW_CLIP"
CLIP_CACHE_FILE = Path("~/.cache/clip/ViT-B-32.pt")  # where the `clip` package caches OpenAI's ViT-B/32
HUB_NAMES = ("clip", "ViT-B/32")  # sources that load_clip resolves through yw_ext.hub.get_weights("clip")

# Hugging Face tensors that carry no weights (index buffers some checkpoints contain); accepted and dropped.
_HF_IGNORED = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")

# Hugging Face CLIP config defaults (transformers.CLIPTextConfig / CLIPVisionConfig / CLIPConfig), used for keys
# that a config.json leaves out, exactly as transformers itself would.
_HF_TEXT_DEFAULTS = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)
_HF_VISION_DEFAULTS = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)

PathLike = Union[str, os.PathLike]


# ----------------------------------------------------------------------------------------------------------------------
# Architecture description and model building
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _VisionArch:
    width: int
    heads: int
    layers: int
    mlp_ratio: float
    patch_size: int
    image_size: int


@dataclass(frozen=True)
class _Arch:
    embed_dim: int
    context_length: int
    vocab_size: int
    width: int
    heads: int
    layers: int
    mlp_ratio: float
    vision: Optional[_VisionArch]  # None: text-only encoder

    @property
    def text_tag(self) -> str:
        """Short text-tower description used in the encoder identity, e.g. ``text-w512-h8-l12-d512``."""
        return f"text-w{self.width}-h{self.heads}-l{self.layers}-d{self.embed_dim}"


def _resblock_count(keys, prefix: str) -> int:
    """Number of residual blocks ``{prefix}.{i}.*`` among ``keys``."""
    n = len(prefix) + 1
    return len({k[n:].split(".", 1)[0] for k in keys if k.startswith(prefix + ".")})


def _arch_from_openai(sd: dict) -> _Arch:
    """Infer the architecture from an OpenAI-layout (ViT) state dict, with the OpenAI convention of 64-wide heads.

    The OpenAI layout does not store the number of attention heads; the ``clip`` package and ``open_clip`` both use
    ``width // 64`` (8 for ViT-B text, 12 for ViT-L text), and so does this function.
    """
    required = ("token_embedding.weight", "positional_embedding", "ln_final.weight", "text_projection")
    missing = [k for k in required if k not in sd]
    if missing:
        raise ValueError(f"not an OpenAI CLIP state dict: missing {missing} (found {len(sd)} keys, e.g. "
                         f"{sorted(sd)[:5]})")
    width = sd["ln_final.weight"].shape[0]
    layers = _resblock_count(sd, "transformer.resblocks")
    if layers == 0:
        raise ValueError("not an OpenAI CLIP state dict: no 'transformer.resblocks.*' tensors")
    vision = None
    if any(k.startswith("visual.") for k in sd):
        if "visual.proj" not in sd or "visual.conv1.weight" not in sd or "visual.positional_embedding" not in sd:
            raise ValueError("only ViT image towers are supported by this builder (missing 'visual.proj', "
                             "'visual.conv1.weight' or 'visual.positional_embedding')")
        vw = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = _VisionArch(
            width=vw,
            heads=max(vw // 64, 1),
            layers=_resblock_count(sd, "visual.transformer.resblocks"),
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / vw,
            patch_size=patch,
            image_size=patch * grid,
        )
    return _Arch(
        embed_dim=sd["text_projection"].shape[1],
        context_length=sd["positional_embedding"].shape[0],
        vocab_size=sd["token_embedding.weight"].shape[0],
        width=width,
        heads=max(width // 64, 1),
        layers=layers,
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        vision=vision,
    )


def _new_open_clip(arch: _Arch):
    """An ``open_clip.model.CLIP`` for ``arch`` in float32 with QuickGELU, parameters left uninitialised.

    The model is built on the meta device (random init of a ViT-B/32 costs ~3 s and is overwritten anyway); every
    parameter and persistent buffer is then filled by a strict ``load_state_dict``, and the only non-persistent
    buffer (the causal ``attn_mask``) is rebuilt here. Falls back to a normal CPU build if open_clip ever grows
    other non-persistent buffers.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    v = arch.vision or _VisionArch(width=64, heads=1, layers=1, mlp_ratio=1.0, patch_size=32, image_size=32)
    kwargs = dict(
        embed_dim=arch.embed_dim,
        vision_cfg=CLIPVisionCfg(
            layers=v.layers, width=v.width, head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio,
            patch_size=v.patch_size, image_size=v.image_size,
        ),
        text_cfg=CLIPTextCfg(
            context_length=arch.context_length, vocab_size=arch.vocab_size, width=arch.width, heads=arch.heads,
            layers=arch.layers, mlp_ratio=arch.mlp_ratio,
        ),
        quick_gelu=True,  # OpenAI CLIP was trained with QuickGELU
        cast_dtype=torch.float32,  # open_clip's default float16 moves text features by ~3e-3
    )
    with torch.device("meta"):
        model = CLIP(**kwargs)
    if arch.vision is None:
        model.visual = None  # text-only encoder: no image tower
    if set(dict(model.named_buffers())) - set(model.state_dict()) == {"attn_mask"}:
        model.to_empty(device="cpu")
        n = arch.context_length
        model.attn_mask = torch.full((n, n), float("-inf")).triu_(1)  # (L, L) causal mask, as open_clip builds it
    else:  # pragma: no cover - depends on open_clip internals
        model = CLIP(**kwargs)
        if arch.vision is None:
            model.visual = None
    return model


def _load_checked(model, sd: dict, source: str, optional: Sequence[str] = ()) -> None:
    """Strictly load ``sd`` into ``model`` (float32), raising one ValueError that lists every key/shape problem.

    Args:
        model: the open_clip CLIP to fill.
        sd: OpenAI-layout tensors.
        source: description of where the tensors come from (for the error message).
        optional: model keys that may be absent from ``sd`` (they keep their initial value).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and k not in optional]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [
        f"{k}: got {tuple(sd[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{source}: tensors do not match the CLIP architecture; missing: {missing}; unexpected: {unexpected}; "
            f"shape mismatches: {mismatched}"
        )
    absent = [k for k in optional if k in expected and k not in sd]
    if absent:  # meta-built parameters must still get a value
        defaults = {"logit_scale": torch.tensor(math.log(1 / 0.07))}
        sd = {**sd, **{k: defaults.get(k, torch.zeros_like(expected[k], device="cpu")) for k in absent}}
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)


def _text_identity(model, arch: _Arch) -> str:
    """Content-based identity of the text tower: architecture tag + sha256 over float32 tensor bytes.

    The hash covers the text tower only (every key not under ``visual.``, except ``logit_scale``), in sorted key
    order, each as name, shape and float32 bytes, so the same weights give the same identity whether they came
    from an OpenAI file (float16) or a Hugging Face folder (float32), with or without an image tower.
    """
    h = hashlib.sha256()
    sd = model.state_dict()
    for k in sorted(sd):
        if k.startswith("visual.") or k == "logit_scale":
            continue
        t = sd[k].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{k}:{tuple(t.shape)};".encode())
        h.update(t.numpy().reshape(-1).view("uint8"))
    return f"openai-clip:{arch.text_tag}:{h.hexdigest()[:16]}"


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    """open_clip's ``SimpleTokenizer`` (the OpenAI BPE shipped with open_clip; no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _as_text_list(texts) -> list:
    """Validate ``texts`` (a string or a sequence of strings) and return it as a list."""
    if isinstance(texts, str):
        return [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"texts must be a string or a list of strings, got {type(texts).__name__}") from None
    bad = [(i, type(t).__name__) for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must all be strings; not strings at (index, type): {bad[:10]}")
    return texts


# ----------------------------------------------------------------------------------------------------------------------
# Hugging Face -> OpenAI key map
# ----------------------------------------------------------------------------------------------------------------------
def _hf_block_map(hf: str, oa: str) -> list:
    """Key map of one transformer block: (openai_key, [hf_keys], how) with how in {"copy", "cat"}."""
    m = [
        (f"{oa}.attn.in_proj_weight", [f"{hf}.self_attn.{p}_proj.weight" for p in "qkv"], "cat"),
        (f"{oa}.attn.in_proj_bias", [f"{hf}.self_attn.{p}_proj.bias" for p in "qkv"], "cat"),
    ]
    for h, o in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"),
                 ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
        m += [(f"{oa}.{o}.{p}", [f"{hf}.{h}.{p}"], "copy") for p in ("weight", "bias")]
    return m


def _hf_key_map(text_layers: int, vision_layers: Optional[int], logit_scale: bool) -> list:
    """Explicit Hugging Face -> OpenAI key map: list of (openai_key, [hf_keys], how), how in {copy, cat, T}."""
    m = [
        ("token_embedding.weight", ["text_model.embeddings.token_embedding.weight"], "copy"),
        ("positional_embedding", ["text_model.embeddings.position_embedding.weight"], "copy"),
        ("ln_final.weight", ["text_model.final_layer_norm.weight"], "copy"),
        ("ln_final.bias", ["text_model.final_layer_norm.bias"], "copy"),
        ("text_projection", ["text_projection.weight"], "T"),  # (D, W) Linear weight -> (W, D) matrix
    ]
    for i in range(text_layers):
        m += _hf_block_map(f"text_model.encoder.layers.{i}", f"transformer.resblocks.{i}")
    if logit_scale:
        m.append(("logit_scale", ["logit_scale"], "copy"))
    if vision_layers is not None:
        m += [
            ("visual.class_embedding", ["vision_model.embeddings.class_embedding"], "copy"),
            ("visual.conv1.weight", ["vision_model.embeddings.patch_embedding.weight"], "copy"),
            ("visual.positional_embedding", ["vision_model.embeddings.position_embedding.weight"], "copy"),
            ("visual.ln_pre.weight", ["vision_model.pre_layrnorm.weight"], "copy"),  # sic: HF's spelling
            ("visual.ln_pre.bias", ["vision_model.pre_layrnorm.bias"], "copy"),
            ("visual.ln_post.weight", ["vision_model.post_layernorm.weight"], "copy"),
            ("visual.ln_post.bias", ["vision_model.post_layernorm.bias"], "copy"),
            ("visual.proj", ["visual_projection.weight"], "T"),  # (D, W) Linear weight -> (W, D) matrix
        ]
        for i in range(vision_layers):
            m += _hf_block_map(f"vision_model.encoder.layers.{i}", f"visual.transformer.resblocks.{i}")
    return m


def _hf_arch(config: dict, hf_keys, source: str) -> _Arch:
    """Architecture from a Hugging Face CLIP config (CLIPModel or CLIPTextModelWithProjection form).

    ``config`` None-like values fall back to transformers' defaults. Raises ValueError for non-OpenAI-CLIP settings
    (activation other than quick_gelu, LayerNorm eps other than 1e-5, non-RGB input).
    """
    model_type = config.get("model_type")
    if model_type == "clip_text_model" or (model_type is None and "text_config" not in config
                                           and not any(k.startswith("vision_model.") for k in hf_keys)):
        text_cfg, vision_cfg = config, None
        projection_dim = config.get("projection_dim", _HF_TEXT_DEFAULTS["projection_dim"])
    elif model_type in ("clip", None):
        # transformers lets the legacy *_config_dict entries override *_config ones; do the same
        text_cfg = {**(config.get("text_config") or {}), **(config.get("text_config_dict") or {})}
        vision_cfg = {**(config.get("vision_config") or {}), **(config.get("vision_config_dict") or {})}
        projection_dim = config.get("projection_dim", 512)
    else:
        raise ValueError(f"{source}: model_type {model_type!r} is not a CLIP model "
                         "(expected 'clip' or 'clip_text_model')")

    def merged(defaults: dict, cfg: dict) -> dict:
        return {**defaults, **{k: v for k, v in cfg.items() if v is not None}}

    t = merged(_HF_TEXT_DEFAULTS, text_cfg)
    v = None if vision_cfg is None else merged(_HF_VISION_DEFAULTS, vision_cfg)
    problems = []
    for name, c in (("text", t), ("vision", v)):
        if c is None:
            continue
        if c["hidden_act"] != "quick_gelu":
            problems.append(f"{name} hidden_act is {c['hidden_act']!r}, expected 'quick_gelu' (OpenAI CLIP)")
        if not math.isclose(float(c["layer_norm_eps"]), 1e-5, rel_tol=1e-6):
            problems.append(f"{name} layer_norm_eps is {c['layer_norm_eps']}, expected 1e-05 (OpenAI CLIP)")
        if c["hidden_size"] % c["num_attention_heads"]:
            problems.append(f"{name} hidden_size {c['hidden_size']} is not divisible by num_attention_heads "
                            f"{c['num_attention_heads']}")
    if v is not None and v["num_channels"] != 3:
        problems.append(f"vision num_channels is {v['num_channels']}, expected 3")
    if problems:
        raise ValueError(f"{source}: not an OpenAI CLIP configuration: " + "; ".join(problems))
    vision = None
    if v is not None:
        vision = _VisionArch(
            width=v["hidden_size"], heads=v["num_attention_heads"], layers=v["num_hidden_layers"],
            mlp_ratio=v["intermediate_size"] / v["hidden_size"], patch_size=v["patch_size"],
            image_size=v["image_size"],
        )
    return _Arch(
        embed_dim=projection_dim, context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
        width=t["hidden_size"], heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
        mlp_ratio=t["intermediate_size"] / t["hidden_size"], vision=vision,
    )


def _hf_to_openai(hf_sd: dict, arch: _Arch, source: str) -> dict:
    """Map Hugging Face CLIP tensors to the OpenAI layout; one ValueError lists every unmapped/missing tensor."""
    kmap = _hf_key_map(arch.layers, arch.vision.layers if arch.vision else None,
                       logit_scale=arch.vision is not None or "logit_scale" in hf_sd)
    out, consumed, missing, bad = {}, set(), [], []
    for oa, hfs, how in kmap:
        absent = [k for k in hfs if k not in hf_sd]
        if absent:
            missing += absent
            continue
        consumed.update(hfs)
        ts = [hf_sd[k] for k in hfs]
        if how == "cat":
            if len({tuple(t.shape) for t in ts}) != 1:
                bad.append(f"{', '.join(hfs)}: q/k/v shapes differ {[tuple(t.shape) for t in ts]}")
                continue
            out[oa] = torch.cat(ts, dim=0)  # (3W, W) / (3W,): q, k, v stacked as nn.MultiheadAttention expects
        elif how == "T":
            if ts[0].ndim != 2:
                bad.append(f"{hfs[0]}: expected a 2-D Linear weight, got shape {tuple(ts[0].shape)}")
                continue
            out[oa] = ts[0].t().contiguous()  # (W, D)
        else:
            out[oa] = ts[0]
    extra = sorted(k for k in hf_sd if k not in consumed and k not in _HF_IGNORED)
    if missing or extra or bad:
        raise ValueError(
            f"{source}: Hugging Face CLIP tensors do not match the key map for {arch.layers} text layers"
            f"{'' if arch.vision is None else f' and {arch.vision.layers} vision layers'}; "
            f"missing: {missing}; not consumed (unexpected): {extra}; bad shapes: {bad}"
        )
    return out


def _read_hf_tensors(folder: Path) -> dict:
    """All tensors of a Hugging Face model folder (single or sharded safetensors / pytorch_model.bin)."""
    def load(name: str) -> dict:
        f = folder / name
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(str(f), device="cpu")
        return torch.load(f, map_location="cpu", weights_only=True)

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (folder / single).is_file():
            return load(single)
        if (folder / index).is_file():
            shards = sorted(set(json.loads((folder / index).read_text())["weight_map"].values()))
            sd = {}
            for s in shards:
                sd.update(load(s))
            return sd
    raise FileNotFoundError(
        f"no weights in Hugging Face folder {folder}: expected model.safetensors, pytorch_model.bin or a sharded "
        f"*.index.json next to config.json (found {sorted(p.name for p in folder.iterdir())})"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------------
class CLIPTextEncoder:
    """OpenAI CLIP text encoder (float32, open_clip implementation), loaded from OpenAI or Hugging Face weights.

    Attributes:
        model: the ``open_clip.model.CLIP`` in eval mode (float32). Its image tower (``model.visual``) is kept for
            image prompts; it is ``None`` for text-only weights (see ``has_vision``).
        dim (int): width of the text embedding, e.g. 512 (ViT-B) or 768 (ViT-L).
        context_length (int): token sequence length, 77 for OpenAI CLIP.
        identity (str): content-based identifier of the text tower, e.g.
            ``"openai-clip:text-w512-h8-l12-d512:0123456789abcdef"``; the same weights give the same identity
            from an OpenAI file and from a Hugging Face folder. Used as the embedding-cache key.
        device (torch.device): where the model runs.
        source (str): where the weights were read from (for messages only).

    Examples:
        >>> enc = CLIPTextEncoder.from_openai("ViT-B-32.pt")
        >>> enc.tokenize(["a bus"]).shape
        torch.Size([1, 77])
        >>> enc.encode(["person", "bus"]).shape  # L2-normalised rows
        torch.Size([2, 512])
    """

    def __init__(self, model, arch: _Arch, source: str = "<state dict>"):
        """Wrap a filled open_clip CLIP; use the ``from_*`` constructors rather than calling this directly."""
        self.model = model.float().eval().requires_grad_(False)
        self._arch = arch
        self.dim = arch.embed_dim
        self.context_length = arch.context_length
        self.source = source
        self.identity = _text_identity(self.model, arch)
        self.device = torch.device("cpu")

    # ----- constructors -----------------------------------------------------------------------------------------
    @classmethod
    def from_openai_state_dict(cls, state_dict: dict, source: str = "<state dict>") -> "CLIPTextEncoder":
        """Build from tensors in OpenAI's CLIP layout (ViT image tower, or no ``visual.*`` keys for text only).

        Args:
            state_dict: OpenAI-layout tensors (float16 or float32); the metadata entries ``input_resolution``,
                ``context_length`` and ``vocab_size`` of OpenAI archives are ignored.
            source: description used in messages.

        Returns:
            (CLIPTextEncoder): the encoder, on CPU.

        Examples:
            >>> enc = CLIPTextEncoder.from_openai_state_dict(torch.load("clip_sd.pt", weights_only=True))
        """
        sd = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise ValueError(f"{source}: state dict entries are not tensors: {bad[:10]}")
        if "visual.attnpool.positional_embedding" in sd:  # OpenAI ResNet CLIP (RN50, ...): open_clip's own builder
            from open_clip.model import build_model_from_openai_state_dict

            # OpenAI ResNet weights are float16, so the builder's float16 round trip loses nothing for them.
            model = build_model_from_openai_state_dict(dict(sd), cast_dtype=torch.float32)
            arch = _Arch(
                embed_dim=sd["text_projection"].shape[1], context_length=sd["positional_embedding"].shape[0],
                vocab_size=sd["token_embedding.weight"].shape[0], width=sd["ln_final.weight"].shape[0],
                heads=sd["ln_final.weight"].shape[0] // 64,
                layers=_resblock_count(sd, "transformer.resblocks"),
                mlp_ratio=4.0, vision=None,
            )
            return cls(model, arch, source)
        arch = _arch_from_openai(sd)
        model = _new_open_clip(arch)
        _load_checked(model, sd, source, optional=("logit_scale",) if arch.vision is None else ())
        return cls(model, arch, source)

    @classmethod
    def from_openai(cls, path: PathLike) -> "CLIPTextEncoder":
        """Load OpenAI CLIP weights: the TorchScript archive (e.g. ``ViT-B-32.pt``) or a ``torch.save`` state dict.

        Args:
            path: file path.

        Returns:
            (CLIPTextEncoder): the encoder, on CPU.

        Examples:
            >>> enc = CLIPTextEncoder.from_openai("~/.cache/clip/ViT-B-32.pt")
            >>> enc.dim
            512
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"OpenAI CLIP weights not found: {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                sd = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:  # not TorchScript: a plain state dict saved with torch.save
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:
                raise ValueError(f"{path} is neither an OpenAI CLIP TorchScript archive nor a torch.save state dict "
                                 f"({type(e).__name__}: {e})") from e
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a CLIP state dict, got {type(sd).__name__}")
        return cls.from_openai_state_dict(sd, source=str(path))

    @classmethod
    def from_hf_state_dict(cls, state_dict: dict, config: Optional[dict] = None,
                           source: str = "<HF state dict>") -> "CLIPTextEncoder":
        """Build from Hugging Face CLIP tensors (``CLIPModel`` or ``CLIPTextModelWithProjection`` key names).

        Args:
            state_dict: tensors with Hugging Face names (``text_model.*``, ``text_projection.weight``, optionally
                ``vision_model.*``, ``visual_projection.weight``, ``logit_scale``), without any outer prefix.
            config: the parsed ``config.json``. If None, a text-only OpenAI-style config is inferred from the tensors
                (heads = width // 64, quick_gelu), as for the CLIP text tower embedded in YOLO-World checkpoints.
            source: description used in messages.

        Returns:
            (CLIPTextEncoder): the encoder, on CPU.

        Examples:
            >>> from safetensors.torch import load_file
            >>> enc = CLIPTextEncoder.from_hf_state_dict(load_file("model.safetensors"), json.load(open("config.json")))
        """
        if config is None:
            if "text_model.final_layer_norm.weight" not in state_dict or "text_projection.weight" not in state_dict:
                raise ValueError(f"{source}: not a Hugging Face CLIP text state dict (no "
                                 "'text_model.final_layer_norm.weight' / 'text_projection.weight')")
            w = state_dict["text_model.final_layer_norm.weight"].shape[0]
            config = dict(
                model_type="clip_text_model",
                hidden_size=w,
                num_attention_heads=max(w // 64, 1),
                num_hidden_layers=_resblock_count(state_dict, "text_model.encoder.layers"),
                intermediate_size=state_dict["text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
                if "text_model.encoder.layers.0.mlp.fc1.weight" in state_dict else 4 * w,
                vocab_size=state_dict["text_model.embeddings.token_embedding.weight"].shape[0],
                max_position_embeddings=state_dict["text_model.embeddings.position_embedding.weight"].shape[0],
                projection_dim=state_dict["text_projection.weight"].shape[0],
            )
        arch = _hf_arch(config, state_dict.keys(), source)
        sd = _hf_to_openai(state_dict, arch, source)
        model = _new_open_clip(arch)
        _load_checked(model, sd, source, optional=("logit_scale",) if arch.vision is None else ())
        return cls(model, arch, source)

    @classmethod
    def from_hf(cls, folder: PathLike) -> "CLIPTextEncoder":
        """Load a Hugging Face CLIP folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``).

        Accepts folders written by ``CLIPModel.save_pretrained`` (text and image towers) and by
        ``CLIPTextModelWithProjection.save_pretrained`` (text only). ``transformers`` is not used.

        Args:
            folder: the model folder.

        Returns:
            (CLIPTextEncoder): the encoder, on CPU.

        Raises:
            FileNotFoundError: no folder, no config.json or no weights file.
            ValueError: not OpenAI CLIP (activation, eps), or tensors missing, left over or of the wrong shape.

        Examples:
            >>> enc = CLIPTextEncoder.from_hf("clip-vit-base-patch32")
            >>> enc.encode(["a dog"]).shape
            torch.Size([1, 512])
        """
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"Hugging Face CLIP folder not found: {folder}")
        cfg_file = folder / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"no config.json in Hugging Face CLIP folder {folder}")
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
        return cls.from_hf_state_dict(_read_hf_tensors(folder), config, source=str(folder))

    # ----- use ------------------------------------------------------------------------------------------------------
    @property
    def has_vision(self) -> bool:
        """Whether ``model`` has an image tower (False for text-only weights)."""
        return getattr(self.model, "visual", None) is not None

    def to(self, device) -> "CLIPTextEncoder":
        """Move the model to ``device`` in place and return self.

        Examples:
            >>> enc = enc.to("cuda:0")
        """
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def tokenize(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        """OpenAI BPE tokens, identical to ``clip.tokenize(texts, truncate=True)``.

        Texts longer than the context are truncated, keeping an end-of-text token last.

        Args:
            texts: a string or a list of strings.

        Returns:
            (torch.LongTensor): tokens of shape (N, context_length), zero-padded, on CPU.

        Examples:
            >>> enc.tokenize(["a photo of a dog"])[0, :7]
            tensor([49406,   320,  1125,   539,   320,  1929, 49407])
        """
        texts = _as_text_list(texts)
        return _tokenizer(self.context_length)(texts, context_length=self.context_length)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text features of token sequences, L2-normalised, float32.

        The sequence is cut after the last end-of-text token in the batch: with the causal mask, later positions
        cannot influence the pooled (end-of-text) position, so the result equals the full-length forward.

        Args:
            tokens: (N, L) integer tokens with L <= context_length, as from ``tokenize``.

        Returns:
            (torch.Tensor): (N, dim) float32 on ``device``.

        Examples:
            >>> enc.encode_tokens(enc.tokenize(["a dog"])).norm(dim=-1)
            tensor([1.0000])
        """
        if tokens.ndim != 2 or tokens.shape[1] > self.context_length or tokens.is_floating_point():
            raise ValueError(f"tokens must be an integer tensor of shape (N, L<={self.context_length}), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        m = self.model
        tokens = tokens.to(self.device, torch.long)
        n = tokens.shape[0]
        if n == 0:
            return torch.zeros((0, self.dim), device=self.device)
        eot = tokens.argmax(dim=-1)  # (N,) end-of-text position: 49407 is the largest token id
        L = int(eot.max()) + 1
        if getattr(m, "text_pool_type", "argmax") != "argmax":  # pragma: no cover - not built by this module
            return F.normalize(m.encode_text(tokens).float(), dim=-1)
        x = m.token_embedding(tokens[:, :L])  # (N, L, W)
        x = x + m.positional_embedding[:L]
        x = m.transformer(x, attn_mask=m.attn_mask[:L, :L])  # (N, L, W)
        x = m.ln_final(x)
        x = x[torch.arange(n, device=x.device), eot]  # (N, W)
        x = x @ m.text_projection  # (N, D)
        return F.normalize(x.float(), dim=-1)

    def encode(self, texts: Union[str, Sequence[str]], batch: int = 256) -> torch.Tensor:
        """L2-normalised text features, computed in batches under ``torch.inference_mode()``.

        Texts are grouped by token length so that each batch is cut short (see ``encode_tokens``); the output
        keeps the input order.

        Args:
            texts: a string or a list of strings (duplicates allowed).
            batch: texts per forward pass.

        Returns:
            (torch.Tensor): (N, dim) float32 on ``device`` (an ordinary tensor, usable with autograd).

        Examples:
            >>> emb = enc.encode(["person", "bus", "traffic light"])
            >>> emb.shape, float(emb[0] @ emb[0])
            (torch.Size([3, 512]), 1.0)
        """
        texts = _as_text_list(texts)
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        tokens = self.tokenize(texts)  # (N, L)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)  # by length
        out = torch.empty((len(texts), self.dim), device=self.device)
        with torch.inference_mode():
            feats = [self.encode_tokens(tokens[order[i: i + batch]]) for i in range(0, len(texts), batch)]
        out[order.to(self.device)] = torch.cat(feats)  # back to input order; (N, D)
        return out

    def __call__(self, texts, batch: int = 256) -> torch.Tensor:
        """Alias of ``encode``."""
        return self.encode(texts, batch=batch)

    def __repr__(self) -> str:
        return (f"CLIPTextEncoder(identity={self.identity!r}, dim={self.dim}, device={str(self.device)!r}, "
                f"vision={self.has_vision}, source={self.source!r})")


# ----------------------------------------------------------------------------------------------------------------------
# Loader with an in-process cache
# ----------------------------------------------------------------------------------------------------------------------
_LOADED: dict = {}
_LOADED_MAX = 4
_LOCK = threading.Lock()


def _signature(path: Path) -> tuple:
    """(mtime_ns, size) of a file, or of every file directly in a folder, to notice changed weights."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def _missing_clip_message(detail: str) -> str:
    return (
        f"{detail}. Set the environment variable {ENV_CLIP} to a local CLIP model: an OpenAI 'ViT-B-32.pt' file "
        f"(the `clip` package caches it as {CLIP_CACHE_FILE}) or a Hugging Face CLIP folder (config.json + "
        f"model.safetensors, e.g. openai/clip-vit-base-patch32), or pass it as load_clip(source). When online, "
        f"yw_ext.hub.get_weights('clip') (load_clip('clip')) can download OpenAI's ViT-B/32."
    )


def load_clip(source: Optional[PathLike] = None, device: Union[str, torch.device] = "cpu") -> CLIPTextEncoder:
    """Load a CLIP text encoder from a local file or folder, reusing an already loaded one.

    Resolution of ``source``:

    - None: the environment variable ``YW_CLIP``, else the `clip` package's cache file ``~/.cache/clip/ViT-B-32.pt``
      if it exists, else FileNotFoundError (nothing is downloaded).
    - ``"clip"`` or ``"ViT-B/32"``: the `clip` cache file if present, else ``yw_ext.hub.get_weights("clip")`` (which
      may download when online).
    - a folder: Hugging Face CLIP (``CLIPTextEncoder.from_hf``); a file: OpenAI CLIP (``CLIPTextEncoder.from_openai``).

    Encoders are cached per (resolved path, file times and sizes, device): repeated calls return the same object,
    so do not move it with ``.to()``; ask for another ``device`` instead.

    Args:
        source: file or folder path, ``"clip"``/``"ViT-B/32"``, or None.
        device: torch device for the model.

    Returns:
        (CLIPTextEncoder): the encoder on ``device``.

    Raises:
        FileNotFoundError: no CLIP weights could be found; the message says how to provide them.

    Examples:
        >>> import os
        >>> os.environ["YW_CLIP"] = "/models/ViT-B-32.pt"
        >>> enc = load_clip()
        >>> enc is load_clip()
        True
    """
    device = torch.device(device)
    if source is None:
        env = os.environ.get(ENV_CLIP, "").strip()
        if env:
            path = Path(env).expanduser()
            if not path.exists():
                raise FileNotFoundError(_missing_clip_message(f"{ENV_CLIP}={env!r} does not exist"))
        elif CLIP_CACHE_FILE.expanduser().is_file():
            path = CLIP_CACHE_FILE.expanduser()
        else:
            raise FileNotFoundError(_missing_clip_message(
                f"no CLIP weights found ({ENV_CLIP} is not set and {CLIP_CACHE_FILE} does not exist)"))
    elif isinstance(source, str) and source in HUB_NAMES:
        if CLIP_CACHE_FILE.expanduser().is_file():
            path = CLIP_CACHE_FILE.expanduser()
        else:
            from yw_ext.hub import get_weights  # lazy: only this source may reach the network

            path = Path(get_weights("clip"))
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(_missing_clip_message(f"CLIP weights not found: {path}"))
    path = path.resolve()
    key = (str(path), _signature(path), str(device))
    with _LOCK:
        enc = _LOADED.get(key)
        if enc is not None and enc.device == device:
            return enc
        enc = CLIPTextEncoder.from_hf(path) if path.is_dir() else CLIPTextEncoder.from_openai(path)
        enc.to(device)
        for k in [k for k in _LOADED if k[0] == key[0] and k[2] == key[2]]:  # stale versions of the same file
            del _LOADED[k]
        while len(_LOADED) >= _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = enc
        return enc
