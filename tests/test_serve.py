"""The detection service (yw_ext.serve): FastAPI + uvicorn on 127.0.0.1, dynamic batching across clients with
different vocabularies, answers equal to single-image ``Detector.predict``, bad requests get a 4xx, missing extras."""

from __future__ import annotations

import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from tests._scale_helpers import dv_files, unit_rows  # noqa: F401  (dv_files: a shared fixture)
from tests.conftest import ROOT

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

VOCABS = ["person,bus", "person,car|automobile,dog", "tie,handbag,backpack,umbrella"]  # P = 2, 6, 4 prompts
_DETECTORS: dict = {}  # reference detectors, one per vocabulary


@pytest.fixture(scope="module")
def files(dv_files, tmp_path_factory, tiny_clip_file, assets):  # noqa: F811
    """Run-time-vocabulary ONNX (dynamic batch), exported tiny CLIP text encoder, a prompt file, JPEG test images
    (encoded once; the references decode the same bytes the service decodes)."""
    from yw_ext.core.io import save_npz
    from yw_ext.export.text import export_text_encoder

    d = tmp_path_factory.mktemp("serve")
    enc = export_text_encoder(tiny_clip_file, d / "clip_text.onnx")
    prompt_file = save_npz(d / "animals.npz", {"format": np.array("yw_ext.prompts/1"),
                                                "names": np.array(["cat", "dog"]), "embeddings": unit_rows(2, seed=5)})
    bus = cv2.resize(cv2.imread(str(assets / "bus.jpg")), (300, 400))
    zidane = cv2.resize(cv2.imread(str(assets / "zidane.jpg")), (400, 225))
    data = {k: cv2.imencode(".jpg", im)[1].tobytes() for k, im in
            {"bus": bus, "bus_flip": bus[:, ::-1], "zidane": zidane}.items()}  # bus and bus_flip: one input size
    images = {k: cv2.imdecode(np.frombuffer(v, np.uint8), cv2.IMREAD_COLOR) for k, v in data.items()}
    return {"model": str(dv_files[1]), "encoder": str(enc), "prompts": str(prompt_file), "images": images,
            "bytes": data}


@pytest.fixture(scope="module")
def service(files):
    """`yw serve` in a subprocess on 127.0.0.1 (a free port), until the module's tests are done."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "yw_ext.cli", "serve", f"model={files['model']}", f"text_encoder={files['encoder']}",
           f"prompts=animals:{files['prompts']}", "host=127.0.0.1", f"port={port}", "max_batch=8", "max_wait_ms=10",
           "max_pixels=3000000", "threads=1", "log_level=warning"]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            pytest.fail(f"yw serve exited: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.terminate()
        pytest.fail("yw serve did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _reference(files, vocab: str, image: str, conf: float) -> np.ndarray:
    """Single-image Detector.predict with the text encoder: rows [x1, y1, x2, y2, score, class]."""
    from yw_ext.cli import parse_classes_arg
    from yw_ext.runtime import Detector

    key = (files["model"], vocab)
    if key not in _DETECTORS:
        _DETECTORS[key] = Detector(files["model"], text_encoder=files["encoder"], threads=1)
        _DETECTORS[key].set_classes(parse_classes_arg(vocab))
    det = _DETECTORS[key]
    d = det.predict(files["images"][image], conf=conf)[0]
    return np.c_[d.boxes, d.scores, d.class_ids]


def _same(answer: dict, ref: np.ndarray) -> None:
    got = np.array([[*d["box"], d["score"], d["class_id"]] for d in answer["detections"]]).reshape(-1, 6)
    assert len(got) == len(ref), (len(got), len(ref))
    order = lambda a: a[np.lexsort(np.round(a[:, [3, 2, 1, 0, 5]].T, 1))]  # noqa: E731
    got, ref = order(got), order(ref)
    if len(ref):
        assert (got[:, 5] == ref[:, 5]).all()
        assert np.abs(got[:, :4] - ref[:, :4]).max() <= 1e-3  # pixels
        assert np.abs(got[:, 4] - ref[:, 4]).max() <= 1e-5


def _bad_requests(files) -> list[tuple[str, dict]]:
    """10 bad requests: kind -> httpx keyword arguments."""
    huge = cv2.imencode(".png", np.zeros((2000, 2000, 3), np.uint8))[1].tobytes()  # 4 Mpx > max_pixels
    img = base64.b64encode(files["bytes"]["bus"]).decode()
    return [
        ("not an image", {"files": {"image": ("x.jpg", b"not an image at all", "image/jpeg")},
                          "data": {"classes": "a"}}),
        ("not an image", {"json": {"image": base64.b64encode(b"\x00" * 100).decode(), "classes": "a"}}),
        ("empty classes", {"files": {"image": ("b.jpg", files["bytes"]["bus"], "image/jpeg")},
                           "data": {"classes": " "}}),
        ("empty classes", {"json": {"image": img, "classes": []}}),
        ("huge image", {"files": {"image": ("h.png", huge, "image/png")}, "data": {"classes": "a"}}),
        ("bad JSON", {"content": b'{"image": "abc", "classes": ', "headers": {"content-type": "application/json"}}),
        ("bad JSON", {"content": b"[1, 2]", "headers": {"content-type": "application/json"}}),
        ("bad base64", {"json": {"image": "%%%not-base64%%%", "classes": "a"}}),
        ("bad conf", {"json": {"image": img, "classes": "a", "conf": 2}}),
        ("unknown prompts", {"json": {"image": img, "prompts": "nope"}}),
    ]


def _good_request(files, i: int) -> tuple[tuple, dict]:
    vocab, image, conf = VOCABS[i % 3], ("bus", "bus_flip", "zidane")[(i // 3) % 3], (0.25, 0.3)[(i // 9) % 2]
    data = files["bytes"][image]
    if i % 2:
        kw = {"files": {"image": (f"{image}.jpg", data, "image/jpeg")}, "data": {"classes": vocab, "conf": str(conf)}}
    else:
        kw = {"json": {"image": base64.b64encode(data).decode(), "classes": vocab, "conf": conf}}
    return (vocab, image, conf), kw


def test_load_200_requests_8_clients(service, files, record_property):
    """200 requests (10 bad) from 8 concurrent clients, 3 vocabularies: no 5xx, every good answer == predict."""
    bad = _bad_requests(files)
    jobs = [("good", *_good_request(files, i)) for i in range(190)] + [("bad", kind, kw) for kind, kw in bad]
    jobs = [jobs[i] for i in np.random.default_rng(0).permutation(len(jobs))]

    def call(job):
        with httpx.Client(base_url=service, timeout=60) as c:
            t0 = time.perf_counter()
            r = c.post("/detect", **job[2])
            return job, r.status_code, r.json(), time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(call, jobs))
    wall = time.perf_counter() - t0
    refs = {}
    for (kind, key, _), status, body, _ in out:
        assert status < 500, (key, status, body)
        if kind == "bad":
            assert 400 <= status < 500 and isinstance(body.get("detail"), str) and body["detail"], (key, body)
            continue
        assert status == 200, (key, body)
        if key not in refs:
            refs[key] = _reference(files, *key)
        _same(body, refs[key])
    assert sum(len(r) for r in refs.values()) > 20  # the comparison is not over empty answers
    with httpx.Client(base_url=service) as c:
        health = c.get("/health").json()
    assert health["status"] == "ok" and health["images"] == 190
    assert health["batches"] < 190 and health["mixed_vocabulary_calls"] > 0  # batched, across vocabularies
    lat = sorted(x[3] for x in out)
    figures = {"p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * len(lat)) - 1],
               "req_per_s": len(out) / wall, "batches": health["batches"],
               "mixed_vocabulary_calls": health["mixed_vocabulary_calls"]}
    for k, v in figures.items():
        record_property(k, v)
    print("service load test:", json.dumps({k: round(v, 2) for k, v in figures.items()}))


def test_prompt_file_metadata_and_health(service, files):
    """A prompt-file id selects its vocabulary; /metadata names model, classes, prompt sets and versions."""
    from yw_ext.runtime import Detector
    from yw_ext.scale.vocabulary import read_prompt_vocabulary

    v = read_prompt_vocabulary(files["prompts"])
    img = base64.b64encode(files["bytes"]["zidane"]).decode()
    with httpx.Client(base_url=service, timeout=60) as c:
        r = c.post("/detect", json={"image": img, "prompts": "animals", "conf": 0.2})
        meta = c.get("/metadata").json()
        plain = c.post("/detect", json={"image": img, "conf": 0.2})  # no classes: the file's own vocabulary
    assert r.status_code == 200 and r.json()["names"] == ["cat", "dog"]
    ref = Detector(files["model"]).set_classes(list(v.names), embeddings=v.embeddings)
    _same(r.json(), np.c_[(d := ref.predict(files["images"]["zidane"], conf=0.2)[0]).boxes, d.scores, d.class_ids])
    assert plain.status_code == 200 and plain.json()["names"] == ["person", "car", "dog"]
    assert meta["prompts"] == {"animals": ["cat", "dog"]} and meta["dynamic_vocab"] and meta["mixed_vocabulary_batches"]
    assert {"yw_ext", "onnxruntime", "fastapi", "uvicorn"} <= set(meta["versions"])


def test_serve_without_extras_says_how_to_install(monkeypatch, capsys):
    """Without FastAPI, `yw serve` exits with the pip command of the serve extra (import monkeypatched away)."""
    from yw_ext.cli import entrypoint

    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert entrypoint(["serve", "model=x.onnx"]) == 2
    assert "pip install -e .[serve]" in capsys.readouterr().err


def test_bad_config_fails_at_start(files, tmp_path):
    """A missing model or a prompt file of another width fails when the service starts, naming the file."""
    from yw_ext.core.io import save_npz
    from yw_ext.serve import Engine, ServeConfig

    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        Engine(ServeConfig(model=str(tmp_path / "missing.onnx")))
    bad = save_npz(tmp_path / "w.npz", {"format": np.array("yw_ext.prompts/1"), "names": np.array(["a"]),
                                        "embeddings": np.ones((1, 8), np.float32)})
    with pytest.raises(ValueError, match="8-d"):
        Engine(ServeConfig(model=files["model"], prompts={"w": str(bad)}))
