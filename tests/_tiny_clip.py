# yw_ext, AGPL-3.0 license
"""Test helper: the tiny random CLIP in the `clip` package's model, saved as an OpenAI state dict, a TorchScript
archive and a Hugging Face folder.

The weights come from ``yw_ext.bench.tiny_clip`` (the one random-CLIP builder, open_clip; see its notes: width 64,
1 head, random biases and LayerNorm weights, float16-exact values) and are loaded into a ``clip.model.CLIP``, the
reference implementation. The Hugging Face copy is made with `transformers`, module by module (independently of
``yw_ext.text.clip``'s key map), so the files hold the same model in several formats. `clip` and `transformers` are
test-time dependencies only.

Examples:
    >>> from tests._tiny_clip import tiny_clip, save_openai, save_hf
    >>> model = tiny_clip()
    >>> save_openai("tiny.pt", model); save_hf("tiny-hf", model)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from yw_ext.bench.tiny_clip import CONTEXT, HEADS, IMAGE, LAYERS, PATCH, VOCAB, WIDTH, random_clip_state_dict


def import_clip():
    """Import the `clip` package (clip-anytorch), silencing its pkg_resources deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import clip

    return clip


def tiny_clip(embed_dim: int = 512, seed: int = 0):
    """The tiny random CLIP (ViT, width 64, 2 layers) of ``yw_ext.bench.tiny_clip`` as a ``clip.model.CLIP``.

    Args:
        embed_dim: joint embedding width (512 like ViT-B, 768 like ViT-L).
        seed: random seed.

    Returns:
        (clip.model.CLIP): the model, float32 (float16-exact values), CPU, eval mode.
    """
    clip = import_clip()
    model = clip.model.CLIP(
        embed_dim=embed_dim, image_resolution=IMAGE, vision_layers=LAYERS, vision_width=WIDTH,
        vision_patch_size=PATCH, context_length=CONTEXT, vocab_size=VOCAB, transformer_width=WIDTH,
        transformer_heads=HEADS, transformer_layers=LAYERS,
    ).float()
    model.load_state_dict(random_clip_state_dict("tiny", seed, vision=True, embed_dim=embed_dim), strict=True)
    return model.eval()


def save_openai(path, model=None, embed_dim: int = 512) -> Path:
    """Save ``model.state_dict()`` with ``torch.save`` (what ``clip.load(path, jit=False)`` reads).

    Args:
        path: output file.
        model: a ``clip.model.CLIP``; default ``tiny_clip(embed_dim)``.
        embed_dim: embedding width of the default model.
    """
    path = Path(path)
    model = tiny_clip(embed_dim) if model is None else model
    torch.save(model.state_dict(), path)
    return path


def _hf_config(model, text_only: bool = False):
    """transformers config with the sizes of ``model`` (OpenAI settings: quick_gelu, eps 1e-5)."""
    from transformers import CLIPConfig, CLIPTextConfig

    embed_dim = model.text_projection.shape[1]
    text = dict(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, max_position_embeddings=CONTEXT, hidden_act="quick_gelu", layer_norm_eps=1e-5,
        projection_dim=embed_dim, bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )
    if text_only:
        return CLIPTextConfig(**text)
    vision = dict(
        hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        image_size=IMAGE, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=embed_dim,
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _copy_block(hf_layer, oa_block) -> None:
    """Copy one OpenAI ``ResidualAttentionBlock`` into a Hugging Face ``CLIPEncoderLayer``."""
    attn = oa_block.attn  # nn.MultiheadAttention: in_proj stacks q, k, v
    q, k, v = attn.in_proj_weight.chunk(3, dim=0)
    qb, kb, vb = attn.in_proj_bias.chunk(3, dim=0)
    for proj, w, b in ((hf_layer.self_attn.q_proj, q, qb), (hf_layer.self_attn.k_proj, k, kb),
                       (hf_layer.self_attn.v_proj, v, vb)):
        proj.weight.copy_(w)
        proj.bias.copy_(b)
    for dst, src in ((hf_layer.self_attn.out_proj, attn.out_proj), (hf_layer.layer_norm1, oa_block.ln_1),
                     (hf_layer.layer_norm2, oa_block.ln_2), (hf_layer.mlp.fc1, oa_block.mlp.c_fc),
                     (hf_layer.mlp.fc2, oa_block.mlp.c_proj)):
        dst.weight.copy_(src.weight)
        dst.bias.copy_(src.bias)


def _copy_text(hf_text_model, model) -> None:
    """Copy the OpenAI text tower into a Hugging Face ``CLIPTextTransformer``."""
    hf_text_model.embeddings.token_embedding.weight.copy_(model.token_embedding.weight)
    hf_text_model.embeddings.position_embedding.weight.copy_(model.positional_embedding)
    for hf_layer, block in zip(hf_text_model.encoder.layers, model.transformer.resblocks):
        _copy_block(hf_layer, block)
    hf_text_model.final_layer_norm.weight.copy_(model.ln_final.weight)
    hf_text_model.final_layer_norm.bias.copy_(model.ln_final.bias)


def to_hf(model, text_only: bool = False):
    """A transformers ``CLIPModel`` (or ``CLIPTextModelWithProjection``) holding the weights of ``model``."""
    from transformers import CLIPModel, CLIPTextModelWithProjection

    cfg = _hf_config(model, text_only)
    hf = (CLIPTextModelWithProjection if text_only else CLIPModel)(cfg).eval()
    with torch.no_grad():
        _copy_text(hf.text_model, model)
        hf.text_projection.weight.copy_(model.text_projection.t())  # Linear weight is (D, W)
        if not text_only:
            hf.logit_scale.copy_(model.logit_scale)
            vis, hv = model.visual, hf.vision_model
            hv.embeddings.class_embedding.copy_(vis.class_embedding)
            hv.embeddings.patch_embedding.weight.copy_(vis.conv1.weight)
            hv.embeddings.position_embedding.weight.copy_(vis.positional_embedding)
            hv.pre_layrnorm.weight.copy_(vis.ln_pre.weight)
            hv.pre_layrnorm.bias.copy_(vis.ln_pre.bias)
            for hf_layer, block in zip(hv.encoder.layers, vis.transformer.resblocks):
                _copy_block(hf_layer, block)
            hv.post_layernorm.weight.copy_(vis.ln_post.weight)
            hv.post_layernorm.bias.copy_(vis.ln_post.bias)
            hf.visual_projection.weight.copy_(vis.proj.t())
    return hf


def save_hf(folder, model=None, text_only: bool = False, embed_dim: int = 512) -> Path:
    """Save ``model`` as a Hugging Face folder via ``save_pretrained`` (config.json + model.safetensors).

    Args:
        folder: output folder.
        model: a ``clip.model.CLIP``; default ``tiny_clip(embed_dim)``.
        text_only: write a ``CLIPTextModelWithProjection`` folder (text tower and projection only).
        embed_dim: embedding width of the default model.
    """
    folder = Path(folder)
    model = tiny_clip(embed_dim) if model is None else model
    to_hf(model, text_only).save_pretrained(str(folder))
    return folder


def hf_text_features(hf, tokens: torch.Tensor) -> torch.Tensor:
    """Normalised text features from transformers' own forward (``get_text_features`` / text model output)."""
    with torch.no_grad():
        if hasattr(hf, "get_text_features"):
            out = hf.get_text_features(input_ids=tokens)
        else:
            out = hf(input_ids=tokens).text_embeds
    if not isinstance(out, torch.Tensor):  # transformers 5 returns a model output with the projected pooler_output
        out = out.pooler_output
    return out / out.norm(dim=-1, keepdim=True)


def save_openai_torchscript(path, model=None, embed_dim: int = 512) -> Path:
    """Save ``model`` as a TorchScript archive (traced), the form of OpenAI's own ``ViT-B-32.pt``."""
    clip = import_clip()
    path = Path(path)
    model = tiny_clip(embed_dim) if model is None else model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = (torch.zeros(1, 3, IMAGE, IMAGE), clip.tokenize(["a"]))
        torch.jit.trace(model, example, check_trace=False).save(str(path))
    return path
