"""The web demo (``yw demo`` / ``yw_ext.demo.launch``): parsing, prompt files, and the page end to end.

The end-to-end tests serve the demo on a free loopback port (Gradio's server thread, in this process) with a
random-weight ``yw-v2-n.yaml`` model and the tiny random CLIP, and drive it in Debian's headless Chromium through
Playwright's Python API. They skip (with the reason) when ``/usr/bin/chromium``, Playwright or Gradio is missing;
nothing is installed at run time. Screenshots go to ``tests/artifacts/`` (gitignored).

Every browser request and every socket the test process opens is recorded: nothing may leave the loopback
interface (Gradio analytics off, no CDN, no fonts from the web).
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import yw_ext
from yw_ext.cli import entrypoint

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
BUS = [17, 231, 802, 768]  # the bus in bus.jpg (810 x 1080), pixel xyxy
TIMEOUT_MS = 60_000


# ----------------------------------------------------------------------------------------------------------------------
# Without a browser
# ----------------------------------------------------------------------------------------------------------------------
def test_parse_prompt_lines_and_boxes(assets):
    from yw_ext.demo import DemoInputError, parse_classes_text, parse_prompt_lines

    assert parse_classes_text(" person, car|automobile ,, ") == ["person", ["car", "automobile"]]
    scene = np.zeros((100, 200, 3), np.uint8)
    zidane = str(assets / "zidane.jpg")
    out = parse_prompt_lines("dog: 10,10,50,60\ncat: zidane.jpg; cat: zidane.jpg @ 1,2,30,40\nbird:", scene, [zidane])
    assert list(out) == ["dog", "cat", "bird"]
    assert out["dog"][0][0] is scene and out["dog"][0][1] == [10, 10, 50, 60]
    assert out["cat"][0].shape == (720, 1280, 3) and out["cat"][1][1] == [1, 2, 30, 40]
    assert len(out["bird"]) == 1  # every upload
    assert parse_prompt_lines("", scene, []) == {}
    for text, msg in [
        ("dog: 10,10,500,60", "is outside the image, which is 200 x 100"),
        ("dog: 50,10,10,60", "has no area"),
        ("dog: 1,2,3", "4 numbers x1,y1,x2,y2"),
        ("dog: nope.jpg", "no uploaded example image is called 'nope.jpg'"),
        (": 1,2,3,4", "start the line with a class name"),
    ]:
        with pytest.raises(DemoInputError, match=msg):
            parse_prompt_lines(text, scene, [zidane])
    with pytest.raises(DemoInputError, match="no image-prompt line says which class"):
        parse_prompt_lines("", scene, [zidane])


def test_export_prompts_loads_back(tiny_clip_file, tmp_path, monkeypatch, assets):
    """The demo's prompt export is a yw_ext prompt file: YOLOWorld.load_prompts gives the same vocabulary."""
    from yw_ext.demo import Demo
    from yw_ext.prompts import read_prompt_file

    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "cache"))
    demo = Demo("yw-v2-n.yaml", out_dir=tmp_path / "out")
    path, status = demo.export_prompts("person, car|automobile", "car: 17,231,802,768", str(assets / "bus.jpg"))
    assert path.parent == tmp_path / "out" and "2 classes x 2 prompts" in status, status
    assert [p.name for p in (tmp_path / "out").iterdir()] == [path.name]  # no temporary file left
    with np.load(path, allow_pickle=False) as z:  # plain arrays, no pickle
        assert z["embeddings"].shape == (2, 2, 512) and z["embeddings"].dtype == np.float32
    p = read_prompt_file(path)
    assert p["names"] == ["person", "car"] and p["class_sources"] == ["text", "text+image"]
    assert p["text_encoder_id"] == demo.model.model.text_encoder_id and p["image_encoder_id"]
    other = yw_ext.YOLOWorld("yw-v2-n.yaml").load_prompts(path)
    assert torch.equal(other.model.txt_feats, demo.model.model.txt_feats) and other.model.prompts_per_class == 2


def test_missing_weights_and_clip_are_reported(tmp_path, monkeypatch):
    from yw_ext.demo import Demo, DemoInputError

    monkeypatch.setenv("YW_WEIGHTS_DIR", str(tmp_path / "weights"))
    demo = Demo("l", clip=tmp_path / "no-clip.pt", out_dir=tmp_path / "out")
    info = demo.info_markdown()
    assert "**No model**" in info and "yolov8l-worldv2.pt" in info and "offline" in info  # WeightsNotFoundError
    assert "**No CLIP**" in info and "CLIP weights not found" in info  # load_clip's FileNotFoundError
    with pytest.raises(DemoInputError, match="no model is loaded"):
        demo.detect("bus.jpg", "person")


def test_cli_demo_dispatches_to_launch(monkeypatch):
    import yw_ext.demo

    calls = []
    monkeypatch.setattr(yw_ext.demo, "launch", lambda **kw: calls.append(kw))
    assert entrypoint(["demo", "model=yw-v2-n.yaml", "port=7999", "host=127.0.0.1", "conf=0.1"]) == 0
    assert calls == [{"model": "yw-v2-n.yaml", "port": 7999, "host": "127.0.0.1", "conf": 0.1}]


# ----------------------------------------------------------------------------------------------------------------------
# End to end in Chromium
# ----------------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(scope="module")
def outbound():
    """Record every non-loopback address this process connects to while the module runs."""
    seen: list = []
    orig = socket.socket.connect

    def connect(self, address):
        if isinstance(address, tuple) and not _is_loopback(str(address[0])):
            seen.append(address)
        return orig(self, address)

    socket.socket.connect = connect
    yield seen
    socket.socket.connect = orig


@pytest.fixture(scope="module")
def server(tiny_clip_file, tmp_path_factory, assets, outbound):
    """The demo on a free loopback port (random n model, tiny CLIP); closed, and its port checked free, at the end."""
    pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
    from yw_ext.demo import launch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("YW_CLIP", str(tiny_clip_file))
        mp.setenv("YW_CACHE_DIR", str(tmp_path_factory.mktemp("demo_cache")))
        mp.setenv("GRADIO_TEMP_DIR", str(tmp_path_factory.mktemp("gradio")))
        port = _free_port()
        blocks = launch(model=yw_ext.YOLOWorld("yw-v2-n.yaml"), port=port, block=False, quiet=True,
                        out_dir=tmp_path_factory.mktemp("demo_out"),
                        examples=[assets / "bus.jpg", assets / "zidane.jpg"])
        try:
            assert blocks.local_url.startswith(f"http://127.0.0.1:{port}")
            yield blocks
        finally:
            blocks.close()
    with socket.socket() as s:  # the server is gone
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """Headless Debian Chromium through Playwright, with a fresh profile (user-data-dir)."""
    if not CHROMIUM.is_file():
        pytest.skip("needs Debian's Chromium at /usr/bin/chromium (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright Python package")
    profile = Path(tempfile.mkdtemp(prefix="yw_demo_chromium_"))
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        ctx.set_default_timeout(TIMEOUT_MS)
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(request, server, browser_context, outbound):
    """A new tab on the demo; afterwards, no request of the page nor socket of this process left loopback.

    The tab's last state is saved as ``tests/artifacts/last-<test>.png`` (what a failing test saw).
    """
    pg = browser_context.new_page()
    requests: list[str] = []
    pg.on("request", lambda r: requests.append(r.url))
    pg.goto(server.local_url)
    pg.wait_for_selector("#yw-detect")
    yield pg
    try:
        _screenshot(pg, f"last-{request.node.name}.png")
    finally:
        pg.close()
    from urllib.parse import urlparse

    remote = [u for u in requests if urlparse(u).scheme in {"http", "https", "ws", "wss"}
              and not _is_loopback(urlparse(u).hostname or "")]
    assert not remote, f"the page requested non-loopback URLs: {remote[:5]}"
    assert not outbound, f"the test process connected outside loopback: {outbound[:5]}"


def _upload(page, elem: str, files, file_name: str | None = None) -> None:
    """Upload files into a component and wait until the page shows them (an image, or a file row's download link)."""
    page.locator(f"#{elem} input[type=file]").set_input_files(files)
    if file_name:
        page.locator(f"#{elem} a[download='{file_name}']").wait_for()
    else:
        page.locator(f"#{elem} img").first.wait_for()


STATUS = "#yw-status [data-testid=markdown]"


def _detect(page, conf: str = "0") -> str:
    """Set the confidence, press Detect and return the status text once it changed (the run is over)."""
    box = page.locator("#yw-conf input[type=number]")
    box.fill(conf)
    box.press("Enter")
    before = page.locator(STATUS).inner_text()
    page.locator("#yw-detect").click()
    page.wait_for_function(
        """([sel, before]) => {
            const s = document.querySelector(sel);
            const t = document.querySelector('#yw-status [data-testid=status-tracker]');
            return s && s.innerText.trim() && s.innerText !== before && (!t || t.classList.contains('hide'));
        }""", arg=[STATUS, before], timeout=TIMEOUT_MS)
    return page.locator(STATUS).inner_text()


def _open_prompts(page) -> None:
    page.get_by_text("Image prompts (detect by example)").first.click()
    page.locator("#yw-prompts textarea").wait_for(state="visible")


def _table_rows(page) -> int:
    return int(page.locator("#yw-table [role=grid]").get_attribute("aria-rowcount")) - 1  # minus the header


def _check_results(page, classes: set[str]) -> None:
    img = page.locator("#yw-output img").first
    img.wait_for()
    assert page.evaluate("(el) => el.complete && el.naturalWidth", img.element_handle()) == 810
    assert _table_rows(page) > 0
    page.locator("#yw-table [data-testid=cell-0-5]").wait_for()  # first row, last column (x1, y1, x2, y2 before)
    cells = [page.locator(f"#yw-table [data-testid=cell-0-{j}]").inner_text().strip() for j in range(7)
             if page.locator(f"#yw-table [data-testid=cell-0-{j}]").count()]
    box = [float(v) for v in cells[2:]]
    assert 0 <= box[0] < box[2] <= 810 + 1 and 0 <= box[1] < box[3] <= 1080 + 1, cells
    assert cells[0] in classes and float(cells[1]) >= 0 and len(cells) == 6, cells


def _screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_page_text_prompts(page, server, assets):
    assert "yw-v2-n.yaml" in page.locator("#yw-info").inner_text()
    _upload(page, "yw-image", str(assets / "bus.jpg"))
    page.locator("#yw-classes textarea").fill("person, bus|coach")
    status = _detect(page)
    assert "300 detections in bus.jpg (810 x 1080)" in status and "person (text), bus (text)" in status, status
    _check_results(page, {"person", "bus"})

    from yw_ext.prompts import read_prompt_file

    page.locator("#yw-export-prompts").click()
    page.locator(STATUS).get_by_text("Prompt file written").wait_for()
    files = list(server.yw_demo.out_dir.glob("prompts_*.npz"))
    assert len(files) == 1, files
    p = read_prompt_file(files[0])
    assert p["names"] == ["person", "bus"] and p["prompts_per_class"] == 2 and p["class_prompts"][1] == ["bus", "coach"]
    link = page.locator(f"#yw-download a[download='{files[0].name}']")
    link.wait_for()
    assert page.request.get(link.get_attribute("href")).body() == files[0].read_bytes()  # the page serves the file

    page.locator("#yw-export-onnx").click()
    page.locator(STATUS).get_by_text("Folded ONNX model written").wait_for()
    onnx = list(server.yw_demo.out_dir.glob("folded_*.onnx"))
    assert len(onnx) == 1 and onnx[0].stat().st_size > 1_000_000
    assert not list(server.yw_demo.out_dir.glob(".*"))  # no temporary files left
    _screenshot(page, "demo_text_prompts.png")


def test_page_image_prompts(page, assets):
    _upload(page, "yw-image", str(assets / "bus.jpg"))
    _open_prompts(page)
    _upload(page, "yw-uploads", str(assets / "zidane.jpg"), file_name="zidane.jpg")
    page.locator("#yw-prompts textarea").fill(f"bus: {','.join(map(str, BUS))}\nperson: zidane.jpg @ 100,50,700,720")
    status = _detect(page)
    assert "detections in bus.jpg" in status and "bus (image), person (image)" in status, status
    _check_results(page, {"bus", "person"})
    _screenshot(page, "demo_image_prompts.png")


def test_page_bad_input_is_readable(page, assets):
    # no classes
    _upload(page, "yw-image", str(assets / "bus.jpg"))
    status = _detect(page)
    assert "type at least one class name" in status, status
    page.locator(".toast-body").get_by_text("type at least one class name").first.wait_for()  # the pop-up too
    # a box outside the image
    page.locator("#yw-classes textarea").fill("bus")
    _open_prompts(page)
    page.locator("#yw-prompts textarea").fill("bus: 0,0,5000,300")
    status = _detect(page)
    assert "box 0,0,5000,300 is outside the image, which is 810 x 1080" in status, status
    # an exemplar box without area
    page.locator("#yw-prompts textarea").fill("bus: 300,300,100,400")
    status = _detect(page)
    assert "has no area" in status, status
    _screenshot(page, "demo_bad_box.png")
    assert "Traceback" not in page.content()


def test_page_unreadable_upload_is_readable(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG" * 100)
    _upload(page, "yw-image", str(broken))  # the browser shows a broken image; the server gets the file
    page.locator("#yw-classes textarea").fill("person")
    status = _detect(page)
    assert "could not read the input image 'broken.jpg'" in status, status
    _screenshot(page, "demo_unreadable_upload.png")
    assert "Traceback" not in page.content()
