# yw_ext, AGPL-3.0 license
"""Multilingual-CLIP (M-CLIP) text encoders from a local folder: transformer + mean pooling + linear projection.

M-CLIP students (e.g. ``M-CLIP/XLM-Roberta-Large-Vit-B-32``) were distilled to reproduce CLIP ViT-B/32's text
embeddings in many languages, so they plug into a 512-d detector without retraining. Folder layout, as the
``multilingual_clip`` package saves it:

- ``config.json`` with ``"model_type": "M-CLIP"``, ``transformerDimensions`` (W), ``numDims`` (D) and
  ``modelBase`` (the transformer's config: a Hub name such as ``xlm-roberta-large``);
- weights (``model.safetensors`` / ``pytorch_model.bin``): ``transformer.*`` and ``LinearTransformation.{weight,bias}``;
- the tokenizer files.

Offline, the transformer's own ``config.json`` is found, in order: ``modelBase`` as a folder (absolute, or relative
to the M-CLIP folder); a ``transformer_config`` object inside ``config.json``; the sub-folder ``base/``; the Hugging
Face cache (``local_files_only``). The encoder is mean pooling over the attention mask, the linear layer, and L2
normalisation (the detector compares unit vectors), as ``multilingual_clip.pt_multilingual_clip`` computes it.

Examples:
    >>> from yw_ext.text.mclip import load_mclip
    >>> enc = load_mclip("XLM-Roberta-Large-Vit-B-32")  # doctest: +SKIP
    >>> enc.encode(["一只狗"]).shape  # doctest: +SKIP
    torch.Size([1, 512])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from yw_ext.text.sentence import (Pool, PooledGraph, TransformerTextEncoder, load_tokenizer, load_transformer,
                                  max_length_of, read_json, read_tensors, tokenizer_files)

MODEL_TYPE = "M-CLIP"


def is_mclip_config(config: Any) -> bool:
    """Whether a parsed ``config.json`` describes an M-CLIP model.

    Examples:
        >>> is_mclip_config({"model_type": "M-CLIP"}), is_mclip_config({"model_type": "bert"})
        (True, False)
    """
    if not isinstance(config, dict):
        return False
    return str(config.get("model_type", "")).lower() == MODEL_TYPE.lower() or \
        "MultilingualCLIP" in (config.get("architectures") or [])


def _base_config(folder: Path, config: dict) -> tuple[Any, Path | None]:
    """The transformer's ``PretrainedConfig`` and the folder it came from (None when from ``config.json``)."""
    from transformers import AutoConfig

    base = str(config.get("modelBase") or "")
    for cand in ([Path(base).expanduser(), folder / base] if base else []) + [folder / "base"]:
        if (cand / "config.json").is_file():
            return AutoConfig.from_pretrained(str(cand), local_files_only=True), cand
    inline = config.get("transformer_config")
    if isinstance(inline, dict) and inline.get("model_type"):
        inline = dict(inline)
        return AutoConfig.for_model(inline.pop("model_type"), **inline), None
    if base:
        try:
            return AutoConfig.from_pretrained(base, local_files_only=True), None
        except (OSError, ValueError):
            pass
    raise FileNotFoundError(
        f"{folder}: the M-CLIP transformer's config ({base or 'modelBase not set'}) is not available offline. Put "
        f"its config.json in {folder / 'base'}, set modelBase in config.json to a local folder, or add a "
        "'transformer_config' object to config.json.")


def load_mclip(folder: str | os.PathLike) -> TransformerTextEncoder:
    """Read an M-CLIP-style folder into a ``TransformerTextEncoder`` (kind ``"m-clip"``).

    Raises:
        FileNotFoundError: no folder, weights or transformer config.
        ValueError: not an M-CLIP config, or tensors that do not match (named).

    Examples:
        >>> enc = load_mclip("XLM-Roberta-Large-Vit-B-32")  # doctest: +SKIP
        >>> enc.dim  # doctest: +SKIP
        512
    """
    folder = Path(folder).expanduser()
    config = read_json(folder / "config.json", "M-CLIP config")
    if not is_mclip_config(config):
        raise ValueError(f"{folder}/config.json is not an M-CLIP config (model_type {config.get('model_type')!r}).")
    base_cfg, base_dir = _base_config(folder, config)
    sd = read_tensors(folder, "M-CLIP model")
    tr = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
    lin = {k[len("LinearTransformation."):]: v for k, v in sd.items() if k.startswith("LinearTransformation.")}
    other = sorted(k for k in sd if not k.startswith(("transformer.", "LinearTransformation.")))
    if other or set(lin) != {"weight", "bias"}:
        raise ValueError(f"{folder}: M-CLIP tensors must be transformer.* and LinearTransformation.weight/bias; "
                         f"unexpected: {other[:10]}; LinearTransformation: {sorted(lin)}")
    d_out, width = lin["weight"].shape
    want = (config.get("numDims", d_out), config.get("transformerDimensions", width))
    if (d_out, width) != tuple(int(v) for v in want) or width != base_cfg.hidden_size:
        raise ValueError(f"{folder}: LinearTransformation is {d_out}x{width}, config says numDims={want[0]}, "
                         f"transformerDimensions={want[1]}, transformer hidden_size={base_cfg.hidden_size}.")
    transformer = load_transformer(folder, base_cfg, tr)
    linear = nn.Linear(width, d_out)
    linear.load_state_dict(lin)
    tok_dir = folder if tokenizer_files(folder) or base_dir is None else base_dir
    tokenizer = load_tokenizer(tok_dir)
    graph = PooledGraph(transformer, Pool(("mean",)), nn.Sequential(linear))
    return TransformerTextEncoder(graph, tokenizer, max_length_of(tokenizer, base_cfg), False, str(folder), "m-clip",
                                  tokenizer_files(tok_dir))


__all__ = ["MODEL_TYPE", "is_mclip_config", "load_mclip"]
