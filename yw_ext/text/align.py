# yw_ext, AGPL-3.0 license
"""Aligning any text encoder to the detector's CLIP text space (``yw align-text``), and checking an alignment.

A detector consumes the text embeddings of the CLIP it was trained with (ViT-B/32: 512-d). A student encoder that
was not distilled into that space (Chinese-CLIP's text tower, a plain multilingual MiniLM) gets a learned map
``P: student space -> teacher space``, fitted on texts the teacher (CLIP) encodes in English and the student sees in
English or, from parallel pairs ``[["a dog", "一只狗"], ...]``, in translation:

- ``kind="linear"``: ``P(x) = x W + b``; ``kind="mlp"``: ``P(x) = x W + b + W2 gelu(W1 x + b1)`` (residual MLP);
- initialised by ridge regression, then trained with MSE plus cosine loss (the multilingual-CLIP recipe) on
  L2-normalised embeddings; the output is L2-normalised.

Reported numbers (also by ``check=True``, for any encoder, with or without a projection):

- ``cosine``: mean cosine between student and teacher embeddings of held-out texts;
- ``retrieval``: top-1 accuracy of retrieving a text's teacher embedding among the teacher embeddings of all the
  (distinct English) names, from the student's embedding.

The projection file is a plain ``.npz`` (arrays only, read with ``allow_pickle=False``): the arrays of ``P``, the
student's identity and source, the teacher's identity, and the metrics. ``load_text_encoder("proj.npz")`` (or
``encoder="proj.npz"`` anywhere) gives the student with the map applied; its identity is the student's plus the
projection's hash, so the cache never mixes it with the bare student.

Examples:
    >>> from yw_ext.text.align import align_text
    >>> rep = align_text("minilm-folder", texts=names, pairs="pairs.json", out="minilm_proj.npz")  # doctest: +SKIP
    >>> rep["cosine"], rep["retrieval"]  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from yw_ext.core.io import load_npz, save_npz
from yw_ext.core.log import LOGGER
from yw_ext.text.encoders import check_texts, describe, is_encoder, load_text_encoder

FORMAT = "yw-text-projection-1"
KINDS = ("linear", "mlp")


class ProjectionError(ValueError):
    """A projection file that cannot be used (unreadable, foreign, or for another encoder).

    Examples:
        >>> issubclass(ProjectionError, ValueError)
        True
    """


# ----------------------------------------------------------------------------------------------------------------------
# The projection and the projected encoder
# ----------------------------------------------------------------------------------------------------------------------
class Projection(nn.Module):
    """``x -> n(x W + b [+ W2 gelu(W1 x + b1)])`` from the arrays of a projection file.

    Examples:
        >>> p = Projection({"W": np.eye(4, dtype=np.float32), "b": np.zeros(4, np.float32)})
        >>> p(torch.ones(1, 4)).norm().item()
        1.0
    """

    def __init__(self, arrays: dict[str, np.ndarray]):
        """Build from ``W`` (Din, Dout), ``b`` (Dout,) and, for the MLP, ``W1`` (Din, H), ``b1``, ``W2`` (H, Dout)."""
        super().__init__()
        t = {k: torch.as_tensor(np.asarray(v, np.float32)) for k, v in arrays.items() if k in ("W", "b", "W1", "b1",
                                                                                               "W2")}
        if "W" not in t or "b" not in t or t["W"].ndim != 2 or t["b"].shape != (t["W"].shape[1],):
            raise ProjectionError(f"projection arrays need W (Din, Dout) and b (Dout,), got "
                                  f"{ {k: tuple(v.shape) for k, v in t.items()} }")
        self.W, self.b = nn.Parameter(t["W"]), nn.Parameter(t["b"])
        self.mlp = all(k in t for k in ("W1", "b1", "W2"))
        if self.mlp:
            self.W1, self.b1, self.W2 = nn.Parameter(t["W1"]), nn.Parameter(t["b1"]), nn.Parameter(t["W2"])
        self.in_dim, self.out_dim = t["W"].shape

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The map before normalisation: ``(N, Din) -> (N, Dout)``."""
        y = x @ self.W + self.b
        if self.mlp:
            y = y + F.gelu(x @ self.W1 + self.b1) @ self.W2
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, Din)`` -> ``(N, Dout)`` L2-normalised."""
        return F.normalize(self.raw(x.float()), dim=-1)

    def arrays(self) -> dict[str, np.ndarray]:
        """The parameters as float32 arrays (what the file stores)."""
        names = ("W", "b", "W1", "b1", "W2") if self.mlp else ("W", "b")
        return {k: getattr(self, k).detach().cpu().float().numpy() for k in names}

    def digest(self) -> str:
        """sha256 (16 hex) of the parameters."""
        h = hashlib.sha256()
        for k, v in self.arrays().items():
            h.update(f"{k}:{v.shape};".encode() + np.ascontiguousarray(v).tobytes())
        return h.hexdigest()[:16]


class ProjectedEncoder:
    """A student encoder followed by a learned ``Projection`` (same interface as every text encoder).

    Attributes:
        base: The student encoder.
        projection (Projection): The map.
        dim (int): Output width (the teacher's).
        identity (str): ``<student identity>+proj:<projection hash>``.

    Examples:
        >>> enc = load_text_encoder("minilm_proj.npz")  # doctest: +SKIP
        >>> enc.encode(["一只狗"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(self, base: Any, projection: Projection, source: str = "<projection>"):
        """Check that the projection takes the student's width."""
        if projection.in_dim != base.dim:
            raise ProjectionError(f"{source}: the projection takes {projection.in_dim}-d input but the student "
                                  f"({describe(base)}) gives {base.dim}-d.")
        self.base, self.projection = base, projection.eval().requires_grad_(False)
        self.dim, self.source, self.kind = projection.out_dim, str(source), f"{getattr(base, 'kind', 'text')}+proj"
        self.identity = f"{base.identity}+proj:{projection.digest()}"

    @property
    def device(self) -> torch.device:
        return getattr(self.base, "device", torch.device("cpu"))

    def to(self, device: Any) -> ProjectedEncoder:
        """Move the student and the projection to ``device``; returns self."""
        self.base.to(device)
        self.projection.to(device)
        return self

    def encode(self, texts: Any, batch: int = 256) -> torch.Tensor:
        """``(N, dim)`` L2-normalised embeddings: the student's, mapped by the projection."""
        x = self.base.encode(texts, batch=batch)
        with torch.no_grad():  # ordinary tensors (usable later with autograd), unlike inference_mode
            return self.projection(x.to(self.device).float())  # (N, D)

    __call__ = encode

    def __getattr__(self, name: str) -> Any:  # tokenize, tokenizer_json, export_info, graph, ... of the student
        if name in ("base", "projection"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"ProjectedEncoder(identity={self.identity!r}, dim={self.dim}, base={self.base!r})"


def save_projection(path: str | os.PathLike, projection: Projection, student: Any, teacher_identity: str,
                    metrics: dict[str, float] | None = None) -> Path:
    """Write a projection file (plain arrays; written atomically).

    Examples:
        >>> save_projection("proj.npz", Projection({"W": np.eye(2), "b": np.zeros(2)}), enc, "t")  # doctest: +SKIP
    """
    meta = {"format": FORMAT, "kind": "mlp" if projection.mlp else "linear", "student_identity": student.identity,
            "student_source": str(student.source), "teacher_identity": str(teacher_identity),
            "metrics": metrics or {}}
    arrays = {**projection.arrays(), "meta": np.array(json.dumps(meta))}
    return save_npz(path, arrays)


def read_projection(path: str | os.PathLike) -> tuple[Projection, dict]:
    """``(Projection, meta)`` from a projection file (``allow_pickle=False``).

    Raises:
        FileNotFoundError: no such file.
        ProjectionError: not a projection file written by ``yw align-text``.

    Examples:
        >>> proj, meta = read_projection("proj.npz")  # doctest: +SKIP
        >>> meta["student_source"], (proj.in_dim, proj.out_dim)  # doctest: +SKIP
    """
    arrays = load_npz(path, what="text projection file", error=ProjectionError)
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except (KeyError, ValueError):
        meta = {}
    if meta.get("format") != FORMAT:
        raise ProjectionError(f"{path} is not a text projection file (written by `yw align-text`; format {FORMAT}).")
    return Projection(arrays), meta


def load_projected_encoder(path: str | os.PathLike, student: Any = None) -> ProjectedEncoder:
    """The student encoder (``student``, else the file's ``student_source``) with the projection of ``path``.

    Raises:
        ProjectionError: the projection was fitted for another encoder (identities differ), or bad file.

    Examples:
        >>> enc = load_projected_encoder("proj.npz")  # doctest: +SKIP
        >>> enc = load_projected_encoder("proj.npz", student="/moved/minilm")  # doctest: +SKIP
    """
    projection, meta = read_projection(path)
    src = student if student is not None else meta.get("student_source")
    if src is None:
        raise ProjectionError(f"{path}: no student encoder recorded; pass student=.")
    if not is_encoder(src) and not Path(str(src)).expanduser().exists():
        raise FileNotFoundError(f"{path}: the student encoder it was fitted for, {src}, does not exist; pass its "
                                "new location as student= (Python) or encoder=<folder> projection=... .")
    base = load_text_encoder(src)
    if meta.get("student_identity") != base.identity:
        raise ProjectionError(f"{path} was fitted for the text encoder {meta.get('student_identity')} "
                              f"({meta.get('student_source')}), not for {base.identity} ({base.source}); "
                              "fit one for this encoder with `yw align-text`.")
    return ProjectedEncoder(base, projection, source=str(path))


# ----------------------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------------------
def _ridge(x: torch.Tensor, y: torch.Tensor, lam: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares ``W, b`` with ``x W + b ~ y`` (ridge ``lam`` on W), in float64."""
    x64, y64 = x.double(), y.double()
    xm, ym = x64.mean(0), y64.mean(0)
    xc, yc = x64 - xm, y64 - ym  # (N, Din), (N, Dout)
    a = xc.T @ xc + lam * len(x) * torch.eye(x.shape[1], dtype=torch.float64)  # (Din, Din)
    w = torch.linalg.solve(a, xc.T @ yc)  # (Din, Dout)
    return w.float(), (ym - xm @ w).float()


def fit_projection(x: torch.Tensor, y: torch.Tensor, kind: str = "linear", epochs: int = 300, lr: float = 1e-3,
                   hidden: int = 512, seed: int = 0) -> Projection:
    """Fit ``P`` with ``P(x) ~ y`` on unit-norm rows: ridge start, then Adam on MSE + (1 - cosine).

    Args:
        x: ``(N, Din)`` student embeddings.
        y: ``(N, Dout)`` teacher embeddings.
        kind: ``"linear"`` or ``"mlp"`` (residual MLP, ``hidden`` units, last layer starting at zero).
        epochs: Full-batch optimisation steps after the ridge start (0: ridge only).
        lr: Adam learning rate.
        hidden: MLP width.
        seed: Random seed (MLP initialisation).

    Examples:
        >>> p = fit_projection(torch.randn(50, 8), torch.randn(50, 16), epochs=10)
        >>> (p.in_dim, p.out_dim)
        (8, 16)
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    x, y = F.normalize(x.float(), dim=-1), F.normalize(y.float(), dim=-1)
    w, b = _ridge(x, y)
    arrays = {"W": w.numpy(), "b": b.numpy()}
    if kind == "mlp":
        g = torch.Generator().manual_seed(seed)
        arrays.update(W1=(torch.randn(x.shape[1], hidden, generator=g) / x.shape[1] ** 0.5).numpy(),
                      b1=np.zeros(hidden, np.float32), W2=np.zeros((hidden, y.shape[1]), np.float32))
    proj = Projection(arrays).train()
    opt = torch.optim.Adam(proj.parameters(), lr=lr)
    threads = torch.get_num_threads()
    if len(x) < 20000:  # small full-batch steps: one thread avoids thread hand-off costs (10-50x on busy CPUs)
        torch.set_num_threads(1)
    try:
        for _ in range(int(epochs)):
            p = proj.raw(x)  # (N, Dout)
            loss = F.mse_loss(p, y) + (1 - F.cosine_similarity(p, y, dim=-1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return proj.eval().requires_grad_(False)


def alignment_metrics(student: torch.Tensor, teacher: torch.Tensor, target: Sequence[int],
                      heldout: Sequence[int] | None = None) -> dict[str, float]:
    """``cosine`` (mean over ``heldout`` rows, default all) and top-1 ``retrieval`` over all rows.

    Args:
        student: ``(N, D)`` student embeddings (projected), one per sample.
        teacher: ``(M, D)`` teacher embeddings of the M distinct names.
        target: ``(N,)`` index of each sample's name in ``teacher``.
        heldout: Sample indices for the cosine (and ``retrieval_heldout``).

    Examples:
        >>> e = F.normalize(torch.randn(5, 8), dim=-1)
        >>> alignment_metrics(e, e, range(5))["retrieval"]
        1.0
    """
    s, t = F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1)
    tgt = torch.as_tensor(list(target))
    cos = (s * t[tgt]).sum(-1)  # (N,)
    hit = ((s @ t.T).argmax(-1) == tgt).float()  # (N,) top-1 among all names
    idx = torch.as_tensor(list(range(len(s)) if heldout is None else heldout), dtype=torch.long)
    nan = float("nan")
    return {"cosine": float(cos[idx].mean()) if len(idx) else nan, "retrieval": float(hit.mean()),
            "retrieval_heldout": float(hit[idx].mean()) if len(idx) else nan, "n": len(s), "n_heldout": len(idx),
            "n_names": len(t)}


# ----------------------------------------------------------------------------------------------------------------------
# Data and the trainer
# ----------------------------------------------------------------------------------------------------------------------
def _read_list(value: Any, what: str) -> list:
    """A list from a list, a comma-separated string, or a ``.json`` / ``.txt`` file path."""
    if value is None:
        return []
    if isinstance(value, (str, os.PathLike)) and Path(str(value)).suffix.lower() in (".json", ".txt"):
        p = Path(str(value)).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{what} file not found: {p}")
        if p.suffix.lower() == ".txt":
            return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            value = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{what} must be a list, a comma-separated string or a .json / .txt file, got "
                         f"{type(value).__name__}")
    return list(value)


def gather_texts(texts: Any = None, json_file: Any = None, pairs: Any = None) -> tuple[list[str], list[str]]:
    """``(student_texts, teacher_texts)``: English texts seen by both, then parallel pairs (student sees the 2nd).

    ``json_file`` is an official class-text JSON (``[["person", "man"], ["bus"]]``: every text is used). Duplicates
    are dropped; every text must be a non-empty string.

    Examples:
        >>> gather_texts("dog,cat", pairs=[["a dog", "一只狗"]])
        (['dog', 'cat', '一只狗'], ['dog', 'cat', 'a dog'])
    """
    english = [t for t in _read_list(texts, "texts")]
    for item in _read_list(json_file, "json"):
        english += item if isinstance(item, list) else [item]
    english = check_texts(list(dict.fromkeys(english)), "align-text texts")
    student, teacher = list(english), list(english)
    for i, pair in enumerate(_read_list(pairs, "pairs")):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"pairs item {i} must be [english, translation], got {pair!r}")
        en, tr = check_texts(list(pair), f"align-text pairs item {i}")
        teacher.append(en)
        student.append(tr)
    seen = set()
    keep = [i for i, st in enumerate(zip(student, teacher)) if not (st in seen or seen.add(st))]
    return [student[i] for i in keep], [teacher[i] for i in keep]


def _embed(encoder: Any, texts: list[str], cache: Any, batch: int) -> torch.Tensor:
    """Unit-norm embeddings through the embedding cache (keyed by the encoder's identity)."""
    from yw_ext.text.cache import encode_texts

    return F.normalize(encode_texts(encoder, texts, cache=cache, batch=batch).float().cpu(), dim=-1)


def _split(n: int, val: float, seed: int) -> tuple[list[int], list[int]]:
    """Random train / held-out split of ``range(n)`` (held-out: ``round(n * val)``, at least 1)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = max(1, round(n * val))
    return sorted(idx[k:]), sorted(idx[:k])


def align_text(student: Any, teacher: Any = None, texts: Any = None, json_file: Any = None, pairs: Any = None,
               out: str | os.PathLike | None = "text_projection.npz", kind: str = "linear", epochs: int = 300,
               lr: float = 1e-3, val: float = 0.1, seed: int = 0, check: bool = False, cache: Any = None,
               batch: int = 256) -> dict[str, Any]:
    """Fit (or, with ``check=True``, only measure) the map from ``student`` to the ``teacher`` CLIP text space.

    Args:
        student: Encoder or path (any format of ``load_text_encoder``; a projection ``.npz`` for ``check``).
        teacher: The detector's CLIP (encoder or path); default ``$YW_CLIP`` / the default CLIP.
        texts: English texts (list, ``"a,b,c"``, or a ``.txt`` (one per line) / ``.json`` list file).
        json_file: An official class-text JSON; all its texts are used.
        pairs: Parallel pairs ``[[english, translation], ...]`` (list or ``.json`` file).
        out: Projection file to write (training only).
        kind: ``"linear"`` or ``"mlp"``.
        epochs: Optimisation steps after the ridge start.
        lr: Learning rate.
        val: Held-out fraction (training); the cosine is measured on it.
        seed: Split and initialisation seed.
        check: Only report ``cosine`` and ``retrieval`` of ``student`` as it is (no training, nothing written).
        cache: Embedding cache (``EmbeddingCache``, False, or None for the default).
        batch: Texts per encoder forward.

    Returns:
        (dict): ``cosine``, ``retrieval``, ``retrieval_heldout``, counts, ``student`` / ``teacher`` identities,
        ``out`` (the written file, or None).

    Raises:
        ValueError: no texts, too few to hold some out, widths that differ in ``check`` mode, bad ``kind``.

    Examples:
        >>> rep = align_text("st-folder", texts="person,bus,dog,cat,car", check=True)  # doctest: +SKIP
    """
    from yw_ext.text.vocabulary import resolve_text_encoder

    s_texts, t_texts = gather_texts(texts, json_file, pairs)
    if not s_texts:
        raise ValueError("align-text: no texts; give texts=, json= or pairs=.")
    stu, tea = load_text_encoder(student), resolve_text_encoder(teacher)
    names = list(dict.fromkeys(t_texts))
    target = [names.index(t) for t in t_texts]
    xs, yt = _embed(stu, s_texts, cache, batch), _embed(tea, names, cache, batch)  # (N, Ds), (M, Dt)
    report = {"student": stu.identity, "teacher": tea.identity, "out": None}
    if check:
        if stu.dim != tea.dim:
            raise ValueError(f"align-text check: the student ({describe(stu)}) gives {stu.dim}-d embeddings, the "
                             f"teacher {tea.dim}-d; fit a projection first (yw align-text without check=True).")
        return {**alignment_metrics(xs, yt, target), **report}
    if len(s_texts) < 5:
        raise ValueError(f"align-text: {len(s_texts)} texts are too few to fit and hold some out (need >= 5).")
    train, held = _split(len(s_texts), val, seed)
    proj = fit_projection(xs[train], yt[[target[i] for i in train]], kind, epochs, lr, seed=seed)
    with torch.no_grad():
        metrics = alignment_metrics(proj(xs), yt, target, held)
    LOGGER.info(f"align-text: held-out cosine {metrics['cosine']:.4f}, top-1 retrieval {metrics['retrieval']:.3f} "
                f"over {len(names)} names ({len(train)} train / {len(held)} held-out texts)")
    if out is not None:
        report["out"] = str(save_projection(out, proj, stu, tea.identity, metrics))
    return {**metrics, **report}


__all__ = ["KINDS", "Projection", "ProjectedEncoder", "ProjectionError", "align_text", "alignment_metrics",
           "fit_projection", "gather_texts", "load_projected_encoder", "read_projection", "save_projection"]
