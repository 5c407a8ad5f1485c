"""The ``yw`` command, Ultralytics style: ``yw MODE key=value ...``.

Examples:
    yw predict model=l source=bus.jpg classes="person,bus"
    yw predict model=yw-v2-s.yaml source=images/ classes="person,car|automobile" conf=0.1
    yw val model=best.pt data=coco128.yaml
    yw val model=l data=lvis.yaml split=minival fixed_ap=True       # LVIS fixed AP, APr/APc/APf (extra: lvis)
    yw train model=l data=coco128.yaml epochs=1 imgsz=320
    yw train model=best.pt data=coco128.yaml mode=prompt init=text adapter=False epochs=20
    yw train model=best.pt data=coco128.yaml mode=image_prompt clip=ViT-B-32.pt crops=32 epochs=10
    yw val model=best.pt data=coco128.yaml image_prompts=32 image_adapter=runs/detect/train/weights/best_adapter.npz
    yw embed texts="person,car|automobile" out=vocab.npz          # or json=class_texts.json; out=x.npy: bare array
    yw export model=best.pt format=onnx dynamic=True                # fixed vocabulary, folded (one input)
    yw export model=best.pt format=onnx dynamic_vocab=True nms=True  # classes set at run time (yw_ext.runtime)
    yw export model=clip clip=ViT-B-32.pt out=clip_text.onnx         # CLIP text encoder (+ BPE file next to it)
    yw export model=text encoder=st-folder out=st_text.onnx          # Sentence-Transformers / M-CLIP (+ tokenizer.json)
    yw predict model=l source=bus.jpg classes="人,公共汽车" encoder=clip-ViT-B-32-multilingual-v1  # any-language prompts
    yw align-text student=minilm-folder json=class_texts.json pairs=pairs.json out=minilm_proj.npz
    yw align-text student=clip-ViT-B-32-multilingual-v1 texts=names.txt check=True  # how close to the detector's CLIP
    yw bench quick=True                                              # benchmarks vs Ultralytics (< 3 min on 2 CPUs)
    yw bench scales=s imgsz=640 ks=80,1203 pairs=10 out=results      # any yw_ext.bench.BenchConfig field as key=value
    yw bench e2e=True scales=s ks=80,1203 pairs=3                   # end-to-end predict over COCO128 val
    yw label source=images/ model=dv.onnx out=labels/ classes="person,car" text_encoder=clip_text.onnx  # Dask
    yw serve model=dv.onnx text_encoder=clip_text.onnx host=127.0.0.1 port=8000 workers=2          # HTTP service

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
            "image_adapter", "jitter", "encoder"}  # fmt: skip
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
    """``yw embed texts="a,b|b2,c" | json=class_texts.json [out=vocab.npz] [encoder=... | clip=...] [batch=256]``."""
    from yw_ext.prompts import embed_texts

    eargs = parse_args(rest)  # checks key=value; the text values are taken verbatim below
    raw = {k.strip(): v for k, v in (t.split("=", 1) for t in rest)}
    eargs.update({k: v for k, v in raw.items() if k in {"texts", "json", "out", "clip", "encoder"}})
    unknown = set(eargs) - {"texts", "json", "out", "clip", "encoder", "batch"}
    if unknown:
        raise SystemExit(f"yw embed: unknown argument(s) {sorted(unknown)}; use texts= or json=, out=, encoder=.")
    if eargs.get("encoder") and eargs.get("clip"):
        raise SystemExit("yw embed: give the text encoder once, as encoder=... (clip=... is its older name).")
    out = embed_texts(eargs.get("texts"), out=eargs.get("out", "vocab.npz"), json=eargs.get("json"),
                      clip=eargs.get("encoder") or eargs.get("clip"), batch=int(eargs.get("batch", 256)))
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


def _align_text(rest: list[str]) -> dict:
    """``yw align-text student=... [teacher=...] texts=... | json=... | pairs=... [out=...] [kind=linear|mlp]
    [epochs=300] [check=True]``: fit (or check) the map from a text encoder to the detector's CLIP space."""
    from yw_ext.text.align import align_text

    keys = {"student", "encoder", "teacher", "clip", "texts", "json", "pairs", "out", "kind", "epochs", "lr", "val",
            "seed", "check", "batch"}
    args = parse_args(rest)
    args.update({k: v for k, v in (t.split("=", 1) for t in rest) if k in {"student", "encoder", "teacher", "clip",
                                                                        "texts", "json", "pairs", "out"}})
    unknown = set(args) - keys
    if unknown:
        raise SystemExit(f"yw align-text: unknown argument(s) {sorted(unknown)}; use student=, teacher=, texts=, "
                         "json=, pairs=, out=, kind=, epochs=, check=.")
    student = args.pop("student", None) or args.pop("encoder", None)
    if student is None:
        raise SystemExit("yw align-text: give the encoder to align as student=PATH.")
    teacher = args.pop("teacher", None) or args.pop("clip", None)
    rep = align_text(student, teacher, texts=args.pop("texts", None), json_file=args.pop("json", None),
                     pairs=args.pop("pairs", None), out=args.pop("out", "text_projection.npz"), **args)
    what = "cosine" if args.get("check") else "held-out cosine"
    print(f"yw align-text: {what} {rep['cosine']:.4f}, top-1 retrieval {rep['retrieval']:.3f} over "
          f"{rep['n_names']} names" + (f"; wrote {rep['out']}" if rep.get("out") else ""))
    return rep


COMMANDS: dict[str, Callable[[list[str]], Any]] = {
    "help": _help, "-h": _help, "--help": _help, "version": _version, "--version": _version, "convert": _convert,
    "embed": _embed, "bench": _bench, "demo": _demo, "align-text": _align_text, "align_text": _align_text,
}  # fmt: skip
"""The modes that are not a model mode (``MODES``), each a function of the tokens after the mode."""


def _plain_args(mode: str, rest: list[str], keep: set[str]) -> dict[str, Any]:
    """``key=value`` tokens of ``yw label`` / ``yw serve`` without Ultralytics (torch-free): numbers, booleans and
    ``None`` are converted, the ``keep`` keys stay strings."""
    import ast

    out: dict[str, Any] = {}
    for tok in rest:
        k, sep, v = tok.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or not k:
            raise SystemExit(f"yw {mode}: argument '{tok}' is not key=value. See 'yw help'.")
        low = v.strip().lower()
        if k in keep:
            out[k] = v
        elif low in {"true", "false", "none"}:
            out[k] = {"true": True, "false": False, "none": None}[low]
        else:
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v
    return out


def _label(rest: list[str]) -> dict[str, Any]:
    """``yw label source=images/ model=dv.onnx out=labels/ classes="person,car" [text_encoder=clip_text.onnx]
    [workers=2 threads=1 | scheduler=tcp://host:8786] [labels=True] [batch=8] [partition_size=64]``: batch
    detection on Dask (``yw_ext.scale.detect_dataset``), Parquet per partition, resumable."""
    from yw_ext.scale import check_extras

    check_extras()  # ImportError naming the pip command; entrypoint prints it (exit code 2)
    from yw_ext.scale import detect_dataset

    keep = {"source", "model", "out", "classes", "embeddings", "prompts", "text_encoder", "clip", "scheduler",
            "prompt_images", "labels", "device", "column"}  # fmt: skip
    args = _plain_args("label", rest, keep)
    for key in ("source", "model", "out"):
        if key not in args:
            raise SystemExit(f"yw label: {key}=... is required (e.g. yw label source=images/ model=dv.onnx "
                             "out=labels/ classes=person,car).")
    if args.get("classes") is not None:
        args["classes"] = parse_classes_arg(args["classes"])
    if args.get("prompt_images") is not None:
        args["images"] = parse_prompt_images(args.pop("prompt_images"))
        args.setdefault("classes", list(args["images"]))
    if isinstance(args.get("labels"), str):
        low = args["labels"].strip().lower()
        args["labels"] = {"true": True, "false": False}.get(low, args["labels"])
    summary = detect_dataset(**args)
    print(f"yw label: {summary['images']} images, {summary['detections']} detections in {summary['computed']} new "
          f"partitions ({summary['skipped']} already done) -> {summary['out']}")
    return summary


def _serve(rest: list[str]) -> None:
    """``yw serve model=dv.onnx [text_encoder=clip_text.onnx] [prompts=id:file.npz,...] [host=127.0.0.1]
    [port=8000] [workers=1] [max_batch=8] [max_wait_ms=5] [threads=...]``: the detection service (yw_ext.serve)."""
    from yw_ext.serve import check_extras

    check_extras()  # ImportError naming the pip command; entrypoint prints it (exit code 2)
    from yw_ext.serve import ServeConfig, serve

    args = _plain_args("serve", rest, {"model", "text_encoder", "prompts", "host", "log_level"})
    if "model" not in args:
        raise SystemExit("yw serve: model=... is required (an ONNX export, dynamic_vocab=True for any classes).")
    prompts = {}
    for entry in filter(None, (e.strip() for e in str(args.pop("prompts", "") or "").split(","))):
        pid, sep, path = entry.partition(":")
        if not sep or not pid or not path:
            raise SystemExit(f"yw serve: prompts entry {entry!r} is not id:file.npz.")
        prompts[pid.strip()] = path.strip()
    run_kw = {k: args.pop(k) for k in ("host", "port", "workers", "log_level") if k in args}
    try:
        config = ServeConfig(prompts=prompts, **args)
    except TypeError as e:
        raise SystemExit(f"yw serve: {e}; keys: model, text_encoder, prompts, host, port, workers, max_batch, "
                         "max_wait_ms, max_image_bytes, max_pixels, max_classes, threads, cache_size.") from None
    serve(config, **{"host": "127.0.0.1", **run_kw})


COMMANDS.update({"label": _label, "serve": _serve})


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
    if mode == "predict" and args.get("encoder") is not None:  # any text encoder (see yw_ext.text.encoders)
        if images is not None:
            raise SystemExit("yw predict: encoder=... is for text prompts; image prompts use clip=... (a CLIP).")
        if clip is not None:
            raise SystemExit("yw predict: give the text encoder once, as encoder=... (or clip=...).")
        clip = args.pop("encoder")
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

    unknown = set(args) - {"model", "clip", "encoder", "out", "opset", "simplify", "format"}
    if unknown:
        raise SystemExit(f"yw export model=clip: unknown argument(s) {sorted(unknown)}; use encoder= (or clip=), "
                         "out=, opset=.")
    if str(args.get("format", "onnx")).lower() != "onnx":
        raise SystemExit("yw export model=clip: the text encoder exports to format=onnx only.")
    out = export_text_encoder(args.get("encoder") or args.get("clip"), out=args.get("out"),
                              opset=int(args.get("opset") or 17),
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
