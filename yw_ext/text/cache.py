# yw_ext, AGPL-3.0 license
"""On-disk cache of text embeddings, keyed by (encoder identity, text), in one SQLite file.

Examples:
    >>> from yw_ext.text import EmbeddingCache, encode_texts, load_clip
    >>> enc = load_clip()
    >>> emb = encode_texts(enc, ["person", "bus"])  # encodes once, then reads the cache
    >>> emb = encode_texts(enc, ["person", "bus"], cache=False)  # no cache
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from yw_ext.core.log import LOGGER

from yw_ext.text.clip import _as_text_list

__all__ = ("EmbeddingCache", "encode_texts", "default_cache_dir")

ENV_CACHE_DIR = "YW_CACHE_DIR"
DB_NAME = "text_embeddings.sqlite3"
_CHUNK = 900  # SQL variables per query (old SQLite builds allow at most 999)
BUSY_TIMEOUT_S = 20.0  # SQLite's busy handler waits this long for another process's lock
RETRIES = 6  # further attempts after a lock error the busy handler did not wait on (see ``_retrying``)


def _is_lock_error(e: BaseException) -> bool:
    """True for SQLite's transient "database is locked" / "database table is locked" / "busy" errors."""
    text = str(e).lower()
    return isinstance(e, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


def _retrying(fn, what: str):
    """Call ``fn()``, retrying with jittered exponential backoff when SQLite reports a lock it did not wait on.

    The busy handler (``BUSY_TIMEOUT_S``) covers most contention. Some lock errors come back at once instead (WAL
    recovery or a journal-mode change by another process, a snapshot that went stale between processes); those are
    retried up to ``RETRIES`` times, from 50 ms doubling to 1.6 s. An error raised after the busy handler already
    waited its full timeout is not retried: the lock is persistent, and the caller falls back to encoding without
    the cache.
    """
    for attempt in range(RETRIES + 1):
        t0 = time.monotonic()
        try:
            return fn()
        except sqlite3.OperationalError as e:
            waited = time.monotonic() - t0 >= 0.9 * BUSY_TIMEOUT_S
            if not _is_lock_error(e) or waited or attempt == RETRIES:
                raise
            LOGGER.debug(f"embedding cache {what}: {e}; retry {attempt + 1}/{RETRIES}")
            time.sleep(0.05 * 2**attempt * (0.5 + random.random()))  # jitter: processes do not retry in lockstep
    raise AssertionError("unreachable")  # pragma: no cover


def default_cache_dir() -> Path:
    """``$YW_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/yw_ext/embeddings`` (``~/.cache/yw_ext/embeddings``).

    Examples:
        >>> default_cache_dir()
        PosixPath('/home/me/.cache/yw_ext/embeddings')
    """
    env = os.environ.get(ENV_CACHE_DIR, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "yw_ext" / "embeddings"


class EmbeddingCache:
    """Text embeddings stored as float32 blobs in SQLite (WAL mode), keyed by (encoder identity, text).

    One database file, ``<root>/text_embeddings.sqlite3``, table
    ``emb(identity TEXT, text TEXT, emb BLOB, PRIMARY KEY(identity, text))``. A connection is opened per call, so an
    instance can be shared between threads and processes. Methods raise ``sqlite3.Error`` / ``OSError`` on a corrupt
    or unwritable database; ``encode_texts`` turns those into a warning and encodes without the cache.

    Attributes:
        root (Path): the cache folder.
        path (Path): the database file.

    Examples:
        >>> cache = EmbeddingCache("/tmp/emb")
        >>> cache.put_many("enc-1", ["dog"], np.ones((1, 4), np.float32) / 2)
        >>> cache.get_many("enc-1", ["dog", "cat"])
        {'dog': array([0.5, 0.5, 0.5, 0.5], dtype=float32)}
    """

    def __init__(self, root: Optional[Union[str, os.PathLike]] = None):
        """Use ``root`` (default ``default_cache_dir()``); nothing is created until the first write or read."""
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.path = self.root / DB_NAME

    def _connect(self, create: bool) -> Optional[sqlite3.Connection]:
        """Open the database (creating folder and table if ``create``); None if it does not exist and not create."""
        if not create and not self.path.exists():
            return None
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)  # explicit transactions
        try:
            con.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            try:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError:  # read-only file system: plain reads still work
                pass
            if create:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS emb (identity TEXT NOT NULL, text TEXT NOT NULL, emb BLOB NOT NULL, "
                    "PRIMARY KEY (identity, text))"
                )
        except BaseException:
            con.close()
            raise
        return con

    def get_many(self, identity: str, texts: Sequence[str]) -> dict:
        """Cached embeddings of ``texts`` for encoder ``identity``.

        Args:
            identity: encoder identity (e.g. ``CLIPTextEncoder.identity``).
            texts: texts to look up (duplicates are fine).

        Returns:
            (dict[str, np.ndarray]): text -> (D,) float32 array, only for texts found (unreadable blobs are skipped).

        Examples:
            >>> EmbeddingCache().get_many(enc.identity, ["person", "bus"]).keys()
            dict_keys(['person', 'bus'])
        """
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        return _retrying(lambda: self._get(identity, unique), "read")

    def _get(self, identity: str, unique: list) -> dict:
        """One attempt of ``get_many`` (distinct texts)."""
        con = self._connect(create=False)
        if con is None:
            return {}
        found = {}
        with closing(con):
            if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='emb'").fetchone() is None:
                return {}
            for i in range(0, len(unique), _CHUNK):
                chunk = unique[i: i + _CHUNK]
                rows = con.execute(
                    f"SELECT text, emb FROM emb WHERE identity = ? AND text IN ({','.join('?' * len(chunk))})",
                    (identity, *chunk),
                ).fetchall()
                for text, blob in rows:
                    if isinstance(blob, bytes) and blob and len(blob) % 4 == 0:
                        found[text] = np.frombuffer(blob, dtype=np.float32)  # (D,)
        return found

    def put_many(self, identity: str, texts: Sequence[str], embs: np.ndarray) -> None:
        """Store (or replace) the embeddings of ``texts`` for encoder ``identity``.

        Args:
            identity: encoder identity.
            texts: N texts.
            embs: (N, D) embeddings (array or tensor); stored as float32.

        Examples:
            >>> cache.put_many(enc.identity, ["person"], enc.encode(["person"]).numpy())
        """
        if isinstance(embs, torch.Tensor):
            embs = embs.detach().cpu().numpy()
        embs = np.ascontiguousarray(embs, dtype=np.float32)
        texts = list(texts)
        if embs.ndim != 2 or embs.shape[0] != len(texts):
            raise ValueError(f"embs must have shape (len(texts)={len(texts)}, D), got {embs.shape}")
        if not texts:
            return
        rows = [(identity, t, e.tobytes()) for t, e in zip(texts, embs)]
        _retrying(lambda: self._put(rows), "write")

    def _put(self, rows: list) -> None:
        """One attempt of ``put_many``: one write transaction, taking the write lock up front (``BEGIN IMMEDIATE``)."""
        with closing(self._connect(create=True)) as con:
            con.execute("BEGIN IMMEDIATE")  # the busy handler applies here, never to a later read->write upgrade
            try:
                con.executemany("INSERT OR REPLACE INTO emb (identity, text, emb) VALUES (?, ?, ?)", rows)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def __repr__(self) -> str:
        return f"EmbeddingCache(path={str(self.path)!r})"


_WARNED: set = set()


def _warn_once(cache: EmbeddingCache, what: str, e: BaseException) -> None:
    """Warn (once per database file and operation) that the cache is unusable."""
    key = (str(cache.path), what)
    if key not in _WARNED:
        _WARNED.add(key)
        LOGGER.warning(
            f"Embedding cache {cache.path} could not be {what} ({type(e).__name__}: {e}); encoding without it. "
            f"Delete the file or set {ENV_CACHE_DIR} to a writable folder to fix this."
        )


def encode_texts(
    encoder,
    texts: Union[str, Sequence[str]],
    cache: Union[EmbeddingCache, None, bool] = None,
    batch: int = 256,
) -> torch.Tensor:
    """Normalised text embeddings, read from the on-disk cache where possible.

    Only texts missing from the cache are encoded (each distinct text once, in batches) and then stored. A corrupt,
    read-only or unreachable cache gives one warning and the texts are encoded anyway.

    Args:
        encoder: a text encoder with ``identity`` (str), ``dim`` (int), ``device`` and
            ``encode(texts, batch=...) -> (N, D)`` normalised, e.g. ``CLIPTextEncoder``.
        texts: N texts, duplicates allowed.
        cache: an ``EmbeddingCache``; None for the default cache folder (``EmbeddingCache()``); False to disable.
        batch: texts per forward pass of the encoder.

    Returns:
        (torch.Tensor): (N, D) float32 L2-normalised embeddings in the order of ``texts``, on ``encoder.device``.

    Examples:
        >>> enc = load_clip()
        >>> encode_texts(enc, ["person", "bus", "person"]).shape
        torch.Size([3, 512])
    """
    texts = _as_text_list(texts)
    device = getattr(encoder, "device", torch.device("cpu"))
    dim = getattr(encoder, "dim", None)
    if cache is False:
        return encoder.encode(texts, batch=batch).float().to(device)
    if cache is None or cache is True:
        cache = EmbeddingCache()
    if not isinstance(cache, EmbeddingCache):
        raise ValueError(f"cache must be an EmbeddingCache, None or False, got {type(cache).__name__}")
    if not texts:
        return torch.zeros((0, dim or 0), device=device)
    identity = encoder.identity
    unique = list(dict.fromkeys(texts))
    usable = True
    try:
        found = cache.get_many(identity, unique)
    except (sqlite3.Error, OSError) as e:
        _warn_once(cache, "read", e)
        found, usable = {}, False
    if dim is not None:  # a blob of the wrong width is treated as missing and rewritten
        found = {t: e for t, e in found.items() if e.shape == (dim,)}
    missing = [t for t in unique if t not in found]
    if missing:
        new = encoder.encode(missing, batch=batch).detach().float().cpu().numpy()  # (M, D)
        found.update(zip(missing, new))
        if usable:
            try:
                cache.put_many(identity, missing, new)
            except (sqlite3.Error, OSError) as e:
                _warn_once(cache, "written", e)
    out = np.stack([found[t] for t in texts])  # (N, D)
    return torch.from_numpy(out).to(device)
