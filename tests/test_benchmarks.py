# yw_ext, AGPL-3.0 license
"""The benchmark suite's code paths on a tiny configuration (n at 64 px, K = 1 and 3, one pair): CSV columns and rows,
skipped backends, plots, the ``yw bench`` dispatch and the option parsing; the seg rows (``seg=True``) and a missing
YOLOE. No timing is asserted."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from yw_ext import bench, seam
from yw_ext.cli import LATER
from yw_ext.cli import run as yw_run

PT_AND_ORT = ("ultralytics", "pt_eager", "pt_folded", "pt_folded_max", "ultralytics_onnx", "ort_fixed", "ort_max",
              "ort_dynvocab")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One tiny ``yw bench`` run (through the CLI dispatch), its output folder and the CSV rows read back."""
    out = tmp_path_factory.mktemp("bench")
    rows = yw_run(["bench", "scales=n", "imgsz=64", "ks=1,3", "pairs=1", "warmup=0", "reps=1", "gap=0",
                   "gemm_runs=1", "encoder=tiny", "text_pairs=1", f"out={out}", "name=tiny"])
    assert isinstance(rows, list) and rows
    with open(out / "tiny.csv", newline="") as f:
        read = list(csv.DictReader(f))
    return out, read


def test_csv_columns_and_latency_rows(tiny_run):
    out, rows = tiny_run
    with open(out / "tiny.csv", newline="") as f:
        assert tuple(next(csv.reader(f))) == bench.COLUMNS
    lat = [r for r in rows if r["kind"] == "latency"]
    assert sorted((r["backend"], r["K"]) for r in lat) == sorted((b, k) for b in bench.DEFAULT_BACKENDS
                                                                  for k in ("1", "3"))  # no seg rows by default
    for r in lat:
        assert r["weights"].startswith("random") and r["torch"] == torch.__version__ and r["date"]
        assert (r["scale"], r["imgsz"], r["batch"], r["threads"]) == ("n", "64", "1", str(bench.BenchConfig().threads))
        assert r["ultralytics"] and "onnxruntime" in r and "tensorrt" in r and r["device"] == "cpu"
    for r in (r for r in lat if r["backend"] in PT_AND_ORT):
        assert r["status"] == "ok", r
        assert float(r["median_ms"]) > 0 and float(r["p90_ms"]) > 0 and float(r["throughput"]) > 0
        assert r["baseline"] == bench.BASELINE[r["backend"]] and r["ratio"] and r["ratio_min"] and r["ratio_max"]
        assert r["ratio_vs_ultralytics"] and r["gemm_gflops"] and r["pairs"] == "1"
        assert float(r["gflops"]) > 0 and float(r["gemm_fraction"]) > 0
        assert float(r["max_score_diff"]) < 1e-3, r  # same weights and vocabulary as the Ultralytics baseline
    if Path("/proc/self/clear_refs").exists():  # peak memory at the largest K, in a subprocess per backend
        for r in (r for r in lat if r["backend"] in PT_AND_ORT):
            assert bool(r["peak_rss_mb"]) == (r["K"] == "3"), r
            if r["K"] == "3":
                assert float(r["peak_rss_mb"]) > 0 and float(r["peak_delta_mb"]) >= 0


def test_skipped_backends_recorded(tiny_run):
    _, rows = tiny_run
    trt = [r for r in rows if r["kind"] == "latency" and r["backend"].startswith("trt_")]
    assert len(trt) == 4  # fp16 and int8, K = 1 and 3; device=cpu never runs TensorRT
    for r in trt:
        assert r["status"] == "skipped" and r["note"] and not r["median_ms"]


def test_growth_gemm_and_text_rows(tiny_run):
    _, rows = tiny_run
    growth = [r for r in rows if r["kind"] == "k_growth"]
    assert sorted(r["backend"] for r in growth) == sorted(PT_AND_ORT)
    assert all(r["K"] == "3" and r["baseline"] == "K=1" and float(r["ratio"]) > 0 for r in growth)
    gemm = {r["backend"]: r for r in rows if r["kind"] == "gemm"}
    assert set(gemm) == {"torch.mm", "onnxruntime.MatMul"} and all(float(r["gemm_gflops"]) > 0 for r in gemm.values())
    text = {(r["kind"], r["backend"]): r for r in rows if r["kind"] in {"embedding_cache", "set_classes"}}
    assert set(text) == {(k, b) for k in ("embedding_cache", "set_classes") for b in ("uncached", "cached")}
    assert all(r["K"] == "1203" for r in text.values())
    assert text[("set_classes", "cached")]["baseline"] == "uncached" and text[("set_classes", "cached")]["ratio"]
    enc = [r for r in rows if r["kind"] == "text_encoder"]
    assert len(enc) == 1 and enc[0]["throughput_unit"] == "prompts/s" and float(enc[0]["throughput"]) > 0


def test_plots_and_table(tiny_run):
    out, _ = tiny_run
    for name in ("tiny_latency_vs_k.png", "tiny_latency_vs_size.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    table = (out / "tiny.md").read_text()
    assert "| n | 64 | 1 | 3 | ort_fixed |" in table and "skipped" in table
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_options():
    assert "bench" not in LATER
    q = bench.parse(["--quick"])
    assert (q.scales, q.imgsz, q.batch, q.ks, q.stem) == (["n"], [320], [1], [1, 80, 1203], "bench_quick")
    c = bench.parse(["--scales", "s", "--ks", "1203,80", "--backends", "ort_fixed", "--no-memory"])
    assert c.ks == [80, 1203] and c.backends == ["ultralytics", "ultralytics_onnx", "ort_fixed"] and not c.memory
    assert bench.BenchConfig(ks=(1, 80), imgsz=640, scales="n,s").scales == ["n", "s"]
    with pytest.raises(ValueError, match="unknown backend"):
        bench.BenchConfig(backends=["tensorflow"])
    with pytest.raises(SystemExit, match="unknown argument"):
        yw_run(["bench", "colour=blue"])
    assert bench.ratio_stats([2.0, 3.0, 4.0], [1.0, 1.0, 2.0]) == {"median": 2.0, "min": 2.0, "max": 3.0, "n": 3}


def test_interleaved_rounds_order_and_clock():
    calls = []
    runners = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    samples, _ = bench.interleaved_rounds(runners, rounds=3, warmup=1)
    assert "".join(calls) == "abc" + "abc" + "cba" + "abc"  # warm-up, then the order reversed every other round
    calls.clear()
    bench.interleaved_rounds(runners, rounds=4, warmup=0, rotate=True)
    assert "".join(calls) == "abc" + "bca" + "cab" + "abc"  # rotated by one runner per round
    ticks = iter(range(100))
    samples, _ = bench.interleaved_rounds(runners, rounds=2, warmup=0, clock=lambda: next(ticks))
    assert samples == {n: [1, 1] for n in "abc"}


def test_append_csv_atomic(tmp_path):
    path = tmp_path / "sub" / "r.csv"
    bench.append_csv_atomic(path, [{"a": 1, "extra": "dropped"}], columns=("a", "b"))
    bench.append_csv_atomic(path, [{"b": 2}], columns=("a", "b"))
    assert path.read_text().splitlines() == ["a,b", "1,", ",2"]
    assert not list(path.parent.glob(".*.tmp"))


def test_randomize_fp16_exact():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm2d(4))
    raw = bench.randomize_(lin, seed=1, fp16_exact=False)
    assert not torch.equal(raw[0].weight, raw[0].weight.half().float())  # default init is not float16-representable
    rounded = bench.randomize_(raw, seed=1)
    assert torch.equal(rounded[1].running_var, rounded[1].running_var.half().float())
    assert torch.equal(rounded[0].weight, rounded[0].weight.half().float())


def test_random_clip_and_coco128_subset(tmp_path, coco128):
    sd = bench.random_clip_state_dict("tiny")
    saved = torch.load(bench.save_random_clip(tmp_path / "clip.pt", "tiny"), weights_only=True)
    assert sd.keys() == saved.keys() and all(torch.equal(sd[k], saved[k]) for k in sd)
    enc = bench.random_text_encoder("tiny")
    assert enc.encode(["a dog"]).shape == (1, 512)
    data = bench.link_coco128(coco128, tmp_path / "data", 3)
    images = sorted((tmp_path / "data" / "images" / "train").iterdir())
    labels = sorted((tmp_path / "data" / "labels" / "train").iterdir())
    assert data.is_file() and len(images) == len(labels) == 3 and all(p.is_symlink() for p in images + labels)


def test_e2e_command(tmp_path, coco128):
    """``yw bench e2e=True`` on 2 COCO128 images at 64 px, K = 3: one row per backend with images/s and the split."""
    out = tmp_path / "e2e"
    yw_run(["bench", "e2e=True", "scales=n", "imgsz=64", "ks=3", "pairs=1", "warmup=0", "gap=0", "e2e_images=2",
            f"images={coco128 / 'images' / 'val2017'}", f"out={out}", "name=e2e"])
    with open(out / "e2e.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["backend"] for r in rows] == list(bench.E2E_BACKENDS)
    for r in rows:
        assert r["kind"] == "e2e" and r["status"] == "ok" and r["K"] == "3" and r["torch"] and r["device"] == "cpu"
        assert float(r["throughput"]) > 0 and r["throughput_unit"] == "images/s" and r["ratio"]
        assert r["baseline"] == bench.E2E_BASELINE[r["backend"]] and "2 images" in r["note"]
        assert float(r["inference_ms"]) > 0 and r["preprocess_ms"] and r["postprocess_ms"]
    assert (out / "e2e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| n | 64 | 3 | runtime |" in (out / "e2e.md").read_text()


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A tiny ``yw bench seg=True`` run (n at 64 px, K = 3, 2 pairs) with the detection rows it is compared with."""
    out = tmp_path_factory.mktemp("bench_seg")
    yw_run(["bench", "seg=True", "backends=pt_folded,ort_fixed", "scales=n", "imgsz=64", "ks=3", "pairs=2",
            "warmup=0", "reps=1", "gap=0", "gemm_runs=1", "text=False", "memory=False", f"out={out}", "name=seg"])
    with open(out / "seg.csv", newline="") as f:
        return out, list(csv.DictReader(f))


def test_seg_latency_rows(seg_run):
    """Each seg backend has an ``ok`` latency row with its baseline ratio (yw_ext vs YOLOE-seg), FLOPs and versions;
    yw_ext's seg outputs carry the detection model's scores, Ultralytics' YOLOE ONNX its eager model's."""
    out, rows = seg_run
    lat = {r["backend"]: r for r in rows if r["kind"] == "latency"}
    assert set(lat) == {"ultralytics", "pt_folded", "ultralytics_onnx", "ort_fixed", *bench.SEG_BACKENDS}
    for b in bench.SEG_BACKENDS:
        r = lat[b]
        assert r["status"] == "ok" and r["note"], r
        assert (r["scale"], r["imgsz"], r["K"], r["pairs"], r["device"]) == ("n", "64", "3", "2", "cpu")
        assert r["torch"] == torch.__version__ and r["ultralytics"] == seam.ULTRALYTICS_VERSION and r["onnxruntime"]
        assert float(r["median_ms"]) > 0 and float(r["throughput"]) > 0 and float(r["gflops"]) > 0
        assert r["baseline"] == bench.BASELINE[b]
        assert float(r["ratio_min"]) <= float(r["ratio"]) <= float(r["ratio_max"]) and r["ratio_vs_ultralytics"]
    assert lat["pt_seg"]["baseline"] == "yoloe_seg" and lat["ort_seg"]["baseline"] == "yoloe_seg_onnx"
    assert float(lat["yoloe_seg"]["ratio"]) == 1.0 and "yoloe-v8n-seg.yaml" in lat["yoloe_seg"]["note"]
    for b in ("pt_seg", "ort_seg", "yoloe_seg_onnx"):
        assert float(lat[b]["max_score_diff"]) < 1e-3, lat[b]
    assert lat["yoloe_seg"]["max_score_diff"] == ""  # another network: not compared
    assert float(lat["pt_seg"]["gflops"]) > float(lat["pt_folded"]["gflops"])  # the mask branch costs FLOPs
    assert "| n | 64 | 1 | 3 | pt_seg |" in (out / "seg.md").read_text()


def test_seg_vs_det_rows(seg_run):
    _, rows = seg_run
    seg = {r["backend"]: r for r in rows if r["kind"] == "seg_vs_det"}
    assert set(seg) == set(bench.SEG_VS_DET)
    for b, r in seg.items():
        assert r["baseline"] == bench.SEG_VS_DET[b] and r["status"] == "ok" and r["K"] == "3" and r["pairs"] == "2"
        assert 0 < float(r["ratio_min"]) <= float(r["ratio"]) <= float(r["ratio_max"]) and r["date"]


def test_seg_options():
    assert not set(bench.SEG_BACKENDS) & set(bench.BenchConfig().backends)  # the default run has no seg rows
    c = bench.parse(["--seg", "--backends", "pt_folded"])
    assert c.seg and set(bench.SEG_BACKENDS) <= set(c.backends) and "ort_fixed" in c.backends  # ort_seg's det
    assert bench.config_from_args({"backends": "pt_seg"}).backends == ["ultralytics", "pt_folded", "yoloe_seg",
                                                                       "pt_seg"]  # its baseline and its det


@pytest.mark.parametrize("yoloe, status, words", [(None, "skipped", "has no YOLOE"),
                                                  ("raise", "error", "FileNotFoundError: no yoloe yaml")])
def test_seg_without_yoloe(monkeypatch, tmp_path, yoloe, status, words):
    """A YOLOE that is missing (older Ultralytics) or fails to build gives rows with that status and reason."""

    def broken(*args, **kwargs):
        raise FileNotFoundError("no yoloe yaml")

    monkeypatch.setattr(seam, "UltralyticsYOLOE", broken if yoloe == "raise" else None)
    cfg = bench.BenchConfig(backends=["yoloe_seg", "yoloe_seg_onnx"], scales="n", imgsz=64, ks=3, pairs=1, warmup=0,
                            reps=1, gap=0, memory=False)  # fmt: skip
    group = bench.Group(cfg, "n", 64, 1, tmp_path)
    bench.add_seg_runners(group, 3, torch.randn(3, 512), {}, tmp_path / "k3", {})
    assert not group.runners
    rows = {r["backend"]: r for r in bench.measure_group(group, bench.environment(1)) if r["kind"] == "latency"}
    for b in ("yoloe_seg", "yoloe_seg_onnx"):
        assert rows[b]["status"] == status and words in rows[b]["note"] and "median_ms" not in rows[b], rows[b]
