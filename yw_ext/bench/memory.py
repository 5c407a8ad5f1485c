# yw_ext, AGPL-3.0 license
"""Peak memory of one backend, each in a fresh Python process (Linux ``/proc``).

``peak_rss_mb`` is the process's peak resident set while running (``VmHWM``, reset after loading the model with
``/proc/self/clear_refs``); ``peak_delta_mb`` that peak minus the resident set before the first run (the inference
working memory).

Examples:
    >>> spec = {"kind": "onnx", "path": "yw_fixed.onnx", "threads": 2, "input": [1, 3, 64, 64]}
    >>> memory_in_subprocess(spec)  # doctest: +SKIP
    {'rss0_mb': 180.2, 'peak_mb': 195.7}
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from yw_ext.bench.timing import ort_session

MARK = "YW_MEMORY "
"""Prefix of the line the child prints its result on."""


def proc_mb(field: str) -> float:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) of this process in MiB.

    Raises:
        OSError: no ``/proc/self/status`` (not Linux), or no such field.

    Examples:
        >>> proc_mb("VmRSS") > 0  # doctest: +SKIP
        True
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise OSError(f"{field} not in /proc/self/status")


def _load(spec: dict[str, Any], x: np.ndarray) -> Callable[[], None]:
    """The model of ``spec`` loaded, as a call running it once on ``x``."""
    if spec["kind"] == "onnx":
        sess = ort_session(spec["path"], spec["threads"])
        feeds = {"images": x}
        for name, shape in spec.get("feeds", {}).items():
            if name != "images":
                v = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
                feeds[name] = v / np.linalg.norm(v, axis=-1, keepdims=True)
        return lambda: sess.run(None, feeds)
    import torch

    torch.set_num_threads(spec["threads"])
    model = torch.load(spec["path"], weights_only=False, map_location="cpu").eval()
    xt = torch.from_numpy(x)

    def run() -> None:
        with torch.inference_mode():
            model(xt)

    return run


def memory_child(spec_json: str) -> dict:
    """Run inside the memory subprocess: load one model, reset the peak, run it, print peak and start RSS (JSON).

    ``spec``: ``{"kind": "torch" | "onnx", "path", "threads", "input": [B, 3, H, W], "runs", "feeds"?}``.

    Examples:
        >>> memory_child('{"kind": "torch", "path": "m.pt", "threads": 1, "input": [1, 3, 64, 64]}')  # doctest: +SKIP
        {'rss0_mb': 310.5, 'peak_mb': 322.0}
    """
    spec = json.loads(spec_json)
    x = np.random.default_rng(0).random(spec["input"], dtype=np.float32)
    run = _load(spec, x)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    rss0 = proc_mb("VmRSS")
    for _ in range(int(spec.get("runs", 3))):
        run()
    out = {"rss0_mb": rss0, "peak_mb": proc_mb("VmHWM")}
    print(MARK + json.dumps(out), flush=True)
    return out


def memory_in_subprocess(spec: dict, timeout: float = 300) -> dict:
    """``memory_child`` in a fresh Python process; ``{"error": ...}`` where it cannot run (e.g. no ``/proc``).

    Examples:
        >>> spec = {"kind": "torch", "path": "m.pt", "threads": 1, "input": [1, 3, 64, 64]}
        >>> memory_in_subprocess(spec)  # doctest: +SKIP
        {'rss0_mb': 310.5, 'peak_mb': 322.0}
    """
    if not Path("/proc/self/clear_refs").exists():
        return {"error": "needs Linux /proc/self/clear_refs"}
    root = str(Path(__file__).resolve().parents[2])  # the folder holding yw_ext/
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": str(spec["threads"])}
    code = "import sys; from yw_ext.bench.memory import memory_child; memory_child(sys.argv[1])"
    try:
        p = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                           timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [f"exit code {p.returncode}"]
    return {"error": tail[0][:200]}


__all__ = ["memory_child", "memory_in_subprocess", "proc_mb"]
