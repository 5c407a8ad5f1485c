# yw_ext, AGPL-3.0 license
"""Rows of the benchmark CSV: the environment columns, rounding, and atomic CSV / file writes.

Every file goes through ``yw_ext.core.io.atomic_write`` (temporary file next to the target, then ``os.replace``): a
crash leaves the old file or the new one, never half of one.

Examples:
    >>> import tempfile, pathlib
    >>> p = write_csv_atomic(pathlib.Path(tempfile.mkdtemp()) / "r.csv", [{"a": 1}], columns=("a", "b"))
    >>> p.read_text().splitlines()
    ['a,b', '1,']
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from yw_ext.bench.config import COLUMNS, WEIGHTS_NOTE
from yw_ext.core.io import atomic_write

write_atomic = atomic_write
"""``write_atomic(path, write, mode="wb")``: ``write(f)`` on a temporary file next to ``path``, then ``os.replace``
(``yw_ext.core.io.atomic_write``; ``mode="w"`` for text).

Examples:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.txt"
    >>> write_atomic(p, lambda f: f.write("ok"), mode="w").read_text()
    'ok'
"""


def cpu_name() -> str:
    """The CPU model name (``/proc/cpuinfo`` on Linux), else ``platform.processor()``.

    Examples:
        >>> isinstance(cpu_name(), str)
        True
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(module: str) -> str:
    """``module.__version__``, or ``""`` when it is not installed (never raises).

    Examples:
        >>> version_of("no_such_module_here")
        ''
    """
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return ""


def environment(threads: int, device: str = "cpu") -> dict[str, Any]:
    """The environment columns of every row: date, versions, device, CPU, threads, weights note.

    Args:
        threads: CPU threads used by PyTorch and ONNX Runtime.
        device: ``"cpu"`` or a CUDA device string.

    Examples:
        >>> env = environment(2)
        >>> env["threads"], env["weights"].startswith("random")
        (2, True)
    """
    import torch

    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - Python 3.9
        "yw_ext": version_of("yw_ext"),
        "torch": torch.__version__,
        "ultralytics": version_of("ultralytics"),
        "onnxruntime": version_of("onnxruntime"),
        "tensorrt": version_of("tensorrt"),
        "device": dev,
        "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores)",
        "threads": threads,
        "weights": WEIGHTS_NOTE,
    }


def rounded(v: float | None, nd: int) -> float | str:
    """``round(v, nd)``, ``""`` for None or NaN (an empty CSV cell).

    Examples:
        >>> rounded(1.23456, 2), rounded(float("nan"), 2)
        (1.23, '')
    """
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), nd)


def spread(stats: dict[str, float], nd: int) -> dict[str, float | str]:
    """The ``ratio``, ``ratio_min`` and ``ratio_max`` cells of a ``ratio_stats`` result, rounded to ``nd`` digits.

    Examples:
        >>> spread({"median": 1.23456, "min": 1.0, "max": 2.0, "n": 3}, 2)
        {'ratio': 1.23, 'ratio_min': 1.0, 'ratio_max': 2.0}
    """
    return {"ratio": rounded(stats["median"], nd), "ratio_min": rounded(stats["min"], nd),
            "ratio_max": rounded(stats["max"], nd)}  # fmt: skip


def write_csv_atomic(path: str | Path, rows: Iterable[dict], columns: Sequence[str] = COLUMNS) -> Path:
    """Write ``rows`` (dicts; missing keys empty) as CSV with ``columns``, atomically.

    Examples:
        >>> import tempfile, pathlib
        >>> p = write_csv_atomic(pathlib.Path(tempfile.mkdtemp()) / "r.csv", [{"a": 1}], columns=("a", "b"))
        >>> p.read_text().splitlines()
        ['a,b', '1,']
    """
    rows = list(rows)

    def write(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    return atomic_write(path, write, mode="w")


def append_csv_atomic(path: str | Path, rows: Iterable[dict], columns: Sequence[str]) -> Path:
    """Append ``rows`` to the CSV at ``path``: its rows so far and the new ones are rewritten atomically with
    ``columns`` (``write_csv_atomic``); a missing file is created.

    Examples:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = append_csv_atomic(p, [{"a": 1}], columns=("a", "b"))
        >>> append_csv_atomic(p, [{"b": 2}], columns=("a", "b")).read_text().splitlines()
        ['a,b', '1,', ',2']
    """
    path = Path(path)
    old: list[dict] = []
    if path.is_file():
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    return write_csv_atomic(path, old + list(rows), columns)


__all__ = ["append_csv_atomic", "cpu_name", "environment", "rounded", "spread", "version_of", "write_atomic",
           "write_csv_atomic"]  # fmt: skip
