# yw_ext, AGPL-3.0 license
"""One GPU check of the deployment path: TensorRT engines, the torch-free Detector, DDP training, latency.

    python benchmarks/gpu_check.py                  # s and l at 640; CSV in benchmarks/results/gpu_check.csv
    python benchmarks/gpu_check.py --scales s --skip latency,int8   # a shorter run

Without a CUDA GPU it prints one line and exits 0, doing nothing else (it can sit in CI). With one (from a clean
checkout plus ``pip install -e .[tensorrt]``), for each model size (``--scales``, default s and l, at 640, batch 1)
built from random weights with randomised BatchNorm (``yw_ext.bench.randomize_``; the detection head scaled as in
``tests/test_export.py`` so that scores spread and boxes differ, else NMS would be decided by rounding), it:

- builds FP16 and INT8 TensorRT engines of the folded fixed vocabulary (K = 80) and of the dynamic vocabulary
  (profile K = (1, 80, 1203)), and FP16 engines of the graph-NMS ONNX (``NonMaxSuppression`` and the gather /
  scatter after it: does TensorRT parse it?) and of ``trt_nms="efficient"`` (``EfficientNMS_TRT``), for the sizes in
  ``--nms-scales`` (default s: the parse question does not depend on the size); the first one through
  ``YOLOWorld.export(format="engine")``, the rest with ``yw_ext.export.tensorrt.onnx_to_engine`` sharing a timing
  cache per size;
- checks each engine against ONNX Runtime on the same ONNX (CUDA provider when installed, else CPU; the provider is
  in the ``note``): FP16 class scores within 2e-2 and boxes within 1 px (NMS outputs: every detection scoring
  0.05 above ``conf`` on either side matched, same class, IoU >= 0.5, within those bounds); INT8 differences are
  reported, not bounded; the dynamic engines at K = 3, 80 and 1203 from one engine;
- YOLO-World-Seg (``seg``, for the ``--nms-scales`` sizes): ``yw-v2-seg-<size>`` with random, conditioned weights and
  K = 80, ``YOLOWorld.export(format="engine", half=True, nms=True)`` (the seg ONNX with graph NMS and the kept boxes'
  mask coefficients, through the same builder) against ONNX Runtime on that ONNX (NMS rows with the detection
  bounds, prototypes reported), and ``Detector`` masks on the engine against ``Detector`` on the ONNX over the images
  (matched detections' per-instance mask IoU >= ``SEG_MASK_IOU``);
- runs ``yw_ext.runtime.Detector`` on the engines over a list of images (more than the engine's batch: chunking)
  and compares with ``Detector`` on the ONNX;
- times, interleaved (median of per-round samples, each the fastest of ``--reps`` calls; device-resident inputs,
  ``TRTBackend.prepared``), our folded FP16 engine against Ultralytics' TensorRT engine of the same weights at K = 80
  and 1203 (``--ultralytics-engine``: by default Ultralytics' own ONNX export built with the FP16 settings of its
  ``onnx2engine`` and this run's timing cache, to save build minutes; ``export`` runs
  ``ultralytics.YOLOWorld(pt).export(format="engine", half=True)`` itself), and the dynamic-vocabulary
  engine against the fixed one at K = 80, for ``--latency-scales`` (default l); targets (ours <= 1.0x Ultralytics at
  K = 80, <= 0.8x at 1203, dynamic <= 1.15x fixed, l <= 1.5 ms) are reported in ``target`` / ``target_met``;
- with more than one GPU, trains ``yw-v2-n`` with DDP (``device="0,1"``) for 2 iterations on 16 COCO128 images;
- writes one CSV (atomically; versions and device in every row) and exits 1 with one line per failed item on stderr
  when any check failed (0 otherwise). An item that would end past ``--budget`` seconds (default 450; by a rough
  per-item estimate, ``Item.cost``) fails as "not run", so that the run stays within about 8 minutes.

Check-only engines (not timed) are built with ``builder_optimization_level=--check-opt-level`` (default 1) to fit the
run in about 8 minutes on an H200; timed engines use TensorRT's default level, as Ultralytics' export does.

Examples:
    >>> args = parse_args(["--scales", "s", "--skip", "int8"])
    >>> [i.name for i in check_list(args, gpus=1)][:3]
    ['engine_api', 'engine', 'engine']
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

RESULTS = ROOT / "benchmarks" / "results"
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
SCORE_TOL, BOX_TOL = 2e-2, 1.0  # FP16 engine vs FP32 reference: class scores, box pixels (network input)
NMS_CONF, NMS_IOU, MARGIN = 0.1, 0.7, 0.05
PROMPTS = (1, 80, 1203)
SKIPPABLE = ("api", "nms", "seg", "detector", "latency", "ddp", "int8")
SEG_MASK_IOU = 0.9  # FP16 seg engine vs ONNX Runtime: smallest per-instance mask IoU of matched detections
TARGETS = {"ours/ultralytics K=80": 1.0, "ours/ultralytics K=1203": 0.8, "dynamic/fixed K=80": 1.15,
           "l FP16 ms": 1.5}  # fmt: skip
ENV_COLUMNS = ("date", "yw_ext", "torch", "ultralytics", "onnxruntime", "tensorrt", "cuda", "device", "gpus")
COLUMNS = ("item", "scale", "variant", "precision", "K", "status", "score_max", "box_max", "ms", "ratio",
           "ratio_min", "ratio_max", "target", "target_met", "seconds", "note", *ENV_COLUMNS)  # fmt: skip


# ------------------------------------------------------------------------------------------ options, CUDA, CSV
def _csv_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    return lambda s: [kind(v) for v in s.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options.

    Examples:
        >>> a = parse_args(["--scales", "s", "--ks", "3,80"])
        >>> a.scales, a.ks, a.latency_scales, str(a.out).endswith("gpu_check.csv")
        (['s'], [3, 80], ['l'], True)
    """
    ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", type=_csv_list(str), default=["s", "l"], help="model sizes (default s,l)")
    ap.add_argument("--nms-scales", type=_csv_list(str), default=["s"], help="sizes with NMS engines (default s)")
    ap.add_argument("--latency-scales", type=_csv_list(str), default=["l"], help="sizes timed (default l)")
    ap.add_argument("--ks", type=_csv_list(int), default=[3, 80, 1203], help="K checked on the dynamic engine")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--device", type=int, default=0, help="CUDA device index")
    ap.add_argument("--data", default=None, help="INT8 calibration images (default COCO128, else the sample images)")
    ap.add_argument("--calib-images", type=int, default=64, dest="calib_images")
    ap.add_argument("--rounds", type=int, default=100, help="interleaved timing rounds")
    ap.add_argument("--warmup", type=int, default=20, help="untimed rounds first")
    ap.add_argument("--reps", type=int, default=5, help="calls per sample, the fastest counts")
    ap.add_argument("--ultralytics-engine", choices=("onnx", "export"), default="onnx", dest="ultralytics_engine",
                    help="onnx (default): Ultralytics' own ONNX export built with its FP16 settings and this run's "
                         "timing cache (faster); export: ultralytics.YOLOWorld(pt).export(format='engine', half=True)")
    ap.add_argument("--budget", type=float, default=470.0,
                    help="seconds; an item whose estimated end is past it fails as 'not run'")
    ap.add_argument("--check-opt-level", type=int, default=1, dest="check_opt_level",
                    help="builder_optimization_level of engines that are checked but not timed (TensorRT: 0-5)")
    ap.add_argument("--skip", type=_csv_list(str), default=[], help=f"items to leave out: {','.join(SKIPPABLE)}")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_check.csv", help="the CSV (written atomically)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep ONNX / engine files here (default: temporary)")
    a = ap.parse_args(argv)
    bad = sorted(set(a.skip) - set(SKIPPABLE))
    if bad:
        ap.error(f"--skip {bad}: choose from {', '.join(SKIPPABLE)}")
    for opt in ("scales", "nms_scales", "latency_scales"):
        if set(getattr(a, opt)) - set("nsmlx"):
            ap.error(f"--{opt.replace('_', '-')} {getattr(a, opt)}: sizes are n, s, m, l, x")
    return a


def cuda_missing() -> str | None:
    """Why there is no usable CUDA GPU here (None when there is one); never raises, prints nothing.

    Examples:
        >>> isinstance(cuda_missing(), (str, type(None)))
        True
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns when a CUDA build finds no driver
            import torch

            if not torch.cuda.is_available():
                return "torch.cuda.is_available() is False"
            return None if torch.cuda.device_count() > 0 else "no CUDA device"
    except Exception as e:  # noqa: BLE001 - any failure means no usable GPU
        return f"{type(e).__name__}: {e}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def environment(device: int = 0) -> dict[str, Any]:
    """The environment columns of every row: date, versions, CUDA, device name, GPU count.

    Examples:
        >>> sorted(environment()) == sorted(ENV_COLUMNS)
        True
    """
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    trt = _version("tensorrt") or next((v for v in map(_version, ("tensorrt-cu12", "tensorrt-cu13")) if v), "")
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017 - Python 3.9
        "yw_ext": _version("yw_ext"),
        "torch": torch.__version__,
        "ultralytics": _version("ultralytics"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": trt,
        "cuda": str(torch.version.cuda or ""),
        "device": torch.cuda.get_device_name(device) if gpus else "cpu",
        "gpus": gpus,
    }


def write_rows(path: str | Path, rows: list[dict], env: dict[str, Any]) -> Path:
    """Write ``rows`` with the environment columns to the CSV ``path``, atomically (``yw_ext.core.io``).

    Examples:
        >>> import tempfile
        >>> p = write_rows(Path(tempfile.mkdtemp()) / "g.csv", [{"item": "x", "status": "ok"}], {"device": "H200"})
        >>> list(csv.DictReader(open(p)))[0]["device"]
        'H200'
    """
    from yw_ext.core.io import atomic_write

    def write(f: Any) -> None:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        w.writeheader()
        w.writerows({**env, **r} for r in rows)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, write, mode="w")


# ------------------------------------------------------------------------------------------------- comparisons
def compare_outputs(ref: Any, out: Any, score_tol: float | None = SCORE_TOL, box_tol: float | None = BOX_TOL,
                    kind: str = "raw", conf: float = NMS_CONF, margin: float = MARGIN,
                    max_det: int | None = None) -> dict[str, Any]:
    """Compare an engine's output with the reference's: ``{"ok", "score_max", "box_max", "reason"}``.

    Args:
        ref: Reference output: raw ``(B, 4 + K, A)`` (xywh or xyxy boxes, then class scores) or, ``kind="nms"``,
            rows ``(B, N, 6)`` ``[x1, y1, x2, y2, score, class]`` (zero rows are padding).
        out: The engine's output, same layout.
        score_tol: Largest class-score difference (None: report only).
        box_tol: Largest box-coordinate difference in pixels (None: report only).
        kind: ``"raw"`` or ``"nms"``.
        conf: NMS score threshold of the graph; rows scoring above ``conf + margin`` on either side must be
            matched on the other (same class; IoU >= 0.5 or every coordinate within ``box_tol``, 1 px when None):
            rows nearer the threshold may flip with precision. When an image's rows fill ``max_det``, the threshold
            is the lowest kept score + ``margin`` (rows near the cut-off may flip too).
        margin: See ``conf``.
        max_det: Rows per image of a full list (default: ``ref.shape[1]``).

    Examples:
        >>> ref = np.zeros((1, 6, 10), np.float32)
        >>> compare_outputs(ref, ref + 0.01)["ok"]
        True
        >>> compare_outputs(ref, ref + 0.5)["reason"]
        'scores differ by 0.5 > 0.02'
    """
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    if ref.ndim != 3 or out.ndim != 3 or (kind == "raw" and ref.shape != out.shape):
        return {"ok": False, "score_max": "", "box_max": "", "reason": f"shape {out.shape} != reference {ref.shape}"}
    if not np.isfinite(out).all():
        return {"ok": False, "score_max": "", "box_max": "", "reason": "non-finite values in the output"}
    if kind == "nms":
        s, b, problems = _compare_rows(ref, out, conf, margin, box_tol or 1.0, max_det or ref.shape[1])
    elif kind == "raw":
        s = float(np.abs(ref[:, 4:] - out[:, 4:]).max()) if ref.shape[1] > 4 else 0.0
        b, problems = float(np.abs(ref[:, :4] - out[:, :4]).max()), []
    else:
        raise ValueError(f"kind must be 'raw' or 'nms', not {kind!r}")
    if score_tol is not None and s > score_tol:
        problems.append(f"scores differ by {s:.3g} > {score_tol}")
    if box_tol is not None and b > box_tol:
        problems.append(f"boxes differ by {b:.3g} px > {box_tol}")
    return {"ok": not problems, "score_max": round(s, 6), "box_max": round(b, 4), "reason": "; ".join(problems)}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with ``(N, 4)`` boxes."""
    lt, rb = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _match(a: np.ndarray, b: np.ndarray, strong: float, near: float) -> tuple[int, list[float], list[float]]:
    """Rows of ``a`` scoring above ``strong`` without a same-class row in ``b`` (IoU >= 0.5, or every coordinate
    within ``near``: degenerate boxes have no IoU); score / box differences of the matched ones."""
    missing, ds, db = 0, [], []
    for r in a[a[:, 4] > strong]:
        cand = b[b[:, 5] == r[5]]
        if not len(cand):
            missing += 1
            continue
        iou, dist = _iou(r[:4], cand[:, :4]), np.abs(cand[:, :4] - r[:4]).max(1)
        j = int(iou.argmax()) if iou.max() >= 0.5 else int(dist.argmin())
        if iou[j] < 0.5 and dist[j] > near:
            missing += 1
            continue
        ds.append(abs(cand[j, 4] - r[4]))
        db.append(float(dist[j]))
    return missing, ds, db


def _compare_rows(ref: np.ndarray, out: np.ndarray, conf: float, margin: float, near: float,
                  max_det: int) -> tuple[float, float, list[str]]:
    """NMS rows ``(B, N, 6)`` both ways: largest score / box differences of matched rows and the problems."""
    if len(ref) != len(out):
        return 0.0, 0.0, [f"{len(out)} images != reference {len(ref)}"]
    ds, db, problems = [], [], []
    lost = extra = n = 0
    for r, o in zip(ref, out):
        r, o = r[r[:, 4] > 0], o[o[:, 4] > 0]  # drop padding
        floor = max([conf] + [x[:, 4].min() for x in (r, o) if len(x) >= max_det])  # a full list: its cut-off
        strong = floor + margin
        n += int((r[:, 4] > strong).sum())
        m1, s1, b1 = _match(r, o, strong, near)
        m2, s2, b2 = _match(o, r, strong, near)
        lost, extra, ds, db = lost + m1, extra + m2, ds + s1 + s2, db + b1 + b2
    if n == 0:
        problems.append(f"the reference has no detection above its threshold + {margin}: nothing compared")
    if lost or extra:
        problems.append(f"{lost} of {n} reference detections missing, {extra} extra")
    return float(max(ds, default=0.0)), float(max(db, default=0.0)), problems


def detections_array(dets: list) -> np.ndarray:
    """``Detector`` results -> ``(B, N, 6)`` rows (zero-padded) for ``compare_outputs(kind="nms")``.

    Examples:
        >>> detections_array([]).shape
        (0, 1, 6)
    """
    n = max([len(d) for d in dets] + [1])
    out = np.zeros((len(dets), n, 6), np.float32)
    for i, d in enumerate(dets):
        out[i, : len(d)] = np.concatenate([d.boxes, d.scores[:, None], d.class_ids[:, None]], 1)
    return out


def latency_rows(samples: dict[str, list[float]], scale: str) -> list[dict[str, Any]]:
    """Rows of one size's interleaved timings (seconds per sample; keys ``ours_k80``, ``ultralytics_k80``,
    ``ours_k1203``, ``ultralytics_k1203``, ``dynamic_k80``; missing ones are left out): medians and the
    pairwise-ratio medians with their targets.

    Examples:
        >>> rows = latency_rows({"ours_k80": [1e-3, 1e-3], "ultralytics_k80": [2e-3, 2e-3]}, "l")
        >>> [(r["item"], r["ratio"], r["target_met"]) for r in rows if r["ratio"] != ""]
        [('latency ours/ultralytics K=80', 0.5, True)]
    """
    from yw_ext.bench.timing import ratio_stats

    rows = []
    for name, s in samples.items():
        ms = float(np.median(s)) * 1e3
        row = {"item": f"latency {name}", "scale": scale, "K": name.rsplit("_k", 1)[-1], "precision": 16,
               "status": "ok", "ms": round(ms, 4), "ratio": ""}
        if name == "ours_k80" and scale == "l":
            row.update(target=TARGETS["l FP16 ms"], target_met=ms <= TARGETS["l FP16 ms"])
        rows.append(row)
    pairs = [("ours_k80", "ultralytics_k80", "ours/ultralytics K=80"),
             ("ours_k1203", "ultralytics_k1203", "ours/ultralytics K=1203"),
             ("dynamic_k80", "ours_k80", "dynamic/fixed K=80")]  # fmt: skip
    for a, b, what in pairs:
        if a in samples and b in samples:
            st = ratio_stats(samples[a], samples[b])
            rows.append({"item": f"latency {what}", "scale": scale, "K": what.rsplit("=", 1)[-1], "precision": 16,
                         "status": "ok", "ratio": round(st["median"], 4), "ratio_min": round(st["min"], 4),
                         "ratio_max": round(st["max"], 4), "target": TARGETS[what],
                         "target_met": st["median"] <= TARGETS[what], "note": f"{st['n']} interleaved rounds"})
    return rows


# ------------------------------------------------------------------------------------------------- the check list
@dataclass
class Item:
    """One entry of the check list: ``name`` (``engine_api``, ``engine``, ``seg``, ``detector``, ``latency``,
    ``ddp``), the model size, engine variant (``fixed80``, ``dynamic``, ``nms``, ``efficient``) and precision."""

    name: str
    scale: str | None = None
    variant: str | None = None
    precision: int | None = None
    skip: str = ""  # why it is recorded as skipped instead of run

    @property
    def cost(self) -> float:
        """A rough estimate of its seconds on an H200 (an item that would end past ``--budget`` is not run)."""
        build = {"n": 15, "s": 25, "m": 35, "l": 50, "x": 70}.get(self.scale or "s", 40)  # typical, not worst
        return {"engine": build * (1.5 if self.precision == 8 else 1.0), "engine_api": build, "detector": 20,
                "latency": 2 * build + 40, "ddp": 60, "seg": 1.5 * build + 20}.get(self.name, 40)


def check_list(args: argparse.Namespace, gpus: int) -> list[Item]:
    """The items of a run, most important first (a run cut short by ``--budget`` loses the last ones).

    Examples:
        >>> items = check_list(parse_args([]), gpus=1)
        >>> [(i.scale, i.variant) for i in items if i.name == "engine" and i.precision == 8]
        [('s', 'fixed80'), ('s', 'dynamic'), ('l', 'fixed80'), ('l', 'dynamic')]
        >>> next(i.skip for i in items if i.name == "ddp")
        'one GPU: DDP needs at least two'
    """
    items, skip = [], set(args.skip)
    first = args.scales[0]
    if "api" not in skip:
        items.append(Item("engine_api", first, "fixed80", 16))
    for scale in args.scales:
        items += [Item("engine", scale, "fixed80", 16), Item("engine", scale, "dynamic", 16)]
        if scale in args.nms_scales and "nms" not in skip:
            items += [Item("engine", scale, "nms", 16), Item("engine", scale, "efficient", 16)]
            if "seg" not in skip:
                items.append(Item("seg", scale, "nms", 16))
        if scale == first and "detector" not in skip:
            items.append(Item("detector", scale))
    if "latency" not in skip:
        items += [Item("latency", scale) for scale in args.latency_scales]
    if "ddp" not in skip:
        items.append(Item("ddp", skip="" if gpus > 1 else "one GPU: DDP needs at least two"))
    if "int8" not in skip:
        for scale in args.scales:
            items += [Item("engine", scale, "fixed80", 8), Item("engine", scale, "dynamic", 8)]
    return items


# ------------------------------------------------------------------------------------------------- models, files
def condition_head_(model: Any) -> Any:
    """Scale a YOLO-World detection head as ``tests/test_export.py`` does (spread class scores, boxes of 1-3
    strides that vary with the image), then round every float to a float16 value (exact ``.pt`` round trips)."""
    import torch

    head = model.model[-1]
    with torch.no_grad():
        for b in head.cv3:
            b[-1].weight.mul_(10.0)
        for b in head.cv2:
            b[-1].weight.mul_(3.0)
            b[-1].bias.copy_((-0.7 * torch.arange(16.0)).repeat(4))
        for c in head.cv4:
            c.bias.fill_(-3.0)
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return model


def embeddings(k: int, seed: int = 0) -> Any:
    """``(K, 512)`` unit-norm random text embeddings (the same for a K and seed in every run)."""
    import torch
    import torch.nn.functional as F

    return F.normalize(torch.randn(k, 512, generator=torch.Generator().manual_seed(seed + 1000 + k)), dim=-1)


@dataclass
class Models:
    """One size's models: ours (``yw_ext.YOLOWorld``) and Ultralytics' ``.pt`` per K, holding the same weights."""

    ours: Any
    pts: dict[int, Path]
    emb: dict[int, Any] = field(default_factory=dict)


def paired_models(scale: str, ks: list[int], seed: int, d: Path) -> Models:
    """Ultralytics' YOLO-World of ``scale`` with random, conditioned weights saved per K; ours loads its state dict."""
    import torch

    import yw_ext
    from yw_ext.bench import randomize_
    from yw_ext.seam import UltralyticsYOLOWorld

    torch.manual_seed(seed)
    ul = UltralyticsYOLOWorld(f"yolov8{scale}-worldv2.yaml")
    condition_head_(randomize_(ul.model, seed))
    ours = yw_ext.YOLOWorld(f"yw-v2-{scale}.yaml")
    ours.model.load_state_dict(ul.model.state_dict(), strict=True)
    models = Models(ours, {}, {k: embeddings(k, seed) for k in sorted({*ks, 3, 80, 1203})})
    for k in (80, 1203):
        ul.model.txt_feats = models.emb[k][None].clone()  # (1, K, 512)
        ul.model.model[-1].nc = k
        ul.model.names = {i: f"class{i}" for i in range(k)}
        models.pts[k] = d / f"yolov8{scale}-worldv2-k{k}.pt"
        ul.save(models.pts[k])
    return models


# ------------------------------------------------------------------------------------------------- the run
class Run:
    """State of one run: options, work folder, models, ONNX / engine files, rows, the clock."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.t0 = args, work, time.monotonic()
        self.rows: list[dict[str, Any]] = []
        self.models: dict[str, Models] = {}
        self.files: dict[tuple, str] = {}
        self.dev = f"cuda:{args.device}"
        self.data = args.data or (str(COCO128 / "coco128.yaml") if (COCO128 / "coco128.yaml").is_file() else None)
        if self.data is None:  # the two sample images shipped with Ultralytics (poor, but calibration runs)
            from yw_ext.seam import ASSETS

            self.data = str(ASSETS)
        self._x: np.ndarray | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def do(self, item: Item) -> None:
        """Run one item, recording its rows; an exception becomes one failed row with a one-line reason."""
        base = {"item": item.name, "scale": item.scale or "", "variant": item.variant or "",
                "precision": item.precision or ""}
        if item.skip:
            self.rows.append({**base, "status": "skipped", "note": item.skip})
            return
        if self.elapsed() + item.cost > self.args.budget:
            self.rows.append({**base, "status": "fail", "note": f"not run: {self.elapsed():.0f} s + about "
                              f"{item.cost:.0f} s would pass the --budget of {self.args.budget:.0f} s"})
            return
        t = time.monotonic()
        try:
            rows = ITEMS[item.name](self, item)
        except Exception as e:  # noqa: BLE001 - recorded, the run goes on
            first = (str(e).strip().splitlines() or [""])[0]
            rows = [{"status": "fail", "note": f"{type(e).__name__}: {first}"[:400]}]
        for r in rows:
            self.rows.append({**base, "seconds": round(time.monotonic() - t, 1), **r})

    def model(self, scale: str) -> Models:
        if scale not in self.models:
            self.models[scale] = paired_models(scale, self.args.ks, self.args.seed, self.work)
        return self.models[scale]

    def image(self) -> np.ndarray:
        """``(1, 3, imgsz, imgsz)``: bus.jpg letterboxed as the deployed model sees it."""
        if self._x is None:
            from yw_ext.runtime.ops import letterbox, load_image, preprocess
            from yw_ext.seam import ASSETS

            size = (self.args.imgsz, self.args.imgsz)
            self._x = preprocess([letterbox(load_image(Path(ASSETS) / "bus.jpg"), size, auto=False)[0]])
        return self._x

    def images(self) -> list[str]:
        """Images for the Detector check: the two samples and up to 4 COCO128 validation images."""
        from yw_ext.seam import ASSETS

        coco = sorted((COCO128 / "images" / "val2017").glob("*.jpg"))[:4]
        return [str(Path(ASSETS) / "bus.jpg"), str(Path(ASSETS) / "zidane.jpg"), *map(str, coco)]

    def onnx(self, scale: str, variant: str) -> str:
        """The ONNX of a variant (exported once)."""
        key = ("onnx", scale, variant)
        if key not in self.files:
            m = self.model(scale)
            k = 1203 if variant == "fixed1203" else 80
            m.ours.set_classes([f"class{i}" for i in range(k)], embeddings=m.emb[k])
            kw: dict[str, Any] = {"dynamic_vocab": True} if variant == "dynamic" else {}
            if variant in ("nms", "efficient"):
                kw = {"nms": True, "conf": NMS_CONF, "iou": NMS_IOU, "trt_nms": "efficient" if variant == "efficient"
                      else "onnx"}
            self.files[key] = m.ours.export(format="onnx", imgsz=self.args.imgsz, simplify=True, verbose=False,
                                            out=self.work / f"{scale}_{variant}.onnx", **kw)
        return self.files[key]

    def engine(self, scale: str, variant: str, precision: int) -> str:
        """The engine of a variant (built once; timed ones at TensorRT's default optimisation level)."""
        from yw_ext.export.tensorrt import onnx_to_engine

        key = ("engine", scale, variant, precision)
        if key not in self.files:
            timed = scale in self.args.latency_scales and precision == 16 and variant in ("fixed80", "fixed1203",
                                                                                         "dynamic")
            self.files[key] = onnx_to_engine(
                self.onnx(scale, variant), self.work / f"{scale}_{variant}_{precision}.engine", quantize=precision,
                prompts=PROMPTS if variant == "dynamic" else None, data=self.data if precision == 8 else None,
                calib_images=self.args.calib_images, timing_cache=self.work / f"{scale}.timing",
                opt_level=None if timed else self.args.check_opt_level)
        return self.files[key]

    def reference(self, path: str) -> tuple[Any, str]:
        """ONNX Runtime session on ``path`` (CUDA provider when installed) and the provider's name."""
        from yw_ext.bench.timing import ort_session

        sess = ort_session(path, threads=os.cpu_count() or 1, device=self.dev)
        return sess, sess.get_providers()[0]


# ------------------------------------------------------------------------------------------------- the items
def item_engine_api(run: Run, item: Item) -> list[dict]:
    """``YOLOWorld.export(format="engine", half=True)`` (the user path) builds an engine ``TRTBackend`` loads."""
    from yw_ext.runtime.trt import TRTBackend

    m = run.model(item.scale)
    m.ours.set_classes([f"class{i}" for i in range(80)], embeddings=m.emb[80])
    path = m.ours.export(format="engine", half=True, imgsz=run.args.imgsz, verbose=False,
                         out=run.work / f"{item.scale}_api.engine")
    y = TRTBackend(path, device=run.args.device).run({"images": run.image()})
    ok = y.shape == (1, 84, y.shape[2]) and np.isfinite(y).all()
    run.files[("engine", item.scale, "fixed80", 16)] = path  # the same engine the next item checks
    return [{"status": "ok" if ok else "fail", "K": 80, "note": f"output {y.shape}" + ("" if ok else " (bad)")}]


def item_engine(run: Run, item: Item) -> list[dict]:
    """Build one engine and compare it with ONNX Runtime on the same ONNX (dynamic: at every ``--ks``)."""
    from yw_ext.runtime.trt import TRTBackend

    scale, variant, q = item.scale, item.variant, item.precision
    eng = TRTBackend(run.engine(scale, variant, q), device=run.args.device)
    ref_file = run.onnx(scale, "nms" if variant == "efficient" else variant)  # EfficientNMS: graph NMS in ORT
    sess, provider = run.reference(ref_file)
    tol = (SCORE_TOL, BOX_TOL) if q == 16 else (None, None)
    x, m = run.image(), run.model(scale)
    feeds = [(k, {"images": x, "txt_feats": m.emb[k][None].numpy()}) for k in run.args.ks] if variant == "dynamic" \
        else [(80, {"images": x})]
    rows = []
    for k, f in feeds:
        res = compare_outputs(sess.run(None, f)[0], eng.run(f), *tol, kind="nms" if variant in ("nms", "efficient")
                              else "raw")
        note = f"vs ONNX Runtime ({provider})" + (f": {res['reason']}" if res["reason"] else "")
        rows.append({"K": k, "status": "ok" if res["ok"] else "fail", "score_max": res["score_max"],
                     "box_max": res["box_max"], "note": note + ("; INT8: reported, not bounded" if q == 8 else "")})
    return rows


def item_detector(run: Run, item: Item) -> list[dict]:
    """``Detector`` on the fixed and dynamic FP16 engines over a list of images vs ``Detector`` on the ONNX."""
    from yw_ext.runtime import Detector

    import onnxruntime as ort

    ims, m = run.images(), run.model(item.scale)
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    rows = []
    for variant in ("fixed80", "dynamic"):
        det = Detector(run.engine(item.scale, variant, 16), device=run.args.device)
        ref = Detector(run.onnx(item.scale, variant), providers=providers)
        if variant == "dynamic":
            for d in (det, ref):
                d.set_classes(["person", "bus", "car"], embeddings=m.emb[3].numpy())
        out, want = det(ims, conf=0.25), ref(ims, conf=0.25)
        res = compare_outputs(detections_array(want), detections_array(out), SCORE_TOL, 2 * BOX_TOL, kind="nms",
                              conf=0.25, max_det=300)
        ok = res["ok"] and len(out) == len(ims)
        rows.append({"variant": variant, "K": 3 if variant == "dynamic" else 80, "status": "ok" if ok else "fail",
                     "score_max": res["score_max"], "box_max": res["box_max"],
                     "note": f"{len(out)} of {len(ims)} images, engine batch <= {det.max_batch}; boxes in original "
                             f"pixels (bound 2 px) {res['reason']}".strip()})
    return rows


def matched_mask_ious(want: Any, got: Any) -> list[float]:
    """Per-instance mask IoU of the detections of ``got`` matched in ``want`` (``Detections`` with ``masks``): same
    class, the largest box IoU, at least 0.5.

    Examples:
        >>> from yw_ext.runtime.ops import Detections
        >>> m = np.zeros((1, 8, 8), bool); m[0, 2:6, 2:6] = True
        >>> a = Detections(np.array([[2.0, 2, 6, 6]]), np.array([0.9]), np.array([1]), masks=m)
        >>> matched_mask_ious(a, a)
        [1.0]
    """
    out = []
    for box, cls, mask in zip(got.boxes, got.class_ids, got.masks):
        same = np.flatnonzero(want.class_ids == cls)
        if not len(same):
            continue
        ious = _iou(box, want.boxes[same])
        if ious.max() < 0.5:
            continue
        ref = want.masks[same[int(ious.argmax())]]
        union = np.logical_or(mask, ref).sum()
        out.append(float(np.logical_and(mask, ref).sum() / union) if union else 1.0)
    return out


def seg_model(scale: str, seed: int, x: np.ndarray) -> Any:
    """``yw-v2-seg-<scale>`` with random, conditioned weights and K = 80. Random prototypes are nearly flat, so every
    mask would be its whole box or empty: as ``tests/test_seg.py``'s ``_spread_masks_``, the prototype conv is
    amplified and the coefficient biases made orthogonal to the mean prototype on ``x`` (masks vary inside boxes)."""
    import torch

    import yw_ext
    from yw_ext.bench import randomize_

    torch.manual_seed(seed)
    seg = yw_ext.YOLOWorld(f"yw-v2-seg-{scale}.yaml")
    condition_head_(randomize_(seg.model, seed))
    seg.set_classes([f"class{i}" for i in range(80)], embeddings=embeddings(80, seed))
    head, g = seg.model.model[-1], torch.Generator().manual_seed(seed + 3)
    with torch.no_grad():
        head.proto.cv3.conv.weight.mul_(30.0)
        (_, proto), _ = seg.model.eval()(torch.from_numpy(x))
        mu = proto[0].mean((1, 2))  # (nm,) mean prototype
        for c in head.cv5:
            b = torch.randn(c[-1].bias.shape, generator=g)
            c[-1].bias.copy_(b - (b @ mu) / (mu @ mu) * mu)
    return seg


def item_seg(run: Run, item: Item) -> list[dict]:
    """The seg graph-NMS FP16 engine (``YOLOWorld.export(format="engine")``) vs ONNX Runtime, rows and masks."""
    from yw_ext.runtime import Detector
    from yw_ext.runtime.trt import TRTBackend

    seg = seg_model(item.scale, run.args.seed, run.image())
    kw = {"imgsz": run.args.imgsz, "nms": True, "conf": NMS_CONF, "iou": NMS_IOU}
    f_onnx = seg.export(format="onnx", out=str(run.work / f"{item.scale}_seg_nms.onnx"), **kw)
    eng = seg.export(format="engine", half=True, out=str(run.work / f"{item.scale}_seg_nms.engine"), **kw)
    x = run.image()
    sess, provider = run.reference(f_onnx)
    r0, r1 = sess.run(None, {"images": x})
    o0, o1 = TRTBackend(eng, device=run.args.device).run_all({"images": x})
    res = compare_outputs(r0[..., :6], o0[..., :6], kind="nms", max_det=r0.shape[1])
    proto = float(np.abs(r1 - o1).max()) if r1.shape == o1.shape else float("inf")
    ims = run.images()
    got, want = Detector(eng, device=run.args.device)(ims, conf=0.25), Detector(f_onnx)(ims, conf=0.25)
    ious = [v for a, b in zip(want, got) for v in matched_mask_ious(a, b)]
    n = sum(len(d) for d in want)
    ok = res["ok"] and r1.shape == o1.shape and len(ious) > 0 and min(ious) >= SEG_MASK_IOU
    note = (f"vs ONNX Runtime ({provider}); prototypes max diff {proto:.3g}; masks: {len(ious)} of {n} detections "
            f"matched over {len(ims)} images, IoU min {min(ious, default=float('nan')):.3f} (bound {SEG_MASK_IOU})")
    return [{"K": 80, "status": "ok" if ok else "fail", "score_max": res["score_max"], "box_max": res["box_max"],
             "note": note + (f"; {res['reason']}" if res["reason"] else "")}]


def ultralytics_engine(run: Run, scale: str, k: int) -> str:
    """Ultralytics' FP16 TensorRT engine of the same weights at K.

    ``--ultralytics-engine export``: ``ultralytics.YOLOWorld(pt).export(format="engine", half=True)`` itself.
    ``onnx`` (default): Ultralytics' own ONNX export (``format="onnx"``) built by ``build_engine`` with the settings
    Ultralytics' ``onnx2engine`` uses for a static FP16 engine (the FP16 flag, no profile, TensorRT's default
    optimisation level and workspace), sharing this run's timing cache: the same engine, built in less time.
    """
    from yw_ext.bench.models import quiet
    from yw_ext.export.tensorrt import EngineRequest, build_engine
    from yw_ext.seam import UltralyticsYOLOWorld

    key = ("ultralytics", scale, k)
    if key not in run.files:
        ul, a = UltralyticsYOLOWorld(str(run.model(scale).pts[k])), run.args
        with quiet():
            if a.ultralytics_engine == "export":
                run.files[key] = str(ul.export(format="engine", half=True, imgsz=a.imgsz, batch=1, device=a.device,
                                               verbose=False))
            else:
                f = ul.export(format="onnx", imgsz=a.imgsz, batch=1, simplify=True, verbose=False)
                run.files[key] = build_engine(f, run.work / f"ultralytics_{scale}_k{k}.engine",
                                              EngineRequest(False, 16, None), imgsz=a.imgsz,
                                              timing_cache=run.work / f"{scale}.timing")
    return run.files[key]


def item_latency(run: Run, item: Item) -> list[dict]:
    """Interleaved timing of our FP16 engines and Ultralytics' (batch 1, device-resident input)."""
    from yw_ext.bench.timing import interleaved_rounds
    from yw_ext.runtime.trt import TRTBackend

    s, x, a = item.scale, run.image(), run.args
    t80 = run.model(s).emb[80][None].numpy()
    files = {"ours_k80": (run.engine(s, "fixed80", 16), {"images": x}),
             "ours_k1203": (run.engine(s, "fixed1203", 16), {"images": x}),
             "dynamic_k80": (run.engine(s, "dynamic", 16), {"images": x, "txt_feats": t80}),
             "ultralytics_k80": (ultralytics_engine(run, s, 80), {"images": x}),
             "ultralytics_k1203": (ultralytics_engine(run, s, 1203), {"images": x})}  # fmt: skip
    how = "its export(format='engine')" if a.ultralytics_engine == "export" else "its ONNX, FP16, shared cache"
    backends = {n: TRTBackend(f, device=a.device) for n, (f, _) in files.items()}
    runners = {n: backends[n].prepared(feeds) for n, (_, feeds) in files.items()}
    samples, _ = interleaved_rounds(runners, rounds=a.rounds, warmup=a.warmup, reps=a.reps)
    rows = [{**r, "note": f"{r.get('note', '')}; Ultralytics' engine: {how}".lstrip("; ")}
            for r in latency_rows(samples, s)]
    same = compare_outputs(backends["ultralytics_k80"].run({"images": x}), backends["ours_k80"].run({"images": x}),
                           None, None)  # same weights: how close the two FP16 engines are
    rows.append({"item": "ultralytics vs ours outputs", "K": 80, "status": "ok", "score_max": same["score_max"],
                 "box_max": same["box_max"], "note": "both FP16 engines, same weights (reported)"})
    return rows


def item_ddp(run: Run, item: Item) -> list[dict]:
    """``YOLOWorld("yw-v2-n.yaml").train(device="0,1")``: 2 iterations (16 COCO128 images, batch 8), one epoch."""
    import torch

    import yw_ext
    from yw_ext.bench import link_coco128, save_random_clip

    if not (COCO128 / "coco128.yaml").is_file():
        raise FileNotFoundError(f"DDP training needs COCO128 at {COCO128}")
    d = run.work / "ddp"
    data = link_coco128(COCO128, d / "data", 16)
    os.environ["YW_CLIP"] = str(save_random_clip(d / "clip.pt", kind="tiny"))  # the workers inherit it
    devices = ",".join(str(i) for i in range(min(2, torch.cuda.device_count())))
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    model.train(data=str(data), device=devices, epochs=1, imgsz=320, batch=8, workers=2, plots=False,
                project=str(d / "runs"), name="ddp", exist_ok=True, verbose=False)
    last = d / "runs" / "ddp" / "weights" / "last.pt"
    if not last.is_file():
        raise RuntimeError(f"DDP training wrote no {last}")
    return [{"status": "ok", "note": f"device={devices}: 2 iterations of batch 8, {last.name} written"}]


ITEMS: dict[str, Callable[[Run, Item], list[dict]]] = {
    "engine_api": item_engine_api, "engine": item_engine, "detector": item_detector, "latency": item_latency,
    "ddp": item_ddp, "seg": item_seg,
}  # fmt: skip


def summary(rows: list[dict]) -> tuple[int, list[str]]:
    """Exit status and the one-line reasons of failed rows.

    Examples:
        >>> summary([{"item": "engine", "scale": "s", "variant": "nms", "precision": 16, "status": "fail",
        ...           "note": "parse"}])
        (1, ['FAIL engine s nms FP16: parse'])
        >>> summary([{"item": "ddp", "status": "skipped"}])
        (0, [])
    """
    lines = []
    for r in rows:
        if r.get("status") == "fail":
            what = " ".join(str(r.get(c, "")) for c in ("item", "scale", "variant") if r.get(c, "") != "")
            k = f" K={r['K']}" if r.get("K", "") != "" else ""
            q = f" {'INT8' if r.get('precision') == 8 else 'FP16'}" if r.get("precision") else ""
            lines.append(f"FAIL {what}{q}{k}: {r.get('note', '')}")
    return (1 if lines else 0), lines


def main(argv: list[str] | None = None) -> int:
    """Run the check list (see the module docstring); returns the exit status."""
    args = parse_args(argv)
    why = cuda_missing()
    if why:
        print(f"gpu_check: no CUDA GPU here ({why}); nothing checked.")
        return 0
    import torch

    torch.cuda.set_device(args.device)
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory(prefix="yw_gpu_check_") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        run = Run(args, work)
        try:
            for item in check_list(args, gpus):
                print(f"gpu_check [{run.elapsed():6.1f} s] {item.name} {item.scale or ''} {item.variant or ''} "
                      f"{item.precision or ''}".rstrip(), flush=True)
                run.do(item)
        finally:
            path = write_rows(args.out, run.rows, environment(args.device))
    status, lines = summary(run.rows)
    for line in lines:
        print(line, file=sys.stderr)
    print(f"gpu_check: {len(run.rows)} rows, {len(lines)} failed, {run.elapsed():.0f} s; {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
