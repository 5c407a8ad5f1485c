"""CLIP text encoder -> ONNX: tokens ``(N, 77)`` int64 -> L2-normalised embeddings ``(N, D)`` float32.

With it (and ``yw_ext.runtime.Tokenizer``) a deployment changes the vocabulary of a ``dynamic_vocab=True`` detector
without PyTorch. The graph is ``CLIPTextEncoder.encode_tokens`` over the full context: ``encode_tokens`` stops after
the last end-of-text token of the batch, which is data-dependent; with CLIP's causal mask later positions cannot
change the pooled (end-of-text) position, so the full-length graph gives the same embeddings (tested within 1e-4).

The export also writes the BPE merges file (``bpe_simple_vocab_16e6.txt.gz``) next to the ONNX, so that
``yw_ext.runtime.TextEncoder(path)`` finds its tokenizer there. Metadata: ``yw_ext`` version, ``kind``
(``"clip_text"``), ``identity`` (the encoder's content hash, the same as the embedding cache uses), ``embed_dim``,
``context_length``, ``tokenizer`` (file name), ``source``.

Examples:
    >>> from yw_ext.export.text import export_text_encoder
    >>> export_text_encoder("ViT-B-32.pt", "clip_text.onnx")  # doctest: +SKIP
    'clip_text.onnx'

Sentence-Transformers and M-CLIP encoders (``yw_ext.text.sentence``, ``yw_ext.text.mclip``) export the same way
(``export_transformer_text``): ``input_ids`` and ``attention_mask`` in, the embeddings out, and the tokenizer as
``<name>.tokenizer.json`` for the ``tokenizers`` library (metadata ``kind="st_text"``).

CLI: ``yw export model=clip clip=/path/ViT-B-32.pt out=clip_text.onnx`` (``clip=`` defaults to ``$YW_CLIP``);
``yw export model=text encoder=/path/st-folder out=st_text.onnx``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

TOKENS_INPUT, EMBED_OUTPUT = "tokens", "embeddings"


class TextGraph(nn.Module):
    """The text tower of an open_clip CLIP as a traceable module (full-length context, argmax pooling).

    Args:
        encoder: A ``yw_ext.text.CLIPTextEncoder``.

    Examples:
        >>> g = TextGraph(enc)  # doctest: +SKIP
        >>> g(enc.tokenize(["a dog"])).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(self, encoder):
        """Share the encoder's modules (no copy)."""
        super().__init__()
        m = encoder.model
        self.token_embedding = m.token_embedding
        self.positional_embedding = m.positional_embedding
        self.transformer = m.transformer
        self.ln_final = m.ln_final
        self.text_projection = m.text_projection
        self.register_buffer("attn_mask", m.attn_mask.detach().clone(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` int64 tokens (``L`` = context length) -> ``(N, D)`` unit-norm float32 embeddings."""
        x = self.token_embedding(tokens) + self.positional_embedding  # (N, L, W)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        eot = tokens.argmax(dim=-1)  # (N,) the end-of-text token has the largest id
        x = x[torch.arange(x.shape[0], device=x.device), eot]  # (N, W)
        proj = self.text_projection
        x = proj(x) if isinstance(proj, nn.Module) else x @ proj  # (N, D)
        return F.normalize(x, dim=-1)


def _bpe_file() -> Path:
    """open_clip's BPE merges file (located without importing open_clip's tokenizer)."""
    from yw_ext.runtime.tokenizer import find_bpe

    return find_bpe()


def export_text_encoder(
    encoder: Any = None, out: str | Path | None = None, opset: int = 17, simplify: bool = True, batch: int = 2
) -> str:
    """Export a text encoder to ONNX (atomically) with its tokenizer file next to it.

    CLIP (OpenAI file, Hugging Face folder) gives ``tokens (N, 77) -> embeddings`` and the BPE merges file;
    Sentence-Transformers and M-CLIP folders (and their ``yw align-text`` projections) give
    ``input_ids, attention_mask (N, L) -> embeddings`` (transformer, pooling, dense, projection and normalisation in
    one graph) and ``<name>.tokenizer.json`` for the ``tokenizers`` library (see ``export_transformer_text``).

    Args:
        encoder: An encoder, or a path for ``yw_ext.text.encoders.load_text_encoder`` (file, folder, ``"clip"``);
            None: ``$YW_TEXT_ENCODER``, else ``$YW_CLIP``.
        out: Output path (default ``clip_text.onnx`` / ``st_text.onnx`` in the current folder).
        opset: ONNX opset (>= 17).
        simplify: Run onnxslim.
        batch: Example batch for tracing (the batch dimension is dynamic).

    Returns:
        The ONNX path.

    Raises:
        FileNotFoundError: no encoder weights (see ``yw_ext.text.load_clip``).
        ValueError: an encoder that cannot be exported (e.g. a projection on a CLIP), a bad opset.

    Examples:
        >>> export_text_encoder("ViT-B-32.pt", "clip_text.onnx")  # doctest: +SKIP
        >>> export_text_encoder("clip-ViT-B-32-multilingual-v1", "st_text.onnx")  # doctest: +SKIP
    """
    from yw_ext.text import CLIPTextEncoder
    from yw_ext.text.vocabulary import resolve_text_encoder

    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}.")
    enc = resolve_text_encoder(encoder)
    if isinstance(enc, CLIPTextEncoder):
        return _export_clip(enc, Path(out or "clip_text.onnx"), opset, simplify, batch)
    if hasattr(enc, "tokenizer_json") and hasattr(enc, "graph"):
        return export_transformer_text(enc, Path(out or "st_text.onnx"), opset, simplify)
    raise ValueError(f"text encoder {getattr(enc, 'source', enc)!r} ({type(enc).__name__}) cannot be exported to "
                     "ONNX: supported are CLIP, Sentence-Transformers and M-CLIP encoders (and their projections).")


def _export_clip(enc: Any, dst: Path, opset: int, simplify: bool, batch: int) -> str:
    """The CLIP text tower to ONNX, with the BPE merges file next to it."""
    import onnx

    from yw_ext import __version__
    from yw_ext.core.io import atomic_write
    from yw_ext.export import Staging
    from yw_ext.export.onnx_io import add_metadata, cap_ir_version, save_onnx, slim

    bpe = _bpe_file()
    graph = TextGraph(enc).eval().float().cpu()
    tokens = enc.tokenize(["a photo of a dog", "bus"] * max(1, batch // 2))[:batch].cpu()  # (N, L)
    with Staging(dst) as tmp:  # torch.onnx writes to a path: trace there, then write dst in one go
        f = tmp / dst.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*aten::index.*")  # the gather index (argmax) is >= 0
            torch.onnx.export(graph, (tokens,), str(f), opset_version=opset, input_names=[TOKENS_INPUT],
                              output_names=[EMBED_OUTPUT], dynamic_axes={TOKENS_INPUT: {0: "batch"},
                                                                         EMBED_OUTPUT: {0: "batch"}}, dynamo=False)
        proto = onnx.load(str(f))
    if simplify:
        proto = slim(proto, "text encoder:")
    add_metadata(proto, {
        "yw_ext": __version__,
        "kind": "clip_text",
        "identity": enc.identity,
        "embed_dim": enc.dim,
        "context_length": enc.context_length,
        "tokenizer": bpe.name,
        "source": str(enc.source),
    })
    cap_ir_version(proto)
    atomic_write(dst.parent / bpe.name, lambda fh: fh.write(bpe.read_bytes()))  # the tokenizer's file, next to it
    save_onnx(proto, dst)
    return str(dst)


def _transformer_graph(enc: Any) -> nn.Module:
    """The traced module of a transformer encoder: its ``PooledGraph``, then its projection if it has one."""
    base = getattr(enc, "base", None)
    proj = getattr(enc, "projection", None)
    if base is not None and proj is not None:
        return _Projected(base.graph, proj)
    return enc.graph


class _Projected(nn.Module):
    """``PooledGraph`` followed by a ``yw align-text`` projection (both already normalise)."""

    def __init__(self, graph: nn.Module, projection: nn.Module):
        super().__init__()
        self.graph, self.projection = graph, projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.graph(input_ids, attention_mask))  # (N, D)


def export_transformer_text(enc: Any, dst: Path, opset: int = 17, simplify: bool = True) -> str:
    """A Sentence-Transformers / M-CLIP encoder to ONNX, and ``<stem>.tokenizer.json`` next to it.

    Graph: ``input_ids``, ``attention_mask`` ``(N, L)`` int64 (both axes dynamic) -> ``embeddings`` ``(N, D)``
    float32, L2-normalised. Metadata: ``kind`` (``"st_text"``), ``identity``, ``embed_dim``, ``max_length``,
    ``lowercase``, ``pad_id``, ``tokenizer`` (file name), ``encoder_kind``, ``source``. The runtime
    (``yw_ext.runtime.TextEncoder``) then needs ``onnxruntime`` and the ``tokenizers`` library, not torch.

    Examples:
        >>> export_transformer_text(load_text_encoder("st-folder"), Path("st_text.onnx"))  # doctest: +SKIP
        'st_text.onnx'
    """
    import onnx

    from yw_ext import __version__
    from yw_ext.core.io import atomic_write
    from yw_ext.export import Staging
    from yw_ext.export.onnx_io import add_metadata, cap_ir_version, save_onnx, slim

    graph = _transformer_graph(enc).eval().float().cpu()
    ex = enc.tokenize(["a photo of a dog", "bus"])  # (2, L)
    tok_name = f"{dst.stem}.tokenizer.json"
    names = ["input_ids", "attention_mask"]
    axes = {n: {0: "batch", 1: "length"} for n in names} | {EMBED_OUTPUT: {0: "batch"}}
    with Staging(dst) as tmp:
        f = tmp / dst.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings of transformers' mask helpers (shape-only branches)
            torch.onnx.export(graph, (ex["input_ids"], ex["attention_mask"]), str(f), opset_version=opset,
                              input_names=names, output_names=[EMBED_OUTPUT], dynamic_axes=axes, dynamo=False)
        proto = onnx.load(str(f))
    if simplify:
        proto = slim(proto, "text encoder:")
    add_metadata(proto, {"yw_ext": __version__, "kind": "st_text", "identity": enc.identity, "embed_dim": enc.dim,
                         **enc.export_info(), "tokenizer": tok_name, "encoder_kind": getattr(enc, "kind", ""),
                         "source": str(enc.source)})
    cap_ir_version(proto)
    atomic_write(dst.parent / tok_name, lambda fh: fh.write(enc.tokenizer_json()), mode="w")
    save_onnx(proto, dst)
    return str(dst)


__all__ = ["TextGraph", "export_text_encoder", "export_transformer_text", "TOKENS_INPUT", "EMBED_OUTPUT"]
