"""LVIS evaluation (``yw_ext.eval``): fixed AP against the LVIS API and a brute-force reference, a real ``yw val``.

The ground truth is LVIS-format JSON made here from COCO128's val images and YOLO labels: the 80 COCO classes with
``frequency`` r / c / f (so APr / APc / APf are all defined), per image ``neg_category_ids`` (absent classes) and
``not_exhaustive_category_ids``. Detections for the metric tests are synthetic (jittered ground-truth boxes and
false positives with distinct random scores, one image with more than 300), so every LVIS rule is exercised: the
federated filter, the not-exhaustive ignore, area ranges and both caps.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from yw_ext.eval import fixed_ap as fa
from yw_ext.eval.lvis_data import LVISFormatError, check_lvis_fields, convert_lvis_json, load_lvis_json

lvis = pytest.importorskip("lvis", reason="needs the lvis package (pip install 'yw_ext[lvis]')")

N_IMAGES = 24
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FREQ = "rcf"  # category id k -> FREQ[k % 3]


# ------------------------------------------------------------------------------------------------ ground truth
def coco128_lvis_gt(coco128: Path, n: int = N_IMAGES, seed: int = 0) -> dict:
    """LVIS-format ground truth of the first ``n`` COCO128 val images (category id = YOLO class + 1)."""
    from PIL import Image
    from ultralytics.utils import YAML

    rng = np.random.default_rng(seed)
    names = YAML.load(coco128 / "coco128.yaml")["names"]
    cats = [{"id": i + 1, "name": str(n_).replace(" ", "_"), "frequency": FREQ[(i + 1) % 3]} for i, n_ in names.items()]
    images, anns = [], []
    for im in sorted((coco128 / "images" / "val2017").glob("*.jpg"))[:n]:
        w, h = Image.open(im).size
        lb = coco128 / "labels" / "val2017" / f"{im.stem}.txt"
        rows = np.loadtxt(lb, ndmin=2) if lb.is_file() and lb.stat().st_size else np.zeros((0, 5))
        img_id = int(im.stem)
        present = sorted({int(r[0]) + 1 for r in rows})
        absent = [c for c in range(1, 81) if c not in present]
        images.append({"id": img_id, "file_name": f"val2017/{im.name}", "width": w, "height": h,
                       "neg_category_ids": sorted(rng.choice(absent, 6, replace=False).tolist()),
                       "not_exhaustive_category_ids": present[:1] if img_id % 2 else []})  # fmt: skip
        for c, cx, cy, bw, bh in rows:
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(c) + 1, "bbox": box,
                         "area": box[2] * box[3], "iscrowd": 0})  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}


def synthetic_dets(gt: dict, seed: int = 1) -> np.ndarray:
    """Detections (N, 7): jittered copies of most GT boxes, false positives, and one image with 400 detections."""
    rng = np.random.default_rng(seed)
    rows = []
    for a in gt["annotations"]:
        for _ in range(rng.integers(0, 3)):  # 0-2 detections per object
            x, y, w, h = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [w, h, w, h]
            rows.append([a["image_id"], a["category_id"], x + j[0], y + j[1], max(w + j[2], 1), max(h + j[3], 1),
                         rng.random()])  # fmt: skip
    for img in gt["images"]:
        k = 400 if img is gt["images"][0] else 12  # > 300 in one image: a per-image cap of 300 would change AP
        cats = rng.choice(80, k) + 1
        xy = rng.random((k, 2)) * [img["width"], img["height"]]
        wh = rng.random((k, 2)) * [img["width"], img["height"]] / 2 + 2
        rows += [[img["id"], c, *p, *s, rng.random()] for c, p, s in zip(cats, xy, wh)]
    return np.asarray(rows, dtype=np.float64)


@pytest.fixture(scope="module")
def gt(coco128) -> dict:
    """The LVIS-format ground truth of the tests."""
    return coco128_lvis_gt(coco128)


def lvis_api_direct(gt: dict, dets: np.ndarray, tmp_path: Path, monkeypatch) -> dict:
    """The ``lvis`` package's LVISEval, run here directly on a detection list (no per-image cap)."""
    from lvis import LVIS, LVISEval, LVISResults

    monkeypatch.setattr(np, "float", float, raising=False)  # lvis 0.5.3 uses np.float (removed in NumPy 1.24)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    api = LVIS(str(path))
    results = [{"image_id": int(d[0]), "category_id": int(d[1]), "bbox": d[2:6].tolist(), "score": float(d[6])}
               for d in dets]  # fmt: skip
    ev = LVISEval(api, LVISResults(api, results, max_dets=-1), iou_type="bbox")
    ev.run()
    return dict(ev.get_results())


# ----------------------------------------------------------------------------------- brute-force LVIS reference
def _iou(d: list, g: list) -> float:
    """IoU of two xywh boxes (COCO convention, continuous coordinates)."""
    iw = min(d[0] + d[2], g[0] + g[2]) - max(d[0], g[0])
    ih = min(d[1] + d[3], g[1] + g[3]) - max(d[1], g[1])
    inter = max(iw, 0) * max(ih, 0)
    return inter / (d[2] * d[3] + g[2] * g[3] - inter)


def _match_image(dts: list, gts: list, thr: float, rng: tuple, not_exhaustive: bool) -> list[tuple[float, int]]:
    """One image and class at one IoU threshold: (score, +1 TP / 0 FP / -1 ignored) per detection."""
    g_ig = [not (rng[0] <= g["area"] <= rng[1]) for g in gts]
    order = sorted(range(len(gts)), key=lambda j: g_ig[j])  # regular ground truth first
    taken, out = set(), []
    for d in sorted(dts, key=lambda d: -d["score"]):
        best, best_iou = -1, min(thr, 1 - 1e-10)
        for j in order:
            if j in taken:
                continue
            if best > -1 and not g_ig[best] and g_ig[j]:
                break
            iou = _iou(d["bbox"], gts[j]["bbox"])
            if iou >= best_iou:
                best, best_iou = j, iou
        if best > -1:
            taken.add(best)
            out.append((d["score"], -1 if g_ig[best] else 1))
        else:
            area = d["bbox"][2] * d["bbox"][3]
            out.append((d["score"], -1 if not_exhaustive or not rng[0] <= area <= rng[1] else 0))
    return out


def brute_force_lvis(gt: dict, dets: np.ndarray, per_class: int) -> dict:
    """LVIS fixed AP written out plainly: top ``per_class`` per class, federated matching, 101-point precision."""
    ranges = {"all": (0, 1e10), "s": (0, 32**2), "m": (32**2, 96**2), "l": (96**2, 1e10)}
    thrs = np.linspace(0.5, 0.95, 10)
    by_cat: dict = {}
    for d in sorted(dets.tolist(), key=lambda d: -d[6]):  # the per-class cap, one detection at a time
        if len(by_cat.setdefault(int(d[1]), [])) < per_class:
            by_cat[int(d[1])].append({"image_id": int(d[0]), "bbox": d[2:6], "score": d[6]})
    imgs = {im["id"]: im for im in gt["images"]}
    ap = {}  # (category, range, threshold) -> AP at 101 recall points
    for c in (cat["id"] for cat in gt["categories"]):
        for rname, rng in ranges.items():
            for t in thrs:
                scored, n_gt = [], 0
                for i, im in imgs.items():
                    gts = [a for a in gt["annotations"] if a["image_id"] == i and a["category_id"] == c]
                    if not gts and c not in im["neg_category_ids"]:
                        continue  # federated: unknown whether class c is in image i
                    dts = [d for d in by_cat.get(c, []) if d["image_id"] == i]
                    n_gt += sum(rng[0] <= g["area"] <= rng[1] for g in gts)
                    scored += _match_image(dts, gts, t, rng, c in im["not_exhaustive_category_ids"])
                if n_gt:
                    ap[c, rname, t] = _ap101([s for s in sorted(scored, key=lambda s: -s[0]) if s[1] >= 0], n_gt)
    freq = {cat["id"]: cat["frequency"] for cat in gt["categories"]}

    def mean(keep) -> float:
        vals = [v for k, v in ap.items() if keep(*k)]
        return float(np.mean(vals)) if vals else -1.0

    out = {"AP": mean(lambda c, r, t: r == "all"), "AP50": mean(lambda c, r, t: r == "all" and t == thrs[0]),
           "AP75": mean(lambda c, r, t: r == "all" and t == thrs[5])}  # fmt: skip
    out.update({f"AP{r}": mean(lambda c, rr, t, r=r: rr == r) for r in "sml"})
    out.update({f"AP{f}": mean(lambda c, r, t, f=f: r == "all" and freq[c] == f) for f in "rcf"})
    return out


def _ap101(scored: list, n_gt: int) -> float:
    """Mean precision at recall 0, 0.01, ..., 1 (precision made non-increasing from the right; 0 past max recall)."""
    tp = np.cumsum([s[1] == 1 for s in scored])
    fp = np.cumsum([s[1] == 0 for s in scored])
    rc, pr = tp / n_gt, list(tp / (tp + fp + np.spacing(1)))
    for i in range(len(pr) - 1, 0, -1):
        pr[i - 1] = max(pr[i - 1], pr[i])
    idx = np.searchsorted(rc, np.linspace(0, 1, 101), side="left")
    return float(np.mean([pr[i] if i < len(pr) else 0.0 for i in idx]))


# ------------------------------------------------------------------------------------------------------ metrics
def test_fixed_ap_equals_lvis_api_when_the_cap_does_not_bind(gt, tmp_path, monkeypatch):
    dets = synthetic_dets(gt)
    assert np.bincount(dets[:, 0].astype(np.int64)).max() > 300  # the LVIS API's default per-image cap would bind
    assert np.bincount(dets[:, 1].astype(np.int64)).max() < fa.FIXED_AP_PER_CLASS
    ours = fa.evaluate_lvis(gt, dets)  # fixed AP, default cap 10,000
    ref = lvis_api_direct(gt, dets, tmp_path, monkeypatch)
    assert len(ours.detections) == len(dets)
    for k in METRICS:
        assert abs(ours.metrics[k] - ref[k]) <= 1e-9, (k, ours.metrics[k], ref[k])
    assert all(ours.metrics[k] > 0 for k in METRICS)  # every group has ground truth and hits
    standard = fa.evaluate_lvis(gt, dets, fixed=False)  # 300 per image: a different number on the same list
    assert standard.metrics["AP"] != pytest.approx(ours.metrics["AP"], abs=1e-6)


def test_fixed_ap_with_cap_5_equals_brute_force(gt):
    dets = synthetic_dets(gt, seed=2)
    ours = fa.evaluate_lvis(gt, dets, max_per_class=5)
    counts = np.bincount(ours.detections[:, 1].astype(np.int64))
    assert counts.max() == 5 and np.bincount(dets[:, 1].astype(np.int64)).max() > 5  # the cap binds
    ref = brute_force_lvis(gt, dets, per_class=5)
    for k in METRICS:
        assert abs(ours.metrics[k] - ref[k]) <= 1e-9, (k, ours.metrics[k], ref[k])
    rows = {r["category_id"]: r for r in ours.per_class}
    assert sum(r["detections"] for r in rows.values()) == len(ours.detections)
    assert math.isnan(rows[next(c for c in rows if rows[c]["instances"] == 0)]["ap"])  # no ground truth: no AP


def test_cap_detections_keeps_the_best_scores():
    d = np.array([[1, 7, 0, 0, 1, 1, s] for s in (0.1, 0.9, 0.5, 0.7)] + [[2, 8, 0, 0, 1, 1, 0.2]])
    assert fa.cap_detections(d, max_per_class=2)[:, 6].tolist() == [0.9, 0.7, 0.2]
    assert fa.cap_detections(d, max_per_image=1)[:, 6].tolist() == [0.9, 0.2]
    with pytest.raises(ValueError, match="positive"):
        fa.cap_detections(d, max_per_class=0)


# ------------------------------------------------------------------------------------------------ a real run
def lvis_dataset(coco128: Path, gt: dict, root: Path, n: int = 8) -> Path:
    """COCO128 val images (links) + the LVIS JSON, converted to YOLO labels, and its dataset YAML."""
    from ultralytics.utils import YAML

    gt = {**gt, "images": gt["images"][:n]}
    keep = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    (root / "images" / "val2017").mkdir(parents=True)
    for im in gt["images"]:
        name = Path(im["file_name"]).name
        (root / "images" / "val2017" / name).symlink_to(coco128 / "images" / "val2017" / name)
    (root / "annotations").mkdir()
    (root / "annotations" / "lvis_v1_minival.json").write_text(json.dumps(gt))
    convert_lvis_json(root / "annotations" / "lvis_v1_minival.json", root)
    names = {c["id"] - 1: c["name"].replace("_", " ") for c in gt["categories"]}
    yaml = root / "lvis_mini.yaml"
    YAML.save(yaml, {"path": str(root), "train": "minival.txt", "val": "minival.txt", "minival": "minival.txt",
                     "lvis_json": {"minival": "annotations/lvis_v1_minival.json"}, "names": names})  # fmt: skip
    return yaml


@contextlib.contextmanager
def logged() -> Iterator[list[str]]:
    """Collect the messages of the Ultralytics logger (its handler writes to the stream it was created with)."""
    from ultralytics.utils import LOGGER

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    lines: list[str] = []
    handler = Collect()
    LOGGER.addHandler(handler)
    try:
        yield lines
    finally:
        LOGGER.removeHandler(handler)


def tiny_scoring_model(gt: dict, coco128: Path, per_image: int = 150):
    """A random yw-v2-n whose contrastive-head bias is shifted so that about ``per_image`` (anchor, class) scores of a
    COCO128 image pass 0.001 (plain random weights score everything far below it; no trained tiny model is kept)."""
    import cv2
    import torch

    import yw_ext
    from tests.conftest import randomize_

    torch.manual_seed(0)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    randomize_(model.model)
    model.set_classes([c["name"].replace("_", " ") for c in gt["categories"]])  # as the validator will (tiny CLIP)
    name = Path(gt["images"][0]["file_name"]).name
    img = cv2.resize(cv2.imread(str(coco128 / "images" / "val2017" / name)), (96, 96))
    x = torch.from_numpy(img[..., ::-1].copy()).permute(2, 0, 1)[None].float() / 255  # (1, 3, 96, 96) RGB
    with torch.no_grad():
        scores = model.model.eval()(x)[0][0, 4:].flatten()  # (nc * anchors,)
    shift = torch.logit(torch.tensor(fa.FIXED_AP_CONF)) - torch.logit(scores.topk(per_image).values[-1])
    with torch.no_grad():
        for m in model.model.modules():
            if hasattr(m, "logit_scale") and isinstance(getattr(m, "bias", None), torch.nn.Parameter):
                m.bias += shift
    return model


def test_yw_val_fixed_ap_prints_ap_and_writes_json_and_csv(coco128, gt, env, tmp_path):
    from yw_ext.cli import run

    yaml = lvis_dataset(coco128, gt, tmp_path / "lvis")
    labels = sorted((tmp_path / "lvis" / "labels" / "val2017").glob("*.txt"))
    assert len(labels) == 8 and (tmp_path / "lvis" / "minival.txt").read_text().count("./images/val2017/") == 8
    weights = tmp_path / "tiny.pt"
    tiny_scoring_model(gt, coco128).save(weights)
    with logged() as lines:
        metrics = run(["val", f"model={weights}", f"data={yaml}", "split=minival", "fixed_ap=True", "imgsz=96",
                       "batch=8", "device=cpu", "plots=False", f"project={tmp_path / 'runs'}", "name=val"])  # fmt: skip
    text = "\n".join(lines)
    assert "LVIS fixed AP (top 10000 detections per class" in text and "APr" in text and "images/s" in text
    assert "conf 0.001, max_det 1000 per image" in text  # the official inference settings, stated
    files = metrics.lvis["files"]
    preds = json.loads(Path(files["predictions"]).read_text())
    assert preds and {"image_id", "category_id", "bbox", "score"} <= set(preds[0])
    assert min(p["score"] for p in preds) >= 0.001 and max(p["bbox"][0] + p["bbox"][2] for p in preds) > 96  # pixels
    sizes = {im["id"]: (im["width"], im["height"]) for im in gt["images"][:8]}
    assert all(p["image_id"] in sizes and p["bbox"][0] + p["bbox"][2] <= sizes[p["image_id"]][0] + 0.01 for p in preds)
    csv_lines = Path(files["per_class"]).read_text().splitlines()
    assert csv_lines[0].startswith("category_id,name,frequency") and len(csv_lines) == 81
    dets = np.array([[p["image_id"], p["category_id"], *p["bbox"], p["score"]] for p in preds])
    again = fa.evaluate_lvis(gt, dets, image_ids=[im["id"] for im in gt["images"][:8]])
    for k in METRICS:  # the written JSON is exactly what was evaluated
        assert again.metrics[k] == pytest.approx(metrics.lvis[k], abs=1e-12)


def test_validator_maps_files_classes_and_boxes_to_lvis_ids():
    import torch

    from yw_ext.engine.validator import YWValidator

    v = YWValidator(args=dict(data="unused.yaml"))
    v.training, v.lvis_dets = False, []
    v.lvis = {"json": "gt.json", "ids": {"000000000139.jpg": 139}, "cats": np.array([3.0, 7.0, 11.0])}  # sorted ids
    predn = {"bboxes": torch.tensor([[10.0, 20, 50, 80]]), "conf": torch.tensor([0.5]), "cls": torch.tensor([2.0])}
    v.pred_to_json(predn, {"im_file": "/data/images/val2017/000000000139.jpg"})
    assert v.lvis_dets[0].tolist() == [[139, 11, 10, 20, 40, 60, 0.5]]  # class 2 -> 3rd category id; xyxy -> xywh
    with pytest.raises(ValueError, match="not in the LVIS annotation JSON"):
        v.pred_to_json(predn, {"im_file": "/data/images/val2017/000000000285.jpg"})


# --------------------------------------------------------------------------------------------------- bad input
def test_fixed_ap_on_a_non_lvis_dataset_is_an_error(coco128, env):
    import yw_ext

    with pytest.raises(ValueError, match="fixed_ap=True needs an LVIS dataset"):
        yw_ext.YOLOWorld("yw-v2-n.yaml").val(data=str(coco128 / "coco128.yaml"), fixed_ap=True, imgsz=64)


def test_missing_lvis_package_names_the_install(gt, coco128, env, tmp_path, monkeypatch):
    import yw_ext

    monkeypatch.setitem(sys.modules, "lvis", None)  # import lvis -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'yw_ext\[lvis\]'"):
        fa.evaluate_lvis(gt, np.zeros((0, 7)))
    yaml = lvis_dataset(coco128, gt, tmp_path / "lvis", n=2)
    with pytest.raises(ImportError, match="lvis"):  # before any inference
        yw_ext.YOLOWorld("yw-v2-n.yaml").val(data=str(yaml), split="minival", fixed_ap=True, imgsz=64)


def test_annotation_json_without_lvis_fields_is_an_error(gt, tmp_path):
    coco = {**gt, "categories": [{k: v for k, v in c.items() if k != "frequency"} for c in gt["categories"]]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    with pytest.raises(LVISFormatError, match=r"instances\.json.*'frequency'"):
        convert_lvis_json(path, tmp_path / "out")
    no_neg = {**gt, "images": [{k: v for k, v in im.items() if k != "neg_category_ids"} for im in gt["images"]]}
    with pytest.raises(LVISFormatError, match="neg_category_ids"):
        check_lvis_fields(no_neg, "x.json")
    with pytest.raises(LVISFormatError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_lvis_json(tmp_path / "bad.json")
    assert not (tmp_path / "out").exists()  # nothing written


def test_lvis_yaml_offline_error_names_files_urls_and_folder(monkeypatch):
    from yw_ext.engine.dataset import DatasetNotAvailableError, check_dataset_available
    from yw_ext.engine.validator import packaged_dataset

    monkeypatch.setenv("YOLO_OFFLINE", "1")
    yaml = packaged_dataset("lvis.yaml")
    assert Path(yaml).is_file() and Path(yaml).parent.name == "datasets"
    with pytest.raises(DatasetNotAvailableError) as e:
        check_dataset_available(yaml, splits=("minival",))
    msg = str(e.value)
    for s in ("minival.txt", "lvis_v1_val.json.zip", "lvis_v1_minival_inserted_image_name.json", "val2017.zip"):
        assert s in msg


def test_eval_package_is_torch_free():
    import subprocess

    code = ("import sys, yw_ext.eval; bad = {'torch', 'ultralytics', 'lvis'} & set(sys.modules); "
            "sys.exit(f'loaded {sorted(bad)}' if bad else 0)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
