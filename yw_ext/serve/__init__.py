"""A detection service: ``yw serve model=dv.onnx text_encoder=clip_text.onnx host=127.0.0.1 port=8000``.

An ASGI app (FastAPI) on uvicorn, over the torch-free runtime (``yw_ext.runtime``). ``POST /detect`` takes an image
(multipart, or base64 in JSON) with ``classes`` (or ``prompts``, the id of a prompt file loaded at start), ``conf``,
``iou`` and ``max_det``, and returns JSON detections. Requests from all clients are batched dynamically, also with
different vocabularies: a run-time-vocabulary ONNX exported with ``dynamic=True`` takes ``txt_feats`` of shape
``(B, P, D)``, one vocabulary per image (padded to the batch's largest P by repeating a prompt, which changes
nothing). Text embeddings come from a per-process cache (each prompt is encoded once). ``GET /health``,
``GET /metadata``. ``workers=`` sets uvicorn's processes; replicas scale out behind any load balancer.

Needs the ``serve`` extra: ``pip install -e .[serve]`` (``fastapi``, ``uvicorn``, ``python-multipart``).

Examples:
    >>> from yw_ext.serve import ServeConfig, create_app
    >>> app = create_app(ServeConfig(model="dv.onnx", text_encoder="clip_text.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

EXTRA_MODULES = ("fastapi", "uvicorn", "python_multipart")
INSTALL_HINT = "pip install -e .[serve]  (or: pip install fastapi uvicorn python-multipart)"


def check_extras() -> None:
    """Raise ``ImportError`` with the install command when FastAPI, uvicorn or python-multipart is missing.

    Examples:
        >>> check_extras()  # doctest: +SKIP
    """
    missing = []
    for name in EXTRA_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name.replace("_", "-"))
    if missing:
        raise ImportError(f"the detection service needs {', '.join(missing)} (the 'serve' extra): {INSTALL_HINT}")


def __getattr__(name: str) -> Any:
    """Lazy public names: importing ``yw_ext.serve`` loads neither FastAPI nor the model."""
    if name in {"create_app", "serve", "app_from_env"}:
        from yw_ext.serve import app

        return getattr(app, name)
    if name in {"ServeConfig", "Engine", "VocabularyStore"}:
        from yw_ext.serve import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'yw_ext.serve' has no attribute {name!r}")


__all__ = ["EXTRA_MODULES", "INSTALL_HINT", "Engine", "ServeConfig", "VocabularyStore", "app_from_env",
           "check_extras", "create_app", "serve"]
