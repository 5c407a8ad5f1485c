# yw_ext, AGPL-3.0 license
"""Atomic file writes and ``.npz`` archives: a crash or an error never leaves a half-written file behind.

Examples:
    >>> import numpy as np
    >>> p = save_npz("/tmp/yw_core_doctest.npz", {"a": np.zeros(2)})
    >>> load_npz(p)["a"].shape
    (2,)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is ``os.replace``-d onto ``path``, on error removed.

    For writers that take a path, not a file object (``torch.save`` to a name, Ultralytics' ``Model.save``). The
    temporary file gets the permissions a plain ``open`` would give (umask applied), not ``mkstemp``'s 0600.

    Examples:
        >>> with atomic_path("/tmp/yw_core_doctest.bin") as tmp:
        ...     _ = tmp.write_bytes(b"x")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    On any error the temporary file is removed and ``path`` is left as it was.

    Args:
        path: Destination file; its folder is created.
        write: Called once with the open temporary file.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8, ``newline=""``).

    Returns:
        ``path`` as a ``Path``.

    Examples:
        >>> atomic_write("/tmp/yw_core_doctest.txt", lambda f: f.write("hi"), mode="w")
        PosixPath('/tmp/yw_core_doctest.txt')
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}.")
    kw = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        write(f)
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` archive, atomically.

    Examples:
        >>> save_npz("/tmp/yw_core_doctest.npz", {"x": np.ones(3)}).name
        'yw_core_doctest.npz'
    """
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path: str | os.PathLike, what: str = ".npz archive", error: type[Exception] = ValueError) -> dict:
    """Read every array of an ``.npz`` archive into a dict, without unpickling (``allow_pickle=False``).

    Args:
        path: The archive.
        what: What the file is, for messages (``"prompt file"``).
        error: Exception class raised for an unreadable archive (a ValueError subclass of the caller).

    Raises:
        FileNotFoundError: ``path`` does not exist (``"<what> '<path>' not found"``).
        error: a truncated or foreign file (``"'<path>' is not a readable <what> (.npz): ..."``).

    Examples:
        >>> sorted(load_npz("/tmp/yw_core_doctest.npz"))
        ['x']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} '{path}' not found (the file does not exist).")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # zipfile / numpy errors of every kind
        raise error(f"'{path}' is not a readable {what} (.npz): {type(e).__name__}: {e}") from e


__all__ = ["atomic_path", "atomic_write", "load_npz", "save_npz"]
