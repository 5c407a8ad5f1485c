# yw_ext, AGPL-3.0 license
"""Transformer text encoders: a Hugging Face transformer + pooling + dense layers + L2 normalisation.

Two folder formats give this encoder (both read offline, from local files only):

- **Sentence-Transformers** (``modules.json``; e.g. ``clip-ViT-B-32-multilingual-v1``, a student of CLIP ViT-B/32's
  text space in 50+ languages): module 0 a ``Transformer`` (the folder itself, or a sub-folder), then ``Pooling``
  (``mean``, ``cls``, ``max``, ``mean_sqrt_len_tokens``, alone or concatenated), ``Dense`` (Identity or Tanh) and
  ``Normalize`` modules, in either the legacy (``pooling_mode_mean_tokens``, ``pytorch_model.bin``) or the v3+ layout.
  Read by this module, not by the ``sentence-transformers`` library (which the tests use as the reference): the
  same graph is what ``yw_ext.export.text`` exports to ONNX.
- **Multilingual-CLIP** (``yw_ext.text.mclip``): a transformer, mean pooling and one linear projection.

``transformers`` is used for what it must do: build the transformer network from its ``config.json``
(``AutoModel``) and load the tokenizer (``AutoTokenizer``, as Sentence-Transformers does, so that tokens match).
The exported runtime needs neither: it uses the ``tokenizers`` library and the ``tokenizer.json`` written next to
the ONNX file.

Examples:
    >>> from yw_ext.text.sentence import load_sentence_transformer
    >>> enc = load_sentence_transformer("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
    >>> enc.encode(["一只狗", "a dog"]).shape  # doctest: +SKIP
    torch.Size([2, 512])
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from yw_ext.text.encoders import check_texts

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens")
_LEGACY_POOLING = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                   "pooling_mode_mean_tokens": "mean", "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                   "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_ACTIVATIONS = {"Identity": nn.Identity, "Tanh": nn.Tanh}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                    "merges.txt", "sentencepiece.bpe.model", "spiece.model", "added_tokens.json")


class Pool(nn.Module):
    """Masked pooling of token embeddings ``(N, L, W)`` -> ``(N, W * len(modes))`` (Sentence-Transformers' modes).

    Examples:
        >>> Pool(("mean",))(torch.ones(1, 3, 4), torch.tensor([[1, 1, 0]])).shape
        torch.Size([1, 4])
    """

    def __init__(self, modes: Sequence[str]):
        """Check the modes (see ``POOLING_MODES``)."""
        super().__init__()
        bad = [m for m in modes if m not in POOLING_MODES]
        if bad or not modes:
            raise ValueError(f"pooling mode(s) {bad or list(modes)} not supported; supported: {list(POOLING_MODES)}.")
        self.modes = tuple(modes)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``tokens`` over the positions where ``mask`` is 1."""
        m = mask.unsqueeze(-1).to(tokens.dtype)  # (N, L, 1)
        count = m.sum(1).clamp(min=1e-9)  # (N, 1)
        out = []
        for mode in self.modes:
            if mode == "cls":
                out.append(tokens[:, 0])
            elif mode == "max":
                out.append(tokens.masked_fill(m == 0, -1e9).max(1).values)
            else:
                s = (tokens * m).sum(1)  # (N, W)
                out.append(s / count if mode == "mean" else s / count.sqrt())
        return torch.cat(out, dim=-1)


class PooledGraph(nn.Module):
    """``(input_ids, attention_mask)`` -> L2-normalised embeddings: transformer, pooling, head layers, normalise.

    The one graph of every transformer text encoder: ``TransformerTextEncoder.encode`` runs it and
    ``yw_ext.export.text`` traces it.

    Examples:
        >>> g = enc.graph  # doctest: +SKIP
        >>> g(ids, mask).norm(dim=-1)  # doctest: +SKIP
    """

    def __init__(self, transformer: nn.Module, pool: Pool, head: nn.Module):
        """Keep the modules (``head``: ``nn.Sequential`` of Dense / activation / Normalize layers)."""
        super().__init__()
        self.transformer, self.pool, self.head = transformer, pool, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(N, L)`` int64 ids and mask -> ``(N, D)`` float32 unit-norm embeddings."""
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]  # (N, L, W)
        x = self.head(self.pool(tokens, attention_mask))  # (N, D)
        return F.normalize(x.float(), dim=-1)


class TransformerTextEncoder:
    """A transformer text encoder (Sentence-Transformers or M-CLIP folder) with the yw_ext text-encoder interface.

    Attributes:
        graph (PooledGraph): The network (CPU, float32, eval).
        tokenizer: The ``transformers`` tokenizer (fast) of the folder.
        dim (int): Embedding width D.
        identity (str): Content hash of weights, tokenizer files and settings (the embedding-cache key).
        source (str): The folder.
        kind (str): ``"sentence-transformers"`` or ``"m-clip"``.
        max_length (int): Tokens per text (longer texts are truncated).
        lowercase (bool): Texts are lower-cased before tokenising.
        device (torch.device): Where the graph runs.

    Examples:
        >>> enc = load_sentence_transformer("st-folder")  # doctest: +SKIP
        >>> float(enc.encode(["a dog"]).norm())  # doctest: +SKIP
        1.0
    """

    def __init__(self, graph: PooledGraph, tokenizer: Any, max_length: int, lowercase: bool, source: str, kind: str,
                 files: Sequence[Path] = ()):
        """Wrap a built graph; use ``load_sentence_transformer`` / ``yw_ext.text.mclip.load_mclip``."""
        self.graph = graph.float().eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.lowercase = tokenizer, int(max_length), bool(lowercase)
        self.source, self.kind = str(source), kind
        self.device = torch.device("cpu")
        w = int(graph.transformer.config.hidden_size)
        with torch.no_grad():  # width after pooling and the head layers
            self.dim = int(graph.head(graph.pool(torch.zeros(1, 1, w), torch.ones(1, 1))).shape[-1])
        self.identity = self._identity(files)

    def _identity(self, files: Sequence[Path]) -> str:
        """``<kind>:<model_type>-w<W>-l<layers>-d<D>:<sha256[:16]>`` over tensors, tokenizer files and settings."""
        h = hashlib.sha256(json.dumps([self.kind, self.max_length, self.lowercase, list(self.graph.pool.modes),
                                       repr(self.graph.head)]).encode())
        sd = self.graph.state_dict()
        for k in sorted(sd):
            t = sd[k].detach().to("cpu", torch.float32 if sd[k].is_floating_point() else torch.int64).contiguous()
            h.update(f"{k}:{tuple(t.shape)};".encode())
            h.update(t.numpy().reshape(-1).view("uint8"))
        for f in sorted(files, key=lambda p: p.name):
            h.update(f.name.encode() + f.read_bytes())
        cfg = self.graph.transformer.config
        tag = f"{cfg.model_type}-w{cfg.hidden_size}-l{cfg.num_hidden_layers}-d{self.dim}"
        return f"{self.kind}:{tag}:{h.hexdigest()[:16]}"

    def to(self, device: Any) -> TransformerTextEncoder:
        """Move the graph to ``device`` in place; returns self."""
        self.device = torch.device(device)
        self.graph.to(self.device)
        return self

    def tokenize(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}``: ``(N, L)`` int64, padded to the longest text, cut at ``max_length``.

        Raises:
            ValueError: not strings, or an empty text.
        """
        texts = check_texts(texts, self.source)
        if self.lowercase:
            texts = [t.lower() for t in texts]
        enc = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_length,
                             return_tensors="pt")
        return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}

    def encode(self, texts: str | Sequence[str], batch: int = 256) -> torch.Tensor:
        """``(N, D)`` float32 L2-normalised embeddings on ``device``, computed in batches.

        Raises:
            ValueError: not strings, or an empty text (naming its index).

        Examples:
            >>> enc.encode(["人", "公共汽车"]).shape  # doctest: +SKIP
            torch.Size([2, 512])
        """
        texts = check_texts(texts, self.source)
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch!r}")
        if not texts:
            return torch.zeros((0, self.dim), device=self.device)
        out = []
        with torch.no_grad():  # ordinary tensors (usable later with autograd), unlike inference_mode
            for i in range(0, len(texts), batch):
                t = self.tokenize(texts[i: i + batch])
                out.append(self.graph(t["input_ids"].to(self.device), t["attention_mask"].to(self.device)))
        return torch.cat(out)  # (N, D)

    __call__ = encode

    def tokenizer_json(self) -> str:
        """The tokenizer as a ``tokenizers`` JSON string (no padding / truncation set: the runtime sets them)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{self.source}: the tokenizer has no fast (tokenizers) version, which the exported "
                             "runtime needs; save the folder with a tokenizer.json.")
        data = json.loads(backend.to_str())
        data["padding"], data["truncation"] = None, None
        return json.dumps(data, ensure_ascii=False)

    def export_info(self) -> dict[str, Any]:
        """What the ONNX export records so the runtime tokenises as this encoder does."""
        return {"max_length": self.max_length, "lowercase": int(self.lowercase),
                "pad_id": int(self.tokenizer.pad_token_id or 0)}

    def __repr__(self) -> str:
        return (f"TransformerTextEncoder({self.kind}, identity={self.identity!r}, dim={self.dim}, "
                f"source={self.source!r})")


# ----------------------------------------------------------------------------------------------------------------------
# Folder readers
# ----------------------------------------------------------------------------------------------------------------------
def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; ValueError naming the file when it is not one.

    Examples:
        >>> read_json(Path("st-folder/modules.json"), "modules.json")  # doctest: +SKIP
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from e
    if not isinstance(data, (dict, list)):
        raise ValueError(f"{path}: {what} must be a JSON object or list, got {type(data).__name__}")
    return data


def read_tensors(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` or ``pytorch_model.bin`` in ``folder`` (no pickled code).

    Examples:
        >>> sorted(read_tensors(Path("st-folder/2_Dense"), "Dense layer"))  # doctest: +SKIP
        ['linear.bias', 'linear.weight']
    """
    st, pt = folder / "model.safetensors", folder / "pytorch_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st), device="cpu")
    if pt.is_file():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no weights for the {what} (expected model.safetensors or pytorch_model.bin).")


def load_transformer(folder: Path, config: Any = None, state_dict: dict | None = None) -> nn.Module:
    """A ``transformers`` ``AutoModel`` from a local folder (or ``config`` + ``state_dict``), eager attention.

    Eager attention keeps encoding and the exported ONNX graph the same computation (differences to SDPA are
    ~1e-7). Buffers such as ``position_ids`` may be absent from ``state_dict``; any other missing or unexpected
    tensor is an error naming it.

    Examples:
        >>> load_transformer(Path("st-folder")).config.model_type  # doctest: +SKIP
        'bert'
    """
    from transformers import AutoModel

    if state_dict is None:
        return AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager").eval()
    config._attn_implementation = "eager"
    model = AutoModel.from_config(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{folder}: transformer tensors do not match its config ({config.model_type}); missing: "
                         f"{missing[:10]}; unexpected: {unexpected[:10]}")
    return model.eval()


def load_tokenizer(folder: Path) -> Any:
    """The folder's fast tokenizer (``transformers.AutoTokenizer``, local files only).

    Examples:
        >>> load_tokenizer(Path("st-folder"))("a dog")["input_ids"]  # doctest: +SKIP
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder}: no usable tokenizer ({type(e).__name__}: {e}); the folder needs its tokenizer "
                         "files (tokenizer.json, or vocab / sentencepiece files with tokenizer_config.json).") from e


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files of ``folder`` that exist (part of the encoder identity).

    Examples:
        >>> [p.name for p in tokenizer_files(Path("st-folder"))]  # doctest: +SKIP
        ['tokenizer.json', 'tokenizer_config.json', 'vocab.txt']
    """
    return [folder / n for n in _TOKENIZER_FILES if (folder / n).is_file()]


def max_length_of(tokenizer: Any, config: Any, requested: Any = None) -> int:
    """Tokens per text: ``requested`` (``max_seq_length``), else the tokenizer's limit, capped by the positions.

    Examples:
        >>> max_length_of(tok, bert_config, 128)  # doctest: +SKIP
        128
    """
    limit = int(getattr(config, "max_position_embeddings", 512) or 512)
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= 2  # positions start after the padding index
    if requested:
        return min(int(requested), limit)
    tok = int(getattr(tokenizer, "model_max_length", limit) or limit)
    return min(tok, limit)


def _pool_modes(folder: Path) -> tuple[str, ...]:
    """Pooling modes of a Sentence-Transformers ``Pooling`` folder, legacy or current ``config.json``."""
    cfg = read_json(folder / "config.json", "Pooling config")
    modes = cfg.get("pooling_mode")
    if modes is None:
        modes = [m for k, m in _LEGACY_POOLING.items() if cfg.get(k)] or ["mean"]
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    if cfg.get("include_prompt") is False:
        raise ValueError(f"{folder}: pooling with include_prompt=False is not supported.")
    try:
        return Pool(modes).modes
    except ValueError as e:
        raise ValueError(f"{folder}: {e}") from None


def _dense(folder: Path) -> list[nn.Module]:
    """A Sentence-Transformers ``Dense`` folder as ``[Linear, activation]``."""
    cfg = read_json(folder / "config.json", "Dense config")
    act = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1]
    if act not in _ACTIVATIONS:
        raise ValueError(f"{folder}: Dense activation {act!r} not supported; supported: {sorted(_ACTIVATIONS)}.")
    lin = nn.Linear(int(cfg["in_features"]), int(cfg["out_features"]), bias=bool(cfg.get("bias", True)))
    sd = {k.removeprefix("linear."): v for k, v in read_tensors(folder, "Dense layer").items()}
    try:
        lin.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder}: Dense weights do not match its config: {e}") from None
    return [lin, _ACTIVATIONS[act]()]


class _Normalize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1)


def load_sentence_transformer(folder: str | os.PathLike) -> TransformerTextEncoder:
    """Read a Sentence-Transformers folder (``modules.json``) into a ``TransformerTextEncoder``.

    Args:
        folder: The model folder (as ``SentenceTransformer.save`` writes it, or downloaded from the Hub).

    Raises:
        FileNotFoundError: no such folder, no weights.
        ValueError: an unsupported module, pooling mode or activation (named), or mismatched tensors.

    Examples:
        >>> enc = load_sentence_transformer("clip-ViT-B-32-multilingual-v1")  # doctest: +SKIP
    """
    folder = Path(folder).expanduser()
    modules = read_json(folder / "modules.json", "Sentence-Transformers modules.json")
    if not isinstance(modules, list) or not modules:
        raise ValueError(f"{folder}/modules.json: expected a non-empty list of modules.")
    modules = sorted(modules, key=lambda m: int(m.get("idx", 0)))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer":
        raise ValueError(f"{folder}: the first Sentence-Transformers module must be a Transformer, got {kinds[0]!r}.")
    tr_dir = folder / modules[0].get("path", "")
    sbert = read_json(tr_dir / "sentence_bert_config.json", "sentence_bert_config") \
        if (tr_dir / "sentence_bert_config.json").is_file() else {}
    transformer = load_transformer(tr_dir)
    pool, head, files = None, [], tokenizer_files(tr_dir)
    for m, kind in zip(modules[1:], kinds[1:]):
        sub = folder / m.get("path", "")
        if kind == "Pooling" and pool is None:
            pool = Pool(_pool_modes(sub))
        elif kind == "Dense" and pool is not None:
            head += _dense(sub)
        elif kind == "Normalize" and pool is not None:
            head.append(_Normalize())
        else:
            raise ValueError(f"{folder}: Sentence-Transformers module {m.get('type')!r} (at {sub.name or '.'}) is "
                             "not supported here; supported: Transformer, Pooling, Dense, Normalize (in that order).")
    if pool is None:
        raise ValueError(f"{folder}: no Pooling module after the Transformer.")
    tokenizer = load_tokenizer(tr_dir)
    max_len = max_length_of(tokenizer, transformer.config, sbert.get("max_seq_length"))
    graph = PooledGraph(transformer, pool, nn.Sequential(*head))
    return TransformerTextEncoder(graph, tokenizer, max_len, bool(sbert.get("do_lower_case", False)), str(folder),
                                  "sentence-transformers", files)


__all__ = ["POOLING_MODES", "Pool", "PooledGraph", "TransformerTextEncoder", "load_sentence_transformer"]
