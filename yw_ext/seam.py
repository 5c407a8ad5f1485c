# yw_ext, AGPL-3.0 license
"""The one seam between yw_ext and Ultralytics.

Every Ultralytics name yw_ext uses is imported here and only here (``engine/``, ``nn/``, ``export/``, ``model.py``
and the benchmark harness import it from this module), so an Ultralytics upgrade that moves or renames something
touches this file. Every *private* Ultralytics API yw_ext depends on is called only through a function of this
module and is listed in ``PRIVATE_APIS`` with the Ultralytics version it was checked against;
``tests/test_architecture.py`` resolves each entry and fails naming the symbol when one disappears.

Torch-free modules (``core``, ``runtime``, ``text`` loaders, ``hub``, ``vocab``, the CLI parser) never import this
module at import time: it imports torch and Ultralytics.

Examples:
    >>> from yw_ext import seam
    >>> missing_private_apis()  # [] on the tested Ultralytics range
    []
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import ultralytics
from ultralytics import YOLOWorld as UltralyticsYOLOWorld
from ultralytics.cfg import TASK2DATA, get_cfg, smart_value
from ultralytics.data import YOLOConcatDataset, build_grounding, build_yolo_dataset
from ultralytics.data.dataset import YOLOMultiModalDataset
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, get_split_fraction
from ultralytics.engine.exporter import Exporter, export_formats, try_export
from ultralytics.engine.model import Model
from ultralytics.models.yolo.detect import DetectionPredictor, DetectionTrainer, DetectionValidator
from ultralytics.models.yolo.segment import SegmentationPredictor, SegmentationValidator
from ultralytics.models.yolo.world.train import on_pretrain_routine_end as world_set_classes_callback
from ultralytics.nn.modules import C2fAttn, ImagePoolingAttn, WorldDetect
from ultralytics.nn.modules.block import BNContrastiveHead, Bottleneck, ContrastiveHead, MaxSigmoidAttnBlock
from ultralytics.nn.modules.block import Proto
from ultralytics.nn.modules.conv import Conv
from ultralytics.nn.modules.head import Detect
from ultralytics.nn.tasks import DetectionModel, WorldModel, load_checkpoint, yaml_model_load
from ultralytics.utils import (
    ASSETS,
    ASSETS_URL,
    DATASETS_DIR,
    DEFAULT_CFG,
    DEFAULT_CFG_DICT,
    LOGGER,
    RANK,
    ROOT,
    SETTINGS,
    TQDM,
    YAML,
    checks,
    colorstr,
)
from ultralytics.utils.checks import check_yaml
from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset
from ultralytics.utils.export.engine import best_onnx_opset, modelopt_quantize_onnx, torch2onnx
from ultralytics.utils.export.onnx import onnx_calibration_reader, onnx_int8_quantize
from ultralytics.utils.torch_utils import ModelEMA, get_flops, select_device, unwrap_model
from ultralytics.utils.loss import v8SegmentationLoss
from ultralytics.utils.torch_utils import initialize_weights

try:  # YOLOE (Ultralytics >= 8.3.99): only the benchmark suite's seg rows use it; None where it does not exist
    from ultralytics import YOLOE as UltralyticsYOLOE
except ImportError:  # pragma: no cover - older Ultralytics
    UltralyticsYOLOE = None

ULTRALYTICS_VERSION = ultralytics.__version__

CHECKED_AGAINST = "8.4.190"
"""The Ultralytics version every entry of ``PRIVATE_APIS`` was read and tested against."""

PRIVATE_APIS: dict[str, str] = {
    # symbol (module:qualname)                              what yw_ext uses it for
    "ultralytics.nn.tasks:BaseModel._profile_one_layer": "per-layer profiling in YWDetectionModel.predict",
    "ultralytics.nn.modules.head:Detect._inference": "box decoding of the folded and run-time-vocabulary heads",
    "ultralytics.nn.modules.head:Detect._get_decode_boxes": "the folded head's eager decoding (RepWorldDetect)",
    "ultralytics.engine.model:Model._reset_ckpt_args": "checkpoint arguments of converted official weights",
    "ultralytics.engine.model:Model._check_is_pytorch_model": "refusing set_classes / export on exported models",
    "ultralytics.engine.model:Model._load": "YOLOWorld._load override (checkpoint routing)",
    "ultralytics.engine.trainer:BaseTrainer._setup_train": "prompt / adapter / seghead trainers freeze after it",
    "ultralytics.utils.patches:_image_open": "PIL's unpatched Image.open for exemplar images",
    "ultralytics.utils.downloads:attempt_download_asset": "its `release` default: the assets release to download",
    "ultralytics.utils.dist:generate_ddp_file": "the DDP worker script (trainer rebuilt from vars(trainer.args))",
    "ultralytics.utils.dist:ddp_cleanup": "removing that worker script and its state file",
}
"""Private Ultralytics APIs (and private defaults) yw_ext depends on, each called only from this module."""


def resolve(symbol: str) -> Any:
    """Resolve ``"package.module:Qual.name"`` to the object; raises ``AttributeError`` / ``ImportError`` naming it.

    Examples:
        >>> resolve("ultralytics.nn.modules.head:Detect._inference").__name__
        '_inference'
    """
    module, _, qual = symbol.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        if not hasattr(obj, part):
            raise AttributeError(f"Ultralytics {ULTRALYTICS_VERSION} has no {symbol} (checked against {CHECKED_AGAINST})")
        obj = getattr(obj, part)
    return obj


def missing_private_apis() -> list[str]:
    """The entries of ``PRIVATE_APIS`` the installed Ultralytics lacks (empty when all resolve).

    Examples:
        >>> missing_private_apis()
        []
    """
    missing = []
    for symbol in PRIVATE_APIS:
        try:
            resolve(symbol)
        except (AttributeError, ImportError):
            missing.append(symbol)
    return missing


# --------------------------------------------------------------------------------------------- private calls
@contextlib.contextmanager
def default_head_style() -> Iterator[None]:
    """Build heads with ``Detect.legacy`` at its class default (False), whatever this process built before; restore it.

    Ultralytics' ``parse_model`` writes ``Detect.legacy`` on the class (True after building any YOLOv3/5/8/9 model,
    False after YOLO11) and leaves it there. ``WorldDetect`` inherits it, and ``Detect.__init__`` then builds another
    (soon replaced) ``cv3``: the final network is the same, but its random initialisation draws another stream, so
    the same seed gave other weights depending on what the process had built before (e.g. a ``yolov8n.yaml``).

    Examples:
        >>> with default_head_style():
        ...     assert Detect.legacy is False
    """
    saved = Detect.__dict__.get("legacy", False)
    Detect.legacy = False
    try:
        yield
    finally:
        Detect.legacy = saved


def profile_layer(model: Any, layer: Any, x: Any, dt: list) -> None:
    """``BaseModel._profile_one_layer``: time one layer of ``model`` (``predict(profile=True)``)."""
    model._profile_one_layer(layer, x, dt)


def detect_inference(head: Any, preds: dict) -> Any:
    """``Detect._inference`` on ``head``: decode ``{"boxes", "scores", "feats"}`` to ``(B, 4 + nc, A)``."""
    return Detect._inference(head, preds)


def decode_boxes(head: Any, preds: dict) -> Any:
    """``Detect._get_decode_boxes`` on ``head``: decoded ``(B, 4, A)`` xywh boxes from ``preds["boxes"]``."""
    return Detect._get_decode_boxes(head, preds)


def reset_ckpt_args(args: dict) -> dict:
    """``Model._reset_ckpt_args``: the checkpoint arguments Ultralytics keeps when loading a model."""
    return Model._reset_ckpt_args(args)


def check_is_pytorch_model(model: Any) -> None:
    """``Model._check_is_pytorch_model``: raise Ultralytics' TypeError unless ``model`` wraps a PyTorch model."""
    model._check_is_pytorch_model()


def pil_image_open() -> Any:
    """PIL's ``Image.open`` as it was before Ultralytics patched it (its patch may try to install packages)."""
    from PIL import Image
    from ultralytics.utils import patches

    return getattr(patches, "_image_open", None) or Image.open


def default_asset_release() -> str:
    """The assets release ``attempt_download_asset`` downloads from by default (its ``release`` default)."""
    return inspect.signature(attempt_download_asset).parameters["release"].default


def ddp_worker_file(trainer: Any) -> str:
    """``generate_ddp_file``: write the script a multi-GPU worker runs, as Ultralytics' DDP launch does.

    The worker rebuilds ``type(trainer)`` from ``vars(trainer.args)`` (plus, in the checked version, the pickled
    ``trainer.model`` and callbacks) and calls ``train()``. Returns the script's path; ``ddp_worker_cleanup``
    removes it.

    Examples:
        >>> file = ddp_worker_file(trainer)  # doctest: +SKIP
        >>> subprocess.run([sys.executable, file], check=True)  # doctest: +SKIP
    """
    from ultralytics.utils.dist import generate_ddp_file

    return generate_ddp_file(trainer)


def ddp_worker_cleanup(trainer: Any, file: str) -> None:
    """``ddp_cleanup``: delete the worker script written by ``ddp_worker_file`` and its companion state file."""
    from ultralytics.utils.dist import ddp_cleanup

    ddp_cleanup(trainer, str(file))


__all__ = [name for name in dir() if not name.startswith("_") and name not in {"annotations", "importlib", "inspect"}]
