# yw_ext, AGPL-3.0 license
"""The text-encoder interface, and the one place where a path becomes a text encoder.

Every text encoder (CLIP, Sentence-Transformers, M-CLIP, an encoder with a learned projection) has:

- ``encode(texts, batch=256) -> (N, D)`` float32 torch tensor, rows L2-normalised;
- ``dim`` (D), ``identity`` (a content hash: the embedding cache keys entries by it, so two different encoders
  never share entries), ``source`` (where it was read from, for messages) and ``device``.

Formats are found from the files (``detect_format``), in the registry ``ENCODER_FORMATS`` (name -> detector and
``"module:function"`` loader, imported on use; ``register_format`` adds one):

============================  =====================================================  ==============================
format                        what is on disk                                        loader
============================  =====================================================  ==============================
``openai-clip``               a file: OpenAI ``ViT-B-32.pt`` or a state dict         ``text.clip.load_clip``
``hf-clip``                   folder, ``config.json`` model_type clip / clip_text    ``text.clip.load_clip``
``sentence-transformers``     folder with ``modules.json``                           ``text.sentence``
``m-clip``                    folder, ``config.json`` model_type ``M-CLIP``          ``text.mclip``
``projection``                ``.npz`` written by ``yw align-text``                  ``text.align``
============================  =====================================================  ==============================

Examples:
    >>> from yw_ext.text.encoders import load_text_encoder, detect_format
    >>> detect_format("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
    'sentence-transformers'
    >>> enc = load_text_encoder("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
    >>> enc.encode(["人", "公共汽车"]).shape  # doctest: +SKIP
    torch.Size([2, 512])
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

ENV_TEXT_ENCODER = "YW_TEXT_ENCODER"


@runtime_checkable
class TextEncoder(Protocol):
    """What a text encoder provides (structural: CLIP and the other encoders need no common base class).

    Examples:
        >>> isinstance(load_text_encoder("ViT-B-32.pt"), TextEncoder)  # doctest: +SKIP
        True
    """

    dim: int
    identity: str
    source: str

    def encode(self, texts: Any, batch: int = 256) -> Any:
        """``(N, dim)`` float32 L2-normalised embeddings of ``texts`` (a torch tensor on the encoder's device)."""


def is_encoder(obj: Any) -> bool:
    """Whether ``obj`` is an encoder object (has ``encode`` and is not a path: ``str.encode`` does not count).

    Examples:
        >>> is_encoder("ViT-B-32.pt")
        False
    """
    return not isinstance(obj, (str, bytes, os.PathLike)) and callable(getattr(obj, "encode", None))


def check_texts(texts: Any, source: str = "text encoder") -> list[str]:
    """``texts`` as a list of non-empty strings; ValueError naming the first bad item.

    Examples:
        >>> check_texts("a dog")
        ['a dog']
        >>> check_texts(["a", " "])
        Traceback (most recent call last):
        ...
        ValueError: text encoder: text 1 is empty (' '); every text needs at least one non-blank character.
    """
    if isinstance(texts, str):
        texts = [texts]
    try:
        texts = list(texts)
    except TypeError:
        raise ValueError(f"{source}: texts must be a string or a list of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{source}: texts must be strings; text {i} is {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"{source}: text {i} is empty ({t!r}); every text needs at least one non-blank character.")
    return texts


# ----------------------------------------------------------------------------------------------------------------------
# Format registry
# ----------------------------------------------------------------------------------------------------------------------
def _config(path: Path) -> dict:
    """``path/config.json`` parsed, or {} (missing or unreadable)."""
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_hf_clip(path: Path) -> bool:
    cfg = _config(path)
    return path.is_dir() and (cfg.get("model_type") in ("clip", "clip_text_model")
                              or any(a.startswith("CLIP") for a in cfg.get("architectures") or []))


def _is_mclip(path: Path) -> bool:
    cfg = _config(path)
    return path.is_dir() and (str(cfg.get("model_type", "")).lower() == "m-clip"
                              or "MultilingualCLIP" in (cfg.get("architectures") or []))


def _is_projection(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".npz"


@dataclass(frozen=True)
class EncoderFormat:
    """One registry entry: ``detect(path) -> bool`` and ``loader`` (``"module:function"``, called with the path).

    Examples:
        >>> ENCODER_FORMATS["m-clip"].loader
        'yw_ext.text.mclip:load_mclip'
    """

    name: str
    detect: Callable[[Path], bool]
    loader: str
    description: str


ENCODER_FORMATS: dict[str, EncoderFormat] = {}


def register_format(name: str, detect: Callable[[Path], bool], loader: str, description: str) -> None:
    """Add (or replace) a text-encoder format; formats are tried in registration order.

    Examples:
        >>> is_mine = lambda p: (p / "my.json").is_file()
        >>> register_format("my-enc", is_mine, "my_pkg.enc:load", "my encoder")  # doctest: +SKIP
    """
    ENCODER_FORMATS[name] = EncoderFormat(name, detect, loader, description)


register_format("projection", _is_projection, "yw_ext.text.align:load_projected_encoder",
                "a projection .npz written by `yw align-text` (student encoder + learned map)")
register_format("sentence-transformers", lambda p: p.is_dir() and (p / "modules.json").is_file(),
                "yw_ext.text.sentence:load_sentence_transformer", "Sentence-Transformers folder (modules.json)")
register_format("m-clip", _is_mclip, "yw_ext.text.mclip:load_mclip",
                "Multilingual-CLIP folder (config.json with model_type 'M-CLIP')")
register_format("hf-clip", _is_hf_clip, "yw_ext.text.clip:load_clip",
                "Hugging Face CLIP folder (config.json with model_type 'clip' or 'clip_text_model')")
register_format("openai-clip", lambda p: p.is_file() and p.suffix.lower() != ".npz", "yw_ext.text.clip:load_clip",
                "OpenAI CLIP file (ViT-B-32.pt TorchScript archive or torch.save state dict)")


def detect_format(path: str | os.PathLike) -> str:
    """The registry name of the encoder at ``path``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a folder (or file) that is none of the registered formats; the message lists them.

    Examples:
        >>> detect_format("ViT-B-32.pt")  # doctest: +SKIP
        'openai-clip'
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"text encoder not found: {p}")
    for fmt in ENCODER_FORMATS.values():
        if fmt.detect(p):
            return fmt.name
    found = sorted(x.name for x in p.iterdir())[:12] if p.is_dir() else p.name
    kinds = "; ".join(f"{f.name}: {f.description}" for f in ENCODER_FORMATS.values())
    raise ValueError(f"{p} is not a text encoder of a known format (found {found}). Known formats: {kinds}.")


# ----------------------------------------------------------------------------------------------------------------------
# Loading, with an in-process cache
# ----------------------------------------------------------------------------------------------------------------------
_LOADED: dict[tuple, Any] = {}
_LOADED_MAX = 4
_LOCK = threading.Lock()


def _signature(path: Path) -> tuple:
    """(name, mtime, size) of the file, or of every file under the folder (two levels), to notice changes."""
    files = [path] if path.is_file() else sorted(p for p in list(path.glob("*")) + list(path.glob("*/*"))
                                                  if p.is_file())
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)


def _call_loader(fmt: EncoderFormat, path: Path) -> Any:
    module, _, func = fmt.loader.partition(":")
    return getattr(importlib.import_module(module), func)(path)


def load_text_encoder(source: Any, device: Any = "cpu") -> Any:
    """The text encoder at ``source`` (any registered format), loaded once per process per file version.

    Args:
        source: An encoder object (returned as is), a path (file or folder), or ``"clip"`` / ``"ViT-B/32"``
            (``yw_ext.text.load_clip``'s names).
        device: torch device.

    Raises:
        FileNotFoundError: no such path.
        ValueError: a path of no known format (see ``detect_format``), or a bad model inside it.

    Examples:
        >>> enc = load_text_encoder("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
        >>> enc is load_text_encoder("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
        True
    """
    if is_encoder(source):
        return source
    if source is None:
        raise ValueError("no text encoder given (a path or an encoder object is needed).")
    from yw_ext.text.clip import HUB_NAMES, load_clip

    if isinstance(source, str) and source in HUB_NAMES:
        return load_clip(source, device=device)
    path = Path(source).expanduser()
    fmt = ENCODER_FORMATS[detect_format(path)]
    if fmt.loader == "yw_ext.text.clip:load_clip":
        return load_clip(path, device=device)  # load_clip keeps its own cache
    if fmt.name == "projection":  # cheap; its student (a folder) is cached, and re-checked against the file each time
        enc = _call_loader(fmt, path)
        return enc.to(device) if str(device) != "cpu" else enc
    path = path.resolve()
    key = (str(path), _signature(path), str(device))
    with _LOCK:
        if key in _LOADED:
            return _LOADED[key]
    enc = _call_loader(fmt, path)
    if str(device) != "cpu":
        enc.to(device)
    with _LOCK:
        for k in [k for k in _LOADED if k[0] == key[0] and k[2] == key[2]]:  # stale versions of the same path
            del _LOADED[k]
        while len(_LOADED) >= _LOADED_MAX:
            del _LOADED[next(iter(_LOADED))]
        _LOADED[key] = enc
    return enc


def describe(encoder: Any) -> str:
    """One line naming an encoder for messages: its kind, width and source.

    Examples:
        >>> describe(enc)  # doctest: +SKIP
        'sentence-transformers encoder (512-d) at /models/st'
    """
    kind = getattr(encoder, "kind", None) or type(encoder).__name__
    return f"{kind} encoder ({getattr(encoder, 'dim', '?')}-d) at {getattr(encoder, 'source', '?')}"


def formats() -> Sequence[str]:
    """Registered format names, in detection order.

    Examples:
        >>> "sentence-transformers" in formats()
        True
    """
    return tuple(ENCODER_FORMATS)


__all__ = ["ENCODER_FORMATS", "ENV_TEXT_ENCODER", "EncoderFormat", "TextEncoder", "check_texts", "describe",
           "is_encoder", "detect_format", "formats", "load_text_encoder", "register_format"]
