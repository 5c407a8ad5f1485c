"""The deployment runtime (``yw_ext.runtime``) is torch-free and Ultralytics-free, checked in fresh interpreters.

``test_runtime_import_loads_no_torch`` imports it in the normal test environment (torch and Ultralytics installed)
and lists what came with it; ``test_runtime_runs_without_ultralytics`` makes ``import ultralytics`` fail (torch stays
importable) and runs an exported run-time-vocabulary ONNX through ``Detector`` end to end, against the same
``Detector`` in this process. (``tests/test_export.py::test_runtime_without_torch`` blocks torch too.) Both print
the time ``import yw_ext.runtime`` took there; nothing asserts on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from tests.test_export import NAMES, _detector, _emb, _same_kept

HEAVY = ("torch", "torchvision", "ultralytics")

_IMPORT = r"""
import json, sys, time
before = set(sys.modules)
t0 = time.perf_counter()
import yw_ext.runtime
from yw_ext.runtime import Detector, TextEncoder, Tokenizer, parse_classes
seconds = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
heavy = sorted(m for m in new if m.split(".")[0] in {"torch", "torchvision", "ultralytics"})
print(json.dumps(dict(seconds=seconds, heavy=heavy, count=len(new), top=sorted({m.split(".")[0] for m in new}))))
"""

_NO_ULTRALYTICS = r"""
import json, sys, time
import importlib.abc


class BlockUltralytics(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ultralytics" or name.startswith("ultralytics."):
            raise ImportError(f"ultralytics is blocked in this test ({name})", name=name)
        return None


sys.meta_path.insert(0, BlockUltralytics())
try:
    import ultralytics  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
t0 = time.perf_counter()
import yw_ext.runtime
seconds = time.perf_counter() - t0
from yw_ext.runtime import Detector

model, emb, images = sys.argv[1], sys.argv[2], sys.argv[3:]
det = Detector(model).set_classes(["person", "bus", "tie", "car"], embeddings=emb)  # a .npy path
out = [dict(boxes=r.boxes.tolist(), scores=r.scores.tolist(), classes=r.class_ids.tolist(), labels=r.labels)
       for r in det(images, conf=0.05)]
import importlib.util
torch_importable = importlib.util.find_spec("torch") is not None
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "torchvision", "ultralytics"}
                and sys.modules[m] is not None)
print(json.dumps(dict(results=out, loaded=loaded, blocked=blocked, torch_importable=torch_importable,
                      seconds=seconds, names=det.vocabulary)))
"""


def _run(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter of this environment; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=180,
                       cwd=str(ROOT))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_runtime_import_loads_no_torch(record_property):
    """``import yw_ext.runtime`` (and its public names) brings in neither torch nor Ultralytics, though installed."""
    got = _run(_IMPORT)
    assert got["heavy"] == [], got["heavy"]
    assert not set(got["top"]) & set(HEAVY)
    record_property("import_yw_ext_runtime_s", got["seconds"])
    print(f"\nimport yw_ext.runtime: {got['seconds']:.3f} s, {got['count']} modules, packages: {got['top']}")


@pytest.fixture(scope="module")
def dynvocab_onnx(tmp_path_factory):
    """A small run-time-vocabulary export (dynamic batch and size) and a 4-class ``(K, D)`` vocabulary as ``.npy``."""
    d = tmp_path_factory.mktemp("runtime_imports")
    model = _detector()
    model.set_classes(NAMES, embeddings=_emb(3))
    f = model.export(format="onnx", dynamic_vocab=True, dynamic=True, imgsz=96, verbose=False, out=d / "dv.onnx")
    emb = d / "vocab.npy"
    np.save(emb, _emb(4, seed=4).numpy())
    return f, emb


def test_runtime_runs_without_ultralytics(dynvocab_onnx, assets, record_property):
    """``import ultralytics`` fails, torch is importable: ``Detector`` loads, sets classes, detects, as in-process."""
    from yw_ext.runtime import Detector

    f, emb = dynvocab_onnx
    srcs = [str(assets / "bus.jpg"), str(assets / "zidane.jpg")]
    got = _run(_NO_ULTRALYTICS, str(f), str(emb), *srcs)
    assert got["blocked"] and got["torch_importable"]
    assert got["loaded"] == [], got["loaded"]
    assert got["names"] == ["person", "bus", "tie", "car"]
    ref = Detector(f).set_classes(["person", "bus", "tie", "car"], embeddings=np.load(emb))(srcs, conf=0.05)
    assert sum(len(e.scores) for e in ref) > 0, "the reference detects nothing: the comparison would be empty"
    assert sum(len(r["scores"]) for r in got["results"]) == sum(len(e.scores) for e in ref)
    for r, e in zip(got["results"], ref):
        assert r["labels"] == e.labels
        _same_kept(np.c_[np.asarray(r["boxes"]).reshape(-1, 4), r["scores"], r["classes"]],
                   np.c_[e.boxes, e.scores, e.class_ids], box_tol=1e-4, score_tol=1e-6)
    record_property("import_yw_ext_runtime_no_ultralytics_s", got["seconds"])
    print(f"\nimport yw_ext.runtime (ultralytics blocked): {got['seconds']:.3f} s")
