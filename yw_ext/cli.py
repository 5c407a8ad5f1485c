"""The ``yw`` command, Ultralytics style: ``yw MODE key=value ...``.

Examples:
    yw predict model=l source=bus.jpg classes="person,bus"
    yw predict model=yw-v2-s.yaml source=images/ classes="person,car|automobile" conf=0.1
    yw val model=best.pt data=coco128.yaml
    yw train model=l data=coco128.yaml epochs=1 imgsz=320
    yw train model=best.pt data=coco128.yaml mode=prompt init=text adapter=False epochs=20
    yw train model=best.pt data=coco128.yaml mode=image_prompt clip=ViT-B-32.pt crops=32 epochs=10
    yw val model=best.pt data=coco128.yaml image_prompts=32 image_adapter=runs/detect/train/weights/best_adapter.npz
    yw embed texts="person,car|automobile" out=vocab.npz          # or json=class_texts.json; out=x.npy: bare array
    yw export model=best.pt format=onnx dynamic=True                # fixed vocabulary, folded (one input)
    yw export model=best.pt format=onnx dynamic_vocab=True nms=True  # classes set at run time (yw_ext.runtime)
    yw export model=clip clip=ViT-B-32.pt out=clip_text.onnx         # CLIP text encoder (+ BPE file next to it)
    yw bench quick=True                                              # benchmarks vs Ultralytics (< 3 min on 2 CPUs)
    yw bench scales=s imgsz=640 ks=80,1203 pairs=10 out=results      # any yw_ext.bench.BenchConfig field as key=value

``classes`` is a comma-separated vocabulary; ``|`` separates synonyms of one class (first = name). ``clip`` picks
the CLIP weights (OpenAI ``.pt`` file or Hugging Face folder; default ``$YW_CLIP``), ``embeddings`` a ``.npy``
of class embeddings. Every other ``key=value`` goes to Ultralytics unchanged (and is checked by it).

Image prompts (predict only): ``prompt_images="dog:dog1.jpg;cat:scene.jpg@10,20,200,220;dog:dog2.jpg"``. Entries
are separated by ``;``, each is ``class:image_path`` with an optional ``@x1,y1,x2,y2`` pixel box (xyxy of the
original image) to crop; repeating a class adds exemplars (averaged). The class name ends at the first ``:`` (so
class names cannot contain ``:``). Without ``classes=`` the classes are the image-prompt classes, image only (or
fused with their names' text when ``alpha=`` is given); with ``classes=`` the listed classes use text, and those
with images get ``n(alpha * text + (1 - alpha) * image)`` (``alpha`` default 0.5). ``margin=`` (default 0) grows
each box by that fraction of its size before cropping. ``image_adapter=best_adapter.npz`` (predict, val) maps the
exemplars through a trained image adapter (``mode=image_prompt``). Example:

    yw predict model=l source=street.jpg prompt_images="bus:bus.jpg@17,231,802,768" conf=0.1
"""

from __future__ import annotations

import sys
from typing import Any, Callable

from yw_ext.core import parse_class_string

MODES = ("predict", "train", "val", "export")
LATER: dict[str, str] = {}  # modes whose features land with their own issues
USAGE = __doc__
RAW_KEYS = {"classes", "model", "source", "data", "clip", "embeddings", "prompt_images", "names", "src", "out",
            "image_adapter", "jitter"}  # fmt: skip
"""Keys whose values are kept as the strings given (no ``smart_value``)."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` tokens; values go through Ultralytics' ``smart_value`` (numbers, bools, None).

    ``-`` in keys becomes ``_``; the values of ``RAW_KEYS`` stay strings.

    Raises:
        SystemExit: a token without ``=``, or with an empty key.

    Examples:
        >>> parse_args(["conf=0.5", "classes=a,b", "save=False"])
        {'conf': 0.5, 'classes': 'a,b', 'save': False}
    """
    from yw_ext.seam import smart_value

    out: dict[str, Any] = {}
    for tok in argv:
        if "=" not in tok:
            raise SystemExit(f"yw: argument '{tok}' is not key=value (e.g. source=bus.jpg). See 'yw help'.")
        k, v = tok.split("=", 1)
        k = k.strip().replace("-", "_")
        if not k:
            raise SystemExit(f"yw: argument '{tok}' has an empty key.")
        out[k] = v if k in RAW_KEYS else smart_value(v)
    return out


def parse_classes_arg(text: str) -> list[Any]:
    """``"person,car|automobile"`` -> ``["person", ["car", "automobile"]]`` (``yw_ext.core.parse_class_string``).

    Unlike the demo's class box, the command line does not drop blank items: an empty class or synonym is an error.

    Raises:
        ValueError: an empty class name or synonym (``"a,,b"``, ``"a|"``), naming the class index as
            ``YOLOWorld.set_classes`` does.

    Examples:
        >>> parse_classes_arg("person, car|automobile")
        ['person', ['car', 'automobile']]
    """
    for i, part in enumerate(str(text).split(",")):
        if not all(s.strip() for s in part.split("|")):
            raise ValueError(f"class {i}: empty class name or prompt ''.")
    return parse_class_string(str(text))


def parse_prompt_images(text: str) -> dict[str, list[Any]]:
    """``"dog:a.jpg;cat:b.jpg@10,20,200,220;dog:c.jpg"`` -> ``{"dog": ["a.jpg", "c.jpg"], "cat": [("b.jpg", box)]}``.

    Raises:
        ValueError: an entry without ``class:path``, or a box that is not 4 numbers.

    Examples:
        >>> parse_prompt_images("dog:a.jpg; cat:b.jpg@10,20,200,220")
        {'dog': ['a.jpg'], 'cat': [('b.jpg', [10.0, 20.0, 200.0, 220.0])]}
    """
    import re

    out: dict[str, list[Any]] = {}
    for entry in str(text).split(";"):
        entry = entry.strip()
        if not entry:
            continue
        name, sep, path = entry.partition(":")
        name, path = name.strip(), path.strip()
        if not sep or not name or not path:
            raise ValueError(f"prompt_images entry {entry!r} is not 'class:image_path[@x1,y1,x2,y2]'.")
        head, at, tail = path.rpartition("@")
        if at and re.fullmatch(r"[\d.,\s+eE-]+", tail):
            try:
                box = [float(v) for v in tail.split(",")]
            except ValueError:
                box = []
            if len(box) != 4:
                raise ValueError(f"prompt_images entry {entry!r}: the box after '@' must be 4 numbers x1,y1,x2,y2.")
            out.setdefault(name, []).append((head.strip(), box))
        else:
            out.setdefault(name, []).append(path)
    if not out:
        raise ValueError("prompt_images is empty; e.g. prompt_images=\"dog:dog1.jpg;cat:scene.jpg@10,20,200,220\".")
    return out


def _help(rest: list[str]) -> None:
    """``yw help``: print the usage."""
    print(USAGE)


def _version(rest: list[str]) -> str:
    """``yw version``: print and return the version."""
    import yw_ext

    print(yw_ext.__version__)
    return yw_ext.__version__


def _convert(rest: list[str]) -> Any:
    """``yw convert src.pth [out.pt] [names=...]``: positional paths or key=value."""
    from yw_ext.convert import convert_cli

    pos = [a for a in rest if "=" not in a]
    if len(pos) > 2:
        raise SystemExit(f"yw convert: expected 'src.pth [out.pt]' and key=value options, got {pos}.")
    cargs = parse_args([a for a in rest if "=" in a])
    cargs.update(dict(zip(("src", "out"), pos)))
    out = convert_cli(cargs)
    print(f"yw convert: wrote {out}")
    return out


def _embed(rest: list[str]) -> Any:
    """``yw embed texts="a,b|b2,c" | json=class_texts.json [out=vocab.npz] [clip=...] [batch=256]``."""
    from yw_ext.prompts import embed_texts

    eargs = parse_args(rest)  # checks key=value; the text values are taken verbatim below
    raw = {k.strip(): v for k, v in (t.split("=", 1) for t in rest)}
    eargs.update({k: v for k, v in raw.items() if k in {"texts", "json", "out", "clip"}})
    unknown = set(eargs) - {"texts", "json", "out", "clip", "batch"}
    if unknown:
        raise SystemExit(f"yw embed: unknown argument(s) {sorted(unknown)}; use texts= or json=, out=, clip=.")
    out = embed_texts(eargs.get("texts"), out=eargs.get("out", "vocab.npz"), json=eargs.get("json"),
                      clip=eargs.get("clip"), batch=int(eargs.get("batch", 256)))
    print(f"yw embed: wrote {out}")
    return out


def _bench(rest: list[str]) -> list[dict]:
    """``yw bench [quick=True] [scales=n,s] [imgsz=640] [ks=1,80,1203] [backends=...] [out=...]``."""
    from yw_ext.bench import cli as bench_cli

    return bench_cli(parse_args(rest))


def _demo(rest: list[str]) -> Any:
    """``yw demo [model=l] [port=7860] [host=127.0.0.1] [clip=...] [conf=0.25]``: a local web page."""
    from yw_ext.demo import launch

    try:
        return launch(**parse_args(rest))
    except ImportError as e:  # Gradio not installed: the message says how to install it
        raise SystemExit(f"yw demo: {e}") from None


COMMANDS: dict[str, Callable[[list[str]], Any]] = {
    "help": _help, "-h": _help, "--help": _help, "version": _version, "--version": _version, "convert": _convert,
    "embed": _embed, "bench": _bench, "demo": _demo,
}  # fmt: skip
"""The modes that are not a model mode (``MODES``), each a function of the tokens after the mode."""


def _image_prompt_args(mode: str, args: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Pop and check ``prompt_images`` / ``alpha`` / ``margin`` (before the possibly slow model load)."""
    images, alpha, margin = args.pop("prompt_images", None), args.pop("alpha", None), args.pop("margin", None)
    if images is not None:
        if mode != "predict":
            raise SystemExit(f"yw {mode}: prompt_images=... is available in predict mode only.")
        images = parse_prompt_images(images)
    elif alpha is not None or margin is not None:
        raise SystemExit("yw: alpha=... and margin=... apply to image prompts: add prompt_images=...")
    return images, alpha, margin


def _mode_options(mode: str, args: dict[str, Any], clip: Any) -> None:
    """Hand ``clip`` to the image-prompt trainer / validator and parse ``jitter`` (in place)."""
    if mode == "train" and str(args.get("mode", "")).lower() == "image_prompt":
        if clip is not None:
            args["clip"] = clip  # the CLIP whose image tower encodes the crops (and whose text tower the names)
        if isinstance(args.get("jitter"), str):
            args["jitter"] = tuple(float(v) for v in args["jitter"].split(","))
    if mode == "val" and args.get("image_prompts") is not None and clip is not None:
        args["encoder"] = clip


def _set_vocabulary(model: Any, classes: Any, emb: Any, clip: Any, images: Any, alpha: Any, margin: Any) -> None:
    """``model.set_classes`` from ``classes=`` / ``embeddings=`` / ``prompt_images=`` (nothing when none is given)."""
    if images is not None:
        if emb is not None:
            raise SystemExit("yw: give either embeddings=... or prompt_images=..., not both.")
        names = parse_classes_arg(classes) if classes is not None else list(images)
        model.set_classes(names, images=images, alpha=alpha, margin=margin or 0.0,
                          use_text=classes is not None or alpha is not None, encoder=clip)
    elif classes is not None or emb is not None:
        if classes is None:
            raise SystemExit("yw: embeddings=... needs classes=... (one name per row).")
        model.set_classes(parse_classes_arg(classes), embeddings=emb, encoder=clip)


def _model_mode(mode: str, rest: list[str]) -> Any:
    """``yw predict|train|val|export key=value ...``: load the model, set its vocabulary, run the mode."""
    args = parse_args(rest)
    if mode == "export" and str(args.get("model", "")).lower() in {"clip", "clip-text", "text"}:
        return _export_text(args)
    from yw_ext import YOLOWorld

    images, alpha, margin = _image_prompt_args(mode, args)
    model = YOLOWorld(args.pop("model", "l"))
    classes, clip, emb = args.pop("classes", None), args.pop("clip", None), args.pop("embeddings", None)
    adapter = args.pop("image_adapter", None)
    if adapter is not None:
        model.load_image_adapter(adapter)
    _mode_options(mode, args, clip)
    _set_vocabulary(model, classes, emb, clip, images, alpha, margin)
    if mode == "predict":
        args.setdefault("save", True)
        if "source" not in args:
            from yw_ext.seam import ASSETS

            args["source"] = str(ASSETS)
        return model.predict(**args)
    return {"train": model.train, "val": model.val, "export": model.export}[mode](**args)


def run(argv: list[str]) -> Any:
    """Run one ``yw`` command; returns what the mode returns (results, metrics, export path, benchmark rows).

    Raises:
        SystemExit: an unknown mode or bad arguments (the message says which).

    Examples:
        >>> run(["version"])  # doctest: +SKIP
        0.1.0
        '0.1.0'
    """
    if not argv:
        return _help([])
    mode, rest = argv[0], argv[1:]
    if mode in LATER:
        raise SystemExit(f"yw {mode}: {LATER[mode]} is not available in this version of yw_ext yet.")
    if mode in COMMANDS:
        return COMMANDS[mode](rest)
    if mode not in MODES:
        raise SystemExit(f"yw: unknown mode '{mode}'. Modes: {', '.join(MODES)}. See 'yw help'.")
    return _model_mode(mode, rest)


def _export_text(args: dict[str, Any]) -> str:
    """``yw export model=clip [clip=...] [out=clip_text.onnx] [opset=17] [simplify=True]``: the CLIP text encoder.

    The CLIP source is ``clip=`` or ``$YW_CLIP``; the BPE tokenizer file is written next to the ONNX.
    """
    from yw_ext.export.text import export_text_encoder

    unknown = set(args) - {"model", "clip", "out", "opset", "simplify", "format"}
    if unknown:
        raise SystemExit(f"yw export model=clip: unknown argument(s) {sorted(unknown)}; use clip=, out=, opset=.")
    if str(args.get("format", "onnx")).lower() != "onnx":
        raise SystemExit("yw export model=clip: the text encoder exports to format=onnx only.")
    out = export_text_encoder(args.get("clip"), out=args.get("out"), opset=int(args.get("opset") or 17),
                              simplify=bool(args.get("simplify", True)))
    print(f"yw export: wrote {out}")
    return out


def entrypoint(argv: list[str] | None = None) -> int:
    """Console-script entry point (``yw``): exit code 0 on success, readable message and 2 on bad input.

    Examples:
        >>> entrypoint(["version"])  # doctest: +SKIP
        0.1.0
        0
    """
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except (ValueError, TypeError, FileNotFoundError, SyntaxError, RuntimeError, ImportError) as e:
        print(f"yw: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(entrypoint())
