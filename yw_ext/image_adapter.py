# yw_ext, AGPL-3.0 license
"""Image-adapter files: the trained projector of image prompts (``train(mode="image_prompt")``), on disk and on a model.

The adapter (``yw_ext.nn.adapter.ResidualAdapter``, ``n(u + MLP(u))``) maps a normalised CLIP image embedding ``u`` of
an exemplar into the detector's text space. It is independent of any vocabulary, so it is stored apart from prompt
files, as a plain ``np.savez`` archive (``np.load`` reads it without pickle), written atomically:

========================  ======================================================================================
``format``                ``"yw_ext.image_adapter/1"``
``adapter.0.weight`` ...  float32 tensors of the adapter (``Linear(D, 2D)``, ReLU, ``Linear(2D, D)``)
``image_encoder_id``      identity of the CLIP image tower it was trained on (``CLIPImageEncoder.identity``)
``text_encoder_id``       identity of the CLIP text tower of the text embeddings it was trained beside (``""``)
``detector``              path of the frozen detector it was trained with (``""``: none)
``detector_sha256``       ``yw_ext.prompts.detector_hash`` of that detector (``""``: none)
``meta``                  JSON: epoch, fitness, data, versions, ...
========================  ======================================================================================

On a model the adapter lives in ``YWDetectionModel.image_adapter_state`` (a plain dict pickled with the model, so a
saved ``.pt`` keeps it); ``set_classes(..., images=...)`` then uses ``v = n(mean_j A(u_j))`` instead of
``n(mean_j u_j)`` for a class's exemplars ``u_j``.

Examples:
    >>> import yw_ext
    >>> model = yw_ext.YOLOWorld("best.pt")  # doctest: +SKIP
    >>> model.load_image_adapter("runs/detect/train/weights/best_adapter.npz")  # doctest: +SKIP
    >>> model.set_classes(["dog"], images={"dog": ["dog1.jpg", "dog2.jpg"]}, use_text=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yw_ext.core.io import atomic_write, load_npz
from yw_ext.nn.adapter import ADAPTER_KEYS, ResidualAdapter, adapter_from_state, adapter_state

ADAPTER_FORMAT = "yw_ext.image_adapter/1"
"""Value of the ``format`` entry of image-adapter files."""

_STRINGS = ("image_encoder_id", "text_encoder_id", "detector", "detector_sha256")


class AdapterFileError(ValueError):
    """An image-adapter file that cannot be read or does not fit the model."""


def write_adapter_file(
    path: str | Path,
    adapter: ResidualAdapter | dict,
    image_encoder_id: str | None = None,
    text_encoder_id: str | None = None,
    detector: str | None = None,
    detector_sha256: str | None = None,
    meta: dict | None = None,
) -> Path:
    """Write an image-adapter file atomically (temporary file, then ``os.replace``).

    Args:
        path: Output ``.npz``.
        adapter: The module, or its arrays keyed ``adapter.0.weight`` ...
        image_encoder_id: CLIP image tower identity.
        text_encoder_id: CLIP text tower identity.
        detector: Path of the frozen detector.
        detector_sha256: Hash of its tensors.
        meta: JSON-serialisable information.

    Returns:
        (Path): ``path``.

    Raises:
        AdapterFileError: missing, mis-shaped or non-finite adapter tensors.

    Examples:
        >>> write_adapter_file("adapter.npz", ResidualAdapter(512), image_encoder_id="openai-clip-image:...")  # doctest: +SKIP
        PosixPath('adapter.npz')
    """
    state = adapter_state(adapter) if isinstance(adapter, torch.nn.Module) else dict(adapter)
    try:
        adapter_from_state(state)  # every tensor present, shaped for one width, finite
    except ValueError as e:
        raise AdapterFileError(f"{path}: {e}") from None
    arrays: dict[str, np.ndarray] = {"format": np.array(ADAPTER_FORMAT)}
    arrays.update({k: np.asarray(state[k], dtype=np.float32) for k in ADAPTER_KEYS})
    strings = dict(zip(_STRINGS, (image_encoder_id, text_encoder_id, detector, detector_sha256)))
    arrays.update({k: np.array(str(v or "")) for k, v in strings.items()})
    arrays["meta"] = np.array(json.dumps(meta or {}, default=str))
    return atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def read_adapter_file(path: str | Path) -> dict[str, Any]:
    """Read and check an image-adapter file.

    Returns:
        (dict): ``adapter`` (float32 arrays keyed ``adapter.0.weight`` ...), ``dim`` (D), ``image_encoder_id``,
        ``text_encoder_id``, ``detector``, ``detector_sha256`` (str or None), ``meta`` (dict), ``path`` (str).

    Raises:
        FileNotFoundError: no such file.
        AdapterFileError: not an image-adapter file (e.g. a prompt file), missing / mis-shaped / NaN tensors.

    Examples:
        >>> read_adapter_file("best_adapter.npz")["dim"]  # doctest: +SKIP
        512
    """
    path = Path(path)
    data = load_npz(path, what=".npz image-adapter file", error=AdapterFileError)
    fmt = str(data.get("format", ""))
    if fmt != ADAPTER_FORMAT:
        hint = (" It is a prompt file (a vocabulary): load it with load_prompts()." if fmt.startswith("yw_ext.prompts")
                else "")
        raise AdapterFileError(f"'{path}' is not an image-adapter file (format {fmt!r}, expected {ADAPTER_FORMAT!r})."
                               + hint)
    state = {k: data[k] for k in ADAPTER_KEYS if k in data}
    try:
        adapter = adapter_from_state(state, what=str(path))
    except ValueError as e:
        raise AdapterFileError(str(e)) from None
    try:
        meta = json.loads(str(data.get("meta", "{}")))
    except json.JSONDecodeError:
        meta = {}
    out = {k: (str(data[k]) or None) if k in data else None for k in _STRINGS}
    return {"adapter": adapter_state(adapter), "dim": adapter.dim, "meta": meta, "path": str(path), **out}


def install_adapter(model: torch.nn.Module, source: str | Path | dict | None) -> dict | None:
    """Give a ``YWDetectionModel`` an image adapter (a file path or ``read_adapter_file`` dict); None removes it.

    The model keeps ``image_adapter_state``: ``{"adapter": {name: float32 tensor}, "image_encoder_id", "path", ...}``.

    Raises:
        AdapterFileError: the adapter's width is not the model's embedding width.

    Examples:
        >>> install_adapter(model.model, "best_adapter.npz")  # doctest: +SKIP
    """
    if source is None:
        model.image_adapter_state = None
        return None
    info = read_adapter_file(source) if isinstance(source, (str, Path)) else dict(source)
    d = int(getattr(model, "embed_dim", info["dim"]))
    if info["dim"] != d:
        raise AdapterFileError(f"the image adapter {info.get('path') or ''} is for {info['dim']}-d embeddings but this "
                               f"model uses {d}-d ones (train the adapter with this model's CLIP).")
    state = {k: v for k, v in info.items() if k != "adapter"}
    state["adapter"] = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32).clone() for k, v in info["adapter"].items()}
    model.image_adapter_state = state
    return state


def adapter_digest(state: dict) -> str:
    """Short content hash (12 hex digits) of adapter tensors, recorded in the vocabulary's ``image_encoder_id``.

    Examples:
        >>> len(adapter_digest(adapter_state(ResidualAdapter(8))))
        12
    """
    import hashlib

    h = hashlib.sha256()
    for k in ADAPTER_KEYS:
        h.update(np.ascontiguousarray(np.asarray(state[k], dtype=np.float32)).tobytes())
    return h.hexdigest()[:12]


def model_adapter(model: torch.nn.Module) -> ResidualAdapter | None:
    """The ``ResidualAdapter`` of a model's ``image_adapter_state`` (eval mode), or None when it has none.

    Examples:
        >>> model_adapter(torch.nn.Module()) is None  # no image_adapter_state
        True
    """
    state = getattr(model, "image_adapter_state", None)
    if not state:
        return None
    return adapter_from_state(state["adapter"], what="image_adapter_state").eval()
