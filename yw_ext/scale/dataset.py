"""``detect_dataset``: open-vocabulary detection over an image collection on Dask distributed, resumable.

Examples:
    >>> s = detect_dataset("images/", "dv.onnx", "out/", classes=["person", "bus"],
    ...                    embeddings="vocab.npy", workers=2)  # doctest: +SKIP
    >>> read_results("out/").num_rows  # doctest: +SKIP
    128
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from yw_ext.core.io import atomic_write
from yw_ext.core.log import LOGGER
from yw_ext.scale import check_extras
from yw_ext.scale.sources import list_images, partition
from yw_ext.scale.vocabulary import payload, resolve_vocabulary, vocabulary_key

MANIFEST = "_manifest.json"
FORMAT = "yw_ext.label/1"


def part_file(out: str | os.PathLike, index: int) -> Path:
    """``out/part-NNNNN.parquet``."""
    return Path(out) / f"part-{index:05d}.parquet"


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _check_manifest(out: Path, manifest: dict[str, Any], overwrite: bool) -> None:
    """Write the job's manifest; a different job's output in ``out`` is an error (or removed with ``overwrite``)."""
    f = out / MANIFEST
    if f.is_file():
        old = json.loads(f.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
        if changed and not overwrite:
            raise ValueError(f"{out} holds results of another job (different {', '.join(changed)}); use a new out= "
                             "or overwrite=True to start again.")
        if changed:
            for p in out.glob("part-*.parquet"):
                p.unlink()
    atomic_write(f, lambda fh: fh.write(json.dumps(manifest, indent=1)), mode="w")


@contextlib.contextmanager
def dask_client(scheduler: Any = None, workers: int | None = None, threads: int = 1) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` (an address or a Client, used as is), else to a new
    ``LocalCluster(host="127.0.0.1", dashboard_address=None)`` of ``workers`` processes x ``threads`` threads,
    closed on exit.

    Examples:
        >>> with dask_client(workers=2) as client:  # doctest: +SKIP
        ...     client.scheduler_info()["address"]
        'tcp://127.0.0.1:40123'
    """
    from distributed import Client, LocalCluster

    if scheduler is not None and not isinstance(scheduler, str):
        yield scheduler  # an existing Client: the caller owns it
        return
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    n = int(workers or max(1, (os.cpu_count() or 1) // max(1, int(threads))))
    with LocalCluster(n_workers=n, threads_per_worker=int(threads), processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def _model_spec(model: str, providers: Any, model_threads: int | None, device: str | None) -> dict[str, Any]:
    if providers is None and device is not None and str(device).lower() not in {"cpu", ""}:
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return {"model": str(Path(model).resolve()), "providers": list(providers) if providers else None,
            "threads": model_threads}


def _run(client: Any, parts: list[list[str]], todo: list[int], out: Path, spec: dict, vocab: Any, opts: dict,
         progress: bool) -> list[dict[str, Any]]:
    """Submit the unfinished partitions, show a progress bar over images, gather the per-partition stats."""
    from distributed import as_completed
    from tqdm import tqdm

    shipped = client.scatter(vocab, broadcast=True) if vocab is not None else None  # embeddings travel once
    from yw_ext.scale.worker import detect_partition

    futures = [client.submit(detect_partition, i, parts[i], str(part_file(out, i)), spec, shipped, opts,
                             key=f"yw-label-{out.name}-{i:05d}-{time.time_ns()}", pure=False) for i in todo]
    done_images = sum(len(p) for p in parts) - sum(len(parts[i]) for i in todo)
    stats = []
    with tqdm(total=sum(len(p) for p in parts), initial=done_images, desc="yw label", unit="img",
              disable=not progress) as bar:
        for fut in as_completed(futures):
            s = fut.result()  # a worker's exception is raised here, with its traceback
            stats.append(s)
            bar.update(s["images"])
    return sorted(stats, key=lambda s: s["index"])


def _client_detector(spec: dict[str, Any], vocab: Any) -> Any:
    """Open the model on the client once to check the vocabulary against it before any work is sent."""
    from yw_ext.runtime import Detector

    det = Detector(spec["model"], threads=1)
    if vocab is not None:
        if not det.dynamic_vocab:
            raise ValueError(f"{Path(spec['model']).name} has a fixed vocabulary ({det.vocabulary[:5]}...); export "
                             "with dynamic_vocab=True to label with other classes, or drop classes=/prompts=.")
        det.set_classes(vocab.names, embeddings=payload(vocab)["embeddings"])
    else:
        det.text_features()  # a run-time-vocabulary file without a stored vocabulary needs classes
    return det


def detect_dataset(source: Any, model: str | os.PathLike, out: str | os.PathLike, classes: Any = None,
                   embeddings: Any = None, prompts: str | os.PathLike | None = None, images: dict | None = None,
                   text_encoder: Any = None, clip: Any = None, conf: float = 0.25, iou: float = 0.7,
                   max_det: int = 300, imgsz: int | None = None, batch: int = 8, partition_size: int = 64,
                   labels: bool | str | os.PathLike = False, workers: int | None = None, threads: int = 1,
                   scheduler: Any = None, device: str | None = None, providers: Any = None,
                   model_threads: int | None = None, column: str = "path", overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Detect objects in every image of ``source`` with an exported model, on Dask; one Parquet file per partition.

    Args:
        source: A folder, glob, list of paths, ``.txt`` list, or ``.parquet`` / ``.csv`` with a ``column`` of paths.
        model: An ONNX export (``dynamic_vocab=True`` for ``classes`` / ``prompts``; ``dynamic=True`` for batches).
        out: Output folder: ``part-NNNNN.parquet`` files and ``_manifest.json``.
        classes, embeddings, prompts, images, text_encoder, clip: The vocabulary, built once here (see
            ``yw_ext.scale.vocabulary.resolve_vocabulary``); none: the model's own.
        conf, iou, max_det, imgsz: As ``predict``.
        batch: Images per model call on a worker.
        partition_size: Images per partition (a task, and a Parquet file).
        labels: Also write YOLO label files: True (``out/labels``) or a folder.
        workers, threads: Local cluster size (default: one single-threaded worker per CPU).
        scheduler: ``"tcp://host:8786"`` or a ``distributed.Client`` to use instead of a local cluster.
        device, providers, model_threads: ONNX Runtime providers (``device="cuda"``: CUDA) and intra-op threads per
            worker (default on a local cluster: CPUs / (workers x threads)).
        column: The path column of a Parquet / CSV source.
        overwrite: Replace the results of a different job in ``out`` (else an error).
        progress: Show a progress bar.

    Returns:
        ``{"out", "images", "partitions", "computed", "skipped", "detections", "errors", "seconds",
        "worker_seconds" (summed over the computed partitions), "names"}``;
        partitions already in ``out`` (same job) are skipped, so a rerun finishes an interrupted job.

    Raises:
        ImportError: Dask / pyarrow missing (the message says how to install them).
        ValueError / FileNotFoundError: bad source, model or vocabulary, or another job's results in ``out``.

    Examples:
        >>> detect_dataset("images/", "dv.onnx", "out/", classes=["person", ["car", "automobile"]],
        ...                text_encoder="clip_text.onnx", labels=True)  # doctest: +SKIP
        >>> detect_dataset("s3list.parquet", "dv.onnx", "out/", prompts="vocab.npz",
        ...                scheduler="tcp://10.0.0.1:8786", device="cuda")  # doctest: +SKIP
    """
    check_extras()
    t0 = time.perf_counter()
    paths = list_images(source, column)
    parts = partition(paths, partition_size)
    spec = _model_spec(model, providers, model_threads, device)
    if not Path(spec["model"]).is_file():
        raise FileNotFoundError(f"model not found: {model}")
    vocab = resolve_vocabulary(classes, embeddings, prompts, images, text_encoder, clip)
    det = _client_detector(spec, vocab)
    out = Path(out)
    labels_dir = None if not labels else str(out / "labels" if labels is True else Path(labels))
    opts = {"conf": conf, "iou": iou, "max_det": max_det, "imgsz": imgsz, "batch": batch, "labels_dir": labels_dir,
            "root": os.path.commonpath([os.path.abspath(p) for p in paths]) if labels_dir else None}
    if opts["root"] and os.path.isfile(opts["root"]):
        opts["root"] = os.path.dirname(opts["root"])
    manifest = {"format": FORMAT, "model": _file_hash(Path(spec["model"])), "vocabulary": vocabulary_key(vocab),
                "names": det.vocabulary, "partition_size": int(partition_size), "images": len(paths),
                "paths": hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16],
                **{k: opts[k] for k in ("conf", "iou", "max_det", "imgsz", "labels_dir")}}
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, manifest, overwrite)
    if labels_dir:
        from yw_ext.scale.writers import write_class_names

        write_class_names(det.names, labels_dir)
    todo = [i for i in range(len(parts)) if not part_file(out, i).is_file()]
    if not spec["threads"] and scheduler is None:
        n = int(workers or max(1, (os.cpu_count() or 1) // max(1, int(threads))))
        spec["threads"] = max(1, (os.cpu_count() or 1) // (n * max(1, int(threads))))
    stats = []
    if todo:
        with dask_client(scheduler, workers, threads) as client:
            stats = _run(client, parts, todo, out, spec, payload(vocab), opts, progress)
    summary = {"out": str(out), "images": len(paths), "partitions": len(parts), "computed": len(todo),
               "skipped": len(parts) - len(todo), "detections": sum(s["detections"] for s in stats),
               "errors": sum(s["errors"] for s in stats), "seconds": time.perf_counter() - t0,
               "worker_seconds": sum(s["seconds"] for s in stats), "names": det.vocabulary}
    LOGGER.info(f"yw label: {summary['images']} images, {summary['computed']} partitions computed, "
                f"{summary['skipped']} skipped, results in {out}")
    return summary


def read_results(out: str | os.PathLike) -> Any:
    """All partitions of ``out`` as one ``pyarrow.Table``, in partition (= input) order.

    Raises:
        FileNotFoundError: no ``part-*.parquet`` in ``out``.

    Examples:
        >>> read_results("out/").to_pandas()[["path", "class_names"]]  # doctest: +SKIP
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(Path(out).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no part-*.parquet files in {out}")
    return pa.concat_tables([pq.read_table(f) for f in files])


__all__ = ["MANIFEST", "dask_client", "detect_dataset", "part_file", "read_results"]
