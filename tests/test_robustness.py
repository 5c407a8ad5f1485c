# yw_ext, AGPL-3.0 license
"""Concurrent and interrupted runs (issue 16): the embedding cache under several writers, hub downloads of one file by
two processes and after a SIGKILL, the demo under a burst of requests with bad uploads, and the test suite's own
private caches.

Processes are real (``subprocess``), servers listen on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra) -> dict:
    """This process's environment with the repository importable, plus ``extra``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **extra)
    return env


# ------------------------------------------------------------------------------------------- embedding cache (4)
class _HashEncoder:
    """A deterministic stand-in text encoder: the embedding of a text is a function of the text alone."""

    identity, dim, device = "hash-encoder-1", 8, torch.device("cpu")

    def encode(self, texts, batch=256):
        out = np.stack([np.frombuffer(hashlib.sha256(t.encode()).digest()[:8], np.uint8) for t in texts]) + 1.0
        return torch.from_numpy(out / np.linalg.norm(out, axis=1, keepdims=True)).float()  # (N, 8)


@pytest.fixture
def log_lines():
    """Messages logged by yw_ext's LOGGER while the test runs."""
    from yw_ext.core.log import LOGGER

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    LOGGER.addHandler(handler)
    yield lines
    LOGGER.removeHandler(handler)


def test_cache_retries_lock_errors_sqlite_does_not_wait_on(tmp_path, monkeypatch, log_lines):
    """SQLite returns some lock errors at once, without its busy handler (WAL recovery, a journal-mode change by
    another process): those are retried, so nothing reaches the user and every entry is stored."""
    import yw_ext.text.cache as C

    cache, enc = C.EmbeddingCache(tmp_path), _HashEncoder()
    words = [f"w{i}" for i in range(20)]
    real, calls = C.EmbeddingCache._connect, []

    def flaky(self, create):
        calls.append(create)
        if len(calls) in (1, 3):  # the first read and the first write attempt
            raise sqlite3.OperationalError("database is locked")
        return real(self, create)

    monkeypatch.setattr(C.EmbeddingCache, "_connect", flaky)
    C._WARNED.clear()
    got = C.encode_texts(enc, words, cache=cache)
    assert torch.equal(got, enc.encode(words))
    assert not [m for m in log_lines if "locked" in m and "retry" not in m], log_lines  # no warning, only debug
    monkeypatch.setattr(C.EmbeddingCache, "_connect", real)
    assert sorted(cache.get_many(enc.identity, words)) == sorted(words)  # nothing lost


def test_cache_persistent_lock_falls_back_to_encoding(tmp_path, monkeypatch, log_lines):
    """A lock that never goes away: one warning, and the embeddings are still those of an uncached run."""
    import yw_ext.text.cache as C

    def locked(self, create):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(C.EmbeddingCache, "_connect", locked)
    monkeypatch.setattr(C, "RETRIES", 2)
    C._WARNED.clear()
    enc = _HashEncoder()
    got = C.encode_texts(enc, ["a", "b"], cache=C.EmbeddingCache(tmp_path))
    assert torch.equal(got, enc.encode(["a", "b"]))
    assert len([m for m in log_lines if "encoding without it" in m]) == 1, log_lines


_CACHE_WORKER = r"""
import json, logging, os, sys, time
import numpy as np
from yw_ext.core.log import LOGGER
from yw_ext.text import EmbeddingCache, encode_texts, load_clip
root, clip, rank, barrier = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
msgs = []
class Keep(logging.Handler):
    def emit(self, record): msgs.append(record.getMessage())
LOGGER.addHandler(Keep(level=logging.WARNING))
enc = load_clip(clip)
pool = [f"a photo of thing {i}" for i in range(60)]
out, errors = {}, []
open(os.path.join(barrier, str(rank)), "w").close()  # ready; start when all 4 are (bounded wait)
deadline = time.time() + 180
while len(os.listdir(barrier)) < 4 and time.time() < deadline:
    time.sleep(0.005)
for r in range(6):
    words = pool[(rank * 5 + r * 7) % 30:][:24]  # overlapping windows: every text is wanted by several processes
    try:
        got = encode_texts(enc, words, cache=EmbeddingCache(root)).numpy()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
        continue
    ref = encode_texts(enc, words, cache=False).numpy()
    out[str(r)] = float(np.abs(got - ref).max())
print(json.dumps({"diff": out, "errors": errors, "warnings": msgs}))
"""


@pytest.mark.slow
def test_cache_four_processes_share_one_database(tiny_clip_file, tmp_path):
    """4 processes encode overlapping vocabularies into one fresh cache at the same moment: no lock error or
    warning, no lost or corrupt entry, and each gets the embeddings of an uncached run.

    The tolerance is 1e-6, not bitwise: CLIP's output for a text varies by ~1e-8 with the batch it was encoded in, and
    a cached entry may come from another process's batch."""
    root, barrier = tmp_path / "cache", tmp_path / "ready"
    barrier.mkdir()
    procs = [
        subprocess.Popen([sys.executable, "-c", _CACHE_WORKER, str(root), str(tiny_clip_file), str(i), str(barrier)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for i in range(4)
    ]
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    for r in reports:
        assert not r["errors"] and not r["warnings"], r
        assert len(r["diff"]) == 6 and max(r["diff"].values()) <= 1e-6, r["diff"]
    from yw_ext.text import encode_texts, load_clip

    enc = load_clip(tiny_clip_file)
    db = sqlite3.connect(root / "text_embeddings.sqlite3")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(db.execute("SELECT text, emb FROM emb WHERE identity = ?", (enc.identity,)).fetchall())
    finally:
        db.close()
    wanted = sorted({f"a photo of thing {i}" for k in range(4) for r in range(6)
                     for i in range((k * 5 + r * 7) % 30, (k * 5 + r * 7) % 30 + 24)})
    assert sorted(rows) == wanted  # every text once, none lost
    ref = encode_texts(enc, wanted, cache=False).numpy()
    stored = np.stack([np.frombuffer(rows[t], np.float32) for t in wanted])
    assert stored.shape == ref.shape and np.abs(stored - ref).max() <= 1e-6


# ------------------------------------------------------------------------------------------------ hub downloads (5)
class _SlowFile(http.server.BaseHTTPRequestHandler):
    """Serves ``server.data`` for any path, 64 KiB every 20 ms, counting GET requests."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.gets += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(srv.data)))
        self.end_headers()
        for i in range(0, len(srv.data), 1 << 16):
            try:
                self.wfile.write(srv.data[i: i + (1 << 16)])
                self.wfile.flush()
            except OSError:  # the client was killed
                return
            time.sleep(0.02)


@pytest.fixture
def slow_server():
    data = np.random.default_rng(0).integers(0, 256, 4 << 20, dtype=np.uint8).tobytes()  # 4 MiB: ~1.3 s to send
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFile)
    srv.daemon_threads, srv.data, srv.gets, srv.lock = True, data, 0, threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    name = f"blob-{hashlib.sha256(data).hexdigest()[:8]}.bin"
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    srv.name = name
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(5)


_DOWNLOAD = (
    "import sys, time\n"
    "from yw_ext.hub import download\n"
    "url, dest, prefix, start = sys.argv[1:5]\n"
    "while time.time() < float(start):\n"
    "    time.sleep(0.002)\n"
    "download(url, dest, sha256_prefix=prefix, progress=False)\n"
)


def _download_proc(srv, dest: Path, start: float = 0.0) -> subprocess.Popen:
    prefix = srv.name.rsplit("-", 1)[1].split(".")[0]
    return subprocess.Popen([sys.executable, "-c", _DOWNLOAD, srv.url, str(dest), prefix, str(start)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def test_hub_two_processes_download_one_file(slow_server, tmp_path):
    """Two processes download the same file at the same moment: one transfer, one intact file, no error."""
    dest = tmp_path / "weights" / slow_server.name
    start = time.time() + 3
    procs = [_download_proc(slow_server, dest, start) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
    assert dest.read_bytes() == slow_server.data
    assert slow_server.gets == 1  # the second process waited for the first and used its file
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no part or lock file left


def test_hub_download_killed_halfway_then_rerun(slow_server, tmp_path):
    """A download SIGKILLed halfway leaves no final file; the next run succeeds and removes the dead one's part."""
    dest = tmp_path / "weights" / slow_server.name
    p = _download_proc(slow_server, dest)
    deadline = time.time() + 60
    while time.time() < deadline:
        parts = list(dest.parent.glob(f"{dest.name}.part-*")) if dest.parent.is_dir() else []
        if parts and parts[0].stat().st_size >= len(slow_server.data) // 2:  # hub writes 1 MiB blocks
            break
        time.sleep(0.01)
    else:
        pytest.fail("the download never got halfway")
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert not dest.exists()  # no corrupt final file
    assert list(dest.parent.glob(f"{dest.name}.part-*"))  # what the killed process left
    q = _download_proc(slow_server, dest)
    _, err = q.communicate(timeout=120)
    assert q.returncode == 0, err[-2000:]
    assert dest.read_bytes() == slow_server.data
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # the stale part (and lock file) are gone


# --------------------------------------------------------------------------------------------- demo under load (7)
def _png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit PNG of any size, written without building the image in memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    rows = zlib.compress(b"\0" * ((width + 7) // 8 + 1) * height, 1)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def bad_uploads(tmp_path, assets) -> dict:
    """The five bad uploads of issue 16, by file name."""
    import cv2
    from PIL import Image

    d = tmp_path / "uploads"
    d.mkdir()
    (d / "notes.jpg").write_text("this is a text file, renamed .jpg\n" * 20)
    (d / "empty.jpg").write_bytes(b"")
    _png(d / "huge.png", 12_000, 12_000)
    small = cv2.resize(cv2.imread(str(assets / "bus.jpg")), (162, 216))  # BGR
    cv2.imwrite(str(d / "deep16.png"), small.astype(np.uint16) * 257)  # 16-bit
    Image.fromarray(small[..., ::-1]).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    return {p.name: p for p in d.iterdir()}


def test_demo_under_load_with_bad_uploads(tiny_clip_file, tmp_path, assets, bad_uploads, monkeypatch):
    """20 concurrent requests (5 bad uploads) on 127.0.0.1: a readable message for each bad upload, good ones get
    detections, and the server answers afterwards."""
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    client_mod = pytest.importorskip("gradio_client", reason="needs gradio_client (installed with Gradio)")
    import yw_ext
    from yw_ext.demo import launch

    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "emb"))
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.manual_seed(0)
    blocks = launch(model=yw_ext.YOLOWorld("yw-v2-n.yaml"), port=port, block=False, quiet=True, imgsz=96, conf=0.0,
                    out_dir=tmp_path / "out", examples=[assets / "bus.jpg"])
    try:
        client = client_mod.Client(blocks.local_url, verbose=False)
        bus = str(assets / "bus.jpg")
        jobs = [bus] * 15 + [str(p) for p in bad_uploads.values()]

        def ask(path: str):
            _, table, status = client.predict(client_mod.handle_file(path), "person, bus", "", None, [], 0.0, 0.7,
                                              0.5, 0.0, api_name="/on_detect")
            return Path(path).name, len(table["data"]), str(status)

        with ThreadPoolExecutor(max_workers=20) as pool:  # bounded: 20 requests, 20 threads
            answers = [f.result(timeout=120) for f in [pool.submit(ask, j) for j in jobs]]
        for name, rows, status in answers:
            if name == "bus.jpg" or name in ("deep16.png", "cmyk.jpg"):  # 16-bit and CMYK are read, as 8-bit RGB
                assert rows > 0 and f"detections in {name}" in status, (name, status)
        by_name = {n: s for n, _, s in answers if n != "bus.jpg"}
        assert "could not read the input image 'notes.jpg': it is not an image file" in by_name["notes.jpg"]
        assert "'empty.jpg' is an empty file (0 bytes)" in by_name["empty.jpg"]
        assert "'huge.png' is 12000 x 12000 pixels (144 megapixels)" in by_name["huge.png"], by_name["huge.png"]
        assert not any("Traceback" in s for _, _, s in answers)
        assert "detections in bus.jpg" in ask(bus)[2]  # still up
    finally:
        blocks.close()


# ---------------------------------------------------------------------------------------- the suite's caches (12)
_PROBE = '''
import os
from pathlib import Path

def test_probe():
    from yw_ext.hub import weights_dir
    from yw_ext.text.cache import EmbeddingCache
    import numpy as np
    EmbeddingCache().put_many("probe", ["x"], np.ones((1, 4), np.float32))
    weights_dir().mkdir(parents=True, exist_ok=True)
    (weights_dir() / "probe.pt").write_bytes(b"x")
    Path(os.environ["PROBE_OUT"]).write_text(os.environ["YW_CACHE_DIR"] + "\\n" + os.environ["YW_WEIGHTS_DIR"])
'''


def test_conftest_forces_private_caches(tmp_path):
    """With YW_CACHE_DIR / YW_WEIGHTS_DIR set to real folders, a test still writes only into temporary ones."""
    sentinel = tmp_path / "real_caches"
    (sentinel / "emb").mkdir(parents=True)
    (sentinel / "weights").mkdir()
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(_PROBE)
    out = tmp_path / "seen.txt"
    r = subprocess.run(  # tests/conftest.py loaded as a plugin: the probe runs under it, outside the repository
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest", "--rootdir",
         str(probe.parent), str(probe)], cwd=ROOT, timeout=300, capture_output=True, text=True,
        env=_env(YW_CACHE_DIR=str(sentinel / "emb"), YW_WEIGHTS_DIR=str(sentinel / "weights"), PROBE_OUT=str(out)),
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    seen = out.read_text().splitlines()
    assert len(seen) == 2 and str(sentinel) not in "\n".join(seen), seen
    assert not list((sentinel / "emb").iterdir()) and not list((sentinel / "weights").iterdir())
