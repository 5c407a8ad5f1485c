# yw_ext, AGPL-3.0 license
"""Benchmark: encoding the 1203 LVIS class names with an empty (cold) vs a filled (warm) embedding cache.

Cold and warm runs are interleaved in pairs (cold on a fresh temporary database, then warm on the same one), after
one untimed warm-up pair, and the median of the pairwise warm/cold ratios is reported (separately timed medians are
not comparable on a noisy machine). Results go to ``benchmarks/results/text_cache.csv`` (written atomically) with
the environment recorded.

Encoders: ``YW_CLIP`` when set (real CLIP weights), else a random CLIP built with open_clip: ``--encoder tiny``
(width 64, 2 layers; measures the cache machinery) or ``--encoder vit-b-32`` (ViT-B/32-sized text tower, random
weights; realistic encoding cost).

Examples:
    python benchmarks/bench_text_cache.py
    python benchmarks/bench_text_cache.py --encoder vit-b-32 --pairs 5
    YW_CLIP=~/.cache/clip/ViT-B-32.pt python benchmarks/bench_text_cache.py
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

# common (benchmarks/common.py) first: it puts the repository on sys.path
from common import RESULTS, lvis_names, random_text_encoder, write_csv_atomic
from yw_ext.text import EmbeddingCache, encode_texts, load_clip

COLUMNS = ("date", "torch", "open_clip", "device", "threads", "encoder", "n_texts", "cold_s", "warm_s", "ratio")


def run_pair(enc, texts: list[str], batch: int) -> tuple[float, float]:
    """One cold (fresh empty database) and one warm (same database) ``encode_texts`` call; returns seconds."""
    with tempfile.TemporaryDirectory(prefix="yw_bench_cache_") as d:
        cache = EmbeddingCache(d)
        t0 = time.perf_counter()
        cold = encode_texts(enc, texts, cache=cache, batch=batch)
        t1 = time.perf_counter()
        warm = encode_texts(enc, texts, cache=cache, batch=batch)
        t2 = time.perf_counter()
    if not torch.equal(cold, warm):
        raise RuntimeError("warm (cached) embeddings differ from the cold ones")
    return t1 - t0, t2 - t1


def main(argv=None) -> list[dict]:
    """Run the benchmark; returns the CSV rows."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--encoder", choices=("tiny", "vit-b-32"), default="tiny",
                   help="random encoder used when YW_CLIP is not set")
    p.add_argument("--pairs", type=int, default=5, help="timed cold/warm pairs")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=RESULTS / "text_cache.csv")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import open_clip

    if os.environ.get("YW_CLIP"):
        enc = load_clip(device=args.device)
    else:
        enc = random_text_encoder(args.encoder).to(args.device)
    texts = lvis_names()
    print(f"encoder {enc.identity} ({enc.source}), {len(texts)} texts, device {args.device}, "
          f"{torch.get_num_threads()} threads")
    run_pair(enc, texts, args.batch)  # warm-up: tokenizer, allocator, sqlite

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    for i in range(args.pairs):
        cold, warm = run_pair(enc, texts, args.batch)
        rows.append(dict(date=date, torch=torch.__version__, open_clip=open_clip.__version__, device=args.device,
                         threads=torch.get_num_threads(), encoder=enc.identity, n_texts=len(texts),
                         cold_s=f"{cold:.6f}", warm_s=f"{warm:.6f}", ratio=f"{warm / cold:.6f}"))
        print(f"pair {i + 1}: cold {cold * 1e3:9.2f} ms   warm {warm * 1e3:8.2f} ms   warm/cold {warm / cold:.4f}")
    ratios = [float(r["ratio"]) for r in rows]
    colds = [float(r["cold_s"]) for r in rows]
    warms = [float(r["warm_s"]) for r in rows]
    print(f"median warm/cold ratio {statistics.median(ratios):.4f} (range {min(ratios):.4f}-{max(ratios):.4f}); "
          f"median cold {statistics.median(colds) * 1e3:.1f} ms, warm {statistics.median(warms) * 1e3:.1f} ms")
    write_csv_atomic(args.out, rows, COLUMNS)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
