"""Validator for yw_ext models: the dataset's classes (with all their prompts) become the vocabulary.

During training the trainer has already given the validated (EMA) model the dataset vocabulary. Standalone
(``YOLOWorld.val(data=...)``, ``yw val``), the model's vocabulary is replaced for the run by the dataset's: display
names from the YAML ``names`` (up to a ``/``), prompts from its ``text_json`` or ``/``-separated names, score = max
over a class's prompts. The model's own vocabulary is restored afterwards.

**LVIS** datasets (a YAML with ``lvis_json:``, or Ultralytics' ``annotations/lvis_v1_<split>.json``; yw_ext ships
``cfg/datasets/lvis.yaml``) are also evaluated with the LVIS API (``yw_ext.eval``): ``fixed_ap=True`` gives the
papers' fixed AP (score >= 0.001, up to 1000 detections per image after NMS, then the top 10,000 per class over the
dataset, no per-image cap), otherwise standard LVIS AP (300 per image). AP, AP50, AP75, APs/m/l, APr/APc/APf are
logged with the images/s of the run and put in ``metrics.lvis``; the evaluated detections (``lvis_predictions.json``)
and per-class AP (``lvis_per_class_ap.csv``) are written to the run folder. The 1,203-class vocabulary is encoded
through the on-disk text cache and, by default, folded into a copy of the network (``fold``), which then runs
without its text path.

Examples:
    >>> from yw_ext import YOLOWorld
    >>> metrics = YOLOWorld("best.pt").val(data="coco128.yaml")  # doctest: +SKIP
    >>> metrics.box.map, metrics.box.map50  # doctest: +SKIP
    >>> YOLOWorld("l").val(data="lvis.yaml", split="minival", fixed_ap=True).lvis["APr"]  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yw_ext.seam import DEFAULT_CFG, LOGGER, DetectionValidator, check_det_dataset, select_device


def packaged_dataset(data: Any) -> Any:
    """A bare dataset YAML name that yw_ext ships (``"lvis.yaml"``) -> its path in ``cfg/datasets``; else unchanged.

    A file of that name in the working directory wins.

    Examples:
        >>> Path(packaged_dataset("lvis.yaml")).parent.name
        'datasets'
        >>> packaged_dataset("coco128.yaml")
        'coco128.yaml'
    """
    if not isinstance(data, (str, Path)) or Path(data).suffix.lower() not in {".yaml", ".yml"}:
        return data
    p = Path(data)
    if p.parent != Path(".") or p.exists():
        return data
    import yw_ext.cfg

    shipped = Path(yw_ext.cfg.__file__).parent / "datasets" / p.name
    return str(shipped) if shipped.is_file() else data


class YWValidator(DetectionValidator):
    """Detection validator (mAP50-95, mAP50, per class) that validates with the dataset's class texts.

    Args:
        dataloader, save_dir, args, _callbacks: as Ultralytics' ``DetectionValidator``.
        fixed_ap: LVIS fixed AP (True), standard LVIS AP (False / None on an LVIS dataset). True on a dataset without
            LVIS annotations raises ``ValueError``. With True, ``max_det`` defaults to 1000 (``FIXED_AP_PER_IMAGE``).
        max_per_class: The fixed-AP cap per class over the dataset (default 10,000).
        fold: Validate a copy of the network with the vocabulary folded into it (RepVL-PAN; faster with many classes).
            None (default): fold for LVIS evaluations. Models that cannot be folded (v1) run unfolded.

    Examples:
        >>> from yw_ext import YOLOWorld
        >>> metrics = YOLOWorld("yw-v2-n.yaml").val(data="coco128.yaml", validator=YWValidator)  # doctest: +SKIP
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, fixed_ap: bool | None = None,
                 max_per_class: int | None = None, fold: bool | None = None) -> None:  # fmt: skip
        """Ultralytics' validator plus the LVIS options."""
        from yw_ext.eval.fixed_ap import FIXED_AP_CONF, FIXED_AP_PER_CLASS, FIXED_AP_PER_IMAGE

        super().__init__(dataloader, save_dir, args, _callbacks)
        self.fixed_ap, self.fold = fixed_ap, fold
        self.max_per_class = int(max_per_class or FIXED_AP_PER_CLASS)
        self.lvis: dict | None = None  # {"json": path, "gt": annotation dict, "ids": {file name: image id}}
        self.lvis_dets: list[np.ndarray] = []
        if fixed_ap:
            if self.args.max_det == DEFAULT_CFG.max_det:
                self.args.max_det = FIXED_AP_PER_IMAGE
            if self.args.conf is None:
                self.args.conf = FIXED_AP_CONF

    def __call__(self, trainer=None, model=None):
        """Run validation; standalone runs first check the dataset and set its vocabulary on the model."""
        if trainer is not None:
            return super().__call__(trainer, model)
        from yw_ext.engine.dataset import check_dataset_available
        from yw_ext.engine.grounding import val_data

        self.args.data = packaged_dataset(val_data(self.args.data))
        check_dataset_available(self.args.data, splits=(self.args.split or "val",))
        self._setup_lvis()
        t0 = time.perf_counter()
        stats = self._validate(model)
        return self._evaluate_lvis(stats, time.perf_counter() - t0) if self.lvis else stats

    def _validate(self, model: Any) -> dict:
        """Ultralytics' validation with the dataset's vocabulary installed (and folded into a copy, see ``fold``)."""
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "install_vocabulary"):
            return super().__call__(None, model)  # a checkpoint path or exported model: its own vocabulary
        if getattr(model, "folded", False):  # re-parameterised: the vocabulary is in the weights
            return super().__call__(None, model)
        self.device = select_device(self.args.device, verbose=False)
        data = check_det_dataset(self.args.data, split=self.args.split)
        from yw_ext.engine.dataset import class_texts, display_names

        names, prompts = display_names(data), class_texts(data)
        snap = None
        if not (list(model.names.values()) == names and (model.class_prompts or [[n] for n in names]) == prompts):
            from yw_ext.vocab import Vocabulary, pad_prompts

            flat, g = pad_prompts(prompts)
            emb, encoder_id = model.encode_text(flat)
            snap = model.snapshot_vocabulary()
            model.install_vocabulary(Vocabulary(names, emb, g, prompts, None, encoder_id))
        try:
            return super().__call__(None, self._folded(model))
        finally:
            if snap is not None:
                model.restore_vocabulary(snap)

    def _folded(self, model: torch.nn.Module) -> torch.nn.Module:
        """A folded copy of ``model`` when ``fold`` asks for it (None: for LVIS runs), else ``model`` itself."""
        if not (self.fold if self.fold is not None else self.lvis is not None):
            return model
        try:
            folded = copy.deepcopy(model).reparameterize()
        except (ValueError, NotImplementedError, TypeError, RuntimeError) as e:  # v1 models, an already fused head
            LOGGER.info(f"yw_ext: validating the unfolded model ({e})")
            return model
        LOGGER.info(f"yw_ext: validating a copy of the network with its {len(model.names)}-class vocabulary folded in")
        return folded

    # ------------------------------------------------------------------------------------------------- LVIS
    def _setup_lvis(self) -> None:
        """Find the split's LVIS annotation JSON, check it and the ``lvis`` package before any inference."""
        from yw_ext.eval.fixed_ap import require_lvis
        from yw_ext.eval.lvis_data import LVIS_JSON_KEY, find_lvis_json, image_key, load_lvis_json

        split = self.args.split or "val"
        data = check_det_dataset(self.args.data, split=self.args.split)
        path = find_lvis_json(data, split)
        if path is None:
            if self.fixed_ap:
                raise ValueError(
                    f"fixed_ap=True needs an LVIS dataset, but '{self.args.data}' (split '{split}') has no LVIS "
                    f"annotations: its YAML has no '{LVIS_JSON_KEY}:' entry and "
                    f"'{Path(data.get('path') or '.') / 'annotations' / f'lvis_v1_{split}.json'}' does not exist. "
                    "Use data=lvis.yaml split=minival (or val), or validate this dataset with fixed_ap=False."
                )
            return
        require_lvis()
        gt = load_lvis_json(path)
        from yw_ext.eval.lvis_data import category_ids

        if len(category_ids(gt)) != len(data["names"]):
            raise ValueError(f"LVIS annotation JSON '{path}' has {len(category_ids(gt))} categories but the dataset "
                             f"'{self.args.data}' has {len(data['names'])} names; they must match (class i = the "
                             "i-th category id in sorted order).")
        self.lvis = {"json": path, "gt": gt, "ids": {image_key(im): int(im["id"]) for im in gt["images"]},
                     "cats": np.asarray(category_ids(gt), dtype=np.float64)}  # fmt: skip

    def init_metrics(self, model: torch.nn.Module) -> None:
        """Ultralytics' metrics; for LVIS runs yw_ext collects the detections itself (Ultralytics' COCO/LVIS JSON
        evaluation is switched off)."""
        super().init_metrics(model)
        if self.lvis is not None and not self.training:
            self.is_coco = self.is_lvis = self.is_custom_json = self.build_gdict = False
            self.gdict = None
            self.args.save_json = True  # Ultralytics then hands every image's scaled boxes to pred_to_json
            self.lvis_dets = []

    def pred_to_json(self, predn: dict, pbatch: dict) -> None:
        """Collect one image's detections ``(n, 7)`` for the LVIS evaluation (other runs: Ultralytics' JSON)."""
        if self.lvis is None or self.training:
            return super().pred_to_json(predn, pbatch)
        name = Path(pbatch["im_file"]).name
        if name not in self.lvis["ids"]:
            raise ValueError(f"image '{pbatch['im_file']}' is not in the LVIS annotation JSON '{self.lvis['json']}'; "
                             "the split's image list and the JSON must hold the same images.")
        b = predn["bboxes"].float().cpu().numpy()  # (n, 4) xyxy, original-image pixels
        n = len(b)
        dets = np.empty((n, 7), dtype=np.float64)  # image_id, category_id, x, y, w, h, score
        dets[:, 0] = self.lvis["ids"][name]
        dets[:, 1] = self.lvis["cats"][predn["cls"].long().cpu().numpy()]
        dets[:, 2:4], dets[:, 4:6] = b[:, :2], b[:, 2:] - b[:, :2]
        dets[:, 6] = predn["conf"].float().cpu().numpy()
        self.lvis_dets.append(dets)

    def _evaluate_lvis(self, stats: dict, seconds: float) -> dict:
        """Run the LVIS API on the collected detections; log, write the JSON / CSV, put the numbers in metrics."""
        from yw_ext.eval.fixed_ap import evaluate_lvis
        from yw_ext.eval.report import summary, write_per_class_csv, write_predictions_json

        files = self.dataloader.dataset.im_files
        image_ids = [self.lvis["ids"][Path(f).name] for f in files if Path(f).name in self.lvis["ids"]]
        dets = np.concatenate(self.lvis_dets) if self.lvis_dets else np.zeros((0, 7))
        dets[:, 2:6] = np.round(dets[:, 2:6], 3)  # as written to the JSON: the file re-evaluates to the same numbers
        kind = "fixed AP" if self.fixed_ap else "AP"
        LOGGER.info(f"\nEvaluating LVIS {kind} with the LVIS API ({self.lvis['json']})...")
        result = evaluate_lvis(self.lvis["gt"], dets, image_ids=image_ids, fixed=bool(self.fixed_ap),
                               max_per_class=self.max_per_class)  # fmt: skip
        ips = len(files) / seconds if seconds > 0 else None
        LOGGER.info(summary(result, images_per_s=ips) + f"  (conf {self.args.conf}, max_det {self.args.max_det} per "
                    f"image after NMS IoU {self.args.iou}; images/s: inference, NMS and data loading, wall clock)")
        out = {"predictions": write_predictions_json(Path(self.save_dir) / "lvis_predictions.json", result.detections),
               "per_class": write_per_class_csv(Path(self.save_dir) / "lvis_per_class_ap.csv", result.per_class)}
        LOGGER.info(f"LVIS predictions: {out['predictions']}\nLVIS per-class AP: {out['per_class']}")
        self.metrics.lvis = {**result.metrics, "fixed_ap": bool(self.fixed_ap), "images_per_s": ips,
                             "files": {k: str(v) for k, v in out.items()}}  # fmt: skip
        self.metrics.lvis_result = result
        stats.update({f"metrics/lvis_{k}": v for k, v in result.metrics.items()})
        return stats
