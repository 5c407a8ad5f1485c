# yw_ext, AGPL-3.0 license
"""Weights hub: weight names and aliases -> URLs, download, local cache and integrity checks.

The table below lists every pretrained file the package knows about:

- ``official``: the MMYOLO checkpoints published by the YOLO-World authors (v1, v2, v2.1; S/M/L/X/XL; 640 and 1280
  px; COCO fine-tuned), hosted on Hugging Face. Each file name ends in the first 8 hex digits of the file's SHA-256
  (MMEngine's publish convention), which is verified after download.
- ``ultralytics``: Ultralytics' migrated ``yolov8{s,m,l,x}-world.pt`` (v1) and ``yolov8{s,m,l,x}-worldv2.pt`` (v2),
  fetched through Ultralytics' ``attempt_download_asset`` (from ``yw_ext.seam``; no URL is hard-coded here).
- ``clip``: the OpenAI CLIP ``ViT-B-32.pt`` file, whose full SHA-256 is part of its URL and is verified.

Files are looked for in the current directory and in :func:`weights_dir` (``$YW_WEIGHTS_DIR``, else
``$XDG_CACHE_HOME/yw_ext/weights``); a file found there is used as is, without any network access and without
re-hashing it (use :func:`verify_file` for that). Downloads go to a temporary file next to the destination and are
moved into place only once complete and verified, so a failed or interrupted download never leaves a file behind.

The module imports neither torch nor Ultralytics: the few Ultralytics names it needs (``attempt_download_asset``,
``SETTINGS``, ``TQDM``, ``GITHUB_ASSETS_REPO``) come from ``yw_ext.seam``, imported inside the functions that use them.

Environment:
    YW_WEIGHTS_DIR: folder where weights are looked for and downloaded to.
    YW_OFFLINE / YOLO_OFFLINE: "1", "true" or "yes" forbids any download.
    YW_HUB_MIRROR: base URL that replaces the scheme and host of the official (and CLIP) URLs, e.g. a mirror.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from glob import escape as glob_escape
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Mapping

from yw_ext.core.log import LOGGER

__all__ = (
    "KNOWN_ALIASES",
    "WeightSpec",
    "WeightsDownloadError",
    "WeightsFetchError",
    "WeightsNotFoundError",
    "download",
    "get_weights",
    "is_offline",
    "list_weights",
    "resolve_alias",
    "verify_file",
    "weight_url",
    "weights_dir",
)

ENV_WEIGHTS_DIR = "YW_WEIGHTS_DIR"
ENV_OFFLINE = ("YW_OFFLINE", "YOLO_OFFLINE")
ENV_MIRROR = "YW_HUB_MIRROR"
SOURCES = frozenset({"official", "ultralytics", "clip"})

_CHUNK = 1 << 20  # 1 MiB read/hash blocks
_TRUTHY = frozenset({"1", "true", "yes"})
_HASH_IN_STEM = re.compile(r"-([0-9a-f]{8,64})$")  # MMEngine / torch.hub convention: name-<sha256 prefix>.ext
_HEX = re.compile(r"^[0-9a-fA-F]+$")


class WeightsDownloadError(OSError):
    """A download failed (HTTP or connection error, short read, hash mismatch); nothing was left at the destination.

    Attributes:
        url (str | None): The URL that was fetched.
        dest (Path | None): The destination file that was NOT written.
        reason (str): Why the download failed.
    """

    url: str | None = None
    dest: Path | None = None
    reason: str = ""


class WeightsNotFoundError(FileNotFoundError):
    """Weights are not available locally and cannot be obtained (unknown name, offline, or failed download)."""


class WeightsFetchError(WeightsNotFoundError, WeightsDownloadError):
    """Raised by :func:`get_weights` when the file is missing locally and its download failed.

    It is both a :class:`WeightsNotFoundError` (the weights are not there) and a :class:`WeightsDownloadError`
    (the download was attempted and failed), so either ``except`` clause catches it.
    """


@dataclass(frozen=True)
class WeightSpec:
    """One known weights file.

    Attributes:
        name (str): File name, also the name it is stored under in the weights folder.
        url (str | None): Download URL; None for Ultralytics assets (fetched by ``attempt_download_asset``).
        sha256_prefix (str | None): Leading hex digits of the file's SHA-256 (the 8 digits in official file names).
        source (str): "official", "ultralytics" or "clip".
        version (str): Model version ("v1", "v2", "v2.1"; "" for non-detector files, the model name for CLIP).
        scale (str): Model scale ("s", "m", "l", "x", "xl"; "" where it does not apply).
        notes (str): Free-form description (training data, resolution, caveats).
        sha256 (str | None): Full SHA-256 where it is published (CLIP).
        task (str): "detect" or "segment" (YOLO-World-Seg: loads as a segmentation model).
    """

    name: str
    url: str | None
    sha256_prefix: str | None
    source: str
    version: str
    scale: str
    notes: str = ""
    sha256: str | None = None
    task: str = "detect"

    def __post_init__(self):
        """Validate the source, the task and the hash fields."""
        if self.task not in ("detect", "segment"):
            raise ValueError(f"WeightSpec {self.name!r}: task must be 'detect' or 'segment', not {self.task!r}")
        if self.source not in SOURCES:
            raise ValueError(f"WeightSpec {self.name!r}: source must be one of {sorted(SOURCES)}, not {self.source!r}")
        for h in (self.sha256_prefix, self.sha256):
            if h is not None and not _HEX.match(h):
                raise ValueError(f"WeightSpec {self.name!r}: hash {h!r} is not hexadecimal")


# ------------------------------------------------------------------------------------------------------------------
# Table of known weights
# ------------------------------------------------------------------------------------------------------------------
_HF = "https://huggingface.co/wondervictor/YOLO-World/resolve/main/"
_HF_V21 = "https://huggingface.co/wondervictor/YOLO-World-V2.1/resolve/main/"
_V1 = "_clip_base_dual_vlpan_2e-3adamw_32xb16_100e_o365_goldg"  # common part of the v1 file names


_SEG = "_dual_vlpan_2e-4_80e_8gpus_"  # common part of the YOLO-World-Seg file names (v1 neck, LVIS-Base fine-tuning)


def _official(name: str, base: str, prefix: str | None, version: str, scale: str, notes: str = "") -> WeightSpec:
    return WeightSpec(name, base + name, prefix, "official", version, scale, notes)


def _official_seg(scale: str, recipe: str, prefix: str, mask_ap: float) -> WeightSpec:
    name = f"yolo_world_seg_{scale}{_SEG}{recipe}_finetune_lvis-{prefix}.pth"
    what = "all modules fine-tuned" if recipe == "allmodules" else "seg head only (detector frozen)"
    notes = f"YOLO-World-Seg, LVIS-Base, {what}; official mask AP {mask_ap} on LVIS val 1.0"
    return WeightSpec(name, _HF + name, prefix, "official", "v1", scale, notes, task="segment")


_TABLE_LIST: tuple[WeightSpec, ...] = (
    # --- official v1 (image-pooling attention), CLIP ViT-B/32 text -------------------------------------------------
    _official(f"yolo_world_s{_V1}_train_pretrained-18bea4d2.pth", _HF, "18bea4d2", "v1", "s", "O365+GoldG, 640 px"),
    _official(f"yolo_world_m{_V1}_train_pretrained-2b7bd1be.pth", _HF, "2b7bd1be", "v1", "m", "O365+GoldG, 640 px"),
    _official(f"yolo_world_l{_V1}_train_pretrained-0e566235.pth", _HF, "0e566235", "v1", "l", "O365+GoldG, 640 px"),
    _official(
        f"yolo_world_l{_V1}_cc3mlite_train_pretrained-7a5eea3b.pth", _HF, "7a5eea3b", "v1", "l",
        "O365+GoldG+CC3M-Lite, 640 px",
    ),
    _official(
        f"yolo_world_x{_V1}_cc3mlite_train_pretrained-8cf6b025.pth", _HF, "8cf6b025", "v1", "x",
        "O365+GoldG+CC3M-Lite, 640 px",
    ),
    # --- official v2 pre-trained ------------------------------------------------------------------------------------
    _official("yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth", _HF, "55b943ea", "v2", "s", "O365+GoldG, 640 px"),
    _official(
        "yolo_world_v2_s_obj365v1_goldg_pretrain_1280ft-fc4ff4f7.pth", _HF, "fc4ff4f7", "v2", "s",
        "O365+GoldG, fine-tuned at 1280 px",
    ),
    _official("yolo_world_v2_m_obj365v1_goldg_pretrain-c6237d5b.pth", _HF, "c6237d5b", "v2", "m", "O365+GoldG, 640 px"),
    _official(
        "yolo_world_v2_m_obj365v1_goldg_pretrain_1280ft-77d0346d.pth", _HF, "77d0346d", "v2", "m",
        "O365+GoldG, fine-tuned at 1280 px",
    ),
    _official("yolo_world_v2_l_obj365v1_goldg_pretrain-a82b1fe3.pth", _HF, "a82b1fe3", "v2", "l", "O365+GoldG, 640 px"),
    _official(
        "yolo_world_v2_l_obj365v1_goldg_pretrain_1280ft-9babe3f6.pth", _HF, "9babe3f6", "v2", "l",
        "O365+GoldG, fine-tuned at 1280 px",
    ),
    _official(
        "yolo_world_v2_l_obj365v1_goldg_cc3mlite_pretrain-ca93cd1f.pth", _HF, "ca93cd1f", "v2", "l",
        "O365+GoldG+CC3M-Lite, 640 px",
    ),
    _official(
        "yolo_world_v2_l_obj365v1_goldg_cc3mv2_pretrain-2f3a4a22.pth", _HF, "2f3a4a22", "v2", "l",
        "O365+GoldG+CC3Mv2, 640 px",
    ),
    _official(
        "yolo_world_v2_l_clip_large_o365v1_goldg_pretrain-8ff2e744.pth", _HF, "8ff2e744", "v2", "l",
        "CLIP ViT-L/14 text (768-d), O365+GoldG, 640 px",
    ),
    _official(
        "yolo_world_v2_l_clip_large_o365v1_goldg_pretrain_800ft-9df82e55.pth", _HF, "9df82e55", "v2", "l",
        "CLIP ViT-L/14 text (768-d), O365+GoldG, fine-tuned at 800 px",
    ),
    _official(
        "yolo_world_v2_x_obj365v1_goldg_cc3mlite_pretrain-8698fbfa.pth", _HF, "8698fbfa", "v2", "x",
        "O365+GoldG+CC3M-Lite, 640 px",
    ),
    _official(
        "yolo_world_v2_x_obj365v1_goldg_cc3mlite_pretrain_1280ft-14996a36.pth", _HF, "14996a36", "v2", "x",
        "O365+GoldG+CC3M-Lite, fine-tuned at 1280 px",
    ),
    _official(
        "yolo_world_v2_xl_obj365v1_goldg_cc3mlite_pretrain-5daf1395.pth", _HF, "5daf1395", "v2", "xl",
        "O365+GoldG+CC3M-Lite, 640 px",
    ),
    # --- official v2 fine-tuned on COCO (closed vocabulary, still VL-PAN) -------------------------------------------
    _official(
        "yolo_world_v2_s_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-492dc329.pth", _HF, "492dc329", "v2",
        "s", "COCO fine-tuned (mask-refine), 80 classes",
    ),
    _official(
        "yolo_world_v2_m_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-69c27ac7.pth", _HF, "69c27ac7", "v2",
        "m", "COCO fine-tuned (mask-refine), 80 classes",
    ),
    _official(
        "yolo_world_v2_l_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-81c701ee.pth", _HF, "81c701ee", "v2",
        "l", "COCO fine-tuned (mask-refine), 80 classes",
    ),
    _official(
        "yolo_world_v2_l_vlpan_bn_sgd_1e-3_40e_8gpus_finetune_coco_ep80-e1288152.pth", _HF, "e1288152", "v2", "l",
        "COCO fine-tuned (SGD), 80 classes",
    ),
    _official(
        "yolo_world_v2_x_vlpan_bn_2e-4_80e_8gpus_mask-refine_finetune_coco_ep80-76bc0cbd.pth", _HF, "76bc0cbd", "v2",
        "x", "COCO fine-tuned (mask-refine), 80 classes",
    ),
    # --- official v2.1 release (there is no s_stage1 and no x_stage2) -----------------------------------------------
    _official("s_stage2-4466ab94.pth", _HF_V21, "4466ab94", "v2.1", "s", "v2.1 pre-training, stage 2"),
    _official("m_stage1-7e1e5299.pth", _HF_V21, "7e1e5299", "v2.1", "m", "v2.1 pre-training, stage 1"),
    _official("m_stage2-9987dcb1.pth", _HF_V21, "9987dcb1", "v2.1", "m", "v2.1 pre-training, stage 2"),
    _official("l_stage1-7d280586.pth", _HF_V21, "7d280586", "v2.1", "l", "v2.1 pre-training, stage 1"),
    _official("l_stage2-b3e3dc3f.pth", _HF_V21, "b3e3dc3f", "v2.1", "l", "v2.1 pre-training, stage 2"),
    _official(
        "x_stage1-62b674ad.pth", _HF_V21, "62b674ad", "v2.1", "x",
        "v2.1 pre-training, stage 1; the official README also links S-640 to this file (apparently a mistake): "
        "the file name says X, check the weights' shapes before trusting the scale",
    ),
    # --- official YOLO-World-Seg (v1 neck), fine-tuned on LVIS-Base; table of the official configs/segmentation ---
    _official_seg("m", "allmodules", "ca465825", 25.9),
    _official_seg("m", "seghead", "7bca59a7", 16.7),
    _official_seg("l", "allmodules", "8c58c916", 28.7),
    _official_seg("l", "seghead", "5a642d30", 19.1),
    # --- official auxiliary files -----------------------------------------------------------------------------------
    _official(
        "clip_vit_b32_coco_80_embeddings.npy", _HF, None, "", "",
        "80x512 CLIP ViT-B/32 text embeddings of the COCO class names (prompt tuning); no hash published",
    ),
    # --- Ultralytics-migrated official weights (GitHub release assets) ----------------------------------------------
    *(
        WeightSpec(f"yolov8{s}-world.pt", None, None, "ultralytics", "v1", s, "official v1 weights, Ultralytics format")
        for s in "smlx"
    ),
    *(
        WeightSpec(
            f"yolov8{s}-worldv2.pt", None, None, "ultralytics", "v2", s, "official v2 weights, Ultralytics format"
        )
        for s in "smlx"
    ),
    # --- OpenAI CLIP (text/image encoder); URL and SHA-256 from the `clip` package's model table ----------------------
    WeightSpec(
        "ViT-B-32.pt",
        "https://openaipublic.azureedge.net/clip/models/"
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        None,
        "clip",
        "ViT-B/32",
        "",
        "OpenAI CLIP ViT-B/32 (TorchScript archive), the text encoder of YOLO-World",
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
    ),
)

_TABLE: dict[str, WeightSpec] = {s.name: s for s in _TABLE_LIST}
assert len(_TABLE) == len(_TABLE_LIST), "duplicate file names in the weights table"

_V2_XL = "yolo_world_v2_xl_obj365v1_goldg_cc3mlite_pretrain-5daf1395.pth"
_ALIASES: dict[str, str] = {
    **{s: f"yolov8{s}-worldv2.pt" for s in "smlx"},  # size letter: official v2 weights (Ultralytics format)
    **{f"v2-{s}": f"yolov8{s}-worldv2.pt" for s in "smlx"},
    **{f"v1-{s}": f"yolov8{s}-world.pt" for s in "smlx"},
    "xl": _V2_XL,
    "v2-xl": _V2_XL,
    "v2.1-s": "s_stage2-4466ab94.pth",  # stage 2
    "v2.1-m": "m_stage2-9987dcb1.pth",  # stage 2
    "v2.1-l": "l_stage2-b3e3dc3f.pth",  # stage 2
    "v2.1-x": "x_stage1-62b674ad.pth",  # stage 1: no x_stage2 was published
    **{f"seg-{s}": f"yolo_world_seg_{s}{_SEG}allmodules_finetune_lvis-{h}.pth" for s, h in (("m", "ca465825"),
                                                                                              ("l", "8c58c916"))},
    **{f"seg-{s}-seghead": f"yolo_world_seg_{s}{_SEG}seghead_finetune_lvis-{h}.pth" for s, h in (("m", "7bca59a7"),
                                                                                                  ("l", "5a642d30"))},
    "clip": "ViT-B-32.pt",
    "ViT-B/32": "ViT-B-32.pt",
    "ViT-B-32": "ViT-B-32.pt",
}
assert all(v in _TABLE for v in _ALIASES.values())

#: Accepted aliases (case-insensitive) -> file name in the weights table.
KNOWN_ALIASES: Mapping[str, str] = MappingProxyType(_ALIASES)
_ALIASES_LOWER = {k.lower(): v for k, v in _ALIASES.items()}
_TABLE_LOWER = {k.lower(): v for k, v in _TABLE.items()}
_STEMS_LOWER = {Path(k).stem.lower(): v for k, v in _TABLE.items()}


def list_weights() -> list[WeightSpec]:
    """Return every known weights file.

    Returns:
        (list[WeightSpec]): The table, official checkpoints first, then Ultralytics assets and CLIP.

    Examples:
        >>> from yw_ext.hub import list_weights
        >>> [w.name for w in list_weights() if w.source == "official" and w.scale == "xl"]
        ['yolo_world_v2_xl_obj365v1_goldg_cc3mlite_pretrain-5daf1395.pth']
    """
    return list(_TABLE_LIST)


def resolve_alias(name: str) -> WeightSpec | None:
    """Map an alias or a known file name to its table entry (case-insensitive).

    Aliases: "s", "m", "l", "x" and "v2-s".."v2-x" -> Ultralytics ``yolov8{size}-worldv2.pt`` (official v2 weights);
    "v1-s".."v1-x" -> ``yolov8{size}-world.pt``; "xl", "v2-xl" -> the official v2 XL checkpoint; "v2.1-s",
    "v2.1-m", "v2.1-l" -> the v2.1 stage-2 files and "v2.1-x" -> ``x_stage1`` (no stage 2 published); "clip",
    "ViT-B/32" -> OpenAI CLIP ``ViT-B-32.pt``; "seg-m", "seg-l" -> the official YOLO-World-Seg files fine-tuned
    in all modules and "seg-m-seghead", "seg-l-seghead" -> those with only the seg head fine-tuned. A file name
    from the table (with or without its extension) also resolves to its entry.

    Args:
        name (str): Alias or file name.

    Returns:
        (WeightSpec | None): The entry, or None when the name is unknown.

    Examples:
        >>> from yw_ext.hub import resolve_alias
        >>> resolve_alias("L").name
        'yolov8l-worldv2.pt'
        >>> resolve_alias("v2.1-x").name
        'x_stage1-62b674ad.pth'
        >>> resolve_alias("nope") is None
        True
    """
    key = str(name).strip().lower()
    if not key:
        return None
    file_name = _ALIASES_LOWER.get(key)
    if file_name is not None:
        return _TABLE[file_name]
    return _TABLE_LOWER.get(key) or _STEMS_LOWER.get(key)


# ------------------------------------------------------------------------------------------------------------------
# Environment
# ------------------------------------------------------------------------------------------------------------------
def weights_dir() -> Path:
    """Return the weights folder, creating it if needed.

    ``$YW_WEIGHTS_DIR`` when set, else ``$XDG_CACHE_HOME/yw_ext/weights`` (``~/.cache/yw_ext/weights`` when
    ``XDG_CACHE_HOME`` is unset or not absolute). If the folder cannot be created (read-only location) the path is
    still returned; a later download into it fails with a clear error.

    Returns:
        (Path): The folder.

    Examples:
        >>> import os
        >>> from yw_ext.hub import weights_dir
        >>> os.environ["YW_WEIGHTS_DIR"] = "/tmp/yw_weights"
        >>> str(weights_dir())
        '/tmp/yw_weights'
    """
    env = os.environ.get(ENV_WEIGHTS_DIR, "").strip()
    if env:
        folder = Path(env).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
        folder = base / "yw_ext" / "weights"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass
    return folder


def is_offline() -> bool:
    """Return True when downloads are forbidden by ``YW_OFFLINE`` or ``YOLO_OFFLINE`` ("1", "true", "yes").

    Returns:
        (bool): Whether the hub must not touch the network.

    Examples:
        >>> import os
        >>> from yw_ext.hub import is_offline
        >>> os.environ["YW_OFFLINE"] = "True"
        >>> is_offline()
        True
    """
    return any(os.environ.get(k, "").strip().lower() in _TRUTHY for k in ENV_OFFLINE)


def _mirrored(url: str) -> str:
    """Replace the scheme and host of ``url`` with ``$YW_HUB_MIRROR`` when it is set."""
    mirror = os.environ.get(ENV_MIRROR, "").strip()
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    tail = parts.path + (f"?{parts.query}" if parts.query else "")
    return mirror.rstrip("/") + tail


def _ultralytics_url(name: str) -> str:
    """The GitHub release URL that ``attempt_download_asset`` fetches for an Ultralytics asset."""
    repo, release = "ultralytics/assets", "latest"
    try:
        from yw_ext.seam import GITHUB_ASSETS_REPO, default_asset_release

        repo = GITHUB_ASSETS_REPO
        release = default_asset_release()
    except Exception:  # pragma: no cover - ultralytics missing or changed
        pass
    return f"https://github.com/{repo}/releases/download/{release}/{name}"


def _ultralytics_weights_dir() -> Path | None:
    """Ultralytics' own weights folder (``SETTINGS["weights_dir"]``), where its users may already have the file."""
    try:
        from yw_ext.seam import SETTINGS

        return Path(SETTINGS["weights_dir"])
    except Exception:  # pragma: no cover
        return None


def weight_url(name: str | WeightSpec) -> str | None:
    """Return the URL a known weights file is downloaded from (``$YW_HUB_MIRROR`` applied).

    Args:
        name (str | WeightSpec): Alias, file name or table entry.

    Returns:
        (str | None): The URL, or None when the name is unknown. For Ultralytics assets, the GitHub release URL that
            ``attempt_download_asset`` uses.

    Examples:
        >>> from yw_ext.hub import weight_url
        >>> weight_url("xl").endswith("yolo_world_v2_xl_obj365v1_goldg_cc3mlite_pretrain-5daf1395.pth")
        True
    """
    spec = name if isinstance(name, WeightSpec) else resolve_alias(name)
    if spec is None:
        return None
    if spec.url is None:
        return _ultralytics_url(spec.name)
    return _mirrored(spec.url)


# ------------------------------------------------------------------------------------------------------------------
# Hashing, download
# ------------------------------------------------------------------------------------------------------------------
def _hash_from_name(file_name: str) -> str | None:
    """The SHA-256 prefix embedded in a file name (``name-<hex>.ext``), if any."""
    m = _HASH_IN_STEM.search(Path(file_name).stem)
    return m.group(1) if m else None


def _check_hex(value: str | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not _HEX.match(value) or len(value) > 64:
        raise ValueError(f"{what} must be hexadecimal (at most 64 digits), got {value!r}")
    return value.lower()


def _hash_problem(digest: str, sha256_prefix: str | None, sha256: str | None) -> str | None:
    """Describe a hash mismatch, or return None when the digest matches what is expected."""
    if sha256_prefix and not digest.startswith(sha256_prefix):
        return (
            f"SHA-256 mismatch: expected prefix {sha256_prefix}, got {digest[: len(sha256_prefix)]} (full: {digest})"
        )
    if sha256 and digest != sha256:
        return f"SHA-256 mismatch: expected {sha256}, got {digest}"
    return None


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, desc: str, enabled: bool):
    if not enabled:
        return _NullBar()
    try:
        from yw_ext.seam import TQDM
    except Exception:  # pragma: no cover - progress is cosmetic
        return _NullBar()
    return TQDM(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)


class _Failure(Exception):
    """Internal: a download problem detected after the transfer (short read, hash mismatch, empty file)."""


def download(
    url: str,
    dest: str | Path,
    sha256_prefix: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying its SHA-256.

    The body is streamed to ``<dest.name>.part-<random>`` in the destination folder while it is hashed, checked
    against Content-Length and the expected hash, then moved to ``dest`` with ``os.replace``. On any failure the
    temporary file is removed and ``dest`` is left untouched (an existing ``dest`` is only replaced on success).
    A KeyboardInterrupt also removes the temporary file and is then re-raised as is.

    Processes that download the same ``dest`` at once take turns on a lock file (``.<dest.name>.lock`` next to it,
    released by the system even when its holder is killed): the first downloads, the others wait and then use the
    file it wrote (re-hashed when a hash is given) instead of downloading it again. Under the lock, ``.part-*``
    files of ``dest`` are leftovers of a killed download and are removed.

    Args:
        url (str): http(s) (or file) URL.
        dest (str | Path): Destination file.
        sha256_prefix (str, optional): Expected leading hex digits of the SHA-256 (e.g. the 8 in official names).
        sha256 (str, optional): Expected full SHA-256.
        progress (bool): Show a progress bar.
        timeout (float): Socket timeout in seconds (connect and each read).

    Returns:
        (Path): ``dest``.

    Raises:
        WeightsDownloadError: On HTTP or connection errors, a short read, an empty body or a hash mismatch; the
            message names the file, the URL, the folder and the reason.
        ValueError: If a hash argument is not hexadecimal.

    Examples:
        >>> from pathlib import Path
        >>> from yw_ext.hub import download
        >>> url = "https://huggingface.co/wondervictor/YOLO-World/resolve/main/clip_vit_b32_coco_80_embeddings.npy"
        >>> path = download(url, Path("weights") / "clip_vit_b32_coco_80_embeddings.npy")  # doctest: +SKIP
    """
    dest = Path(dest).expanduser()
    sha256_prefix = _check_hex(sha256_prefix, "sha256_prefix")
    sha256 = _check_hex(sha256, "sha256")
    before = _file_key(dest)
    with _download_lock(dest):
        if _file_key(dest) not in (None, before) and _hash_ok(dest, sha256_prefix, sha256):
            return dest  # another process downloaded it while this one waited for the lock
        _remove_stale_parts(dest)
        return _fetch(url, dest, sha256_prefix, sha256, progress, timeout)


def _file_key(path: Path) -> tuple | None:
    """Identity of a file's current version (inode, size, mtime), None when it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _hash_ok(path: Path, sha256_prefix: str | None, sha256: str | None) -> bool:
    """True when ``path`` matches the given hashes (always True without one)."""
    if sha256_prefix is None and sha256 is None:
        return True
    return verify_file(path, sha256_prefix, sha256)


def _lock_file(fh, blocking: bool) -> bool:
    """Lock an open file exclusively (``flock`` on POSIX, ``msvcrt.locking`` on Windows); False if busy."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        while True:
            try:
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not blocking:
                    return False
                time.sleep(0.2)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def _download_lock(dest: Path) -> Iterator[None]:
    """Hold ``.<dest.name>.lock`` in ``dest``'s folder, removed again on release (so a finished download leaves only
    ``dest``). A lock taken on a file that its holder has meanwhile removed is dropped and taken again on the new
    one. A folder that cannot hold a lock (read-only, no locking) is used without one; the download then reports any
    real problem with the folder."""
    path = dest.parent / f".{dest.name}.lock"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fh = _acquire(path, dest)
    except OSError as e:  # e.g. a read-only folder or a file system without locks: go on unlocked
        LOGGER.debug(f"no download lock for {dest}: {e}")
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the release: a waiter that gets this file's lock sees it is gone and retries
        fh.close()  # releases the lock


def _acquire(path: Path, dest: Path):
    """Open and lock ``path``, waiting for another holder; retried while the locked file is not the one at ``path``."""
    waited = False
    while True:
        fh = open(path, "a+b")
        try:
            if not _lock_file(fh, blocking=False):
                if not waited:
                    LOGGER.info(f"Waiting for another process that is downloading {dest.name} into {dest.parent} ...")
                    waited = True
                _lock_file(fh, blocking=True)
            if os.path.exists(path) and os.path.samestat(os.fstat(fh.fileno()), os.stat(path)):
                return fh
        except BaseException:
            fh.close()
            raise
        fh.close()  # the holder removed the file on release: lock the current one


def _remove_stale_parts(dest: Path) -> None:
    """Remove ``<dest.name>.part-*`` files: their downloads were killed (a live one would hold the lock)."""
    for part in dest.parent.glob(f"{glob_escape(dest.name)}.part-*"):
        with contextlib.suppress(OSError):
            part.unlink()
            LOGGER.info(f"Removed {part.name}, left by an interrupted download of {dest.name}")


def _fetch(url: str, dest: Path, sha256_prefix: str | None, sha256: str | None, progress: bool, timeout: float) -> Path:
    """Stream ``url`` into a temporary file next to ``dest``, check it, and move it into place (see ``download``)."""
    folder = dest.parent

    def error(reason: str) -> WeightsDownloadError:
        e = WeightsDownloadError(f"Download of '{dest.name}' from {url} into folder {folder} failed: {reason}")
        e.url, e.dest, e.reason = url, dest, reason
        return e

    scheme = urllib.parse.urlsplit(str(url)).scheme.lower()
    if scheme not in {"http", "https", "file"}:
        raise error(f"unsupported URL scheme {scheme!r} (expected http or https)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{dest.name}.part-", dir=folder)
    except OSError as e:
        raise error(f"cannot write to the folder ({e})") from e
    tmp = Path(tmp_name)

    done = False
    try:
        with os.fdopen(fd, "wb") as fh:
            hasher = hashlib.sha256()
            received, total = 0, None
            request = urllib.request.Request(
                url, headers={"User-Agent": "yw_ext-hub (python-urllib)", "Accept-Encoding": "identity"}
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = (response.headers.get("Content-Length") or "").strip()
                total = int(length) if length.isdigit() else None
                bar = _progress_bar(total, f"Downloading {dest.name}", progress)
                try:
                    while True:
                        chunk = response.read(_CHUNK)
                        if not chunk:
                            break
                        fh.write(chunk)
                        hasher.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
                finally:
                    bar.close()
        if total is not None and received != total:
            raise _Failure(f"short read: received {received} of {total} bytes (connection closed early)")
        if received == 0:
            raise _Failure("the server sent an empty body")
        problem = _hash_problem(hasher.hexdigest(), sha256_prefix, sha256)
        if problem:
            raise _Failure(problem)
        os.replace(tmp, dest)
        done = True
    except _Failure as e:
        raise error(str(e)) from None
    except urllib.error.HTTPError as e:
        e.close()
        raise error(f"HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise error(f"cannot connect ({e.reason})") from e
    except Exception as e:  # socket timeout, IncompleteRead, disk full, ...
        raise error(f"{type(e).__name__}: {e}") from e
    finally:
        if not done:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
    return dest


def verify_file(path: str | Path, sha256_prefix: str | None = None, sha256: str | None = None) -> bool:
    """Check a local file's SHA-256 against a prefix and/or a full hash.

    Cached files are not re-hashed on every load (hundreds of MB); call this to check one explicitly. With no hash
    given, the table entry of the same file name is used, else the ``-<hex>`` suffix of the file name.

    Args:
        path (str | Path): File to check.
        sha256_prefix (str, optional): Expected leading hex digits of the SHA-256.
        sha256 (str, optional): Expected full SHA-256.

    Returns:
        (bool): True if the file matches every expected hash.

    Raises:
        FileNotFoundError: If ``path`` is not a file.
        ValueError: If no hash is given and none is known for this file name.

    Examples:
        >>> from yw_ext.hub import get_weights, verify_file
        >>> verify_file(get_weights("xl"))  # doctest: +SKIP
        True
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"verify_file: no such file {path}")
    sha256_prefix = _check_hex(sha256_prefix, "sha256_prefix")
    sha256 = _check_hex(sha256, "sha256")
    if sha256_prefix is None and sha256 is None:
        spec = _TABLE.get(path.name)
        if spec is not None:
            sha256_prefix, sha256 = spec.sha256_prefix, spec.sha256
        else:
            sha256_prefix = _hash_from_name(path.name)
        if sha256_prefix is None and sha256 is None:
            raise ValueError(f"verify_file: no SHA-256 given and none known for '{path.name}'")
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            hasher.update(chunk)
    return _hash_problem(hasher.hexdigest(), sha256_prefix, sha256) is None


# ------------------------------------------------------------------------------------------------------------------
# get_weights
# ------------------------------------------------------------------------------------------------------------------
_OFFLINE_REASON = "offline mode is on (YOLO_OFFLINE or YW_OFFLINE is set)"


def _missing_message(file_name: str, url: str, reason: str) -> str:
    return (
        f"Weights file '{file_name}' is not available locally and {reason}. "
        f"Download it from {url} and put it in {weights_dir()} "
        f"(the weights folder; set {ENV_WEIGHTS_DIR} to use another one), or pass the file's path instead."
    )


def _find_local(file_name: str, extra: tuple[Path | None, ...] = ()) -> Path | None:
    for folder in (Path.cwd(), weights_dir(), *extra):
        if folder is not None and (folder / file_name).is_file():
            return folder / file_name
    return None


def get_weights(name: str | Path, *, url: str | None = None, progress: bool = True) -> Path:
    """Return a local path to weights given a path, an alias or a file name, downloading them if needed.

    Order: an existing file path is returned as is; otherwise the name is resolved (alias or table file name), the
    file is looked for in the current directory and :func:`weights_dir` (a hit involves no network access and no
    re-hashing), and only then downloaded into :func:`weights_dir`, unless ``YW_OFFLINE``/``YOLO_OFFLINE`` is set.
    Ultralytics assets are fetched with ``attempt_download_asset``; other files with :func:`download`, verified
    against the table's hash (or, for names outside the table, the ``-<hex>`` SHA-256 prefix in the file name).
    ``$YW_HUB_MIRROR`` replaces the scheme and host of table URLs; ``url=`` replaces the table URL altogether and
    also allows names that are not in the table.

    Args:
        name (str | Path): File path, alias ("l", "v1-s", "xl", "v2.1-l", "clip", ...), table file name, or URL.
        url (str, optional): Download URL overriding the table's.
        progress (bool): Show a download progress bar.

    Returns:
        (Path): Path of the local file.

    Raises:
        WeightsNotFoundError: Unknown name (the message lists the accepted aliases), or the file is missing and
            offline mode is on; the message names the file, the URL and the folder to put it in.
        WeightsFetchError: The file is missing and its download failed (a subclass of both
            WeightsNotFoundError and WeightsDownloadError), with the same kind of message plus the reason.

    Examples:
        >>> from yw_ext.hub import get_weights
        >>> path = get_weights("l")  # yolov8l-worldv2.pt, official v2 L weights  # doctest: +SKIP
        >>> path = get_weights("v2.1-l")  # official v2.1 L stage-2 checkpoint  # doctest: +SKIP
        >>> url = "https://example.com/my_ckpt-1a2b3c4d.pth"  # verified against the 1a2b3c4d SHA-256 prefix
        >>> path = get_weights("my_ckpt-1a2b3c4d.pth", url=url)  # doctest: +SKIP
    """
    if isinstance(name, Path) or (isinstance(name, str) and name.strip()):
        candidate = Path(str(name).strip()).expanduser()
        if candidate.is_file():
            return candidate
    text = str(name).strip()

    if text.lower().startswith(("http://", "https://")):  # a URL given as the name
        url = url or text
        text = urllib.parse.unquote(urllib.parse.urlsplit(text).path.rsplit("/", 1)[-1])
    spec = resolve_alias(text) if text else None
    file_name = spec.name if spec is not None else Path(text).name

    if spec is None and url is None:
        local = _find_local(file_name) if file_name and Path(file_name).suffix else None
        if local is not None:
            return local
        aliases = ", ".join(KNOWN_ALIASES)
        raise WeightsNotFoundError(
            f"Unknown weights {str(name)!r}: not an existing file, not in {weights_dir()} and not a known name. "
            f"Accepted aliases (case-insensitive): {aliases}; or a file name from yw_ext.hub.list_weights(); "
            f"or pass url= to download it."
        )

    ultralytics_asset = spec is not None and spec.source == "ultralytics" and url is None
    local = _find_local(file_name, (_ultralytics_weights_dir(),) if ultralytics_asset else ())
    if local is not None:
        return local

    dest = weights_dir() / file_name
    if ultralytics_asset:
        source_url = _ultralytics_url(file_name)
        if is_offline():
            raise WeightsNotFoundError(_missing_message(file_name, source_url, _OFFLINE_REASON))
        reason = "the download did not produce the file"
        try:
            from yw_ext.seam import attempt_download_asset

            path = Path(attempt_download_asset(str(dest), progress=progress))
            if path.is_file():
                return path
        except Exception as e:  # ultralytics raises ConnectionError and others
            reason = f"{type(e).__name__}: {e}"
        err = WeightsFetchError(_missing_message(file_name, source_url, f"its download failed ({reason})"))
        err.url, err.dest, err.reason = source_url, dest, reason
        raise err

    if url is not None:
        source_url = url
    else:
        source_url = _mirrored(spec.url)
    if spec is not None and spec.name == file_name:
        sha256_prefix, sha256 = spec.sha256_prefix, spec.sha256
    else:
        sha256_prefix, sha256 = _hash_from_name(file_name), None

    if is_offline():
        raise WeightsNotFoundError(_missing_message(file_name, source_url, _OFFLINE_REASON))
    try:
        return download(source_url, dest, sha256_prefix=sha256_prefix, sha256=sha256, progress=progress)
    except WeightsDownloadError as e:
        err = WeightsFetchError(_missing_message(file_name, source_url, f"its download failed ({e.reason})"))
        err.url, err.dest, err.reason = source_url, dest, e.reason
        raise err from e
