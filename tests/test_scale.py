"""Batch detection on Dask distributed (yw_ext.scale): a local 2-worker cluster on 127.0.0.1 over COCO128 val equals
single-process ``YOLOWorld.predict``; resume rewrites only missing partitions; sources, labels, bad input, extras."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from tests._scale_helpers import IMGSZ, dv_files, unit_rows  # noqa: F401  (dv_files: a shared fixture)

pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

NAMES = ["person", "car", "dog"]


def _rows(boxes, scores, classes) -> np.ndarray:
    d = np.c_[np.asarray(boxes, np.float64).reshape(-1, 4), scores, classes]
    return d[np.lexsort(np.round(d[:, [3, 2, 1, 0, 5]].T, 1))]


def test_detect_dataset_equals_predict_and_resumes(coco128, dv_files, tmp_path):  # noqa: F811
    """COCO128 val (128 images), 2 workers, synonyms (G = 2) shipped as embeddings: == PyTorch predict per image
    (boxes within 1e-3 px, same classes and scores); YOLO labels; a rerun after deleting one partition redoes it
    alone (`yw label ... scheduler=tcp://127.0.0.1:...`), on a cluster whose every address is 127.0.0.1 and whose
    workers each hold one model for the vocabulary."""
    from yw_ext.cli import run as yw
    from yw_ext.scale import detect_dataset, read_results
    from yw_ext.scale.dataset import dask_client
    from yw_ext.scale.vocabulary import payload, resolve_vocabulary
    from yw_ext.scale.worker import cache_info

    model, onnx = dv_files
    emb = unit_rows(3, 2, seed=7)  # (K, G, D): two prompts per class, scored as their max
    images = sorted((coco128 / "images" / "val2017").glob("*.jpg"))
    assert len(images) == 128
    model.set_classes(NAMES, embeddings=emb)
    ref = [model.predict(str(p), imgsz=IMGSZ, conf=0.25, verbose=False)[0].boxes.data.numpy() for p in images]
    out = tmp_path / "out"
    kw = dict(classes=NAMES, embeddings=emb, partition_size=32, labels=True, progress=False)
    s = detect_dataset(coco128 / "images" / "val2017", onnx, out, workers=2, **kw)
    assert (s["images"], s["partitions"], s["computed"], s["skipped"], s["errors"]) == (128, 4, 4, 0, 0)
    table = read_results(out).to_pylist()
    assert [r["path"] for r in table] == [str(p) for p in images]
    n = 0
    for r, d in zip(table, ref):
        a, b = _rows(r["boxes"], r["scores"], r["class_ids"]), _rows(d[:, :4], d[:, 4], d[:, 5])
        assert len(a) == len(b), r["path"]
        n += len(a)
        if len(a):
            assert (a[:, 5] == b[:, 5]).all() and np.abs(a[:, :4] - b[:, :4]).max() <= 1e-3
            assert np.abs(a[:, 4] - b[:, 4]).max() <= 1e-5
        assert r["class_names"] == [NAMES[int(c)] for c in r["class_ids"]]
    assert n > 100  # the comparison is over real detections
    labels = sorted((out / "labels").glob("*.txt"))
    assert len(labels) == 128 + 1 and (out / "labels" / "classes.txt").read_text().split() == NAMES
    first = next(r for r in table if r["scores"])
    lines = (out / "labels" / (Path(first["path"]).stem + ".txt")).read_text().splitlines()
    assert len(lines) == len(first["scores"]) and lines[0].split()[0] == str(first["class_ids"][0])

    parts = sorted(out.glob("part-*.parquet"))
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts}
    old = parts[1].read_bytes()
    parts[1].unlink()
    with dask_client(workers=2) as client:
        info = client.scheduler_info()
        addrs = [info["address"], *info["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addrs), addrs
        np.save(tmp_path / "emb.npy", emb)
        s2 = yw(["label", f"source={coco128 / 'images' / 'val2017'}", f"model={onnx}", f"out={out}",  # the CLI
                 "classes=person,car,dog", f"embeddings={tmp_path / 'emb.npy'}", "partition_size=32", "labels=True",
                 f"scheduler={info['address']}"])
        cached = client.run(cache_info)
    assert (s2["computed"], s2["skipped"]) == (1, 3)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.glob("part-*.parquet"))}
    assert {k: v for k, v in after.items() if k != parts[1].name} == {k: v for k, v in before.items()
                                                                       if k != parts[1].name}
    import pyarrow.parquet as pq

    redone = pq.read_table(parts[1]).to_pylist()
    assert [r["path"] for r in redone] == [r["path"] for r in table[32:64]]
    for r, t in zip(redone, table[32:64]):  # same detections (ONNX Runtime threads may differ: float rounding)
        a, b = _rows(r["boxes"], r["scores"], r["class_ids"]), _rows(t["boxes"], t["scores"], t["class_ids"])
        assert a.shape == b.shape and np.abs(a - b).max(initial=0) <= 1e-3
    key = payload(resolve_vocabulary(NAMES, embeddings=emb))["key"]
    assert any(c["vocabularies"] == [key] for c in cached.values())  # one model, set once, per worker that ran


def test_sources_and_partitions(tmp_path):
    """Folder, glob, list, .txt, Parquet and CSV columns; partitions; clear errors."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from yw_ext.scale import list_images, partition

    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.png", "notes.txt", "sub/c.jpg"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    folder = tmp_path / "imgs"
    assert [Path(p).name for p in list_images(folder)] == ["a.png", "b.jpg"]
    assert [Path(p).name for p in list_images(f"{folder}/**/*.jpg")] == ["b.jpg", "c.jpg"]
    (tmp_path / "list.txt").write_text("imgs/b.jpg\nimgs/sub/c.jpg\n")
    assert list_images(tmp_path / "list.txt") == [str(tmp_path / "imgs/b.jpg"), str(tmp_path / "imgs/sub/c.jpg")]
    pq.write_table(pa.table({"file": ["imgs/a.png", str(folder / "b.jpg")]}), tmp_path / "t.parquet")
    assert list_images(tmp_path / "t.parquet", column="file") == [str(folder / "a.png"), str(folder / "b.jpg")]
    (tmp_path / "t.csv").write_text("path,x\nimgs/a.png,1\n")
    assert list_images(tmp_path / "t.csv") == [str(folder / "a.png")]
    with pytest.raises(ValueError, match="no column 'path'"):
        list_images(tmp_path / "t.parquet")
    with pytest.raises(FileNotFoundError, match="matches no image"):
        list_images(f"{folder}/*.gif")
    assert [len(p) for p in partition(list(range(5)), 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="partition_size"):
        partition([1], 0)


def test_labels_errors_and_bad_input(dv_files, tmp_path, assets):  # noqa: F811
    """YOLO label arithmetic; an unreadable image is a row with an error, not a crash (worker code, in process);
    fixed-vocabulary models, another job's output, a wrong embedding width fail before any work, naming the cause."""
    from yw_ext.scale import detect_dataset
    from yw_ext.scale.worker import detect_partition
    from yw_ext.scale.writers import yolo_lines

    assert yolo_lines(np.array([[10, 20, 30, 60]]), [2], (100, 200)) == "2 0.100000 0.400000 0.100000 0.400000\n"
    _, onnx = dv_files
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    paths = [str(assets / "bus.jpg"), str(tmp_path / "broken.jpg"), str(assets / "zidane.jpg")]
    stats = detect_partition(0, paths, str(tmp_path / "p" / "part-00000.parquet"), {"model": str(onnx)}, None,
                             {"conf": 0.25, "batch": 2})
    assert (stats["images"], stats["errors"]) == (3, 1)
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "p" / "part-00000.parquet").to_pylist()
    assert "cannot read image" in rows[1]["error"] and rows[0]["error"] is None and rows[0]["width"] == 810
    with pytest.raises(ValueError, match="512"):
        detect_dataset(paths[:1], onnx, tmp_path / "o", classes=["a"], embeddings=np.ones((1, 8)), progress=False)
    fixed = tmp_path / "fixed.onnx"
    dv_files[0].export(format="onnx", imgsz=IMGSZ, verbose=False, out=fixed)
    with pytest.raises(ValueError, match="fixed vocabulary"):
        detect_dataset(paths[:1], fixed, tmp_path / "o", classes=["a"], embeddings=unit_rows(1), progress=False)
    out = tmp_path / "o2"
    out.mkdir()
    (out / "_manifest.json").write_text('{"format": "yw_ext.label/1", "model": "other"}')
    with pytest.raises(ValueError, match="another job.*overwrite=True"):
        detect_dataset(paths[:1], onnx, out, progress=False)
    assert not list(out.glob("part-*"))


def test_label_without_extras_says_how_to_install(monkeypatch, capsys):
    """Without Dask distributed, `yw label` exits with the pip command of the scale extra (import monkeypatched)."""
    from yw_ext.cli import entrypoint

    monkeypatch.setitem(sys.modules, "distributed", None)
    assert entrypoint(["label", "source=x", "model=m.onnx", "out=o"]) == 2
    assert "pip install -e .[scale]" in capsys.readouterr().err
