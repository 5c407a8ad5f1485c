# yw_ext, AGPL-3.0 license
"""``yw convert src.pth out.pt|out.safetensors [names=...] [text=False] [text_heads=N]``: official -> yw_ext file.

``.pt`` is Ultralytics' pickled format; ``.safetensors`` is yw_ext's safe format (tensors + JSON metadata, nothing
pickled: ``yw_ext.checkpoints.safetensors_io``), recommended for sharing.

Examples:
    >>> convert_cli({"src": "yolo_world_v2_s.pth", "out": "s.pt", "names": "person,bus"})  # doctest: +SKIP
    PosixPath('s.pt')
    >>> convert_cli({"src": "yolo_world_v2_s.pth", "out": "s.safetensors"})  # doctest: +SKIP
    PosixPath('s.safetensors')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yw_ext.checkpoints.official import load_official
from yw_ext.checkpoints.safetensors_io import save_safetensors
from yw_ext.checkpoints.ultralytics_pt import save_checkpoint

SOURCE_KEYS = ("src", "source", "model")
OUTPUT_KEYS = ("out", "output", "dst")
KNOWN_ARGS = frozenset({*SOURCE_KEYS, *OUTPUT_KEYS, "names", "text", "text_heads"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
OUTPUT_SUFFIXES = (".pt", ".safetensors")


def _first(args: dict[str, Any], keys: tuple[str, ...]) -> Any:
    """The value of the first of ``keys`` that ``args`` sets (not None), else None."""
    return next((args[k] for k in keys if args.get(k) is not None), None)


def _paths(args: dict[str, Any]) -> tuple[Path, Path]:
    """(source, output) paths: the output defaults to the source with a ``.pt`` suffix and must not overwrite it."""
    src = _first(args, SOURCE_KEYS)
    if src is None:
        raise ValueError("yw convert: give the official checkpoint, e.g. yw convert src=x.pth out=x.pt.")
    src = Path(str(src)).expanduser()
    out = _first(args, OUTPUT_KEYS)
    out = Path(str(out)).expanduser() if out is not None else src.with_suffix(".pt")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ValueError(f"yw convert: the output must be a .pt or .safetensors file, got '{out}'.")
    if out.resolve() == src.resolve():
        raise ValueError(f"yw convert: the output '{out}' would overwrite the source.")
    return src, out


def convert_cli(args: dict[str, Any]) -> Path:
    """``yw convert src.pth out.pt [names=...] [text=False]``: convert an official checkpoint to a yw_ext file.

    The output is written to a temporary file in the destination folder and moved into place only when complete,
    so a failure never leaves a file (or a half-written one) at ``out``. The ``.pt`` (Ultralytics format) or
    ``.safetensors`` (yw_ext's safe format) loads with ``yw_ext.YOLOWorld(out)`` and keeps the vocabulary and (unless
    ``text=False``) the CLIP text tower.

    Args:
        args: ``src`` (also ``source`` / ``model``): the official ``.pth``; ``out`` (also ``output`` / ``dst``):
            the ``.pt`` or ``.safetensors`` to write (default: ``src`` with a ``.pt`` suffix); ``names``: vocabulary
            as a comma list or a ``.txt`` / ``.json`` file (default: the checkpoint's classes, else COCO's 80);
            ``text``: keep the text tower (default True); ``text_heads``: attention heads of the text tower (default
            ``width // 64``).

    Returns:
        The written path.

    Raises:
        ValueError: unknown or missing arguments; CheckpointError (a ValueError) for unconvertible checkpoints.
        FileNotFoundError: no such source file.

    Examples:
        >>> convert_cli({"src": "yolo_world_v2_s.pth", "out": "s.pt", "names": "person,bus"})  # doctest: +SKIP
        PosixPath('s.pt')
    """
    args = dict(args)
    extra = sorted(set(args) - KNOWN_ARGS)
    if extra:
        raise ValueError(f"yw convert: unknown arguments {extra}; use src=... out=... [names=...] [text=False].")
    src, out = _paths(args)
    keep_text = args.get("text", True)
    if isinstance(keep_text, str):
        keep_text = keep_text.strip().lower() not in FALSE_WORDS
    heads = args.get("text_heads")
    text_config = {"num_attention_heads": int(heads)} if heads is not None else None

    model, ckpt = load_official(src, names=args.get("names"), text_config=text_config, keep_text=bool(keep_text))
    if out.suffix.lower() == ".safetensors":
        save_safetensors(model, out)
    else:
        save_checkpoint(model, out, ckpt)
    return out


__all__ = ["convert_cli"]
