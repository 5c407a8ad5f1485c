# yw_ext, AGPL-3.0 license
"""Atomic file writes and ``.npz`` archives: a crash or an error never leaves a half-written file behind.

Examples:
    >>> import numpy as np
    >>> p = save_npz("/tmp/yw_core_doctest.npz", {"a": np.zeros(2)})
    >>> load_npz(p)["a"].shape
    (2,)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Call ``write(f)`` on a temporary file next to ``path``, then ``os.replace`` it into place.

    The temporary file gets the permissions a plain ``open`` would give (umask applied), not ``mkstemp``'s 0600.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        kw = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kw) as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Write ``arrays`` as an uncompressed ``.npz`` archive, atomically.

    Examples:
        >>> save_npz("/tmp/yw_core_doctest.npz", {"x": np.ones(3)}).name
        'yw_core_doctest.npz'
    """
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` archive into a dict, without unpickling (``allow_pickle=False``).

    Raises:
        FileNotFoundError: ``path`` does not exist.

    Examples:
        >>> sorted(load_npz("/tmp/yw_core_doctest.npz"))
        ['x']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"'{path}' does not exist.")
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


__all__ = ["atomic_write", "load_npz", "save_npz"]
