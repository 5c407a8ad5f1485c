"""Prompt files: a vocabulary (class names + embeddings) as a small ``.npz``, and the learnable prompt module.

A prompt file is what prompt tuning (``YOLOWorld.train(mode="prompt")``) produces and what ``YOLOWorld.save_prompts``
/ ``load_prompts`` and ``yw embed`` write and read. It is a plain ``np.savez`` archive (``np.load(path)`` reads it
without pickle), written atomically (temporary file, then ``os.replace``). Entries:

========================  ======================================================================================
``format``                ``"yw_ext.prompts/1"`` (the same format as the demo's prompt export)
``names``                 (K,) str, the class display names
``embeddings``            float32 ``(K, D)``, or ``(K, G, D)`` when classes have ``G > 1`` prompts (synonyms; a
                          class's score is the max over its prompts). This is what the detector consumes.
``prompts_per_class``     G
``class_prompts``         JSON: each class's text prompts (``null`` when unknown)
``class_sources``         (K,) str: ``"text"``, ``"image"``, ``"text+image"``, ``"embedding"`` or ``"prompt"``
                          (tuned by prompt tuning)
``text_encoder_id``       identity of the CLIP text tower whose space the embeddings live in (``""``: unknown)
``image_encoder_id``      identity of the CLIP image tower used for image prompts (``""``: none)
``raw_embeddings``        optional, same layout as ``embeddings``: the learnable tensor before the adapter
``adapter.0.weight`` ...  optional: the residual MLP adapter (``Linear(D, 2D)``, ReLU, ``Linear(2D, D)``); then
                          ``embeddings = normalize(adapter(raw) + raw)``
``detector``              path of the detector checkpoint the prompts were tuned with (``""``: none)
``detector_sha256``       hash of that detector's tensors (``detector_hash``; ``""``: none)
``meta``                  JSON: how the file was made (init, epoch, fitness, versions, ...)
========================  ======================================================================================

Only ``format``, ``names`` and ``embeddings`` are required; files written by the demo load too. Loading a file
installs ``embeddings`` as the model's ``Vocabulary`` (``YWDetectionModel.install_vocabulary``), so predict, val,
``reparameterize()`` and export see it like any other vocabulary.

Examples:
    >>> import torch, yw_ext
    >>> model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    >>> _ = model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
    >>> model.save_prompts("vocab.npz")  # doctest: +SKIP
    >>> model.load_prompts("vocab.npz")  # doctest: +SKIP
    >>> embed_texts(texts="person,car|automobile", out="vocab.npz")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yw_ext.core.classes import split_class_string
from yw_ext.core.io import atomic_write, load_npz
from yw_ext.core.log import LOGGER
from yw_ext.nn.adapter import ADAPTER_KEYS, ResidualAdapter, adapter_state, load_adapter_state
from yw_ext.vocab import Vocabulary

PROMPT_FORMAT = "yw_ext.prompts/1"
"""Value of the ``format`` entry of prompt files."""

_STRING_KEYS = ("text_encoder_id", "image_encoder_id", "detector", "detector_sha256")


class PromptFileError(ValueError):
    """A prompt file that cannot be read or does not fit the model (width, class count, broken arrays)."""


# ----------------------------------------------------------------------------------------------------------------------
# The learnable prompts
# ----------------------------------------------------------------------------------------------------------------------
class PromptEmbeddings(nn.Module):
    """Learnable class embeddings ``(K * G, D)``, optionally through a residual MLP adapter.

    Without adapter the output is the parameter itself (used as is, as the official ``SimpleYOLOWorldDetector``
    does: the head L2-normalises it, the neck takes it as given). With ``adapter=True`` the output is
    ``normalize(adapter(e) + e)`` with ``adapter = Linear(D, 2D), ReLU, Linear(2D, D)``. Unlike the official module
    the last Linear starts at zero, so training starts exactly from the (normalised) initial embeddings.

    Args:
        embeddings: Initial embeddings ``(K * G, D)``.
        adapter: Add the residual MLP adapter.

    Attributes:
        embeddings (nn.Parameter): ``(K * G, D)``.
        adapter (ResidualAdapter | None): The adapter (``yw_ext.nn.adapter``).

    Examples:
        >>> p = PromptEmbeddings(torch.randn(3, 8), adapter=True)
        >>> tuple(p().shape)  # (K * G, D)
        (3, 8)
        >>> torch.allclose(p().norm(dim=-1), torch.ones(3))  # the adapter output is L2-normalised
        True
    """

    def __init__(self, embeddings: torch.Tensor, adapter: bool = False):
        """Create the parameter (a float32 copy of ``embeddings``) and the adapter."""
        super().__init__()
        if embeddings.dim() != 2:
            raise ValueError(f"prompt embeddings must be (K * G, D), got {tuple(embeddings.shape)}.")
        d = embeddings.shape[1]
        self.embeddings = nn.Parameter(embeddings.detach().to(torch.float32).clone())  # (K * G, D)
        self.adapter = ResidualAdapter(d) if adapter else None

    def forward(self) -> torch.Tensor:
        """The embeddings the detector consumes, ``(K * G, D)``."""
        e = self.embeddings  # (K * G, D)
        if self.adapter is not None:
            e = self.adapter(e)  # normalize(MLP(e) + e)
        return e

    def adapter_state(self) -> dict[str, np.ndarray] | None:
        """The adapter's tensors as float32 arrays keyed like the prompt file (None without adapter)."""
        if self.adapter is None:
            return None
        return adapter_state(self.adapter)

    def load_adapter_state(self, state: dict[str, Any]) -> None:
        """Load adapter tensors keyed ``adapter.0.weight`` ... (shapes checked).

        Raises:
            PromptFileError: this module has no adapter, or the shapes differ.
        """
        if self.adapter is None:
            raise PromptFileError("these prompts have no adapter to load weights into (adapter=False).")
        try:
            load_adapter_state(self.adapter, state)
        except ValueError as e:
            raise PromptFileError(str(e)) from None


# ----------------------------------------------------------------------------------------------------------------------
# Detector identity
# ----------------------------------------------------------------------------------------------------------------------
def detector_hash(model: nn.Module, skip_prefixes: tuple[str, ...] = ("prompt.",)) -> str:
    """SHA-256 of a detector's tensors (every parameter and buffer: name, dtype, shape and bytes), as hex.

    The vocabulary (``txt_feats``, not a buffer) and prompt-tuning tensors (``prompt.*``) are not part of it, so the
    hash names the frozen detector that prompts were tuned with.

    Examples:
        >>> from yw_ext.nn.model import YWDetectionModel
        >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> len(detector_hash(m))
        64
    """
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        if not isinstance(v, torch.Tensor) or k.startswith(skip_prefixes):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------------
# Writing and reading
# ----------------------------------------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``).

    Examples:
        >>> atomic_torch_save({"a": torch.zeros(1)}, "ckpt.pt")  # doctest: +SKIP
        PosixPath('ckpt.pt')
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def _layout(emb: np.ndarray, k: int, g: int) -> np.ndarray:
    """``(K * G, D)`` -> ``(K, D)`` when G == 1, else ``(K, G, D)`` (the file layout)."""
    d = emb.shape[-1]
    return emb.reshape(k, d) if g == 1 else emb.reshape(k, g, d)


def write_prompt_file(
    path: str | Path,
    names: list[str],
    embeddings: torch.Tensor | np.ndarray,
    prompts_per_class: int = 1,
    class_prompts: list[list[str]] | None = None,
    class_sources: list[str] | None = None,
    text_encoder_id: str | None = None,
    image_encoder_id: str | None = None,
    raw_embeddings: torch.Tensor | np.ndarray | None = None,
    adapter: dict[str, np.ndarray] | None = None,
    detector: str | None = None,
    detector_sha256: str | None = None,
    meta: dict | None = None,
) -> Path:
    """Write a prompt file (see the module docstring), atomically.

    Args:
        path: Output ``.npz`` (no suffix is added).
        names: K class names.
        embeddings: ``(K * G, D)`` (or ``(K, D)`` / ``(K, G, D)``) embeddings the detector consumes.
        prompts_per_class: G.
        class_prompts: Per class, its text prompts.
        class_sources: Per class, where its embedding came from.
        text_encoder_id: CLIP text tower identity.
        image_encoder_id: CLIP image tower identity.
        raw_embeddings: Learnable tensor before the adapter (same size as ``embeddings``).
        adapter: Adapter arrays keyed ``adapter.0.weight`` ... (``PromptEmbeddings.adapter_state``).
        detector: Path of the detector checkpoint.
        detector_sha256: ``detector_hash`` of that detector.
        meta: JSON-serialisable extra information.

    Returns:
        (Path): ``path``.

    Raises:
        PromptFileError: inconsistent sizes or non-finite values.

    Examples:
        >>> write_prompt_file("v.npz", ["a", "b"], torch.randn(2, 512))  # doctest: +SKIP
        PosixPath('v.npz')
    """
    names = [str(n) for n in names]
    k, g = len(names), int(prompts_per_class)
    emb = (embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor)
           else np.asarray(embeddings, dtype=np.float32))  # fmt: skip
    d = emb.shape[-1]
    if emb.size != k * g * d:
        raise PromptFileError(f"embeddings {emb.shape} do not hold {k} classes x {g} prompts.")
    emb = emb.reshape(k * g, d).astype(np.float32)
    if not np.isfinite(emb).all():
        raise PromptFileError("embeddings contain NaN or inf values; nothing was written.")
    sources = list(class_sources or ["embedding"] * k)
    if len(sources) != k:
        raise PromptFileError(f"class_sources has {len(sources)} entries for {k} classes.")
    arrays: dict[str, np.ndarray] = {
        "format": np.array(PROMPT_FORMAT),
        "names": np.array(names, dtype=str),
        "embeddings": _layout(emb, k, g),
        "prompts_per_class": np.array(g, dtype=np.int64),
        "text_encoder_id": np.array(text_encoder_id or ""),
        "image_encoder_id": np.array(image_encoder_id or ""),
        "class_sources": np.array([str(s) for s in sources], dtype=str),
        "class_prompts": np.array(json.dumps(class_prompts)),
        "detector": np.array(str(detector or "")),
        "detector_sha256": np.array(detector_sha256 or ""),
        "meta": np.array(json.dumps(meta or {}, default=str)),
    }
    if raw_embeddings is not None:
        raw = (raw_embeddings.detach().float().cpu().numpy() if isinstance(raw_embeddings, torch.Tensor)
               else np.asarray(raw_embeddings, dtype=np.float32))  # fmt: skip
        if raw.size != emb.size:
            raise PromptFileError(f"raw_embeddings {raw.shape} do not match embeddings {emb.shape}.")
        arrays["raw_embeddings"] = _layout(raw.reshape(k * g, d).astype(np.float32), k, g)
    if adapter:
        missing = [a for a in ADAPTER_KEYS if a not in adapter]
        if missing or raw_embeddings is None:
            raise PromptFileError(f"an adapter needs raw_embeddings and {ADAPTER_KEYS} (missing {missing}).")
        arrays.update({a: np.asarray(adapter[a], dtype=np.float32) for a in ADAPTER_KEYS})
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def read_prompt_file(path: str | Path) -> dict[str, Any]:
    """Read and check a prompt file.

    Returns:
        (dict): ``names`` (list[str]), ``embeddings`` (float32 tensor ``(K * G, D)``), ``prompts_per_class`` (G),
        ``dim`` (D), ``class_prompts``, ``class_sources``, ``text_encoder_id``, ``image_encoder_id``, ``detector``,
        ``detector_sha256`` (str or None), ``raw_embeddings`` (tensor ``(K * G, D)`` or None), ``adapter`` (dict of
        arrays or None), ``meta`` (dict).

    Raises:
        FileNotFoundError: no such file.
        PromptFileError: not a prompt file, unreadable, inconsistent sizes, NaN/inf values.

    Examples:
        >>> p = read_prompt_file("vocab.npz")  # doctest: +SKIP
        >>> p["names"], tuple(p["embeddings"].shape)  # doctest: +SKIP
        (['person', 'bus'], (2, 512))
    """
    path = Path(path)
    files = load_npz(path, what="prompt file", error=PromptFileError)
    if "format" not in files or str(files["format"]) != PROMPT_FORMAT:
        raise PromptFileError(f"'{path}' is not a yw_ext prompt file (no format={PROMPT_FORMAT!r} entry); a bare array "
                              "of class embeddings is a .npy, used with set_classes(names, embeddings=...).")
    for key in ("names", "embeddings"):
        if key not in files:
            raise PromptFileError(f"prompt file '{path}' has no '{key}' entry.")
    names = [str(n) for n in np.atleast_1d(files["names"])]
    k = len(names)
    raw_emb = files["embeddings"]
    if not np.issubdtype(raw_emb.dtype, np.floating) or raw_emb.ndim not in (2, 3) or raw_emb.shape[0] != k:
        raise PromptFileError(f"prompt file '{path}': embeddings must be float (K, D) or (K, G, D) with K = {k} "
                              f"names, got {raw_emb.dtype} {raw_emb.shape}.")
    expect_g = raw_emb.shape[1] if raw_emb.ndim == 3 else 1
    g = int(files["prompts_per_class"]) if "prompts_per_class" in files else expect_g
    if g != expect_g:
        raise PromptFileError(f"prompt file '{path}': prompts_per_class={g} but embeddings are {raw_emb.shape}.")
    d = raw_emb.shape[-1]
    emb = torch.from_numpy(np.ascontiguousarray(raw_emb, dtype=np.float32).reshape(k * g, d))
    if not torch.isfinite(emb).all():
        raise PromptFileError(f"prompt file '{path}': embeddings contain NaN or inf values.")

    def text(key: str) -> str | None:
        return (str(files[key]) or None) if key in files else None

    sources = [str(s) for s in np.atleast_1d(files["class_sources"])] if "class_sources" in files else None
    if sources is not None and len(sources) != k:
        raise PromptFileError(f"prompt file '{path}': {len(sources)} class_sources for {k} classes.")
    try:
        prompts = json.loads(str(files["class_prompts"])) if "class_prompts" in files else None
        meta = json.loads(str(files["meta"])) if "meta" in files else {}
    except json.JSONDecodeError as e:
        raise PromptFileError(f"prompt file '{path}': broken JSON entry: {e}") from e
    if prompts is not None and (not isinstance(prompts, list) or len(prompts) != k):
        raise PromptFileError(f"prompt file '{path}': class_prompts must be a list of {k} prompt lists.")
    raw = None
    if "raw_embeddings" in files:
        r = np.asarray(files["raw_embeddings"], dtype=np.float32)
        if r.size != k * g * d:
            raise PromptFileError(f"prompt file '{path}': raw_embeddings {r.shape} do not match embeddings "
                                  f"{raw_emb.shape}.")
        raw = torch.from_numpy(np.ascontiguousarray(r).reshape(k * g, d))
        if not torch.isfinite(raw).all():
            raise PromptFileError(f"prompt file '{path}': raw_embeddings contain NaN or inf values.")
    adapter = None
    present = [a for a in ADAPTER_KEYS if a in files]
    if present:
        if len(present) != len(ADAPTER_KEYS) or raw is None:
            raise PromptFileError(f"prompt file '{path}': incomplete adapter (has {present}, needs {ADAPTER_KEYS} and "
                                  "raw_embeddings).")
        adapter = {a: np.asarray(files[a], dtype=np.float32) for a in ADAPTER_KEYS}
        shapes = {a: adapter[a].shape for a in ADAPTER_KEYS}
        want = {"adapter.0.weight": (2 * d, d), "adapter.0.bias": (2 * d,), "adapter.2.weight": (d, 2 * d),
                "adapter.2.bias": (d,)}  # fmt: skip
        if shapes != want or not all(np.isfinite(v).all() for v in adapter.values()):
            raise PromptFileError(f"prompt file '{path}': adapter tensors {shapes} are not finite {want}.")
    return {
        "names": names,
        "embeddings": emb,
        "prompts_per_class": g,
        "dim": d,
        "class_prompts": prompts,
        "class_sources": sources,
        "text_encoder_id": text("text_encoder_id"),
        "image_encoder_id": text("image_encoder_id"),
        "detector": text("detector"),
        "detector_sha256": text("detector_sha256"),
        "raw_embeddings": raw,
        "adapter": adapter,
        "meta": meta if isinstance(meta, dict) else {},
    }


def adapted(raw: torch.Tensor, adapter: dict[str, np.ndarray]) -> torch.Tensor:
    """``normalize(adapter(raw) + raw)`` for adapter arrays from a prompt file; ``(K * G, D)``.

    Examples:
        >>> p = PromptEmbeddings(torch.randn(2, 8), adapter=True)
        >>> torch.allclose(adapted(p.embeddings.detach(), p.adapter_state()), p().detach())
        True
    """
    m = PromptEmbeddings(raw, adapter=True)
    m.load_adapter_state(adapter)
    with torch.no_grad():
        return m()


# ----------------------------------------------------------------------------------------------------------------------
# Model <-> file
# ----------------------------------------------------------------------------------------------------------------------
def save_model_prompts(model: nn.Module, path: str | Path, detector: str | None = None) -> Path:
    """Write a ``YWDetectionModel``'s current vocabulary as a prompt file.

    When the vocabulary is the one prompt tuning produced or ``load_prompts`` installed (the model's
    ``Vocabulary.tuning`` is set), the raw embeddings, adapter weights and detector reference are
    written too.

    Raises:
        ValueError: no vocabulary set yet, or the vocabulary is folded into the weights.

    Examples:
        >>> from yw_ext.nn.model import YWDetectionModel
        >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> m.set_classes(["a", "b"], embeddings=torch.randn(2, 512))
        >>> save_model_prompts(m, "vocab.npz")  # doctest: +SKIP
        PosixPath('vocab.npz')
    """
    if getattr(model, "folded", False):
        raise ValueError("this model is re-parameterised: its vocabulary is folded into its weights and no embeddings "
                         "are left to save. Save the prompts from the unfolded model (before reparameterize()).")
    v = getattr(model, "vocab", None)
    if v is None:
        raise ValueError("the model has no vocabulary yet: set classes first (set_classes([...]) or load_prompts).")
    extra = v.tuning or {}
    meta = dict(extra.get("meta") or {})
    return write_prompt_file(
        path, [str(n) for n in dict(model.names).values()], v.embeddings, v.prompts_per_class,
        class_prompts=v.class_prompts,
        class_sources=list(v.sources),
        text_encoder_id=v.text_encoder_id,
        image_encoder_id=v.image_encoder_id,
        raw_embeddings=extra.get("raw_embeddings"),
        adapter=extra.get("adapter"),
        detector=detector or extra.get("detector"),
        detector_sha256=extra.get("detector_sha256"),
        meta=meta,
    )  # fmt: skip


def prompt_state_of(model: nn.Module) -> dict | None:
    """The model's ``prompt_state`` (raw embeddings, adapter, detector reference) if it still matches its vocabulary.

    Examples:
        >>> from yw_ext.nn.model import YWDetectionModel
        >>> prompt_state_of(YWDetectionModel("yw-v2-n.yaml", verbose=False)) is None
        True
    """
    v = getattr(model, "vocab", None)
    return v.tuning if v is not None else None  # tied to the installed vocabulary: a new one has no extras


def apply_prompts(model: nn.Module, prompts: str | Path | dict, names: list[str] | None = None,
                  check_detector: bool = True) -> dict:
    """Install a prompt file's embeddings as a ``YWDetectionModel``'s vocabulary (``install_vocabulary``).

    Args:
        model: The detector.
        prompts: A prompt file path or the dict ``read_prompt_file`` returns.
        names: Display names to use instead of the file's (same count).
        check_detector: Warn when the file was tuned with a detector whose hash differs from ``model``'s.

    Returns:
        (dict): The file's content.

    Raises:
        PromptFileError: embedding width not the model's, ``names`` of another length.
        RuntimeError: the model is re-parameterised (its vocabulary is in its weights).

    Examples:
        >>> from yw_ext.nn.model import YWDetectionModel
        >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False)
        >>> apply_prompts(m, "vocab.npz", names=["person", "bus"])  # doctest: +SKIP
        >>> m.names  # doctest: +SKIP
        {0: 'person', 1: 'bus'}
    """
    p = read_prompt_file(prompts) if not isinstance(prompts, dict) else prompts
    where = f"'{prompts}'" if not isinstance(prompts, dict) else "the prompt file"
    dim = int(getattr(model, "embed_dim", p["dim"]))
    if p["dim"] != dim:
        raise PromptFileError(
            f"prompt file {where} holds {p['dim']}-d embeddings but this model expects {dim}-d (CLIP ViT-B/32 gives "
            "512, ViT-L/14 768): it was made for another text encoder / model width."
        )
    k = len(p["names"])
    if names is not None:
        names = [names] if isinstance(names, str) else list(names)
        if len(names) != k:
            raise PromptFileError(f"names= has {len(names)} entries but prompt file {where} holds {k} classes "
                                  f"({p['names'][:5]}{' ...' if k > 5 else ''}).")
        from yw_ext.vocab import parse_classes

        names = parse_classes(names)[0]
    use_names = names or p["names"]
    g = p["prompts_per_class"]
    emb = p["embeddings"]
    if p["adapter"] is not None:  # the stored embeddings must be what the adapter makes of the raw ones
        check = adapted(p["raw_embeddings"], p["adapter"])
        if not torch.allclose(check, emb, atol=1e-4):
            raise PromptFileError(f"prompt file {where}: embeddings are not normalize(adapter(raw) + raw); the file is "
                                  "inconsistent (edited by hand?).")
    from yw_ext.vocab import check_embeddings

    emb, _ = check_embeddings(emb.view(k, g, dim), k, dim)  # the usual vocabulary checks (all-zero rows, prompt count)
    tuning = {k: p[k] for k in ("raw_embeddings", "adapter", "detector", "detector_sha256", "meta")}
    model.install_vocabulary(Vocabulary(use_names, emb, g, p["class_prompts"], p["class_sources"], p["text_encoder_id"],
                                        p["image_encoder_id"], tuning))
    if check_detector and p["detector_sha256"]:
        own = detector_hash(model)
        if own != p["detector_sha256"]:
            LOGGER.warning(
                f"prompt file {where} was tuned with another detector ({p['detector'] or 'no path'}, sha256 "
                f"{p['detector_sha256'][:12]}...) than this model (sha256 {own[:12]}...); tuned prompts are meant for "
                "the detector they were tuned with."
            )
    return p


# ----------------------------------------------------------------------------------------------------------------------
# yw embed
# ----------------------------------------------------------------------------------------------------------------------
def parse_texts(texts: str | list | None = None, json_file: str | Path | None = None) -> list[list[str]]:
    """Class prompts from ``"a,b|b2,c"`` (``|`` separates synonyms) or an official class-text JSON ``[["a"], ...]``.

    Raises:
        ValueError: neither or both given, an empty class, a malformed JSON.
        FileNotFoundError: the JSON file does not exist.

    Examples:
        >>> parse_texts("person, car|automobile")
        [['person'], ['car', 'automobile']]
    """
    if (texts is None) == (json_file is None):
        raise ValueError("give the class texts either as texts=\"a,b|b2,c\" or as json=class_texts.json (the official "
                         "[[\"a\"], [\"b\", \"b2\"]] format), not both / neither.")
    if json_file is not None:
        path = Path(json_file)
        if not path.is_file():
            raise FileNotFoundError(f"class-text JSON '{path}' does not exist.")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"class-text JSON '{path}' is not valid JSON: {e}") from e
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"class-text JSON '{path}' must be a non-empty list of prompt lists, e.g. "
                             '[["person", "human"], ["bicycle"]].')
        groups = [[g] if isinstance(g, str) else g for g in raw]
    elif isinstance(texts, (list, tuple)):
        groups = [[g] if isinstance(g, str) else list(g) for g in texts]
    else:
        groups = split_class_string(texts)
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, list) or not all(isinstance(t, str) for t in g):
            raise ValueError(f"class {i} is {g!r}: each class must be a text or a list of texts (synonyms).")
        clean = list(dict.fromkeys(t.strip() for t in g if t.strip()))
        if not clean:
            raise ValueError(f"class {i} has no text (empty item in {texts if json_file is None else json_file!r}).")
        out.append(clean)
    return out


def embed_texts(texts: str | list | None = None, out: str | Path = "vocab.npz", json: str | Path | None = None,
                clip: Any = None, batch: int = 256, cache: Any = None) -> Path:
    """Write CLIP text embeddings of class prompts, as the official ``tools/generate_text_prompts.py`` does.

    Embeddings are L2-normalised CLIP text features (``yw_ext.text.encode_texts``). Unlike the official tool, which
    keeps only the first text of each class, synonyms are kept: classes are padded to G prompts by repeating their
    first prompt (as ``set_classes`` does), giving ``(K, G, D)``; with no synonyms it is ``(K, D)``, the official
    layout. ``out`` ending in ``.npy`` writes that bare array (for the official ``embedding_path`` or
    ``set_classes(names, embeddings=...)``); any other suffix writes a prompt file (names, prompts, encoder identity).

    Args:
        texts: ``"a,b|b2,c"`` or a list of names / synonym lists.
        out: Output path (``.npz`` prompt file, or ``.npy`` array).
        json: Official class-text JSON instead of ``texts``.
        clip: Text encoder or its path (CLIP file / folder, Sentence-Transformers or M-CLIP folder, projection file);
            default ``$YW_TEXT_ENCODER``, else ``$YW_CLIP``.
        batch: Texts per forward pass.
        cache: ``EmbeddingCache``, ``False`` to disable, None for the default on-disk cache.

    Returns:
        (Path): ``out``.

    Examples:
        >>> embed_texts("person,car|automobile", out="vocab.npz", clip="ViT-B-32.pt")  # doctest: +SKIP
        PosixPath('vocab.npz')
        >>> embed_texts(json="coco_class_texts.json", out="coco.npy")  # doctest: +SKIP
    """
    from yw_ext.text import encode_texts
    from yw_ext.text.vocabulary import resolve_text_encoder
    from yw_ext.vocab import pad_prompts, parse_classes

    groups = parse_texts(texts, json)
    names, prompts = parse_classes(groups)  # duplicate names etc.
    flat, g = pad_prompts(prompts)
    enc = resolve_text_encoder(clip)  # any text encoder (CLIP, Sentence-Transformers, M-CLIP, projection) or the env
    emb = encode_texts(enc, flat, cache=cache, batch=batch).float().cpu()  # (K * G, D)
    out = Path(out)
    if out.suffix.lower() == ".npy":
        arr = _layout(emb.numpy(), len(names), g)  # (K, D) or (K, G, D)
        return atomic_write(out, lambda f: np.save(f, arr))
    return write_prompt_file(out, names, emb, g, class_prompts=prompts, class_sources=["text"] * len(names),
                             text_encoder_id=enc.identity, meta={"made_by": "yw embed"})


__all__ = (
    "PROMPT_FORMAT", "PromptFileError", "PromptEmbeddings", "detector_hash", "write_prompt_file", "read_prompt_file",
    "save_model_prompts", "apply_prompts", "prompt_state_of", "parse_texts", "embed_texts",
)
