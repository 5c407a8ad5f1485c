# yw_ext, AGPL-3.0 license
"""The benchmark report: Markdown tables of the rows and the latency plots (PNG, written atomically).

Examples:
    >>> format_table([]).splitlines()[0][:39]
    '| model | imgsz | batch | K | backend |'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from yw_ext.bench.config import BACKENDS, SCALE_ORDER
from yw_ext.core.io import atomic_write

OTHER_KINDS = {"gemm", "text_encoder", "embedding_cache", "set_classes"}


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    """A number cell (empty for a missing value)."""
    return "" if v in ("", None) else fmt.format(float(v))


def _has(r: dict, key: str) -> bool:
    """Whether the row has a value in ``key``."""
    return r.get(key) not in ("", None)


def _ratio(r: dict, fmt: str = "{:.2f}") -> str:
    """``ratio [min-max]`` of a row (empty without a ratio)."""
    if not _has(r, "ratio"):
        return ""
    return f"{fmt} [{fmt}-{fmt}]".format(float(r["ratio"]), float(r["ratio_min"]), float(r["ratio_max"]))


def _latency_line(r: dict) -> str:
    """One row of the latency table."""
    ratio = _ratio(r)
    mem = f"{float(r['peak_rss_mb']):.0f} (+{float(r['peak_delta_mb']):.0f})" if _has(r, "peak_rss_mb") else ""
    frac = f"{100 * float(r['gemm_fraction']):.0f}%" if _has(r, "gemm_fraction") else ""
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('note', '')}"
    return (f"| {r['scale']} | {r['imgsz']} | {r['batch']} | {r['K']} | {r['backend']} | "
            f"{_f(r.get('median_ms'))} | {_f(r.get('p90_ms'))} | {_f(r.get('throughput'))} | {ratio} | "
            f"{r.get('baseline', '') if ratio else ''} | {_f(r.get('achieved_gflops'))} | {frac} | {mem} | "
            f"{status} |")


def format_table(rows: Sequence[dict]) -> str:
    """Markdown tables of the latency, K-growth and seg-vs-det, GEMM and text rows.

    Examples:
        >>> format_table([]).splitlines()[0][:39]
        '| model | imgsz | batch | K | backend |'
    """
    head = ("| model | imgsz | batch | K | backend | ms/img median | p90 | img/s | ratio [min-max] | vs | GFLOP/s | "
            "of GEMM | peak MB (+run) | status |")
    out = [head, "|" + "---|" * 14]
    out += [_latency_line(r) for r in rows if r.get("kind") == "latency"]
    growth = [r for r in rows if r.get("kind") in {"k_growth", "seg_vs_det"}]
    if growth:
        out += ["", "| model | imgsz | batch | backend | K | latency / latency at | ratio [min-max] |",
                "|" + "---|" * 7]
        out += [f"| {r['scale']} | {r['imgsz']} | {r['batch']} | {r['backend']} | {r['K']} | {r['baseline']} | "
                f"{_ratio(r)} |" for r in growth]
    other = [r for r in rows if r.get("kind") in OTHER_KINDS]
    if other:
        out += ["", "| measurement | what | median ms | throughput | ratio [min-max] | note |", "|" + "---|" * 6]
        for r in other:
            thr = f"{_f(r.get('throughput'))} {r.get('throughput_unit', '')}".strip()
            ratio = f"{_ratio(r, '{:.4f}')} vs {r['baseline']}" if _has(r, "ratio") else ""
            out.append(f"| {r['kind']} | {r['backend']} | {_f(r.get('median_ms'), '{:.2f}')} | {thr} | {ratio} | "
                       f"{r.get('note', '')} |")
    return "\n".join(out)


def _plt() -> Any:
    """``matplotlib.pyplot`` with the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _latency_rows(rows: Sequence[dict]) -> list[dict]:
    """The measured latency rows."""
    return [r for r in rows if r.get("kind") == "latency" and _has(r, "median_ms")]


def _figure(n: int) -> tuple[Any, Any]:
    """A figure with ``n`` latency panels side by side (at least one)."""
    n = max(1, n)
    return _plt().subplots(1, n, figsize=(max(6.4, 5.2 * n), 4.4), squeeze=False)


def _latency_axis(ax: Any, title: str) -> None:
    """The y label, title, grid and legend of one latency panel."""
    ax.set_ylabel("ms per image (median)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_latency_figure(fig: Any, axes: Any, measured: bool, path: str | Path, title: str) -> Path:
    """Title the figure (a note in the first panel when nothing was ``measured``), write it as PNG atomically, close
    it."""
    if not measured:
        axes[0][0].text(0.5, 0.5, "no latency measured", ha="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    p = atomic_write(path, lambda f: fig.savefig(f, dpi=110, format="png"))
    _plt().close(fig)
    return p


def plot_latency_vs_k(rows: Sequence[dict], path: str | Path) -> Path:
    """Median ms/image vs K (log axis), one line per backend, one panel per model size / image size / batch.

    Examples:
        >>> plot_latency_vs_k([], "/tmp/yw_latency_vs_k.png").name
        'yw_latency_vs_k.png'
    """
    lat = _latency_rows(rows)
    groups = sorted({(r["scale"], r["imgsz"], r["batch"]) for r in lat},
                    key=lambda g: (SCALE_ORDER.index(g[0]) if g[0] in SCALE_ORDER else 99, g[1], g[2]))
    fig, axes = _figure(len(groups))
    for ax, (scale, imgsz, batch) in zip(axes[0], groups):
        sel = [r for r in lat if (r["scale"], r["imgsz"], r["batch"]) == (scale, imgsz, batch)]
        ks = sorted({int(r["K"]) for r in sel})
        for b in BACKENDS:
            pts = sorted((int(r["K"]), float(r["median_ms"])) for r in sel if r["backend"] == b)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=1.5 if "ultralytics" in b else 1.2,
                        ls="--" if b.startswith("ultralytics") else "-", label=b)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(_plt().NullFormatter())
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_xlabel("vocabulary size K")
        _latency_axis(ax, f"{scale} / {imgsz} px / batch {batch}")
    return _save_latency_figure(fig, axes, bool(groups), path,
                                "Latency vs vocabulary size K\n(medians; the CSV's ratios come from interleaved pairs)")


def plot_latency_vs_size(rows: Sequence[dict], path: str | Path, ks: Sequence[int] | None = None) -> Path:
    """Median ms/image vs model size, one line per backend; one panel per image size / batch / K (default: K = 80
    when measured, and the largest K).

    Examples:
        >>> plot_latency_vs_size([], "/tmp/yw_latency_vs_size.png").name
        'yw_latency_vs_size.png'
    """
    lat = _latency_rows(rows)
    have = sorted({int(r["K"]) for r in lat})
    if ks is None:
        ks = sorted({80 if 80 in have else have[0], have[-1]}) if have else []
    panels = sorted({(int(r["imgsz"]), int(r["batch"]), int(r["K"])) for r in lat if int(r["K"]) in ks})
    fig, axes = _figure(len(panels))
    for ax, (imgsz, batch, k) in zip(axes[0], panels):
        here = [r for r in lat if (int(r["imgsz"]), int(r["batch"]), int(r["K"])) == (imgsz, batch, k)]
        scales = [s for s in SCALE_ORDER if any(r["scale"] == s for r in here)]
        for b in BACKENDS:
            pts = {r["scale"]: float(r["median_ms"]) for r in here if r["backend"] == b}
            if pts:
                xs = [i for i, s in enumerate(scales) if s in pts]
                ax.plot(xs, [pts[scales[i]] for i in xs], marker="o", ls="--" if b.startswith("ultralytics") else "-",
                        label=b)
        ax.set_xticks(range(len(scales)))
        ax.set_xticklabels([f"yw-v2-{s}" for s in scales])
        ax.set_xlim(-0.5, max(0.5, len(scales) - 0.5))
        _latency_axis(ax, f"K = {k}, {imgsz} px, batch {batch}")
    return _save_latency_figure(fig, axes, bool(panels), path,
                                "Latency vs model size (each size timed in its own group)")


def format_e2e_table(rows: Sequence[dict]) -> str:
    """Markdown table of the ``e2e`` rows: images/s, ms per image, ratio, and the pre / inference / post split.

    Examples:
        >>> format_e2e_table([]).splitlines()[0][:25]
        '| model | imgsz | K | bac'
    """
    out = ["| model | imgsz | K | backend | img/s | ms/img median | ratio [min-max] | vs | pre ms | infer ms | "
           "post ms | vs ultralytics |", "|" + "---|" * 12]
    for r in (r for r in rows if r.get("kind") == "e2e"):
        out.append(f"| {r['scale']} | {r['imgsz']} | {r['K']} | {r['backend']} | {_f(r.get('throughput'))} | "
                   f"{_f(r.get('median_ms'))} | {_ratio(r)} | {r.get('baseline', '')} | "
                   f"{_f(r.get('preprocess_ms'))} | {_f(r.get('inference_ms'))} | {_f(r.get('postprocess_ms'))} | "
                   f"{_f(r.get('ratio_vs_ultralytics'), '{:.2f}')} |")
    return "\n".join(out)


def plot_e2e(rows: Sequence[dict], path: str | Path) -> Path:
    """Stacked bars of ms per image (pre-process, inference, post-process; the rest of the wall time on top) per
    backend, one panel per (model size, image size, K).

    Examples:
        >>> plot_e2e([], "/tmp/yw_e2e.png").name
        'yw_e2e.png'
    """
    e2e = [r for r in rows if r.get("kind") == "e2e" and _has(r, "median_ms")]
    panels = sorted({(r["scale"], int(r["imgsz"]), int(r["K"])) for r in e2e})
    fig, axes = _figure(len(panels))
    for ax, (scale, imgsz, k) in zip(axes[0], panels):
        sel = [r for r in e2e if (r["scale"], int(r["imgsz"]), int(r["K"])) == (scale, imgsz, k)]
        names = [r["backend"] for r in sel]
        bottom = [0.0] * len(sel)
        for key, label in (("preprocess_ms", "pre-process"), ("inference_ms", "inference"),
                           ("postprocess_ms", "post-process")):
            v = [float(r[key]) if _has(r, key) else 0.0 for r in sel]
            ax.bar(names, v, bottom=bottom, label=label)
            bottom = [b + x for b, x in zip(bottom, v)]
        rest = [max(0.0, float(r["median_ms"]) - b) for r, b in zip(sel, bottom)]
        ax.bar(names, rest, bottom=bottom, label="decode / loop / other", color="0.8")
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        _latency_axis(ax, f"{scale} / {imgsz} px / K = {k}: predict, batch 1")
    return _save_latency_figure(fig, axes, bool(panels), path,
                                "End-to-end predict, ms per image (wall time; split from each predictor)")


__all__ = ["format_e2e_table", "format_table", "plot_e2e", "plot_latency_vs_k", "plot_latency_vs_size"]
