"""The ``yw`` command, Ultralytics style: ``yw MODE key=value ...``.

Examples:
    yw predict model=l source=bus.jpg classes="person,bus"
    yw predict model=yw-v2-s.yaml source=images/ classes="person,car|automobile" conf=0.1
    yw val model=best.pt data=coco128.yaml
    yw train model=l data=coco128.yaml epochs=1 imgsz=320

``classes`` is a comma-separated vocabulary; ``|`` separates synonyms of one class (first = name). ``clip`` picks
the CLIP weights (OpenAI ``.pt`` file or Hugging Face folder; default ``$YW_CLIP``), ``embeddings`` a ``.npy``
of class embeddings. Every other ``key=value`` goes to Ultralytics unchanged (and is checked by it).
"""

from __future__ import annotations

import sys
from typing import Any

MODES = ("predict", "train", "val", "export")
LATER = {  # modes whose features land with their own issues
    "embed": "writing prompt embeddings (prompt tuning)",
    "convert": "converting official .pth checkpoints",
    "bench": "benchmarks (run `python benchmarks/<script>.py` meanwhile)",
    "demo": "the web demo",
}
USAGE = __doc__


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` tokens; values go through Ultralytics' ``smart_value`` (numbers, bools, None).

    Raises:
        SystemExit: a token without ``=``.

    Examples:
        >>> parse_args(["conf=0.5", "classes=a,b", "save=False"])
        {'conf': 0.5, 'classes': 'a,b', 'save': False}
    """
    from ultralytics.cfg import smart_value

    out: dict[str, Any] = {}
    for tok in argv:
        if "=" not in tok:
            raise SystemExit(f"yw: argument '{tok}' is not key=value (e.g. source=bus.jpg). See 'yw help'.")
        k, v = tok.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise SystemExit(f"yw: argument '{tok}' has an empty key.")
        out[k] = v if k in {"classes", "model", "source", "data", "clip", "embeddings"} else smart_value(v)
    return out


def parse_classes_arg(text: str) -> list[Any]:
    """``"person,car|automobile"`` -> ``["person", ["car", "automobile"]]``.

    Examples:
        >>> parse_classes_arg("person, car|automobile")
        ['person', ['car', 'automobile']]
    """
    items: list[Any] = []
    for part in str(text).split(","):
        syn = [s.strip() for s in part.split("|")]
        items.append(syn[0] if len(syn) == 1 else syn)
    return items


def run(argv: list[str]) -> Any:
    """Run one ``yw`` command; returns what the mode returns (results, metrics, export path)."""
    if not argv or argv[0] in {"help", "-h", "--help"}:
        print(USAGE)
        return None
    mode, rest = argv[0], argv[1:]
    if mode in {"version", "--version"}:
        import yw_ext

        print(yw_ext.__version__)
        return yw_ext.__version__
    if mode in LATER:
        raise SystemExit(f"yw {mode}: {LATER[mode]} is not available in this version of yw_ext yet.")
    if mode not in MODES:
        raise SystemExit(f"yw: unknown mode '{mode}'. Modes: {', '.join(MODES)}. See 'yw help'.")
    args = parse_args(rest)
    from yw_ext import YOLOWorld

    model = YOLOWorld(args.pop("model", "l"))
    classes, clip, emb = args.pop("classes", None), args.pop("clip", None), args.pop("embeddings", None)
    if classes is not None or emb is not None:
        if classes is None:
            raise SystemExit("yw: embeddings=... needs classes=... (one name per row).")
        model.set_classes(parse_classes_arg(classes), embeddings=emb, encoder=clip)
    if mode == "predict":
        args.setdefault("save", True)
        if "source" not in args:
            from ultralytics.utils import ASSETS

            args["source"] = str(ASSETS)
        return model.predict(**args)
    if mode == "train":
        return model.train(**args)
    if mode == "val":
        return model.val(**args)
    return model.export(**args)


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point (``yw``): exit code 0 on success, readable message and 2 on bad input."""
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, FileNotFoundError, SyntaxError) as e:
        print(f"yw: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
