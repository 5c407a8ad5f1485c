"""Model YAML resolution for yw_ext: file names, scales and the text-embedding width.

yw_ext YAMLs only name modules that Ultralytics' ``parse_model`` already builds (``C2f``, ``C2fAttn``,
``ImagePoolingAttn``, ``WorldDetect``...), so the upstream parser is used unchanged. What this module adds is
the YAML-side bookkeeping that ``parse_model`` cannot do: resolving ``yw-v2-l.yaml`` to ``cfg/models/yw-v2.yaml``
with scale ``l`` (Ultralytics' scale regex only knows ``yolov8l``-style names and no ``xl``), and replacing the
string ``embed_dim`` in layer arguments by the text-embedding width (512 for CLIP ViT-B/32, 768 for ViT-L/14).
"""

from __future__ import annotations

import re
from copy import deepcopy
from pathlib import Path
from typing import Any

EMBED_KEY = "embed_dim"
DEFAULT_EMBED_DIM = 512
_SCALED_NAME = re.compile(r"^(?P<base>.+?)-(?P<scale>n|s|m|l|x|xl)$")


def cfg_dir() -> Path:
    """Return the folder holding yw_ext's ``models/`` and ``datasets/`` YAMLs.

    Examples:
        >>> (cfg_dir() / "models" / "yw-v2.yaml").is_file()
        True
    """
    import yw_ext.cfg as _cfg

    return Path(_cfg.__file__).resolve().parent


def model_yamls() -> list[Path]:
    """List yw_ext's model YAMLs (architectures, one file per family, all scales inside).

    Examples:
        >>> sorted(p.name for p in model_yamls())[:2]
        ['yw-v1.yaml', 'yw-v2-effneck.yaml']
    """
    return sorted((cfg_dir() / "models").glob("*.yaml"))


def resolve_yaml(name: str | Path) -> tuple[Path, str | None]:
    """Find a model YAML and the scale encoded in its name.

    Args:
        name: A path, or a bare name such as ``"yw-v2.yaml"`` / ``"yw-v2-l.yaml"`` looked up in ``cfg/models``.

    Returns:
        (absolute path of the YAML, scale letter from the name or None).

    Raises:
        FileNotFoundError: if no such YAML exists, listing the available ones.

    Examples:
        >>> path, scale = resolve_yaml("yw-v2-l.yaml")
        >>> path.name, scale
        ('yw-v2.yaml', 'l')
    """
    p = Path(name)
    candidates = [p] if p.is_absolute() else [p, cfg_dir() / "models" / p.name]
    for c in candidates:
        if c.is_file():
            return _scale_from_stem(c)
    m = _SCALED_NAME.match(p.stem)
    if m:
        for c in (p.with_name(m.group("base") + p.suffix), cfg_dir() / "models" / (m.group("base") + p.suffix)):
            if c.is_file():
                return c.resolve(), m.group("scale")
    available = ", ".join(q.name for q in model_yamls())
    raise FileNotFoundError(
        f"Model YAML '{name}' not found. yw_ext YAMLs: {available} (add a scale to the name, e.g. 'yw-v2-s.yaml', "
        f"or pass scale=...)."
    )


def _scale_from_stem(path: Path) -> tuple[Path, str | None]:
    """Return (resolved path, scale) for an existing YAML whose stem may end in ``-<scale>``."""
    m = _SCALED_NAME.match(path.stem)
    return path.resolve(), (m.group("scale") if m else None)


def load_model_cfg(
    cfg: str | Path | dict[str, Any], scale: str | None = None, embed_dim: int | None = None
) -> dict[str, Any]:
    """Load a model YAML into the dict that Ultralytics' ``parse_model`` builds, with scale and text width set.

    Idempotent: a dict that was already prepared comes back equal.

    Args:
        cfg: YAML path / name, or a model dict (e.g. ``model.yaml`` of a built model).
        scale: Scale key (``n``, ``s``, ``m``, ``l``, ``x``, ``xl``); overrides the one in the name or dict.
        embed_dim: Text-embedding width D; overrides the YAML's ``embed_dim`` (default 512).

    Returns:
        A new dict with ``scale``, ``embed_dim`` and ``yaml_file`` set and every ``"embed_dim"`` argument replaced.

    Raises:
        ValueError: unknown scale, or a non-positive embed_dim.

    Examples:
        >>> d = load_model_cfg("yw-v2.yaml", scale="s", embed_dim=768)
        >>> d["scale"], d["head"][-1][3]
        ('s', ['nc', 768, True])
    """
    if isinstance(cfg, dict):
        d = deepcopy(cfg)
        name_scale = None
    else:
        from yw_ext.seam import YAML

        s = str(cfg)
        if Path(s).suffix.lower() not in {".yaml", ".yml"}:
            raise ValueError(f"Expected a model YAML (.yaml/.yml), got '{cfg}'.")
        try:
            path, name_scale = resolve_yaml(s)
        except FileNotFoundError:
            from yw_ext.seam import yaml_model_load  # an Ultralytics YAML such as yolov8s-worldv2.yaml

            d = yaml_model_load(s)
            name_scale = d.get("scale") or None
        else:
            d = YAML.load(path)
            d["yaml_file"] = str(path)
    scales = d.get("scales") or {}
    chosen = scale or name_scale or d.get("scale") or None
    if scales:
        if chosen is None:
            chosen = next(iter(scales))
            from yw_ext.seam import LOGGER

            LOGGER.warning(f"yw_ext: no model scale given, assuming scale='{chosen}' (pass scale=... or name it).")
        if chosen not in scales:
            raise ValueError(f"Unknown scale '{chosen}' for {d.get('yaml_file', 'this model')}; choose one of {list(scales)}.")
        d["scale"] = chosen
    width = int(embed_dim if embed_dim is not None else d.get(EMBED_KEY, DEFAULT_EMBED_DIM))
    if width <= 0:
        raise ValueError(f"embed_dim must be a positive integer, got {width}.")
    d[EMBED_KEY] = width
    for layer in d.get("backbone", []) + d.get("head", []):
        layer[3] = [width if a == EMBED_KEY else a for a in layer[3]]
    return d
