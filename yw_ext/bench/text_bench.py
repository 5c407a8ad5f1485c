# yw_ext, AGPL-3.0 license
"""The text measurements: CLIP text-encoder throughput, embedding-cache hits, ``set_classes`` cold vs cached.

All three use the 1203 LVIS class names; the encoder is ``$YW_CLIP`` when set, else a random CLIP text tower of
ViT-B/32 size built with open_clip (``encoder="vit-b-32"``; ``"tiny"`` for smoke tests).

Examples:
    >>> enc, label = text_encoder("tiny")
    >>> label
    'random tiny text tower (open_clip)'
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
from typing import Any

from yw_ext.bench.config import BenchConfig
from yw_ext.bench.data import lvis_names
from yw_ext.bench.records import rounded, spread
from yw_ext.bench.timing import cuda_sync, percentile, ratio_stats, timed
from yw_ext.bench.tiny_clip import random_text_encoder


def text_encoder(spec: str = "auto", device: str = "cpu") -> tuple[Any, str]:
    """The encoder of the text measurements and how the rows name it: ``"auto"`` = ``$YW_CLIP`` if set else random
    ``"vit-b-32"``; ``"vit-b-32"`` / ``"tiny"``: random open_clip towers; anything else: a CLIP path.

    Examples:
        >>> text_encoder("tiny")[1]
        'random tiny text tower (open_clip)'
    """
    from yw_ext.text import load_clip

    if spec == "auto":
        spec = "yw_clip" if os.environ.get("YW_CLIP") else "vit-b-32"
    if spec in {"vit-b-32", "tiny"}:
        return random_text_encoder(spec).to(device), f"random {spec} text tower (open_clip)"
    enc = load_clip(None if spec == "yw_clip" else spec, device=device)
    return enc, f"CLIP {enc.source}"


def _cache_pairs(enc: Any, model: Any, names: list[str], pairs: int, sync: Any) -> dict[str, list[float]]:
    """Per pair: an uncached encode, an empty- and a filled-cache ``encode_texts``, an uncached and a cached
    ``set_classes`` (seconds)."""
    from yw_ext.text import EmbeddingCache, encode_texts

    t: dict[str, list[float]] = {k: [] for k in ("encode", "cold", "warm", "set_cold", "set_warm")}
    encode_texts(enc, names[:64], cache=False)  # warm-up: tokenizer, allocator
    for _ in range(pairs):
        t["encode"].append(timed(lambda: encode_texts(enc, names, cache=False), sync))
        with tempfile.TemporaryDirectory(prefix="yw_bench_cache_") as d:
            enc_cached = functools.partial(encode_texts, enc, names, cache=EmbeddingCache(d))
            t["cold"].append(timed(enc_cached, sync))  # empty cache
            t["warm"].append(timed(enc_cached, sync))  # every name cached
        with tempfile.TemporaryDirectory(prefix="yw_bench_cache_") as d:
            set_cached = functools.partial(model.set_classes, names, encoder=enc, cache=EmbeddingCache(d))
            t["set_cold"].append(timed(set_cached, sync))
            t["set_warm"].append(timed(set_cached, sync))
    return t


def bench_text(cfg: BenchConfig, env: dict) -> list[dict]:
    """Text-encoder throughput, embedding-cache hit cost and ``set_classes`` (LVIS 1203) cold vs cached.

    Each pair: an uncached encode (throughput), an empty-cache and a filled-cache ``encode_texts``, and an uncached
    and a cached ``YOLOWorld.set_classes``; ratios are medians of the per-pair ratios.

    Examples:
        >>> rows = bench_text(BenchConfig(encoder="tiny", text_pairs=1), environment(2))  # doctest: +SKIP
        >>> [r["kind"] for r in rows]  # doctest: +SKIP
        ['text_encoder', 'embedding_cache', 'embedding_cache', 'set_classes', 'set_classes']
    """
    import yw_ext

    names = lvis_names()
    enc, label = text_encoder(cfg.encoder, cfg.device)
    model = yw_ext.YOLOWorld(f"yw-v2-{cfg.scales[0]}.yaml")
    print(f"text: {label}, {len(names)} LVIS names, {cfg.text_pairs} pairs ...", flush=True)
    t = _cache_pairs(enc, model, names, cfg.text_pairs, cuda_sync(cfg.device))
    base = {**env, "scale": cfg.scales[0], "K": len(names), "status": "ok", "pairs": cfg.text_pairs, "reps": 1}
    med = statistics.median(t["encode"])
    rows = [{**base, "kind": "text_encoder", "backend": label, "note": "encode_texts(cache=False), LVIS names",
             "median_ms": rounded(1000 * med, 2), "p90_ms": rounded(1000 * percentile(t["encode"], 90), 2),
             "throughput": rounded(len(names) / med, 1), "throughput_unit": "prompts/s"}]  # fmt: skip
    for kind, cold, warm, what in (("embedding_cache", t["cold"], t["warm"], "encode_texts"),
                                   ("set_classes", t["set_cold"], t["set_warm"], "YOLOWorld.set_classes")):
        rows.append({**base, "kind": kind, "backend": "uncached", "note": f"{what}, empty cache ({label})",
                     "median_ms": rounded(1000 * statistics.median(cold), 2),
                     "p90_ms": rounded(1000 * percentile(cold, 90), 2)})  # fmt: skip
        rows.append({**base, "kind": kind, "backend": "cached", "note": f"{what}, every name in the cache ({label})",
                     "median_ms": rounded(1000 * statistics.median(warm), 3),
                     "p90_ms": rounded(1000 * percentile(warm, 90), 3), "baseline": "uncached",
                     **spread(ratio_stats(warm, cold), 5)})  # fmt: skip
    return rows


__all__ = ["bench_text", "text_encoder"]
