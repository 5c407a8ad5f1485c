# yw_ext, AGPL-3.0 license
"""Official YOLO-World (MMYOLO) ``.pth`` checkpoints -> ``YWDetectionModel``: read, convert, load.

``{'meta': ..., 'state_dict': ...}`` files are read without running code (tensors-only unpickling, else a restricted
unpickler that leaves other objects as inert placeholders; after checking the SHA-256 prefix in an official file
name), their architecture is detected (``yw_ext.checkpoints.layout``), every detector tensor is copied through the
explicit key map (``yw_ext.checkpoints.keymaps`` / ``statemap``), the embedded CLIP text tower is kept
(``yw_ext.checkpoints.text_tower``), and a vocabulary is installed so the model predicts at once. Re-parameterised
files go to ``yw_ext.checkpoints.folded``.

Examples:
    >>> model, ckpt = load_official("l_stage2-b3e3dc3f.pth")  # doctest: +SKIP
    >>> model.set_classes(["person", "bus"])  # encoded by the file's own CLIP text tower  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from yw_ext.checkpoints.errors import CheckpointError
from yw_ext.checkpoints.folded import convert_folded
from yw_ext.checkpoints.health import warn_non_finite
from yw_ext.checkpoints.keymaps import ADAPTER_PREFIX, HF_TEXT_PREFIX, PROMPT_KEYS, TEXT_PREFIX, ignored_reason
from yw_ext.checkpoints.layout import OfficialLayout, detect_layout, state_dict_of
from yw_ext.checkpoints.names import coco_names, meta_names, parse_names
from yw_ext.checkpoints.safe_pickle import PLACEHOLDERS_SHOWN, placeholders, safe_torch_load
from yw_ext.checkpoints.statemap import build_detector
from yw_ext.checkpoints.text_tower import text_encoder_from_state, text_state
from yw_ext.core.log import LOGGER
from yw_ext.nn.model import YWDetectionModel

IGNORED_SHOWN = 8
"""Largest number of ignored (non-detector) tensors named in the conversion log line."""


def _split(sd: dict[str, torch.Tensor]) -> tuple[dict, dict, dict]:
    """(detector tensors, HF text tower tensors without their prefix, ignored tensors -> reason).

    Prompt-tuning tensors (``embeddings``, ``adapter.*``) are in none of them: the vocabulary reads them.
    """
    det_sd, text_sd, ignored = {}, {}, {}
    for k, v in sd.items():
        if k.startswith(HF_TEXT_PREFIX):
            text_sd[k[len(HF_TEXT_PREFIX):]] = v
        elif k.startswith(TEXT_PREFIX):
            ignored[k] = "a text backbone other than Hugging Face CLIP: not detector weights"
        elif k in PROMPT_KEYS or k.startswith(ADAPTER_PREFIX):
            pass  # used for the vocabulary
        else:
            reason = ignored_reason(k)
            if reason:
                ignored[k] = reason
            else:
                det_sd[k] = v
    return det_sd, text_sd, ignored


def prompt_embeddings(sd: dict[str, torch.Tensor], source: str) -> torch.Tensor:
    """The class embeddings a prompt-tuned SimpleYOLOWorldDetector feeds its neck and head, ``(N, D)``.

    With the MLP adapter: ``normalize(adapter(e) + e)``; without: ``e`` as stored (the head normalises it, the neck
    takes it as is), exactly as the official ``extract_feat``.

    Raises:
        CheckpointError: adapter tensors other than ``adapter.{0,2}.{weight,bias}``.

    Examples:
        >>> prompt_embeddings({"embeddings": torch.ones(2, 4)}, "demo").shape
        torch.Size([2, 4])
    """
    e = sd["embeddings"].detach().float()  # (N, D)
    adapter = {k[len(ADAPTER_PREFIX):]: v.float() for k, v in sd.items() if k.startswith(ADAPTER_PREFIX)}
    if not adapter:
        return e
    need = {"0.weight", "0.bias", "2.weight", "2.bias"}
    if set(adapter) != need:
        raise CheckpointError(
            f"{source}: unexpected prompt adapter tensors {sorted(adapter)} (expected {sorted(need)})."
        )
    h = torch.relu(e @ adapter["0.weight"].T + adapter["0.bias"])  # (N, 2D)
    return torch.nn.functional.normalize(h @ adapter["2.weight"].T + adapter["2.bias"] + e, dim=-1)  # (N, D)


def _install_prompt_vocabulary(model: YWDetectionModel, ckpt: Any, sd: dict, given: Any, source: str) -> bool:
    """Install the prompt-tuned embeddings when the names (if given) count them; False when they do not."""
    emb = prompt_embeddings(sd, source)
    n = emb.shape[0]
    if given is not None and len(given) != n:
        LOGGER.warning(f"yw_ext: {source}: {len(given)} names for {n} prompt-tuned embeddings; encoding the names "
                       "as text instead (the tuned prompts are not used).")
        return False
    plain = [g if isinstance(g, str) else g[0] for g in (given or [])]
    default = meta_names(ckpt) or (coco_names() if n == 80 else [str(i) for i in range(n)])
    vocab = plain or (default if len(default) == n else [str(i) for i in range(n)])
    model.set_vocabulary(vocab, emb, 1, None, "prompt-tuned-embeddings")
    return True


def install_vocabulary(
    model: YWDetectionModel, ckpt: Any, sd: dict, layout: OfficialLayout, names: Any, enc: Any, source: str
) -> None:
    """Give a converted model a vocabulary (names + embeddings) so it predicts right away.

    Order: prompt-tuned embeddings (when ``names`` is None or counts them); else ``names`` / the checkpoint's
    ``meta`` classes / COCO's 80, encoded by ``enc`` (the embedded text tower), else by yw_ext's default CLIP, else
    installed with zero embeddings and a warning.

    Examples:
        >>> install_vocabulary(model, ckpt, sd, layout, ["person"], enc, "x.pth")  # doctest: +SKIP
    """
    given = parse_names(names) if names is not None else None
    if layout.prompts and _install_prompt_vocabulary(model, ckpt, sd, given, source):
        return
    vocab = given or meta_names(ckpt) or coco_names()
    if enc is not None:
        model.set_classes(vocab, encoder=enc)
        return
    try:
        model.set_classes(vocab)  # yw_ext's default CLIP ($YW_CLIP or the clip package's cache)
    except (FileNotFoundError, ValueError) as e:
        from yw_ext.core.classes import parse_classes

        plain, _ = parse_classes(vocab)
        model.set_vocabulary(plain, torch.zeros(len(plain), model.embed_dim), 1, None, None)
        LOGGER.warning(
            f"yw_ext: {source} has no text tower and no CLIP is available ({e}); the vocabulary {plain[:3]}... has "
            "zero embeddings. Call set_classes(names, embeddings=...) or set_classes(names, encoder=<CLIP>) before "
            "predicting."
        )


def convert_official(
    ckpt: dict[str, Any],
    names: Any = None,
    text_config: dict[str, Any] | None = None,
    keep_text: bool = True,
    source: str = "<official checkpoint>",
) -> YWDetectionModel:
    """Convert an official YOLO-World checkpoint (already loaded) into a ``YWDetectionModel``.

    Args:
        ckpt: ``{'meta': ..., 'state_dict': ...}`` as ``torch.load`` returns it (or the bare state dict).
        names: Vocabulary to install (list, comma string, ``.txt`` / ``.json`` path). Default: the checkpoint's
            ``meta['dataset_meta']['classes']`` when present, else the 80 COCO names. For a re-parameterised
            checkpoint the names must match its folded prompts (80 -> COCO by default).
        text_config: Overrides for the embedded text tower's inferred Hugging Face config (e.g.
            ``{"num_attention_heads": 2}``; heads default to ``width // 64`` as in OpenAI CLIP).
        keep_text: Keep the embedded CLIP text tower on the model (``text_encoder_state``) so ``set_classes`` can
            encode new names without a separate CLIP.
        source: For messages.

    Returns:
        The model (float32, eval mode) with the vocabulary installed: encoded by the embedded text tower, taken
        from prompt-tuned embeddings, or (no text tower) by yw_ext's default CLIP when one is available.

    Raises:
        CheckpointError: not an official YOLO-World checkpoint, or any tensor missing / unexpected / mis-shaped.

    Examples:
        >>> ckpt = read_official("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth")  # doctest: +SKIP
        >>> model = convert_official(ckpt, names=["person", "bus"])  # doctest: +SKIP
    """
    sd = state_dict_of(ckpt, source)
    layout = detect_layout(sd, source)
    if layout.folded:
        return convert_folded(ckpt, sd, layout, names, source)
    det_sd, text_sd, ignored = _split(sd)
    if ignored:
        listed = "; ".join(f"{k} ({r})" for k, r in list(ignored.items())[:IGNORED_SHOWN])
        LOGGER.info(f"yw_ext: {source}: ignoring {len(ignored)} non-detector tensors: {listed}"
                    + (" ..." if len(ignored) > IGNORED_SHOWN else ""))
    model = build_detector(det_sd, layout, source)
    enc = None
    if text_sd:
        state = text_state(text_sd, text_config, source)
        if state["config"]["projection_dim"] != layout.embed_dim:
            raise CheckpointError(f"{source}: the text tower gives {state['config']['projection_dim']}-d embeddings, "
                                  f"the detector expects {layout.embed_dim}-d.")
        enc = text_encoder_from_state(state)
        if keep_text:
            model.text_encoder_state = state
    install_vocabulary(model, ckpt, sd, layout, names, enc, source)
    return model


def _verify_name_hash(path: Path) -> None:
    """Check the SHA-256 prefix in an MMEngine-published file name (``name-<hex>.pth``), if it has one.

    A mismatch is an error for the known official files (with their download URL), a warning otherwise.
    """
    m = re.search(r"-([0-9a-f]{8,64})$", path.stem)
    if m is None:
        return
    prefix = m.group(1)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if digest.startswith(prefix):
        return
    from yw_ext.hub import resolve_alias

    spec = resolve_alias(path.name)
    msg = (f"'{path}': its SHA-256 starts with {digest[:len(prefix)]}, not with the {prefix} its official YOLO-World "
           "file name promises")
    if spec is not None and spec.source == "official":
        raise CheckpointError(f"{msg}: the file is damaged or incomplete. Download it again from {spec.url}.")
    LOGGER.warning(f"yw_ext: {msg} (a renamed or re-saved file?).")


def _torch_load(path: Path) -> Any:
    """``torch.load`` tensors-only; when the file holds other pickled objects, the restricted unpickler.

    The restricted unpickler (``yw_ext.checkpoints.safe_pickle``) rebuilds tensors, containers and numpy data and
    turns every other object into an inert placeholder: nothing the file names is imported or called.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise
    ckpt = safe_torch_load(path)
    found = placeholders(ckpt)
    if found:
        shown = ", ".join(found[:PLACEHOLDERS_SHOWN]) + (" ..." if len(found) > PLACEHOLDERS_SHOWN else "")
        LOGGER.info(f"yw_ext: '{path}' holds pickled Python objects besides tensors ({shown}); they were read as "
                    "inert placeholders (nothing in the file was imported or run). Only its tensors are used.")
    return ckpt


def read_official(path: str | Path) -> dict[str, Any]:
    """Read an official ``.pth`` file (tensors only when possible) after checking the hash in its name.

    Files that hold pickled Python objects besides tensors and plain containers (MMEngine training checkpoints'
    ``meta``) are read with a restricted unpickler: those objects become inert placeholders, and nothing the file
    names is imported or called (``yw_ext.checkpoints.safe_pickle``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated / corrupt file, SHA-256 mismatch for a known official file name, not a dict.

    Examples:
        >>> ckpt = read_official("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth")  # doctest: +SKIP
        >>> sorted(ckpt)  # doctest: +SKIP
        ['meta', 'state_dict']
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{path}' does not exist.")
    _verify_name_hash(path)
    try:
        ckpt = _torch_load(path)
    except (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, OSError, AttributeError, ImportError) as e:
        raise CheckpointError(f"'{path}' is not a readable official YOLO-World checkpoint (truncated or corrupt?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"'{path}' holds a {type(ckpt).__name__}, not an official YOLO-World checkpoint (a dict "
                              "with 'meta' and 'state_dict').")
    return ckpt


def load_official(
    path: str | Path, names: Any = None, text_config: dict[str, Any] | None = None, keep_text: bool = True
) -> tuple[YWDetectionModel, dict[str, Any]]:
    """Load and convert an official YOLO-World ``.pth`` file (``yw_ext.YOLOWorld("x.pth")`` goes through here).

    Args:
        path: The ``.pth`` file.
        names: Vocabulary (see ``convert_official``); default the checkpoint's classes or COCO's 80.
        text_config: Overrides for the embedded text tower's config (see ``hf_text_config``).
        keep_text: Keep the embedded CLIP text tower as the model's text encoder.

    Returns:
        (model in eval mode, an Ultralytics-style checkpoint dict describing the conversion).

    Examples:
        >>> model, ckpt = load_official("l_stage2-b3e3dc3f.pth")  # doctest: +SKIP
        >>> model.set_classes(["person", "bus"])  # encoded by the file's own CLIP text tower  # doctest: +SKIP
    """
    from yw_ext.seam import DEFAULT_CFG_DICT

    path = Path(path).expanduser()
    ckpt = read_official(path)
    model = convert_official(ckpt, names=names, text_config=text_config, keep_text=keep_text, source=f"'{path}'")
    warn_non_finite(model, f"'{path}'")
    model.pt_path = str(path)
    model.task = "detect"
    model.args = {**DEFAULT_CFG_DICT, "model": str(path), "task": "detect"}
    layout = detect_layout(state_dict_of(ckpt, str(path)), str(path))
    info = {"source": str(path), "format": "official-mmyolo", "family": layout.family, "scale": layout.scale,
            "embed_dim": layout.embed_dim, "text_tower": layout.text_tower}
    return model, {"train_args": {}, "yw_converted_from": info}


__all__ = ["convert_official", "install_vocabulary", "load_official", "prompt_embeddings", "read_official"]
