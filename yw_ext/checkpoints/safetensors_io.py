# yw_ext, AGPL-3.0 license
"""yw_ext's safe checkpoint format: ``.safetensors`` tensors plus JSON metadata, nothing pickled.

``model.save("m.safetensors")`` / ``yw convert src.pth out.safetensors`` write (atomically) every tensor of the model
(float32, as the model holds them) and, as JSON strings in the file's metadata (safetensors metadata values are
strings):

- ``yw_ext``: the format marker and versions;
- ``architecture``: the resolved model YAML (the dict the network was built from);
- ``vocabulary``: names, prompts (synonyms), prompts per class, class sources, text / image encoder identities and
  prompt-tuning extras; its ``(K * G, D)`` embeddings are a tensor of the file (``__yw__/vocabulary/embeddings``);
- ``class_sources`` and ``encoders``: the same facts, readable at a glance;
- ``folded``: whether the vocabulary is folded into the weights (``reparameterize``), which layers, their chunking;
- ``model``: the rest (class names, ``txt_feats``, the embedded CLIP text tower, the image adapter, arguments).

``load_safetensors`` rebuilds the network from the architecture, restores vocabulary and folded layers, and copies
the tensors with a strict name / shape check: the model computes bitwise the same outputs. Reading runs no code.

Examples:
    >>> save_safetensors(model, "m.safetensors")  # doctest: +SKIP
    >>> model, ckpt = load_safetensors("m.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yw_ext.checkpoints.errors import CheckpointError, check_state_dict
from yw_ext.checkpoints.health import warn_non_finite
from yw_ext.core.io import atomic_path
from yw_ext.nn.model import YWDetectionModel
from yw_ext.vocab import Vocabulary

FORMAT = "yw_ext.safetensors"
FORMAT_VERSION = 1
EXTRA_PREFIX = "__yw__/"
"""Tensors that are not in the model's state dict (vocabulary, ``txt_feats``, text tower, ...) start with this."""


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able form of ``obj``; tensors and arrays go to ``tensors`` under ``__yw__/<key>`` and leave a reference."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        name = EXTRA_PREFIX + key
        t = obj.detach().cpu() if isinstance(obj, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(obj))
        tensors[name] = t.contiguous().clone()
        return {"__yw_tensor__": name, "numpy": isinstance(obj, np.ndarray)}
    if isinstance(obj, tuple):
        return {"__yw_tuple__": [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{key}/{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__yw_") for k in obj):
            return {k: _encode(v, f"{key}/{k}", tensors) for k, v in obj.items()}
        return {"__yw_items__": [[_encode(k, f"{key}/k{i}", tensors), _encode(v, f"{key}/{i}", tensors)]
                                 for i, (k, v) in enumerate(obj.items())]}
    raise TypeError(f"cannot store a {type(obj).__name__} at '{key}' in a .safetensors checkpoint (plain data and "
                    "tensors only).")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``_encode``."""
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__yw_tensor__" in obj:
        t = tensors[obj["__yw_tensor__"]]
        return t.numpy().copy() if obj.get("numpy") else t
    if "__yw_tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__yw_tuple__"])
    if "__yw_items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__yw_items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _plain_args(args: Any) -> dict[str, Any]:
    """The model's (Ultralytics) arguments that are plain JSON values."""
    if not isinstance(args, dict):
        return {}
    plain = (bool, int, float, str)
    return {k: v for k, v in args.items() if isinstance(k, str) and (v is None or isinstance(v, plain))}


def _folded_info(model: YWDetectionModel) -> dict[str, Any]:
    """Which layers are folded (``RepC2fAttn`` index -> chunk sizes, a ``RepWorldDetect`` head) and Conv-BN fusion."""
    from yw_ext.nn.rep import RepC2fAttn, RepWorldDetect

    layers = {str(i): [c.out_channels // m.attn.nh for c in m.attn.guide_convs]
              for i, m in enumerate(model.model) if isinstance(m, RepC2fAttn)}
    head = model.model[-1]
    rep_head = isinstance(head, RepWorldDetect)
    return {"folded": bool(getattr(model, "folded", False)), "rep_layers": layers, "rep_head": rep_head,
            "score_mode": getattr(head, "score_mode", None) if rep_head else None,
            "score_groups": getattr(head, "score_groups", None) if rep_head else None,
            "fused": bool(model.is_fused())}


def _metadata(model: YWDetectionModel, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The file's metadata (JSON strings); extra tensors are added to ``tensors``."""
    from yw_ext.seam import ULTRALYTICS_VERSION

    vocab = model.vocab.to_dict() if model.vocab is not None else None
    if vocab is not None:
        vocab["embeddings"] = _encode(vocab["embeddings"], "vocabulary/embeddings", tensors)
        vocab["tuning"] = _encode(vocab["tuning"], "vocabulary/tuning", tensors)
    rest = {
        "names": _encode(dict(model.names), "names", tensors),
        "txt_feats": _encode(model.txt_feats, "txt_feats", tensors),
        "text_encoder_state": _encode(getattr(model, "text_encoder_state", None), "text_tower", tensors),
        "image_adapter_state": _encode(getattr(model, "image_adapter_state", None), "image_adapter", tensors),
        "args": _plain_args(getattr(model, "args", None)),
        "channels": int(model.yaml.get("channels", 3)),
    }
    v = model.vocab
    meta = {
        "yw_ext": {"format": FORMAT, "version": FORMAT_VERSION, "ultralytics": ULTRALYTICS_VERSION},
        "architecture": _encode(model.yaml, "architecture", tensors),
        "vocabulary": vocab,
        "class_sources": list(v.sources) if v is not None else None,
        "encoders": {"text": v.text_encoder_id if v else None, "image": v.image_encoder_id if v else None},
        "folded": _folded_info(model),
        "model": rest,
    }
    return {"format": "pt", **{k: json.dumps(val) for k, val in meta.items()}}


def save_safetensors(model: YWDetectionModel, path: str | Path) -> Path:
    """Write ``model`` as a yw_ext ``.safetensors`` checkpoint, atomically (see the module docstring).

    Args:
        model: The model (unfolded or folded, with or without a vocabulary).
        path: The file to write (its folder is created).

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: ``model`` is not a ``YWDetectionModel``, or holds state that is not plain data and tensors.

    Examples:
        >>> save_safetensors(model, "m.safetensors")  # doctest: +SKIP
        PosixPath('m.safetensors')
    """
    from safetensors.torch import save_file

    if not isinstance(model, YWDetectionModel):
        raise TypeError(f"save_safetensors writes a yw_ext YWDetectionModel, got {type(model).__name__}.")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = _metadata(model, tensors)
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a yw_ext ``.safetensors`` file; clear errors for damaged or foreign files."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if "yw_ext" not in meta:
                raise CheckpointError(
                    f"'{path}' is a .safetensors file without yw_ext metadata (keys: {sorted(meta)[:8]}); yw_ext reads "
                    "the .safetensors checkpoints it writes (model.save('m.safetensors'), yw convert src.pth "
                    "out.safetensors), which carry the architecture and vocabulary. Load the original .pt / .pth.")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as e:  # SafetensorError, OSError, ... : the header or data do not fit the file
        raise CheckpointError(f"'{path}' is not a readable .safetensors checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    try:
        info = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    except json.JSONDecodeError as e:
        raise CheckpointError(f"'{path}': its yw_ext metadata is not valid JSON (corrupt file?): {e}") from e
    if info["yw_ext"].get("format") != FORMAT or int(info["yw_ext"].get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"'{path}': unsupported yw_ext checkpoint format {info['yw_ext']} (this yw_ext reads "
                              f"{FORMAT} version <= {FORMAT_VERSION}).")
    return info, tensors


def _refold(model: YWDetectionModel, folded: dict[str, Any]) -> None:
    """Turn the freshly built layers into the folded modules the file was saved with (weights come later)."""
    from yw_ext.nn.rep import RepC2fAttn, RepWorldDetect

    p, d = model.txt_feats.shape[-2], model.txt_feats.shape[-1]
    zeros = torch.zeros(p, d)
    for idx, sizes in folded.get("rep_layers", {}).items():
        rep = RepC2fAttn.from_c2fattn(model.model[int(idx)], zeros, chunk=max(sizes))
        attn = rep.attn
        if [c.out_channels // attn.nh for c in attn.guide_convs] != sizes:  # folded with another chunking
            conv = attn.guide_convs[0]
            attn.guide_convs = torch.nn.ModuleList(
                torch.nn.Conv2d(conv.in_channels, attn.nh * s, 1, groups=attn.nh, bias=False) for s in sizes)
            attn.n_chunks, attn.chunk = len(sizes), max(sizes)
        model.model[int(idx)] = rep
    if folded.get("rep_head"):
        head = RepWorldDetect.from_world_detect(model.model[-1], zeros)
        head.score_mode = folded.get("score_mode") or head.score_mode
        head.score_groups = folded.get("score_groups") or head.score_groups
        model.model[-1] = head
    model.folded = bool(folded.get("folded"))


def _build(info: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> YWDetectionModel:
    """The network of a yw_ext ``.safetensors`` file with its vocabulary, folded layers and tensors."""
    rest = _decode(info["model"], tensors)
    model = YWDetectionModel(_decode(info["architecture"], tensors), ch=rest.get("channels", 3), verbose=False)
    vocab = _decode(info.get("vocabulary"), tensors)
    if vocab is not None:
        model.install_vocabulary(Vocabulary.from_dict(vocab))
    model.txt_feats = rest["txt_feats"]  # exactly the saved (1, P, D) tensor
    model.names = {int(k): str(v) for k, v in rest["names"].items()}
    _refold(model, info.get("folded") or {})
    if (info.get("folded") or {}).get("fused"):
        model.fuse(verbose=False)
    sd = {k: v for k, v in tensors.items() if not k.startswith(EXTRA_PREFIX)}
    check_state_dict(model.state_dict(), sd, f"'{path}'")
    model.load_state_dict(sd, strict=True)
    model.text_encoder_state = rest.get("text_encoder_state")
    model.image_adapter_state = rest.get("image_adapter_state")
    return model


def load_safetensors(path: str | Path) -> tuple[YWDetectionModel, dict[str, Any]]:
    """Load a yw_ext ``.safetensors`` checkpoint (``yw_ext.YOLOWorld("m.safetensors")`` goes through here).

    Args:
        path: The file.

    Returns:
        (model in eval mode, a checkpoint dict describing the file).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated or corrupt, no yw_ext metadata (not written by yw_ext), or tensors that do not
            match the architecture.

    Examples:
        >>> model, ckpt = load_safetensors("m.safetensors")  # doctest: +SKIP
        >>> model.names  # doctest: +SKIP
        {0: 'person', 1: 'bus'}
    """
    from yw_ext.seam import DEFAULT_CFG_DICT

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    info, tensors = _read(path)
    try:
        model = _build(info, tensors, path)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"'{path}': its yw_ext metadata does not describe a loadable model (corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    model.args = {**DEFAULT_CFG_DICT, **(info["model"].get("args") or {}), "model": str(path), "task": "detect"}
    model.task = "detect"
    model.pt_path = str(path)
    warn_non_finite(model, f"'{path}'")
    return model.eval(), {"train_args": {}, "yw_loaded_from": {"source": str(path), "format": FORMAT}}


__all__ = ["FORMAT", "load_safetensors", "save_safetensors"]
