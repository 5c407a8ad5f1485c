"""CLIP's byte-level BPE tokenizer without torch (the OpenAI CLIP / open_clip ``SimpleTokenizer`` algorithm).

open_clip's tokenizer module imports torch, so deployments without PyTorch use this one. It reads the same
merges file, ``bpe_simple_vocab_16e6.txt.gz`` (OpenAI CLIP, MIT license), by path, cleans text as open_clip's
default ``clean="lower"`` (``ftfy.fix_text``, HTML unescape twice, whitespace collapsed, lower case), splits it with
the same ``regex`` pattern and returns the same token ids: ``tests/test_export.py`` compares it with open_clip.

Where the merges file comes from (``find_bpe``): an explicit path; ``$YW_BPE``; a copy next to an exported text
encoder (``yw export model=clip`` writes one); open_clip's package data (located without importing open_clip).

Examples:
    >>> tok = Tokenizer()  # doctest: +SKIP
    >>> tok(["a photo of a dog"])[0, :7].tolist()  # doctest: +SKIP
    [49406, 320, 1125, 539, 320, 1929, 49407]
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
ENV_BPE = "YW_BPE"
CONTEXT_LENGTH = 77
_PATTERN = r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def find_bpe(path: str | os.PathLike | None = None, near: str | os.PathLike | None = None) -> Path:
    """Locate the BPE merges file.

    Args:
        path: Explicit file (used when given).
        near: A file (e.g. an exported text encoder) whose folder may hold a copy.

    Raises:
        FileNotFoundError: none found; the message lists where it looked.
    """
    tried = []
    candidates = []
    if path is not None:
        candidates.append(Path(path).expanduser())
    else:
        if os.environ.get(ENV_BPE, "").strip():
            candidates.append(Path(os.environ[ENV_BPE]).expanduser())
        if near is not None:
            candidates.append(Path(near).expanduser().parent / BPE_FILE)
        try:  # open_clip's package data, found without importing open_clip (which imports torch)
            spec = importlib.util.find_spec("open_clip")
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            candidates.append(Path(spec.origin).parent / BPE_FILE)
    for c in candidates:
        if c.is_file():
            return c
        tried.append(str(c))
    raise FileNotFoundError(
        f"CLIP BPE merges file {BPE_FILE} not found (looked at: {tried or 'nowhere'}). Pass its path, set {ENV_BPE}, "
        "or keep the copy that `yw export model=clip` writes next to the text encoder."
    )


@lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-unicode table of GPT-2 / CLIP BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return set(zip(word[:-1], word[1:]))


class Tokenizer:
    """CLIP BPE tokenizer: texts -> ``(N, context_length)`` int64 token ids, as ``open_clip.tokenize``.

    Args:
        bpe_path: The merges file (see ``find_bpe`` for the default search).
        context_length: Token sequence length (77 for CLIP).

    Examples:
        >>> tok = Tokenizer()  # doctest: +SKIP
        >>> tok("a bus").shape  # doctest: +SKIP
        (1, 77)
    """

    def __init__(self, bpe_path: str | os.PathLike | None = None, context_length: int = CONTEXT_LENGTH):
        """Read the merges and build the vocabulary (49408 tokens for CLIP)."""
        import ftfy  # noqa: F401  (checked here: cleaning needs it)
        import regex

        self.bpe_path = find_bpe(bpe_path)
        self.context_length = int(context_length)
        self.byte_encoder = _bytes_to_unicode()
        merges = gzip.open(self.bpe_path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in merges[1 : 49152 - 256 - 2 + 1]]
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        specials = ["<start_of_text>", "<end_of_text>"]
        vocab.extend(specials)
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.cache = {t: t for t in specials}
        self.pat = regex.compile(_PATTERN, regex.IGNORECASE)
        self.sot, self.eot = self.encoder[specials[0]], self.encoder[specials[1]]
        self.vocab_size = len(self.encoder)

    @staticmethod
    def clean(text: str) -> str:
        """open_clip's ``clean="lower"``: ftfy, HTML unescape (twice), whitespace collapsed, lower case."""
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
        return " ".join(text.split()).strip().lower()

    def bpe(self, token: str) -> str:
        """Merge the characters of one pre-token by BPE rank; returns space-separated sub-words."""
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new.extend(word[i:])
                    break
                new.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new.append(first + second)
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            word = tuple(new)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start / end tokens."""
        ids = []
        for tok in self.pat.findall(self.clean(text)):
            tok = "".join(self.byte_encoder[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(tok).split(" "))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """``(N, context_length)`` int64 tokens, zero-padded; longer texts are cut, keeping an end token last."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ValueError(f"texts must be strings; not strings at indices {bad[:10]}.")
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for i, t in enumerate(texts):
            ids = [self.sot, *self.encode(t), self.eot]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot
            out[i, : len(ids)] = ids
        return out


__all__ = ["Tokenizer", "find_bpe", "BPE_FILE", "CONTEXT_LENGTH"]
