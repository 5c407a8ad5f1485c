"""``benchmarks/gpu_check.py`` as far as a CPU allows: options, the no-CUDA exit, the CSV, the comparison logic on
saved arrays, the check list and the latency rows. (The GPU run itself is the script's job.)"""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("gpu_check", None)


def test_options(gc):
    a = gc.parse_args([])
    assert (a.scales, a.nms_scales, a.latency_scales, a.ks, a.imgsz) == (["s", "l"], ["s"], ["l"],
                                                                          [3, 80, 1203], 640)
    assert a.out == ROOT / "benchmarks" / "results" / "gpu_check.csv" and a.budget < 480
    assert a.ultralytics_engine == "onnx" and gc.parse_args(["--ultralytics-engine", "export"]).ultralytics_engine
    a = gc.parse_args(["--scales", "s", "--nms-scales", "s", "--skip", "int8,ddp", "--out", "x.csv"])
    assert a.skip == ["int8", "ddp"] and str(a.out) == "x.csv"
    with pytest.raises(SystemExit):
        gc.parse_args(["--skip", "nothing"])
    with pytest.raises(SystemExit):
        gc.parse_args(["--scales", "q"])


def test_no_cuda_one_line_exit_0(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even on a machine with one
    out = tmp_path / "g.csv"
    p = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 0 and len(lines) == 1 and "no CUDA GPU" in lines[0], (p.returncode, lines)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing else done


def test_csv_rows_carry_versions_and_device(gc, tmp_path):
    rows = [{"item": "engine", "scale": "s", "variant": "fixed80", "precision": 16, "K": 80, "status": "ok",
             "score_max": 0.004, "box_max": 0.3, "not_a_column": 1},
            {"item": "ddp", "status": "skipped", "note": "one GPU: DDP needs at least two"}]
    env = gc.environment()
    path = gc.write_rows(tmp_path / "res" / "gpu_check.csv", rows, env)
    assert sorted(p.name for p in path.parent.iterdir()) == ["gpu_check.csv"]  # written atomically, no leftovers
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == gc.COLUMNS
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert [r["item"] for r in read] == ["engine", "ddp"] and read[0]["box_max"] == "0.3"
    for r in read:
        assert r["torch"] == torch.__version__ and r["ultralytics"] and r["device"] == env["device"] and r["date"]
        assert "tensorrt" in r and "cuda" in r and r["gpus"] == str(env["gpus"])


def test_compare_raw_outputs_from_saved_arrays(gc, tmp_path):
    rng = np.random.default_rng(0)
    ref = np.concatenate([rng.uniform(0, 640, (1, 4, 100)), rng.uniform(0, 1, (1, 80, 100))], 1).astype(np.float32)
    np.save(tmp_path / "ref.npy", ref)
    for name, delta in {"close": (0.4, 0.01), "scores": (0.4, 0.03), "boxes": (1.5, 0.01)}.items():
        out = ref.copy()
        out[:, :4, 7] += delta[0]
        out[:, 4:, 9] -= delta[1]
        np.save(tmp_path / f"{name}.npy", out)
    load = lambda n: np.load(tmp_path / f"{n}.npy")  # noqa: E731
    r = gc.compare_outputs(load("ref"), load("close"))
    assert r["ok"] and r["reason"] == "" and abs(r["box_max"] - 0.4) < 1e-3 and abs(r["score_max"] - 0.01) < 1e-4
    r = gc.compare_outputs(load("ref"), load("scores"))
    assert not r["ok"] and r["reason"].startswith("scores differ by 0.03")
    r = gc.compare_outputs(load("ref"), load("boxes"))
    assert not r["ok"] and "boxes differ by 1.5 px > 1.0" in r["reason"]
    assert gc.compare_outputs(load("ref"), load("boxes"), None, None)["ok"]  # INT8: reported only
    assert "shape" in gc.compare_outputs(load("ref"), load("ref")[:, :50])["reason"]
    nan = load("ref")
    nan[0, 5, 3] = np.nan
    assert gc.compare_outputs(load("ref"), nan)["reason"] == "non-finite values in the output"


def _rows(n: int, seed: int = 0) -> np.ndarray:
    """``(1, 300, 6)`` NMS rows: n detections (distinct boxes, scores 0.2-0.9), zero padding."""
    rng = np.random.default_rng(seed)
    out = np.zeros((1, 300, 6), np.float32)
    xy = rng.uniform(0, 500, (n, 2))
    out[0, :n, :4] = np.concatenate([xy, xy + rng.uniform(20, 100, (n, 2))], 1)
    out[0, :n, 4] = np.sort(rng.uniform(0.2, 0.9, n))[::-1]
    out[0, :n, 5] = rng.integers(0, 80, n)
    return out


def test_compare_nms_rows_from_saved_arrays(gc, tmp_path):
    ref = _rows(40)
    np.save(tmp_path / "ref.npy", ref)
    ref = np.load(tmp_path / "ref.npy")
    out = ref.copy()
    out[0, :40] = out[0, np.random.default_rng(1).permutation(40)]  # another order
    out[0, :40, :4] += 0.3
    out[0, :40, 4] += 0.005
    r = gc.compare_outputs(ref, out, kind="nms")
    assert r["ok"] and abs(r["box_max"] - 0.3) < 1e-3 and abs(r["score_max"] - 0.005) < 1e-4
    strong_lost = ref.copy()
    strong_lost[0, 0] = 0  # the best detection missing
    r = gc.compare_outputs(ref, strong_lost, kind="nms")
    assert not r["ok"] and "1 of 40 reference detections missing, 0 extra" in r["reason"]
    near = ref.copy()
    near[0, :40, 4] = np.linspace(0.9, 0.12, 40)  # the last rows within the margin of conf
    near_out = near.copy()
    near_out[0, 39] = 0  # a row at 0.12 (< 0.1 + 0.05) may flip with precision
    assert gc.compare_outputs(near, near_out, kind="nms")["ok"]
    moved = ref.copy()
    moved[0, 3, 5] = (moved[0, 3, 5] + 1) % 80  # another class: missing one way, extra the other
    assert "1 of 40 reference detections missing, 1 extra" in gc.compare_outputs(ref, moved, kind="nms")["reason"]
    assert "nothing compared" in gc.compare_outputs(np.zeros_like(ref), np.zeros_like(ref), kind="nms")["reason"]
    degenerate = ref.copy()
    degenerate[0, :40, 2] = degenerate[0, :40, 0]  # zero-width boxes (clipped at a border): matched by distance
    assert gc.compare_outputs(degenerate, degenerate + [0.2, 0.2, 0.2, 0.2, 0, 0], kind="nms")["ok"]


def test_compare_full_nms_lists_use_the_cut_off(gc):
    full = _rows(300)  # max_det rows: the lowest kept ones may be replaced by others at another precision
    other = full.copy()
    other[0, 299, :4] += 200  # the last kept row differs
    assert gc.compare_outputs(full, other, kind="nms")["ok"]
    other[0, 0, :4] += 200
    assert not gc.compare_outputs(full, other, kind="nms")["ok"]


def test_check_list(gc):
    items = gc.check_list(gc.parse_args([]), gpus=1)
    got = [(i.name, i.scale, i.variant, i.precision) for i in items]
    for scale in ("s", "l"):
        for variant in ("fixed80", "dynamic"):
            assert ("engine", scale, variant, 16) in got and ("engine", scale, variant, 8) in got
    assert ("engine", "s", "nms", 16) in got and ("engine", "s", "efficient", 16) in got  # the parse question
    assert ("engine", "l", "nms", 16) not in got
    both = [(i.scale, i.variant) for i in gc.check_list(gc.parse_args(["--nms-scales", "s,l"]), gpus=1)]
    assert ("l", "nms") in both and ("l", "efficient") in both
    assert got[0] == ("engine_api", "s", "fixed80", 16) and ("detector", "s", None, None) in got
    assert ("latency", "l", None, None) in got
    assert got.index(("latency", "l", None, None)) < got.index(("engine", "s", "fixed80", 8))  # INT8 last
    assert next(i for i in items if i.name == "ddp").skip  # one GPU
    assert not next(i for i in gc.check_list(gc.parse_args([]), gpus=2) if i.name == "ddp").skip
    short = gc.check_list(gc.parse_args(["--scales", "s", "--skip", "int8,latency,nms"]), gpus=1)
    assert [(i.name, i.variant, i.precision) for i in short] == [
        ("engine_api", "fixed80", 16), ("engine", "fixed80", 16), ("engine", "dynamic", 16), ("detector", None, None),
        ("ddp", None, None)]


def test_latency_rows_and_summary(gc):
    ms = 1e-3
    samples = {"ours_k80": [1.2 * ms] * 3, "ultralytics_k80": [1.25 * ms] * 3, "ours_k1203": [1.3 * ms] * 3,
               "ultralytics_k1203": [2.0 * ms] * 3, "dynamic_k80": [1.5 * ms] * 3}
    rows = {r["item"]: r for r in gc.latency_rows(samples, "l")}
    assert rows["latency ours_k80"]["ms"] == 1.2 and rows["latency ours_k80"]["target_met"] is True
    k80 = rows["latency ours/ultralytics K=80"]
    assert k80["ratio"] == 0.96 and k80["target_met"]
    assert rows["latency ours/ultralytics K=1203"]["ratio"] == 0.65
    assert rows["latency dynamic/fixed K=80"]["ratio"] == 1.25 and not rows["latency dynamic/fixed K=80"]["target_met"]
    assert all(r["status"] == "ok" for r in rows.values())  # missed targets are reported, not failures
    assert gc.summary(list(rows.values())) == (0, [])
    code, lines = gc.summary([{"item": "engine", "scale": "l", "variant": "dynamic", "precision": 8, "K": 1203,
                               "status": "fail", "note": "RuntimeError: build failed"}])
    assert code == 1 and lines == ["FAIL engine l dynamic INT8 K=1203: RuntimeError: build failed"]


def test_run_records_failures_skips_and_the_budget(gc, tmp_path, monkeypatch):
    run = gc.Run(gc.parse_args(["--budget", "100", "--data", str(tmp_path)]), tmp_path)

    def broken(run, item):
        raise RuntimeError("TensorRT could not parse x.onnx: NonMaxSuppression\nsecond line")

    monkeypatch.setitem(gc.ITEMS, "engine", broken)
    monkeypatch.setitem(gc.ITEMS, "detector", lambda run, item: [{"status": "ok", "note": "fine"}])
    run.do(gc.Item("engine", "s", "nms", 16))  # about 40 s: runs (and fails)
    run.do(gc.Item("detector", "s"))
    run.do(gc.Item("ddp", skip="one GPU: DDP needs at least two"))
    run.do(gc.Item("latency", "l"))  # about 270 s: past the budget of 100 s
    got = [(r["item"], r["status"], r["note"]) for r in run.rows]
    assert got[:3] == [("engine", "fail", "RuntimeError: TensorRT could not parse x.onnx: NonMaxSuppression"),
                       ("detector", "ok", "fine"), ("ddp", "skipped", "one GPU: DDP needs at least two")]
    assert got[3][:2] == ("latency", "fail") and "would pass the --budget of 100 s" in got[3][2]
    code, lines = gc.summary(run.rows)
    assert code == 1 and len(lines) == 2 and lines[0].startswith("FAIL engine s nms FP16: RuntimeError")
