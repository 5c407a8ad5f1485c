# yw_ext, AGPL-3.0 license
"""Test helper: tiny random transformer text encoders saved as Sentence-Transformers and M-CLIP folders.

Everything is built from configs (no download): a word-piece vocabulary with a few CJK characters, a tiny BERT or
XLM-R (width 32, 2 layers), saved with ``save_pretrained``; the Sentence-Transformers folder is written by the
`sentence-transformers` library itself (``SentenceTransformer(modules=[...]).save``); the M-CLIP folder as the
``multilingual_clip`` package lays it out (``transformer.*`` + ``LinearTransformation.*``, model_type ``M-CLIP``).

Examples:
    >>> from tests._tiny_text import save_transformer, save_st, save_mclip
    >>> bert = save_transformer("bert", tmp / "bert"); st = save_st(bert, tmp / "st", dense=512)
"""

from __future__ import annotations

import inspect
import json
import random
import warnings
from pathlib import Path

import torch

CHARS = list("abcdefghijklmnopqrstuvwxyz") + list("人公共汽车狗猫一只")
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARS + ["##" + c for c in CHARS[:26]]
         + ["person", "bus", "dog", "cat", "a", "the", "photo", "of"])


def save_transformer(kind: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random ``bert`` or ``xlm-roberta`` model with a word-piece tokenizer, saved in ``folder``."""
    from transformers import BertConfig, BertTokenizerFast, XLMRobertaConfig
    from transformers import AutoModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:  # transformers >= 5
        tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)})
    else:
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    assert tok.convert_tokens_to_ids("人") == VOCAB.index("人"), "tokenizer vocabulary not applied"
    tok.save_pretrained(str(folder))
    sizes = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64)
    cfg = BertConfig(max_position_embeddings=64, **sizes) if kind == "bert" else \
        XLMRobertaConfig(max_position_embeddings=66, pad_token_id=0, bos_token_id=2, eos_token_id=3, **sizes)
    torch.manual_seed(seed)
    model = AutoModel.from_config(cfg)
    with torch.no_grad():  # non-default LayerNorm / bias values so that parity tests can fail
        for n, p in model.named_parameters():
            if n.endswith("bias") or "LayerNorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(folder))
    return folder


def save_st(transformer: Path, folder: Path, dense: int | None = 512, max_seq_length: int = 16, seed: int = 0,
            pooling: str = "mean") -> Path:
    """A Sentence-Transformers folder: Transformer + Pooling (+ Dense(W -> ``dense``), Identity), via the library."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    tr = Transformer(str(transformer), max_seq_length=max_seq_length)
    mods = [tr, Pooling(tr.get_embedding_dimension(), pooling)]
    if dense:
        torch.manual_seed(seed)
        mods.append(Dense(tr.get_embedding_dimension(), dense, bias=True, activation_function=torch.nn.Identity()))
        with torch.no_grad():
            mods[-1].linear.bias.normal_(0, 0.1)
    SentenceTransformer(modules=mods, device="cpu").save(str(folder))
    return Path(folder)


def save_mclip(transformer: Path, folder: Path, linear: torch.nn.Linear) -> Path:
    """An M-CLIP-style folder from a saved transformer and a ``Linear(W, D)`` (its own tokenizer files copied)."""
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {f"transformer.{k}": v for k, v in load_file(str(transformer / "model.safetensors")).items()}
    sd["LinearTransformation.weight"] = linear.weight.detach().clone()
    sd["LinearTransformation.bias"] = linear.bias.detach().clone()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    cfg = {"model_type": "M-CLIP", "architectures": ["MultilingualCLIP"], "modelBase": str(transformer),
           "transformerDimensions": linear.in_features, "numDims": linear.out_features}
    (folder / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (transformer / name).is_file():
            (folder / name).write_bytes((transformer / name).read_bytes())
    return folder


def dense_linear(st_folder: Path) -> torch.nn.Linear:
    """The ``Dense`` layer of a Sentence-Transformers folder as an ``nn.Linear``."""
    from safetensors.torch import load_file

    sd = load_file(str(Path(st_folder) / "2_Dense" / "model.safetensors"))
    lin = torch.nn.Linear(sd["linear.weight"].shape[1], sd["linear.weight"].shape[0])
    lin.load_state_dict({"weight": sd["linear.weight"], "bias": sd["linear.bias"]})
    return lin


def random_names(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct random lower-case words of 4-9 letters."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice(CHARS[:26]) for _ in range(rng.randint(4, 9)))] = None
    return list(out)
