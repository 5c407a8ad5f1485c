"""``yw_ext.YOLOWorld``: the user-facing model, an Ultralytics ``Model`` with yw_ext's classes and name resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from yw_ext.core.io import atomic_path
from yw_ext.engine.predictor import YWPredictor
from yw_ext.engine.trainer import YWTrainer
from yw_ext.engine.validator import YWValidator
from yw_ext.nn.build import load_model_cfg
from yw_ext.nn.model import YWDetectionModel
from yw_ext.seam import DEFAULT_CFG_DICT, LOGGER, RANK, Model, check_det_dataset, check_is_pytorch_model, reset_ckpt_args

_EXPORTED = {".onnx", ".engine", ".torchscript", ".xml", ".mlpackage", ".tflite", ".pb"}


def resolve_source(model: str | Path) -> str:
    """Turn a user's model argument into a YAML or weights path (downloading known weights when allowed).

    Accepted: a size letter / version alias (``"l"``, ``"v1-l"``, ``"v2-l"``, ``"v2.1-l"``, ``"xl"``), a ``.yaml``
    (yw_ext's ``yw-v2-l.yaml``-style names or Ultralytics' world YAMLs), a ``.pt`` path or known file name, or an
    exported model (``.onnx``, ``.engine``...).

    An official MMYOLO ``.pth`` (a local path, or a known official file name / alias fetched by the hub) is returned
    as is: ``YOLOWorld._load`` converts it (``yw_ext.checkpoints.load_official``).

    Raises:
        yw_ext.hub.WeightsNotFoundError: a known file that is not local and cannot be downloaded.

    Examples:
        >>> resolve_source("yw-v2-s.yaml")  # doctest: +ELLIPSIS
        'yw-v2-s.yaml'
    """
    s = str(model).strip()
    p = Path(s)
    suffix = p.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return s
    if p.is_file():
        return s
    if suffix == ".safetensors":  # yw_ext's own format: always a local file (the hub has none)
        raise FileNotFoundError(f"checkpoint '{s}' does not exist (a .safetensors checkpoint is a local file written "
                                "by model.save('m.safetensors') or yw convert src.pth out.safetensors).")
    from yw_ext import hub

    spec = hub.resolve_alias(s)
    file_name = spec.name if spec else s
    return str(hub.get_weights(file_name))


def _single_image_file(source: Any) -> Path | None:
    """``source`` as a Path when it names one existing file with an image extension, else None."""
    from yw_ext.seam import IMG_FORMATS

    if not isinstance(source, (str, Path)) or "://" in str(source):
        return None
    p = Path(str(source)).expanduser()
    return p if p.suffix[1:].lower() in IMG_FORMATS and p.is_file() else None


def _require_image_read(source: Any, results: Any) -> Any:
    """Raise, naming the file, when ``source`` is one image file and Ultralytics read nothing from it.

    Ultralytics skips an unreadable image with a warning ("Image Read Error"), which suits folders and streams; for
    one explicit file, an empty result hides the problem. Nothing is re-read: the check is on the results (a stream
    raises once exhausted without a result).
    """
    path = _single_image_file(source)
    if path is None:
        return results

    def refuse():
        raise ValueError(f"cannot read image '{path}': it is not an image file, or it is empty, truncated or damaged "
                         "(the decoder read nothing from it).")

    if isinstance(results, list):
        return results if results else refuse()

    def checked():
        n = 0
        for r in results:
            n += 1
            yield r
        if not n:
            refuse()

    return checked()


def _seg_task_map() -> dict[str, Any]:
    """``task_map["segment"]``: yw_ext's seg model, trainer, validator and predictor (imported on use)."""
    from yw_ext.engine.seg_predict import YWSegPredictor, YWSegValidator
    from yw_ext.engine.seg_trainer import YWSegTrainer
    from yw_ext.nn.seg import YWSegmentationModel

    return {"model": YWSegmentationModel, "trainer": YWSegTrainer, "validator": YWSegValidator,
            "predictor": YWSegPredictor}


def _task_of(model: Any) -> str:
    """``"segment"`` for a yw_ext seg network, else ``"detect"``."""
    from yw_ext.nn.seg import YWSegmentationModel

    return "segment" if isinstance(model, YWSegmentationModel) else "detect"


def exported_task(path: str | Path) -> str:
    """The task an exported model declares in its metadata: ``"segment"`` or ``"detect"`` (the default).

    Reads the ONNX ``metadata_props``, an OpenVINO folder's ``metadata.yaml`` or a yw_ext TensorRT engine's header,
    without loading the network, so that ``YOLOWorld("seg.onnx")`` predicts with the segmentation predictor.

    Args:
        path: ``.onnx``, ``.engine``, an OpenVINO ``.xml`` or its ``*_openvino_model`` folder.

    Returns:
        (str): ``"segment"`` when the metadata says so, else ``"detect"``.

    Examples:
        >>> exported_task("yw-v2-seg-n.onnx")  # doctest: +SKIP
        'segment'
    """
    import yaml

    p = Path(path)
    meta: dict = {}
    try:
        if p.suffix.lower() == ".onnx" and p.is_file():
            from yw_ext.export.onnx_io import load_metadata

            meta = load_metadata(p)
        elif p.suffix.lower() == ".engine" and p.is_file():
            from yw_ext.runtime.trt import read_engine_file

            meta = read_engine_file(p)[0]
        elif (p if p.is_dir() else p.parent).joinpath("metadata.yaml").is_file():
            meta = yaml.safe_load((p if p.is_dir() else p.parent).joinpath("metadata.yaml").read_text()) or {}
    except Exception as e:  # an unreadable file fails later, in Ultralytics' loader, with its own message
        LOGGER.debug(f"{p}: no task in its metadata ({e})")
    return "segment" if str(meta.get("task", "")) == "segment" else "detect"


def _seg_trainer(yolo: Any, trainer: Any) -> Any:
    """The trainer for ``yolo``'s task: a seg model fine-tunes with ``YWSegTrainer``; ``seghead`` needs a seg model.

    Raises:
        ValueError: ``mode="seghead"`` on a detection model.
    """
    from yw_ext.engine.seg_trainer import YWSegHeadTrainer, YWSegTrainer

    if isinstance(trainer, type) and issubclass(trainer, YWSegHeadTrainer) and yolo.task != "segment":
        raise ValueError("mode='seghead' trains the mask branch of a YOLO-World-Seg model, but this is a detection "
                         "model: call .to_seg() first (detector weights kept, mask branch new).")
    if yolo.task == "segment" and trainer is YWTrainer:
        return YWSegTrainer
    return trainer


def _pretrained_start(net: torch.nn.Module, pretrained: str | Path) -> torch.nn.Module:
    """The network a run with ``pretrained=<checkpoint>`` starts from: a copy of ``net`` with the checkpoint's tensors.

    The checkpoint is read by yw_ext's loaders (``yw_ext.checkpoints.load_model``: yw_ext / Ultralytics world ``.pt``
    read safely, official ``.pth`` converted, ``.safetensors``; a known weights name or alias is resolved as for
    ``YOLOWorld(...)``), and every tensor that matches by name and shape is copied (Ultralytics' ``load``). A detection
    checkpoint thus fills a seg model's detector, and the mask branch keeps the weights ``net`` has (fresh ones for a
    model built from a YAML). ``net`` is not modified.

    Raises:
        ValueError: no tensor of the checkpoint fits ``net`` (another architecture).

    Examples:
        >>> start = _pretrained_start(YOLOWorld("yw-v2-seg-n.yaml").model, "det.pt")  # doctest: +SKIP
    """
    from copy import deepcopy

    from yw_ext.checkpoints import load_model

    src = load_model(resolve_source(pretrained))
    start = deepcopy(net)
    dst, csd = start.state_dict(), src.state_dict()
    fits = [k for k, v in csd.items() if k in dst and dst[k].shape == v.shape]
    if not fits:
        raise ValueError(f"pretrained='{pretrained}': none of its {len(csd)} tensors fits this model "
                         f"({type(net).__name__} from {getattr(net, 'yaml', {}).get('yaml_file', 'a YAML')}); "
                         "give a checkpoint of the same architecture and scale.")
    start.load(src, verbose=False)
    branch = start.mask_prefixes() if hasattr(start, "mask_prefixes") else ()
    fresh = [k for k in dst if k not in csd and k.startswith(branch)] if branch else []
    other = [k for k in dst if k not in fits and k not in fresh]
    LOGGER.info(f"pretrained={pretrained}: {len(fits)}/{len(dst)} tensors loaded"
                + (f", mask branch not in it ({len(fresh)} tensors, kept as built)" if fresh else "")
                + (f"; {len(other)} kept as built (no match): {other[:3]}" if other else "") + ".")
    return start


class YOLOWorld(Model):
    """YOLO-World open-vocabulary detector on the Ultralytics engine.

    Args:
        model: Size letter or alias (``"l"`` = v2 L weights), a YAML (random weights), a ``.pt`` checkpoint, or an
            exported model.
        scale: Scale for a YAML without one in its name (``n``, ``s``, ``m``, ``l``, ``x``, ``xl``).
        embed_dim: Text-embedding width for a YAML (512 for CLIP ViT-B/32, 768 for ViT-L/14).
        verbose: Print the model summary.

    Examples:
        >>> import yw_ext
        >>> model = yw_ext.YOLOWorld("yw-v2-s.yaml")
        >>> model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
        >>> results = model.predict("bus.jpg", conf=0.25)  # doctest: +SKIP
    """

    def __init__(
        self, model: str | Path = "l", scale: str | None = None, embed_dim: int | None = None, verbose: bool = False
    ) -> None:
        """Resolve the model argument and build or load the model."""
        self._yw_scale, self._yw_embed_dim = scale, embed_dim
        super().__init__(model=resolve_source(model), task="detect", verbose=verbose)

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """yw_ext's model, trainer, validator and predictor classes."""
        return {
            "detect": {
                "model": YWDetectionModel,
                "trainer": YWTrainer,
                "validator": YWValidator,
                "predictor": YWPredictor,
            },
            "segment": _seg_task_map(),
        }

    def _new(self, cfg: str, task: str | None = None, verbose: bool = False) -> None:
        """Build a model with random weights from a YAML (scale and text width resolved by yw_ext)."""
        from yw_ext.nn.seg import YWSegmentationModel, is_seg_cfg

        cfg_dict = load_model_cfg(cfg, scale=self._yw_scale, embed_dim=self._yw_embed_dim)
        self.cfg = cfg
        self.task = "segment" if is_seg_cfg(cfg_dict) else "detect"
        net = YWSegmentationModel if self.task == "segment" else YWDetectionModel
        self.model = net(cfg_dict, verbose=verbose and RANK == -1)
        self.overrides["model"] = self.cfg
        self.overrides["task"] = self.task
        self.model.args = {**DEFAULT_CFG_DICT, **self.overrides}
        self.model.task = self.task
        self.model_name = cfg

    def _load(self, weights: str, task: str | None = None) -> None:
        """Load a ``.pt`` (yw_ext or Ultralytics world), an official ``.pth`` (converted) or a yw_ext ``.safetensors``.

        Exported formats go to Ultralytics.
        """
        from yw_ext.checkpoints import load_official, load_pt, load_safetensors

        suffix = Path(weights).suffix.lower()
        loaders = {".pt": load_pt, ".pth": load_official, ".safetensors": load_safetensors}
        if suffix in loaders:
            self.model, self.ckpt = loaders[suffix](weights)
            self.task = "detect"
            self.overrides = self.model.args = reset_ckpt_args(getattr(self.model, "args", {}) or {})
            self.ckpt_path = getattr(self.model, "pt_path", weights)
            self.model.task = "detect"
        else:
            super()._load(weights, task=exported_task(weights))
        self.task = _task_of(self.model) if isinstance(self.model, torch.nn.Module) else self.task
        if isinstance(self.model, torch.nn.Module):
            self.model.task = self.task
        self.overrides["model"] = weights
        self.overrides["task"] = self.task
        self.model_name = weights

    # ---------------------------------------------------------------- vocabulary
    def set_classes(
        self,
        classes: Any,
        embeddings: Any = None,
        images: dict | None = None,
        alpha: float | None = None,
        margin: float = 0.0,
        use_text: bool = True,
        **kwargs: Any,
    ) -> YOLOWorld:
        """Set the vocabulary: text prompts (CLIP, cached on disk), image prompts, or precomputed embeddings.

        Image prompts use the image tower of the same local CLIP as the text (``$YW_CLIP`` or ``encoder=``: an OpenAI
        ``ViT-B-32.pt`` or a full Hugging Face CLIP folder). With ``n(x) = x / ||x||``:

        - a class's exemplars give ``v = n(mean_j n(CLIP_image(x_j)))`` (CLIP's preprocessing: shortest side to 224
          bicubic, center crop 224, CLIP mean/std);
        - with text (``use_text=True``, default) a class with images gets ``n(alpha * t + (1 - alpha) * v)``, ``t``
          its normalised CLIP text embedding (each synonym fused separately), default ``alpha = 0.5``;
          ``alpha=1``: text only, ``alpha=0``: image only;
        - ``use_text=False``: image-only vocabulary, every class needs images.

        ``model.model.class_sources`` then lists ``"text"`` / ``"image"`` / ``"text+image"`` per class.

        Args:
            classes: Class names; a class may be a list of synonyms whose first item is its name.
            embeddings: Optional ``(K, D)`` / ``(K, G, D)`` tensor, ndarray or ``.npy`` path.
            images: ``{class_name: exemplar or [exemplars]}``: image paths, BGR uint8 ndarrays (as ``cv2.imread``),
                PIL images, or ``(image, [x1, y1, x2, y2])`` to crop a pixel box from a reference scene.
            alpha: Text weight in ``[0, 1]`` for classes with text and images (default 0.5).
            margin: Context around boxes as a fraction of the box width / height (default 0), clipped to the image.
            use_text: Use the class names as text prompts (default); False for image-only classes.
            **kwargs: ``encoder`` (CLIP source or encoder), ``batch``, ``cache`` (see ``YWDetectionModel.set_classes``).

        Returns:
            self, for chaining.

        Raises:
            ValueError / TypeError: empty or duplicate names, non-string names, wrong embedding width, NaN/inf,
                too many prompts; ``images`` keys not in ``classes``; a class with neither text nor images; boxes
                outside the image or without area; unreadable images; a text-only CLIP with images.
            FileNotFoundError: a missing exemplar image or CLIP weights.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.set_classes(["person", ["car", "automobile"]], embeddings=None)  # doctest: +SKIP
            >>> images = {"dog": ["dog1.jpg", ("scene.jpg", [10, 20, 200, 220])]}
            >>> model.set_classes(["dog"], images=images)  # doctest: +SKIP
            >>> model.set_classes(["dog"], images={"dog": "dog1.jpg"}, use_text=False)  # doctest: +SKIP
        """
        check_is_pytorch_model(self)
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError("set_classes needs a PyTorch model; load the .pt file first.")
        if images is not None or not use_text:
            kwargs.update(images=images, alpha=alpha, margin=margin, use_text=use_text)
        elif alpha is not None or margin:
            raise ValueError("alpha= and margin= apply to image prompts: pass images={...} too.")
        self.model.set_classes(classes, embeddings=embeddings, **kwargs)
        self.predictor = None  # the next predict builds a predictor with the new names
        return self

    def _save_vocabulary(self) -> dict:
        """Snapshot of the model's vocabulary (and the predictor built for it), for ``_restore_vocabulary``."""
        return {"model": self.model.snapshot_vocabulary(), "predictor": self.predictor}

    def _restore_vocabulary(self, state: dict) -> None:
        """Put back a vocabulary saved by ``_save_vocabulary``."""
        self.model.restore_vocabulary(state["model"])
        self.predictor = state["predictor"]

    def predict(
        self,
        source: Any = None,
        stream: bool = False,
        predictor: Any = None,
        image_prompts: dict | None = None,
        alpha: float | None = None,
        margin: float = 0.0,
        **kwargs: Any,
    ):
        """Ultralytics ``predict``, optionally with image prompts for this call only (detect by example).

        ``image_prompts={"dog": ["dog1.jpg", ("scene.jpg", [x1, y1, x2, y2])]}`` sets the classes to the dict's keys
        from those exemplars (as ``set_classes(list(image_prompts), images=image_prompts, use_text=False)``), or,
        when ``alpha`` is given, fuses each with its name's text (``use_text=True``, ``n(alpha*t + (1-alpha)*v)``).
        The previous vocabulary (names, embeddings, class sources) and predictor are restored afterwards, also on
        error; with ``stream=True`` when the generator is exhausted or closed.

        Args:
            source: Ultralytics source (path, folder, array, ...).
            stream: Return a generator of Results.
            predictor: Predictor class (Ultralytics argument).
            image_prompts: ``{class_name: exemplar or [exemplars]}`` (see ``set_classes``).
            alpha: Text weight; None (default) = image-only classes.
            margin: Context around exemplar boxes (fraction of box size).
            **kwargs: Ultralytics predict arguments (``conf``, ``imgsz``, ...), and ``encoder`` (CLIP source).

        Returns:
            (list[ultralytics.engine.results.Results]): as Ultralytics, named by the image-prompt classes.

        Raises:
            ValueError: ``source`` is one image file (by its extension) that cannot be decoded (not an image,
                empty, truncated); the message names the file. Folders, globs, lists and streams keep Ultralytics'
                behaviour: an unreadable image is skipped with a warning.

        Examples:
            >>> model = YOLOWorld("l")  # doctest: +SKIP
            >>> prompts = {"bus": [("bus.jpg", [17, 231, 802, 768])]}  # exemplar: a box of another image
            >>> r = model.predict("street.jpg", image_prompts=prompts)  # doctest: +SKIP
            >>> r[0].names  # doctest: +SKIP
            {0: 'bus'}
        """
        if image_prompts is None:
            if alpha is not None or margin:
                raise ValueError("alpha= and margin= apply to image_prompts=...: pass image_prompts={...} too.")
            return _require_image_read(source, super().predict(source, stream=stream, predictor=predictor, **kwargs))
        if not isinstance(image_prompts, dict) or not image_prompts:
            raise ValueError("image_prompts must be a non-empty dict {class_name: exemplar or [exemplars]}.")
        encoder = kwargs.pop("encoder", None)
        check_is_pytorch_model(self)
        saved = self._save_vocabulary()
        try:
            self.set_classes(list(image_prompts), images=image_prompts, alpha=alpha, margin=margin,
                             use_text=alpha is not None, encoder=encoder)
            results = _require_image_read(source, super().predict(source, stream=stream, predictor=predictor, **kwargs))
        except BaseException:
            self._restore_vocabulary(saved)
            raise
        if not stream:
            self._restore_vocabulary(saved)
            return results

        def restoring():
            try:
                yield from results
            finally:
                self._restore_vocabulary(saved)

        return restoring()

    def export(self, **kwargs: Any) -> str:
        """Export for deployment (ONNX, TensorRT, OpenVINO, ...); the model itself is not changed.

        A fixed vocabulary is folded into the weights of a copy first (one input ``images``, a plain detector graph);
        ``dynamic_vocab=True`` keeps the text path with a second input ``txt_feats``: ``(1, P, D)`` for a fixed
        batch (broadcast to the images in the graph), ``(1 or B, P, D)`` with ``dynamic=True``; ``P <=
        yw_ext.vocab.MAX_PROMPTS``. Files are written atomically. See ``yw_ext.export`` for every argument.

        Args:
            **kwargs: Ultralytics export arguments (``format``, ``imgsz``, ``dynamic``, ``nms``, ``quantize`` /
                ``half`` / ``int8``, ``data``, ...) and yw_ext's (``dynamic_vocab``, ``out``, ``trt_nms``,
                ``prompts``, ``max_prompts``, ``default_vocab``, ``calib_images``).

        Returns:
            (str): Path of the exported file or folder.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
            >>> model.export(format="onnx", dynamic=True, imgsz=320)  # doctest: +SKIP
            'yw-v2-n.onnx'
            >>> model.export(format="onnx", dynamic_vocab=True, nms=True)  # doctest: +SKIP
            'yw-v2-n_dynvocab.onnx'
        """
        from yw_ext.export import export_model

        if self.task == "segment":  # YOLO-World-Seg: ONNX with mask coefficients and prototypes (yw_ext.export.seg)
            from yw_ext.export.seg import export_yolo_seg

            return export_yolo_seg(self, **kwargs)
        return export_model(self, **kwargs)

    def reparameterize(self, partial_v1: bool = False) -> YOLOWorld:
        """Fold the current vocabulary exactly into the neck and head weights (RepVL-PAN), in place.

        After folding the model has no text path: it ignores embeddings and ``set_classes`` raises. YOLO-World v1
        models raise unless ``partial_v1=True`` (see ``yw_ext.nn.rep.reparameterize``).

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
            >>> model.reparameterize()  # doctest: +SKIP
        """
        check_is_pytorch_model(self)
        self.model.reparameterize(partial_v1=partial_v1)
        self.predictor = None
        return self

    def to_seg(self, nm: int = 32, npr: int = 256) -> YOLOWorld:
        """A YOLO-World-Seg model started from this detector: same network and weights plus a new mask branch.

        Every detector tensor is copied (the seg head's box, embedding and contrastive branches are the detector's);
        the prototype and mask-coefficient branches start from random weights. The vocabulary, text tower and image
        adapter come along. Train it with ``mode="seghead"`` (mask branch only) or the default (all weights).

        Args:
            nm: Mask coefficients per anchor (= prototypes).
            npr: Prototype hidden width (official: 256 at every scale).

        Returns:
            A new ``YOLOWorld`` (task ``"segment"``); this one is unchanged.

        Raises:
            ValueError: this model is already a seg model, or is re-parameterised (folded).

        Examples:
            >>> seg = YOLOWorld("yw-v2-n.yaml").to_seg()
            >>> seg.task
            'segment'
        """
        import tempfile
        from copy import deepcopy

        from yw_ext.nn.seg import SEG_KEY
        from yw_ext.seam import YAML

        check_is_pytorch_model(self)
        if self.task == "segment":
            raise ValueError("to_seg(): this model is already a YOLO-World-Seg model.")
        if getattr(self.model, "folded", False):
            raise ValueError("to_seg(): this model is re-parameterised (folded); start from the unfolded detector.")
        det = self.model
        d = {**deepcopy(det.yaml), SEG_KEY: [int(nm), int(npr)]}
        d["nc"] = det.model[-1].cv3[0][0].conv.out_channels  # gives the built hidden width max(C0, min(nc, 100))
        src = Path(str(d.get("yaml_file") or "yw-seg.yaml"))
        with tempfile.TemporaryDirectory() as tmp:  # Ultralytics' Model builds from a YAML file name
            path = Path(tmp) / f"{src.stem}-seg.yaml"
            YAML.save(path, {k: v for k, v in d.items() if k != "yaml_file"})
            seg = YOLOWorld(str(path), scale=d.get("scale"), embed_dim=int(det.embed_dim))
        net = seg.model
        net.yaml["yaml_file"] = str(src)
        missing, unexpected = net.load_state_dict(det.state_dict(), strict=False)
        branch = tuple(f"model.{len(net.model) - 1}.{b}." for b in ("proto", "cv5"))
        new = [k for k in missing if not k.startswith(branch)]
        if new or unexpected:
            raise RuntimeError(f"to_seg(): the detector's tensors do not fit the seg network: {(new + unexpected)[:5]}")
        for k in ("text_encoder_state", "image_adapter_state"):
            setattr(net, k, getattr(det, k, None))
        if det.vocab is not None:
            net.install_vocabulary(det.vocab)
        seg.overrides["model"] = seg.cfg = seg.model_name = path.name
        return seg

    @property
    def vocabulary(self) -> list[str]:
        """The current class names."""
        return list(self.model.names.values())

    def save_prompts(self, path: str | Path) -> Path:
        """Write the current vocabulary as a prompt file (``.npz``, atomically; see ``yw_ext.prompts``).

        Holds names, embeddings (``(K, D)`` or ``(K, G, D)`` with synonyms), class prompts and sources, the encoder
        identities, and for prompt-tuned vocabularies the raw embeddings, adapter weights and the detector reference
        (checkpoint path and hash of its tensors).

        Raises:
            ValueError: no vocabulary set, or the model is re-parameterised.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> _ = model.set_classes(["person", "bus"], embeddings=torch.randn(2, 512))
            >>> model.save_prompts("vocab.npz")  # doctest: +SKIP
            PosixPath('vocab.npz')
        """
        from yw_ext.prompts import save_model_prompts

        check_is_pytorch_model(self)
        return save_model_prompts(self.model, path)

    def load_prompts(self, path: str | Path, names: list[str] | None = None) -> YOLOWorld:
        """Use a prompt file (``save_prompts``, ``yw embed``, prompt tuning) as the vocabulary.

        The embeddings go through ``set_vocabulary``, so predict, val, ``reparameterize()`` and export use them.
        A file tuned with another detector (its recorded hash differs) loads with a warning.

        Args:
            path: The ``.npz`` prompt file.
            names: Display names to use instead of the file's (same number of classes).

        Returns:
            self, for chaining.

        Raises:
            yw_ext.prompts.PromptFileError (a ValueError): not a prompt file, embedding width not the model's, ``names``
                of another length, NaN/inf values.
            FileNotFoundError: no such file.

        Examples:
            >>> model = YOLOWorld("best.pt")  # doctest: +SKIP
            >>> model.load_prompts("runs/detect/train/weights/best_prompts.npz")  # doctest: +SKIP
            >>> model.predict("bus.jpg")  # doctest: +SKIP
        """
        from yw_ext.prompts import apply_prompts

        check_is_pytorch_model(self)
        apply_prompts(self.model, path, names=names)
        self.predictor = None  # the next predict builds a predictor with the new names
        return self

    def load_image_adapter(self, path: str | Path | None) -> YOLOWorld:
        """Use a trained image-prompt adapter (``train(mode="image_prompt")``'s ``best_adapter.npz``); None removes it.

        Later ``set_classes(..., images=...)`` / ``predict(image_prompts=...)`` calls map each exemplar's CLIP
        embedding ``u`` through it: ``A(u) = n(u + MLP(u))``. The current vocabulary is not changed. The adapter
        is pickled with the model, so ``save()`` keeps it.

        Raises:
            FileNotFoundError: no such file.
            yw_ext.image_adapter.AdapterFileError (a ValueError): not an adapter file, broken tensors, or an adapter
                for another embedding width.

        Examples:
            >>> model = YOLOWorld("best.pt")  # doctest: +SKIP
            >>> model.load_image_adapter("runs/detect/train/weights/best_adapter.npz")  # doctest: +SKIP
            >>> model.set_classes(["dog"], images={"dog": "dog.jpg"}, use_text=False)  # doctest: +SKIP
        """
        from yw_ext.image_adapter import install_adapter
        from yw_ext.prompts import detector_hash

        check_is_pytorch_model(self)
        state = install_adapter(self.model, path)
        if state and state.get("detector_sha256") and state["detector_sha256"] != detector_hash(self.model):
            LOGGER.warning(f"the image adapter {path} was trained with another detector "
                           f"(sha256 {state['detector_sha256'][:12]}...); it may not fit this one.")
        return self

    # ---------------------------------------------------------------- training / validation
    def train(self, trainer: Any = None, mode: str | None = None, grounding_data: Any = None, **kwargs: Any):
        """Train with Ultralytics' trainer machinery (same arguments: ``data``, ``epochs``, ``imgsz``, ``freeze``...).

        Args:
            trainer: A trainer class to use instead of the one ``mode`` picks.
            mode: Training mode from ``yw_ext.engine.modes`` (default ``"finetune"``: all weights train).
            grounding_data: Grounding datasets (mdetr JSON, e.g. Flickr30k / GQA) trained together with ``data`` to
                keep zero-shot ability: ``{"img_path": ..., "json_file": ...}`` or a list of them.
            **kwargs: Ultralytics training arguments. ``data`` may name a ``text_json`` class-text file in its YAML.
                With ``mode="prompt"`` also ``init`` (``"text"``, ``"image"``, ``"vocabulary"``, ``"random"`` or a
                ``.npy`` / ``.npz`` path) and ``adapter`` (bool): see ``yw_ext.engine.prompt_trainer``. With
                ``mode="image_prompt"`` also ``crops`` (validation exemplars per class, default 32), ``clip`` (CLIP
                source) and ``jitter`` (default ``(0.8, 1.5)``): see ``yw_ext.engine.image_prompt_trainer``.
                ``resume=True`` on a ``last.pt`` (or ``resume="last.pt"``) continues that run in the mode it was
                started in (``finetune`` or ``rep``; ``prompt`` / ``image_prompt`` runs cannot be resumed).
                ``pretrained="det.pt"`` starts from that checkpoint's tensors (any file or name ``YOLOWorld`` loads,
                read by yw_ext's loaders), matched by name and shape: on a seg model built from a seg YAML, a
                detection checkpoint gives the detector and the mask branch starts fresh.

        Returns:
            Validation metrics of best.pt (``DetMetrics``); the model is then best.pt, with the dataset vocabulary.
            With ``mode="prompt"`` the model keeps its detector, unchanged, and takes the vocabulary of
            ``weights/best_prompts.npz`` (no ``.pt`` is written). With ``mode="image_prompt"`` it also takes the
            trained image adapter (``weights/best_adapter.npz``), used by later ``set_classes(images=...)`` calls.

        Raises:
            ValueError: unknown ``mode`` (the message lists the modes); class-text JSON of the wrong length; bad
                grounding JSON. ``NotImplementedError`` for a registered mode that is not available yet.
            FileNotFoundError: dataset images missing and not downloadable (offline), missing grounding files.

        Examples:
            >>> model = YOLOWorld("yw-v2-n.yaml")
            >>> model.train(data="coco128.yaml", epochs=1, imgsz=320)  # doctest: +SKIP
            >>> model.train(data="coco128.yaml", grounding_data=[{"img_path": "flickr/images",
            ...             "json_file": "flickr/final_flickr_separateGT_train.json"}], freeze=10)  # doctest: +SKIP
            >>> model.train(data="coco128.yaml", mode="prompt", init="random", adapter=True)  # doctest: +SKIP
            >>> model.train(data="coco128.yaml", mode="image_prompt", clip="ViT-B-32.pt")  # doctest: +SKIP
            >>> YOLOWorld("yw-v2-seg-s.yaml").train(data="my-seg.yaml", pretrained="det.pt")  # doctest: +SKIP
        """
        from yw_ext.engine.grounding import mixed_data
        from yw_ext.engine.modes import get_trainer, resume_mode

        if trainer is not None and mode is not None:
            raise ValueError("give either trainer=... or mode=..., not both.")
        if trainer is None and mode is None and kwargs.get("resume"):  # continue in the mode the run was started in
            mode = resume_mode(kwargs["resume"], self.ckpt)
        trainer = trainer or get_trainer(mode)
        trainer = _seg_trainer(self, trainer)
        if getattr(trainer, "tunes_prompts", False):  # prompt / image_prompt: the detector stays this object, unchanged
            from yw_ext.engine.prompt_trainer import train_prompts

            if isinstance(kwargs.get("pretrained"), (str, Path)):
                raise ValueError(f"pretrained= does not apply to mode='{getattr(trainer, 'mode_name', 'prompt')}', "
                                 "which tunes prompts for this model's own detector: load the detector first, "
                                 f"YOLOWorld('{kwargs['pretrained']}').")
            if grounding_data is not None:
                raise ValueError(f"mode='{getattr(trainer, 'mode_name', 'prompt')}' trains against the dataset's "
                                 "classes with the detector frozen; grounding_data needs the text path of "
                                 "mode='finetune'.")
            return train_prompts(self, trainer, **kwargs)
        for key, where in (("init", "prompt"), ("adapter", "prompt"), ("crops", "image_prompt"),
                           ("clip", "image_prompt"), ("jitter", "image_prompt")):
            if key in kwargs:
                raise ValueError(f"{key}= applies to mode='{where}' (or drop {key}=).")
        if grounding_data is not None:
            kwargs["data"] = mixed_data(kwargs.get("data") or self.overrides.get("data"), grounding_data)
        own, start = self.model, None
        if isinstance(kwargs.get("pretrained"), (str, Path)) and not kwargs.get("resume"):
            check_is_pytorch_model(self)  # yw_ext's loaders read it (Ultralytics' would not convert or read safely)
            start, kwargs["pretrained"] = _pretrained_start(self.model, kwargs["pretrained"]), True
        had_ckpt = self.ckpt
        if not self.ckpt and isinstance(self.model, torch.nn.Module):
            # A model built from a YAML here (scale / embed_dim resolved by yw_ext): make Model.train hand it to the
            # trainer (get_model(cfg=model.yaml, weights=model)) instead of rebuilding from the bare YAML name.
            self.ckpt = {"yw_ext": "model built from YAML"}
        try:
            self.model = start if start is not None else self.model  # Model.train seeds the run from self.model
            return super().train(trainer=trainer, **kwargs)
        finally:
            if self.ckpt == {"yw_ext": "model built from YAML"}:
                self.ckpt = had_ckpt
            if start is not None and self.model is start:  # failed before the trainer took the model over
                self.model = own

    def val(self, validator: Any = None, image_prompts: int | None = None, fixed_ap: bool | None = None,
            max_per_class: int | None = None, fold: bool | None = None, **kwargs: Any):  # fmt: skip
        """Validate on a dataset (mAP50-95, mAP50, per class) with its classes, prompts and ``text_json`` synonyms.

        The model's own vocabulary is restored afterwards. A mixed ``data`` dict validates on its ``val`` dataset.
        LVIS datasets (``data="lvis.yaml"``, yw_ext's ``cfg/datasets/lvis.yaml``) are also evaluated with the LVIS API:
        AP, AP50, AP75, APs/m/l, APr/APc/APf in ``metrics.lvis``, the detections and per-class AP written to the run
        folder (``lvis_predictions.json``, ``lvis_per_class_ap.csv``); see ``yw_ext.engine.validator``.

        Args:
            validator: A validator class to use instead of yw_ext's.
            image_prompts: Validate with image prompts instead of text, as the official image-prompt evaluation:
                each class's prompt is ``n(mean_j A(u_j))`` over ``image_prompts`` ground-truth boxes drawn (seeded by
                ``seed``) from the dataset's *train* split, ``u_j`` the CLIP image embedding of a crop and ``A`` the
                model's trained image adapter (identity without one); classes with no box keep their text.
            fixed_ap: LVIS fixed AP as the papers report it (score >= 0.001, up to 1000 detections per image, the
                top 10,000 per class over the dataset, no per-image cap); False / None: standard LVIS AP (300 per
                image). True on a dataset without LVIS annotations raises ``ValueError``.
            max_per_class: The fixed-AP cap per class (default 10,000).
            fold: Validate a vocabulary-folded copy of the network (default: for LVIS evaluations).
            **kwargs: Ultralytics validation arguments (``data``, ``imgsz``, ``batch``, ...); ``encoder`` (CLIP
                source) and ``seed`` with ``image_prompts``.

        Examples:
            >>> metrics = YOLOWorld("best.pt").val(data="coco128.yaml")  # doctest: +SKIP
            >>> metrics.box.map50  # doctest: +SKIP
            >>> YOLOWorld("best.pt").val(data="coco128.yaml", image_prompts=32).box.map  # doctest: +SKIP
            >>> YOLOWorld("l").val(data="lvis.yaml", split="minival", fixed_ap=True).lvis["APr"]  # doctest: +SKIP
        """
        from functools import partial

        from yw_ext.engine.grounding import is_mixed, val_data
        from yw_ext.engine.validator import packaged_dataset

        if fixed_ap is not None or max_per_class is not None or fold is not None:
            validator = partial(validator or YWValidator, fixed_ap=fixed_ap, max_per_class=max_per_class, fold=fold)
        if kwargs.get("data") is not None:
            kwargs["data"] = packaged_dataset(val_data(kwargs["data"]))
        elif is_mixed(self.overrides.get("data")):  # trained on detection + grounding data: validate on its val set
            kwargs["data"] = val_data(self.overrides["data"])
        if image_prompts is None:
            for key in ("encoder", "seed"):
                if key in kwargs:
                    raise ValueError(f"{key}= applies to validation with image prompts: pass image_prompts=N too.")
            return super().val(validator=validator, **kwargs)
        return self._val_image_prompts(validator, image_prompts, **kwargs)

    def _val_image_prompts(self, validator: Any, n: int, encoder: Any = None, seed: int = 0, **kwargs: Any):
        """``val(image_prompts=n)``: the dataset's classes from training crops (then the old vocabulary is restored)."""
        from yw_ext.engine.dataset import check_dataset_available, class_texts, display_names
        from yw_ext.engine.image_prompt_trainer import image_prompt_val_exemplars

        check_is_pytorch_model(self)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"image_prompts (exemplar boxes per class) must be a positive integer, got {n!r}.")
        if getattr(self.model, "folded", False):
            raise ValueError("this model is re-parameterised: its vocabulary is folded into its weights, so it cannot "
                             "be validated with image prompts. Use the unfolded model.")
        data_arg = kwargs.get("data") or self.overrides.get("data")
        if not data_arg:
            raise ValueError("val(image_prompts=...) needs data=... (the exemplars come from its train split).")
        check_dataset_available(data_arg, splits=("train", kwargs.get("split") or "val"))
        data = check_det_dataset(data_arg)
        names, prompts = display_names(data), class_texts(data)
        refs = image_prompt_val_exemplars(data, names, n, seed, imgsz=kwargs.get("imgsz") or 640)
        state = self._save_vocabulary()
        try:
            first = dict(zip(names, (p[0] for p in prompts)))  # set_classes names a class by its first prompt
            if not refs:
                LOGGER.warning(f"val(image_prompts={n}): the train split has no usable boxes; validating with text.")
            img = {"images": {first[k]: v for k, v in refs.items()}, "alpha": 0.0} if refs else {}
            # alpha=0: classes with boxes are image-only, the others keep their text
            self.set_classes([p if len(p) > 1 else p[0] for p in prompts], encoder=encoder, **img)
            self.model.names = dict(enumerate(names))  # the dataset's display names, as the validator expects
            return super().val(validator=validator, **kwargs)
        finally:
            self._restore_vocabulary(state)

    def save(self, filename: str | Path = "saved_model.pt") -> None:
        """Save like Ultralytics' ``Model.save``, atomically (temporary file in the same folder, then rename).

        A ``.safetensors`` name writes yw_ext's safe format instead (tensors + JSON metadata: architecture,
        vocabulary, folded flag; nothing pickled, nothing runs on load; see ``yw_ext.checkpoints.safetensors_io``).
        ``YOLOWorld("m.safetensors")`` restores the same model. ``.pt`` stays Ultralytics' (pickled) format.

        Examples:
            >>> YOLOWorld("yw-v2-n.yaml").save("n.pt")  # doctest: +SKIP
            >>> YOLOWorld("yw-v2-n.yaml").save("n.safetensors")  # doctest: +SKIP
        """
        if Path(filename).suffix.lower() == ".safetensors":
            from yw_ext.checkpoints import save_safetensors

            check_is_pytorch_model(self)
            save_safetensors(self.model, filename)
            return
        with atomic_path(filename) as tmp:
            super().save(tmp)
