# yw_ext, AGPL-3.0 license
"""The two ways in: ``benchmarks/run.py --option value`` (``parse`` / ``main``) and ``yw bench key=value ...``
(``cli``: ``yw_ext.cli`` parses the ``key=value`` tokens and hands the dict over; this module never imports the CLI).

Examples:
    >>> parse(["--quick"]).ks
    [1, 80, 1203]
    >>> config_from_args({"quick": True, "scales": "n", "ks": "1,3"}).ks
    [1, 3]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from yw_ext.bench.config import DEFAULT_BACKENDS, BenchConfig, as_bool, quick_config
from yw_ext.bench.suite import run

KEEP_AS_GIVEN = ("out", "name", "encoder", "device", "data", "images")
"""``yw bench`` values that stay strings whatever they look like (a folder called ``1``, ``name=007``)."""


def _parser(d: BenchConfig) -> argparse.ArgumentParser:
    """The argparse parser of ``benchmarks/run.py`` (defaults shown from ``d``)."""
    ap = argparse.ArgumentParser(prog="benchmarks/run.py", description="yw_ext benchmark suite (see yw_ext.bench).")
    ap.add_argument("--quick", action="store_true", help="n at 320, K 1/80/1203, 3 pairs (< 3 min on 2 cores)")
    ap.add_argument("--scales", help=f"model sizes, comma-separated (default {','.join(d.scales)})")
    ap.add_argument("--imgsz", help="image sizes (default 640)")
    ap.add_argument("--batch", help="batch sizes (default 1)")
    ap.add_argument("--ks", help="vocabulary sizes (default 1,10,80,365,1203)")
    ap.add_argument("--backends", help=f"default all but seg: {','.join(DEFAULT_BACKENDS)}")
    ap.add_argument("--pairs", type=int, help="timed rounds (default 10)")
    ap.add_argument("--warmup", type=int, help="untimed rounds (default 2)")
    ap.add_argument("--gap", type=float, help="seconds of idle before each timed sample (default 0.05)")
    ap.add_argument("--reps", type=int, help="back-to-back calls per sample, the fastest counts (default 2)")
    ap.add_argument("--threads", type=int, help="CPU threads (default min(2, cores))")
    ap.add_argument("--device", help="cpu (default) or cuda[:i]")
    ap.add_argument("--encoder", help="auto (default: $YW_CLIP or random vit-b-32), vit-b-32, tiny, or a CLIP path")
    ap.add_argument("--text-pairs", type=int, dest="text_pairs", help="pairs of the text measurements (default 4)")
    ap.add_argument("--no-text", dest="text", action="store_false", default=None, help="skip the text measurements")
    ap.add_argument("--no-memory", dest="memory", action="store_false", default=None, help="skip peak memory")
    ap.add_argument("--mem-k", type=int, dest="mem_k", help="K of the memory measurement (default: largest)")
    ap.add_argument("--ref-k", type=int, dest="ref_k", help="reference K of the growth ratios (default 80)")
    ap.add_argument("--data", help="calibration dataset YAML (TensorRT INT8)")
    ap.add_argument("--out", help="output folder (default benchmarks/results)")
    ap.add_argument("--name", help="output file stem (default bench / bench_quick / bench_e2e)")
    ap.add_argument("--seg", action="store_true", default=None,
                    help="add the seg backends: pt_seg, ort_seg vs YOLOE-seg (yoloe_seg, yoloe_seg_onnx)")
    ap.add_argument("--e2e", action="store_true", default=None, help="end-to-end predict throughput (yw_ext.bench.e2e)")
    ap.add_argument("--e2e-images", type=int, dest="e2e_images", help="images of the e2e passes (default 128)")
    ap.add_argument("--images", help="image folder of the e2e passes (default ../shared/data/coco128/images/val2017)")
    return ap


def parse(argv: Sequence[str] | None = None) -> BenchConfig:
    """Command-line options of ``benchmarks/run.py`` -> ``BenchConfig``.

    Examples:
        >>> parse(["--quick"]).ks
        [1, 80, 1203]
        >>> parse(["--scales", "s", "--imgsz", "640", "--ks", "80,1203"]).scales
        ['s']
    """
    a = vars(_parser(BenchConfig()).parse_args(argv))
    quick = a.pop("quick")
    kw = {k: v for k, v in a.items() if v is not None}
    return quick_config(**kw) if quick else BenchConfig(**kw)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """``benchmarks/run.py`` entry point: parse the options, run the suite, return the rows.

    Examples:
        >>> rows = main(["--quick"])  # doctest: +SKIP
    """
    return run(parse(argv))


def config_from_args(args: Mapping[str, Any]) -> BenchConfig:
    """``yw bench`` arguments (``key=value`` already parsed to values) -> ``BenchConfig``.

    The keys are the ``BenchConfig`` fields; ``quick=True`` starts from the quick preset.

    Raises:
        SystemExit: an unknown key (the message lists the fields).

    Examples:
        >>> config_from_args({"scales": "s", "out": 1}).out
        '1'
    """
    args = dict(args)
    fields = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise SystemExit(f"yw bench: unknown argument(s) {unknown}; use {', '.join(sorted(fields))}.")
    for k in KEEP_AS_GIVEN:
        if k in args and args[k] is not None:
            args[k] = str(args[k])
    quick = as_bool(args.pop("quick", False))
    return quick_config(**args) if quick else BenchConfig(**args)


def cli(args: Mapping[str, Any]) -> list[dict]:
    """``yw bench key=value ...``: run the suite configured by ``config_from_args(args)``; returns the rows.

    ``yw_ext.cli`` parses the tokens (``parse_args``) and calls this with the dict.

    Examples:
        >>> cli({"quick": True, "scales": "n", "ks": "1,3", "imgsz": 64, "out": "/tmp/b"})  # doctest: +SKIP
    """
    return run(config_from_args(args))


__all__ = ["cli", "config_from_args", "main", "parse"]
