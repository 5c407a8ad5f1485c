"""Text prompts end to end: CLIP text -> set_classes -> predict -> Results, and the `yw` command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import yw_ext
from yw_ext.cli import entrypoint, parse_args, parse_classes_arg


@pytest.fixture
def clip_env(tiny_clip_file, monkeypatch):
    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    return tiny_clip_file


def test_set_classes_from_text_uses_clip(clip_env, tmp_path, monkeypatch):
    from yw_ext.text import load_clip

    monkeypatch.setenv("YW_CACHE_DIR", str(tmp_path / "cache"))
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.set_classes(["person", ["car", "automobile"]])
    enc = load_clip(clip_env)
    ref = enc.encode(["person", "person", "car", "automobile"])  # class-major, padded by the first prompt
    assert model.model.prompts_per_class == 2
    assert torch.allclose(model.model.txt_feats[0], ref, atol=1e-6)
    assert torch.allclose(ref.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert model.model.text_encoder_id == enc.identity


def test_encoder_width_mismatch(clip_env):
    model = yw_ext.YOLOWorld("yw-v2-n.yaml", embed_dim=768)
    with pytest.raises(ValueError, match="512-d embeddings but this model expects 768-d"):
        model.set_classes(["person"])


def test_cli_parsing():
    assert parse_classes_arg("person, car|automobile ,bus") == ["person", ["car", "automobile"], "bus"]
    assert parse_args(["conf=0.5", "save=False", "classes=1,2"]) == {"conf": 0.5, "save": False, "classes": "1,2"}
    with pytest.raises(SystemExit, match="not key=value"):
        parse_args(["bus.jpg"])


def test_cli_predict_writes_annotated_image(clip_env, tmp_path, assets):
    rc = entrypoint(
        [
            "predict",
            "model=yw-v2-n.yaml",
            f"source={assets / 'bus.jpg'}",
            "classes=person,bus",
            "imgsz=160",
            "conf=0.0001",
            f"project={tmp_path}",
            "name=pred",
            "verbose=False",
        ]
    )
    assert rc == 0
    out = tmp_path / "pred" / "bus.jpg"
    assert out.is_file() and out.stat().st_size > 10_000
    import cv2

    im = cv2.imread(str(out))
    assert im is not None and im.shape[:2] == (1080, 810)


def test_cli_bad_input_is_readable(clip_env, capsys):
    assert entrypoint(["predict", "model=yw-v2-n.yaml", "classes=person,person"]) == 2
    assert "duplicate class name 'person'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="unknown mode"):
        entrypoint(["fly"])


def test_console_script_runs(clip_env, tmp_path, assets):
    """The installed `yw` console script (python -m for portability) predicts and saves."""
    r = subprocess.run(
        [sys.executable, "-m", "yw_ext.cli", "predict", "model=yw-v2-n.yaml", f"source={assets / 'zidane.jpg'}",
         "classes=person,tie", "imgsz=128", f"project={tmp_path}", "name=p"],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "p" / "zidane.jpg").is_file()
