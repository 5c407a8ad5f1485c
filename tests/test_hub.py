# yw_ext, AGPL-3.0 license
"""Tests for yw_ext.hub: table, aliases, download (from a local 127.0.0.1 server only), cache, integrity."""

from __future__ import annotations

import hashlib
import importlib.util
import http.server
import io
import re
import threading
import urllib.request
from pathlib import Path

import pytest
import torch

from yw_ext import hub
from yw_ext.hub import (
    KNOWN_ALIASES,
    WeightsDownloadError,
    WeightsFetchError,
    WeightsNotFoundError,
    download,
    get_weights,
    is_offline,
    list_weights,
    resolve_alias,
    verify_file,
    weight_url,
    weights_dir,
)

WEIGHTS_MD = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "weights.md"
XL = "yolo_world_v2_xl_obj365v1_goldg_cc3mlite_pretrain-5daf1395.pth"


# ------------------------------------------------------------------------------------------------------------------
# Local HTTP server
# ------------------------------------------------------------------------------------------------------------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class _Truncating(_Quiet):
    """Announces 1000 more bytes than it sends, then closes the connection."""

    def do_GET(self):  # noqa: N802
        body = b"x" * 2048
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) + 1000))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


class _Server:
    def __init__(self, root: Path, handler=_Quiet):
        def make(*args, **kwargs):
            return handler(*args, directory=str(root), **kwargs)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.running = True

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.running = False


def _tiny_checkpoint_bytes() -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"state_dict": {"conv.weight": torch.randn(8, 3, 3, 3), "conv.bias": torch.randn(8)}}, buf)
    return buf.getvalue()


@pytest.fixture
def served(tmp_path):
    """A server on 127.0.0.1 serving a good checkpoint (named after its SHA-256) and a corrupted one."""
    root = tmp_path / "srv"
    root.mkdir()
    data = _tiny_checkpoint_bytes()
    digest = hashlib.sha256(data).hexdigest()
    good = f"tiny_ckpt-{digest[:8]}.pth"
    (root / good).write_bytes(data)
    bad_prefix = format(int(digest[:8], 16) ^ 0xFFFFFFFF, "08x")  # surely a different prefix
    bad = f"tiny_ckpt-{bad_prefix}.pth"
    (root / bad).write_bytes(data)
    server = _Server(root)
    try:
        yield {"server": server, "good": good, "bad": bad, "digest": digest, "data": data}
    finally:
        server.stop()


@pytest.fixture
def wdir(tmp_path, monkeypatch):
    """Empty weights folder, empty cwd, downloads allowed, no mirror."""
    d = tmp_path / "weights"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.setenv("YW_WEIGHTS_DIR", str(d))
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.delenv("YW_OFFLINE", raising=False)
    monkeypatch.delenv("YW_HUB_MIRROR", raising=False)
    monkeypatch.setattr(hub, "_ultralytics_weights_dir", lambda: None)  # ignore the machine's Ultralytics folder
    return d


def _no_network(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(urllib.request, "urlopen", fail)


# ------------------------------------------------------------------------------------------------------------------
# Download and cache
# ------------------------------------------------------------------------------------------------------------------
def test_download_verify_load_then_cache_hit(served, wdir, monkeypatch):
    url = f"{served['server'].base}/{served['good']}"
    path = get_weights(served["good"], url=url, progress=False)
    assert path == wdir / served["good"] and path.is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == served["digest"]
    assert verify_file(path) and verify_file(path, sha256=served["digest"])
    assert not verify_file(path, sha256_prefix="00000000" if not served["digest"].startswith("0") else "ffffffff")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["conv.weight"].shape == (8, 3, 3, 3)
    assert sorted(p.name for p in wdir.iterdir()) == [served["good"]]  # no .part leftovers

    served["server"].stop()  # cache hit: no server, and no network at all
    _no_network(monkeypatch)
    assert get_weights(served["good"], url=url, progress=False) == path
    assert get_weights(served["good"], progress=False) == path  # found in the weights folder without url=
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    assert get_weights(served["good"], url=url) == path


def test_download_with_progress_bar(served, wdir):
    dest = wdir / served["good"]
    out = download(f"{served['server'].base}/{served['good']}", dest, sha256_prefix=served["digest"][:8], progress=True)
    assert out == dest and dest.read_bytes() == served["data"]


def test_mirror_replaces_host_of_table_url(served, wdir, monkeypatch):
    name = served["good"]
    spec = hub.WeightSpec(name, f"https://huggingface.invalid/{name}", served["digest"][:8], "official", "v2", "s")
    monkeypatch.setitem(hub._TABLE, name, spec)
    monkeypatch.setitem(hub._TABLE_LOWER, name.lower(), spec)
    monkeypatch.setenv("YW_HUB_MIRROR", served["server"].base + "/")
    assert weight_url(spec) == f"{served['server'].base}/{name}"
    path = get_weights(name, progress=False)
    assert path == wdir / name and path.read_bytes() == served["data"]


def test_existing_file_path_is_returned(tmp_path, wdir, monkeypatch):
    _no_network(monkeypatch)
    f = tmp_path / "anything.pt"
    f.write_bytes(b"abc")
    assert get_weights(f) == f
    assert get_weights(str(f)) == f


def test_corrupted_download_rejected(served, wdir):
    url = f"{served['server'].base}/{served['bad']}"
    with pytest.raises(WeightsDownloadError) as exc:
        get_weights(served["bad"], url=url, progress=False)
    msg = str(exc.value)
    assert isinstance(exc.value, WeightsNotFoundError)  # WeightsFetchError is both
    assert served["bad"] in msg and url in msg and str(wdir) in msg
    assert "mismatch" in msg and served["bad"][10:18] in msg and served["digest"][:8] in msg
    assert list(wdir.iterdir()) == []

    with pytest.raises(WeightsDownloadError, match="expected .* got"):
        download(url, wdir / served["bad"], sha256_prefix=served["bad"][10:18], progress=False)
    with pytest.raises(WeightsDownloadError, match="mismatch"):
        download(f"{served['server'].base}/{served['good']}", wdir / "x.pth", sha256="0" * 64, progress=False)
    assert list(wdir.iterdir()) == []


def test_truncated_download_rejected(tmp_path, wdir):
    server = _Server(tmp_path, handler=_Truncating)
    try:
        url = f"{server.base}/trunc-12345678.pth"
        with pytest.raises(WeightsDownloadError) as exc:
            download(url, wdir / "trunc.pth", progress=False)
        assert "short read" in str(exc.value) or "IncompleteRead" in str(exc.value)
        assert list(wdir.iterdir()) == []
        with pytest.raises(WeightsFetchError):
            get_weights("trunc-12345678.pth", url=url, progress=False)
        assert list(wdir.iterdir()) == []
    finally:
        server.stop()


def test_http_error_and_refused_connection(served, wdir):
    base = served["server"].base
    with pytest.raises(WeightsDownloadError, match="404"):
        download(f"{base}/missing.pth", wdir / "missing.pth", progress=False)
    served["server"].stop()
    with pytest.raises(WeightsDownloadError, match="cannot connect") as exc:
        download(f"{base}/{served['good']}", wdir / served["good"], progress=False, timeout=2)
    assert served["good"] in str(exc.value) and str(wdir) in str(exc.value)
    assert list(wdir.iterdir()) == []


def test_interrupted_download_leaves_nothing(served, wdir, monkeypatch):
    class _Response:
        headers = {"Content-Length": "100"}

        def __init__(self):
            self.calls = 0

        def read(self, n):
            self.calls += 1
            if self.calls > 1:
                raise KeyboardInterrupt
            return b"y" * 50

        def __enter__(self):
            return self

        def __exit__(self, *args):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: _Response())
    with pytest.raises(KeyboardInterrupt):
        download("http://127.0.0.1:1/whatever.pth", wdir / "whatever.pth", progress=False)
    assert list(wdir.iterdir()) == []


def test_existing_dest_kept_when_download_fails(served, wdir):
    dest = wdir / "keep.pth"
    wdir.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(b"old")
    with pytest.raises(WeightsDownloadError):
        download(f"{served['server'].base}/{served['bad']}", dest, sha256_prefix="abcdef12", progress=False)
    assert dest.read_bytes() == b"old" and sorted(p.name for p in wdir.iterdir()) == ["keep.pth"]


# ------------------------------------------------------------------------------------------------------------------
# Offline and unknown names
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("var", ["YOLO_OFFLINE", "YW_OFFLINE"])
def test_offline_error_names_file_url_and_folder(wdir, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    _no_network(monkeypatch)
    with pytest.raises(WeightsNotFoundError) as exc:
        get_weights("xl")
    msg = str(exc.value)
    assert XL in msg and resolve_alias("xl").url in msg and str(wdir) in msg and "YW_WEIGHTS_DIR" in msg
    assert not isinstance(exc.value, WeightsDownloadError)  # nothing was attempted


def test_offline_ultralytics_asset_not_downloaded(wdir, monkeypatch):
    import yw_ext.seam as ud  # hub calls attempt_download_asset through the seam

    monkeypatch.setenv("YOLO_OFFLINE", "true")
    monkeypatch.setattr(ud, "attempt_download_asset", lambda *a, **k: pytest.fail("download attempted offline"))
    with pytest.raises(WeightsNotFoundError) as exc:
        get_weights("l")
    msg = str(exc.value)
    assert "yolov8l-worldv2.pt" in msg and "github.com" in msg and str(wdir) in msg


def test_ultralytics_asset_goes_through_attempt_download_asset(wdir, monkeypatch):
    import yw_ext.seam as ud  # hub calls attempt_download_asset through the seam

    calls = []

    def fake(file, *args, **kwargs):
        calls.append(file)
        Path(file).write_bytes(b"pt")
        return str(file)

    monkeypatch.setattr(ud, "attempt_download_asset", fake)
    path = get_weights("v1-m", progress=False)
    assert path == wdir / "yolov8m-world.pt" and calls == [str(wdir / "yolov8m-world.pt")]
    assert get_weights("yolov8m-world.pt") == path and len(calls) == 1  # cached now

    monkeypatch.setattr(ud, "attempt_download_asset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("no")))
    with pytest.raises(WeightsNotFoundError, match="yolov8s-worldv2.pt"):
        get_weights("s")
    assert sorted(p.name for p in wdir.iterdir()) == ["yolov8m-world.pt"]


def test_local_copy_in_cwd_is_used(wdir, monkeypatch):
    _no_network(monkeypatch)
    Path(XL).write_bytes(b"local")  # cwd
    assert get_weights("XL").resolve() == (Path.cwd() / XL).resolve()


def test_unknown_name_lists_aliases(wdir, monkeypatch):
    _no_network(monkeypatch)
    with pytest.raises(WeightsNotFoundError) as exc:
        get_weights("no-such-model")
    msg = str(exc.value)
    assert "no-such-model" in msg and "v2.1-l" in msg and "v1-s" in msg and "xl" in msg


def test_is_offline(monkeypatch):
    for var in ("YOLO_OFFLINE", "YW_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    assert not is_offline()
    for value, expected in [("1", True), ("TRUE", True), ("Yes", True), ("0", False), ("false", False), ("", False)]:
        monkeypatch.setenv("YW_OFFLINE", value)
        assert is_offline() is expected
    monkeypatch.delenv("YW_OFFLINE")
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    assert is_offline()


def test_weights_dir_env_and_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("YW_WEIGHTS_DIR", str(tmp_path / "a" / "b"))
    assert weights_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    monkeypatch.delenv("YW_WEIGHTS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights_dir() == tmp_path / "xdg" / "yw_ext" / "weights" and weights_dir().is_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights_dir() == tmp_path / "home" / ".cache" / "yw_ext" / "weights"


# ------------------------------------------------------------------------------------------------------------------
# Table and aliases
# ------------------------------------------------------------------------------------------------------------------
def test_aliases():
    assert resolve_alias("l").name == "yolov8l-worldv2.pt"
    assert resolve_alias("v1-s").name == "yolov8s-world.pt"
    assert resolve_alias("xl").name == XL and resolve_alias("v2-xl").name == XL
    assert resolve_alias("V2-L").name == "yolov8l-worldv2.pt"
    assert resolve_alias("v2.1-l").name == "l_stage2-b3e3dc3f.pth"
    assert resolve_alias("v2.1-s").name == "s_stage2-4466ab94.pth"
    assert resolve_alias("v2.1-x").name == "x_stage1-62b674ad.pth"
    assert resolve_alias("clip").name == resolve_alias("ViT-B/32").name == "ViT-B-32.pt"
    assert resolve_alias("yolov8x-worldv2.pt").version == "v2"
    assert resolve_alias("nope") is None and resolve_alias("") is None
    for s in "smlx":
        assert resolve_alias(s) == resolve_alias(f"v2-{s}") and resolve_alias(s).source == "ultralytics"
        assert resolve_alias(f"v1-{s}").version == "v1" and resolve_alias(f"v1-{s}").scale == s
    assert all(resolve_alias(a) is not None for a in KNOWN_ALIASES)


def test_seg_aliases_and_entries():
    """The four official YOLO-World-Seg files (configs/segmentation/README.md): v1 neck, M and L, two recipes."""
    for s, h_all, h_head in (("m", "ca465825", "7bca59a7"), ("l", "8c58c916", "5a642d30")):
        w, wh = resolve_alias(f"seg-{s}"), resolve_alias(f"SEG-{s}-seghead")
        assert w.name == f"yolo_world_seg_{s}_dual_vlpan_2e-4_80e_8gpus_allmodules_finetune_lvis-{h_all}.pth"
        assert wh.name == f"yolo_world_seg_{s}_dual_vlpan_2e-4_80e_8gpus_seghead_finetune_lvis-{h_head}.pth"
        for x in (w, wh):
            assert (x.task, x.version, x.scale, x.source) == ("segment", "v1", s, "official")
            assert x.url == "https://huggingface.co/wondervictor/YOLO-World/resolve/main/" + x.name
    with pytest.raises(ValueError, match="task"):
        hub.WeightSpec("a.pth", None, None, "official", "v1", "m", task="pose")


def test_official_entries_hash_prefix_and_url():
    official = [w for w in list_weights() if w.source == "official"]
    assert len(official) == 34 and sum(w.task == "segment" for w in official) == 4
    for w in official:
        m = re.search(r"-([0-9a-f]{8})$", Path(w.name).stem)
        assert w.sha256_prefix == (m.group(1) if m else None), w.name
        assert w.url.startswith("https://huggingface.co/wondervictor/") and w.url.endswith("/" + w.name)
    assert {w.version for w in official} >= {"v1", "v2", "v2.1"}
    ultra = {w.name for w in list_weights() if w.source == "ultralytics"}
    assert ultra == {f"yolov8{s}-world{v}.pt" for s in "smlx" for v in ("", "v2")}
    assert all(w.url is None for w in list_weights() if w.source == "ultralytics")


def test_clip_entry_url_contains_sha256():
    w = resolve_alias("clip")
    assert w.source == "clip" and w.sha256 and len(w.sha256) == 64
    assert w.sha256 in w.url and w.url.endswith("/" + w.sha256 + "/ViT-B-32.pt")
    # cross-check with the `clip` package's own table when it is installed (read, not imported: importing is slow)
    spec = importlib.util.find_spec("clip")
    if spec is not None and spec.submodule_search_locations:
        src = Path(next(iter(spec.submodule_search_locations)), "clip.py")
        if src.is_file():
            m = re.search(r'"ViT-B/32":\s*"([^"]+)"', src.read_text())
            assert m and m.group(1) == w.url


@pytest.mark.skipif(not WEIGHTS_MD.is_file(), reason="../shared/docs/weights.md not present")
def test_table_matches_weights_md():
    rows = dict(re.findall(r"^\| `([^`]+)` \| (\S+) \|$", WEIGHTS_MD.read_text(), re.M))
    assert len(rows) >= 30
    table = {w.name: w.url for w in list_weights() if w.source == "official" and w.task == "detect"}
    assert table == rows  # weights.md lists the detection files; the seg files come from the official seg README


def test_weight_spec_validation():
    with pytest.raises(ValueError):
        hub.WeightSpec("a.pt", None, None, "elsewhere", "v2", "s")
    with pytest.raises(ValueError):
        hub.WeightSpec("a.pt", None, "xyz", "official", "v2", "s")
    with pytest.raises(Exception):
        resolve_alias("l").name = "other"  # frozen
