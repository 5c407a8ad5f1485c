"""Shared test set-up: offline Ultralytics, private caches, paths to shared data and sample images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Offline before anything imports ultralytics: nothing in the tests may download.
os.environ["YOLO_OFFLINE"] = "1"
os.environ["YOLO_AUTOINSTALL"] = "false"
_TMP = Path(tempfile.mkdtemp(prefix="yw_ext_tests_"))
# Forced (not setdefault): a machine with these set must not let the tests read or write its real caches.
os.environ["YW_CACHE_DIR"] = str(_TMP / "embeddings")
os.environ["YW_WEIGHTS_DIR"] = str(_TMP / "weights")
os.environ.pop("YW_CLIP", None)

import pytest  # noqa: E402
import torch  # noqa: E402

from yw_ext.bench import randomize_ as _randomize_  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
COCO128 = SHARED / "data" / "coco128"
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def assets() -> Path:
    """Folder of the sample images shipped inside the ultralytics package (bus.jpg, zidane.jpg)."""
    from ultralytics.utils import ASSETS

    return Path(ASSETS)


@pytest.fixture(scope="session")
def coco128() -> Path:
    """COCO128 in ../shared; tests that need it skip when ../shared is absent."""
    if not (COCO128 / "coco128.yaml").is_file():
        pytest.skip(f"needs COCO128 at {COCO128} (../shared is missing)")
    return COCO128


@pytest.fixture(scope="session")
def tiny_clip_file(tmp_path_factory) -> Path:
    """A tiny random CLIP (512-d) saved in OpenAI's state-dict layout, loadable by the real loaders."""
    from tests._tiny_clip import save_openai

    path = tmp_path_factory.mktemp("clip") / "tiny-ViT-B-32.pt"
    save_openai(path)
    return path


@pytest.fixture
def env(tiny_clip_file, tmp_path, monkeypatch) -> Path:
    """Tiny CLIP (text and image towers) as ``YW_CLIP`` and a private embedding cache; returns ``tmp_path``."""
    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "emb"))
    return tmp_path


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm statistics, contrastive-head scalars and attention biases non-default values so parity tests
    can fail: ``yw_ext.bench.randomize_`` (the one implementation), without its float16 rounding."""
    return _randomize_(model, seed, fp16_exact=False)
