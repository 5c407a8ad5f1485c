"""The ASGI app (FastAPI) and ``serve`` (uvicorn): ``POST /detect``, ``GET /health``, ``GET /metadata``.

``POST /detect`` takes either

- ``multipart/form-data``: ``image`` (the file), and optional form fields ``classes`` (``"person,car|automobile"``),
  ``prompts`` (a prompt-file id), ``conf``, ``iou``, ``max_det``; or
- ``application/json``: ``{"image": "<base64>", "classes": ["person", ["car", "automobile"]] | "person,car",
  "prompts": "id", "conf": 0.25, "iou": 0.7, "max_det": 300}``,

and answers ``{"detections": [{"box": [x1, y1, x2, y2], "score", "class_id", "class_name"}], "names", "width",
"height", "model"}`` (boxes in original pixels). A bad request gets a 4xx with ``{"detail": "<why>"}``.

Examples:
    >>> app = create_app(ServeConfig(model="dv.onnx", text_encoder="clip_text.onnx"))  # doctest: +SKIP
    >>> serve(ServeConfig(model="dv.onnx"), host="127.0.0.1", port=8000, workers=2)  # doctest: +SKIP
"""

import base64
import binascii
import contextlib
import os
import platform
from typing import Any, Optional

import numpy as np

from yw_ext.serve.batching import Batcher
from yw_ext.serve.engine import ENV, Engine, Item, ServeConfig


class BadRequest(Exception):
    """A client error: ``status`` (4xx) and a readable ``detail``."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def _header_size(data: bytes) -> Optional[tuple]:
    """``(width, height)`` from the image header when Pillow is installed (it reads no pixels), else None."""
    try:
        import io

        from PIL import Image
    except ImportError:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size
    except Exception:  # not an image Pillow knows: OpenCV decides below
        return None


def _decode_image(data: bytes, cfg: ServeConfig) -> np.ndarray:
    import cv2

    if not data:
        raise BadRequest(400, "no image: send a file field 'image' (multipart) or base64 'image' (JSON).")
    if len(data) > cfg.max_image_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes, the limit is {cfg.max_image_bytes}.")
    size = _header_size(data)
    if size is not None and size[0] * size[1] > cfg.max_pixels:  # refuse before decoding (decompression bombs)
        raise BadRequest(413, f"image is {size[0]}x{size[1]} pixels, the limit is {cfg.max_pixels} pixels.")
    im = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if im is None:
        raise BadRequest(400, "the upload is not an image OpenCV can decode (JPEG, PNG, BMP, TIFF, WebP...).")
    if im.shape[0] * im.shape[1] > cfg.max_pixels:
        raise BadRequest(413, f"image is {im.shape[1]}x{im.shape[0]} pixels, the limit is {cfg.max_pixels} pixels.")
    return im


def _number(fields: dict, key: str, default: float, kind: type, lo: float, hi: float) -> Any:
    v = fields.get(key)
    if v is None or v == "":
        return default
    try:
        x = kind(v)
    except (TypeError, ValueError):
        raise BadRequest(422, f"{key} must be a {kind.__name__}, got {v!r}.") from None
    if isinstance(v, bool) or not lo <= x <= hi:
        raise BadRequest(422, f"{key} must be in [{lo}, {hi}], got {v!r}.")
    return x


async def _read_request(request: Any, cfg: ServeConfig) -> tuple[bytes, dict]:
    """``(image bytes, fields)`` from a multipart form or a JSON body."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_part_size=cfg.max_image_bytes + 1)
        upload = form.get("image") or form.get("file")
        if upload is None or isinstance(upload, str):
            raise BadRequest(400, "multipart request without a file field 'image'.")
        data = await upload.read(cfg.max_image_bytes + 1)
        return data, {k: v for k, v in form.items() if isinstance(v, str)}
    if ctype.startswith("application/json") or not ctype:
        try:
            body = await request.json()
        except ValueError as e:
            raise BadRequest(400, f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise BadRequest(400, "JSON body must be an object with 'image': a base64 string.")
        if len(body["image"]) > cfg.max_image_bytes * 4 // 3 + 4:
            raise BadRequest(413, f"image is larger than the limit of {cfg.max_image_bytes} bytes.")
        try:
            data = base64.b64decode(body["image"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(400, "'image' is not valid base64.") from None
        return data, body
    raise BadRequest(415, f"content-type {ctype!r}: use multipart/form-data or application/json.")


async def _detect(request: Any, engine: Engine, batcher: Batcher) -> dict[str, Any]:
    from starlette.concurrency import run_in_threadpool

    cfg = engine.config
    data, fields = await _read_request(request, cfg)
    conf = _number(fields, "conf", 0.25, float, 0.0, 1.0)
    iou = _number(fields, "iou", 0.7, float, 0.0, 1.0)
    max_det = _number(fields, "max_det", 300, int, 1, 10000)
    classes, prompts = fields.get("classes"), fields.get("prompts")
    if isinstance(classes, str) and not classes.strip() or isinstance(classes, list) and not classes:
        raise BadRequest(422, "classes is empty: give class names, e.g. classes=\"person,car|automobile\".")
    image = _decode_image(data, cfg)
    try:
        vocab = await run_in_threadpool(engine.vocabularies.get, classes, prompts)
        engine.check(vocab)
    except (ValueError, TypeError, RuntimeError) as e:
        raise BadRequest(422, str(e)) from None
    r = await batcher.submit(Item(image, vocab, conf, iou, max_det))
    names = r["names"]
    dets = [{"box": [float(v) for v in b], "score": float(s), "class_id": int(c), "class_name": names[int(c)]}
            for b, s, c in zip(r["boxes"], r["scores"], r["class_ids"])]
    return {"detections": dets, "names": names, "height": int(r["shape"][0]), "width": int(r["shape"][1]),
            "model": os.path.basename(cfg.model)}


def _metadata(engine: Engine) -> dict[str, Any]:
    import fastapi
    import onnxruntime
    import uvicorn

    import yw_ext

    det, cfg = engine.detector, engine.config
    return {
        "model": os.path.basename(cfg.model), "dynamic_vocab": det.dynamic_vocab, "classes": det.vocabulary,
        "imgsz": list(det.imgsz), "embed_dim": det.embed_dim, "max_prompts": det.max_prompts,
        "mixed_vocabulary_batches": engine.mixed, "prompts": {k: list(v.names) for k, v in
                                                             engine.vocabularies.prompt_sets.items()},
        "text_encoder": os.path.basename(cfg.text_encoder) if cfg.text_encoder else None,
        "max_batch": cfg.max_batch, "max_wait_ms": cfg.max_wait_ms, "pid": os.getpid(),
        "versions": {"yw_ext": yw_ext.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                     "fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__,
                     "python": platform.python_version()},
    }


def create_app(config: ServeConfig) -> Any:
    """The FastAPI app for ``config``: the model loads at start-up (lifespan), one batcher per process.

    Raises:
        ImportError: FastAPI missing (the message says how to install the ``serve`` extra).

    Examples:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(ServeConfig(model="dv.onnx")), host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    from yw_ext.serve import check_extras

    check_extras()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    state: dict[str, Any] = {}  # no `from __future__ import annotations` here: FastAPI reads `request: Request`

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        state["engine"] = engine = Engine(config)
        state["batcher"] = batcher = Batcher(engine.run, config.max_batch, config.max_wait_ms)
        yield
        await batcher.close()

    app = FastAPI(title="yw_ext detection service", lifespan=lifespan)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.post("/detect")
    async def detect(request: Request):
        """Detect objects in one image (multipart or base64 JSON) with the request's classes."""
        return await _detect(request, state["engine"], state["batcher"])

    @app.get("/health")
    async def health():
        """Liveness: the model is loaded; counts of batches and images served by this process."""
        e = state["engine"]
        return {"status": "ok", "batches": e.batches, "images": e.images, "model_calls": e.calls,
                "mixed_vocabulary_calls": e.mixed_calls, "pid": os.getpid()}

    @app.get("/metadata")
    async def metadata():
        """Model, classes, limits, versions."""
        return _metadata(state["engine"])

    app.state.yw = state
    return app


def app_from_env() -> Any:
    """``create_app(ServeConfig.from_env())``: the factory uvicorn's worker processes call (``$YW_SERVE_CONFIG``)."""
    return create_app(ServeConfig.from_env())


def serve(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:
    """Run the service with uvicorn until interrupted; ``workers`` > 1 starts that many processes (each loads the
    model and batches its own requests) behind uvicorn's shared socket.

    Examples:
        >>> serve(ServeConfig(model="dv.onnx", text_encoder="clip_text.onnx"), port=8000)  # doctest: +SKIP
    """
    from yw_ext.serve import check_extras

    check_extras()
    import uvicorn

    Engine(config)  # fail here, with a readable message, on a bad model / encoder / prompt file
    if int(workers) > 1:
        os.environ[ENV] = config.to_env()
        uvicorn.run("yw_ext.serve.app:app_from_env", factory=True, host=host, port=int(port), workers=int(workers),
                    log_level=log_level)
    else:
        uvicorn.run(create_app(config), host=host, port=int(port), log_level=log_level)


__all__ = ["BadRequest", "app_from_env", "create_app", "serve"]
