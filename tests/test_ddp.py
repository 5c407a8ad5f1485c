"""Multi-GPU (DDP) round trip on CPU: the worker Ultralytics launches trains what the parent would have trained.

Ultralytics' DDP launch writes a worker script (``generate_ddp_file``, through ``seam.ddp_worker_file``) that rebuilds
the trainer from ``vars(trainer.args)`` and runs it. Here the parent's ``_do_train`` is replaced by exactly that
(write the script, run it as a plain subprocess with ``RANK`` unset, environment passed through), so one epoch runs
in the worker; a callback (pickled with the trainer's callbacks) records what the worker built. The checks: same
architecture, vocabulary (names, prompts, embeddings) and training images (grounding included) as the parent's.
A trainer rebuilt from the arguments alone (no pickled model) builds the same model too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import yw_ext
from tests.test_resume import TRAIN, run_data  # noqa: F401  (run_data: the shared fixture)
from yw_ext import seam
from yw_ext.engine.dataset import display_names
from yw_ext.engine.trainer import RUN_KEYS, YWTrainer
from yw_ext.vocab import pad_prompts

WORKER_RECORD = "worker_record.json"


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    """Every parameter and buffer name with its shape."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def train_images(dataset) -> list[str]:
    """The image files a (possibly concatenated) training dataset reads."""
    parts = getattr(dataset, "datasets", [dataset])
    return sorted(str(Path(f).resolve()) for d in parts for f in d.im_files)


def record_worker(trainer) -> None:
    """``on_train_start`` callback (it runs only in the worker here): what the worker is about to train."""
    model = trainer.model
    out = {"pid": os.getpid(), "layers": len(model.model), "shapes": shapes(model), "embed_dim": model.embed_dim,
           "names": display_names(trainer.data), "class_texts": trainer.data["class_texts"],
           "images": train_images(trainer.train_loader.dataset), "texts": sorted(trainer.text_embeddings),
           "run_keys": {k: getattr(trainer.args, k) for k in RUN_KEYS}}
    Path(trainer.save_dir, WORKER_RECORD).write_text(json.dumps(out))


def expected_images(run_data: dict) -> list[str]:
    """The detection subset's images and the grounding JSON's images."""
    det = Path(run_data["yaml"]).parent / "subset" / "images" / "train"
    folder = Path(run_data["grounding"]["img_path"])
    listed = json.loads(Path(run_data["grounding"]["json_file"]).read_text())["images"]
    grounding = [folder / im["file_name"] for im in listed]
    return sorted(str(p.resolve()) for p in [*det.iterdir(), *grounding])


@pytest.mark.slow
def test_ddp_worker_trains_what_the_parent_would(env, run_data, monkeypatch):
    parent: dict = {}

    def launch(trainer) -> None:  # BaseTrainer.train's DDP branch, with the worker run here as a plain process
        parent.update(trainer=trainer, shapes=shapes(trainer.model), args=dict(vars(trainer.args)))
        file = seam.ddp_worker_file(trainer)
        try:
            env_vars = {k: v for k, v in os.environ.items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE"}}
            run = subprocess.run([sys.executable, file], env=env_vars, capture_output=True, text=True)
            assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
        finally:
            seam.ddp_worker_cleanup(trainer, file)

    monkeypatch.setattr(YWTrainer, "_do_train", launch)
    model = yw_ext.YOLOWorld("yw-v2.yaml", scale="n", embed_dim=512)  # scale and width given apart from the name
    model.add_callback("on_train_start", record_worker)
    model.train(data=run_data["yaml"], grounding_data=[run_data["grounding"]], epochs=1,
                project=str(env / "runs"), name="ddp", **TRAIN)
    trainer = parent["trainer"]
    worker = json.loads((Path(trainer.save_dir) / WORKER_RECORD).read_text())
    assert worker["pid"] != os.getpid()
    assert parent["args"]["yw_scale"] == "n" and parent["args"]["yw_embed_dim"] == 512
    assert parent["args"]["yw_mode"] == worker["run_keys"]["yw_mode"] == "finetune"

    # architecture: the worker trained the parent's model, and best.pt (written by the worker) has it
    assert worker["layers"] == len(trainer.model.model) and worker["embed_dim"] == 512
    assert worker["shapes"] == parent["shapes"] == shapes(model.model)
    assert model.model.yaml["scale"] == "n" and model.model.embed_dim == 512

    # data: detection subset + grounding images, and every class prompt and grounding phrase embedded
    assert worker["images"] == expected_images(run_data)
    assert worker["class_texts"] == run_data["texts"] and worker["names"] == run_data["names"]
    flat, _ = pad_prompts(run_data["texts"])
    assert set(flat) <= set(worker["texts"]) and any(t.startswith("the ") for t in worker["texts"])
    assert worker["run_keys"]["yw_text_encoder"] == os.environ["YW_CLIP"]

    # vocabulary: the worker's checkpoint holds the dataset's names, synonyms, and the parent's encoder's embeddings
    assert model.vocabulary == run_data["names"] and model.model.class_prompts == run_data["texts"]
    want = trainer.encode(flat).float().cpu()  # (K * G, D), the parent's encoder
    assert torch.allclose(model.model.txt_feats[0].float(), want, atol=1e-3)


class _Built(Exception):
    """Raised instead of training: the trainer and its model are built."""


@pytest.mark.parametrize("mode, width", [("finetune", 768), ("rep", 512)])
def test_trainer_rebuilt_from_args_alone_builds_the_same_model(env, run_data, monkeypatch, mode, width):
    """Without the pickled model (Ultralytics' DDP files before 8.4 held only the args), the args must be enough."""

    def stop(self):
        raise _Built

    monkeypatch.setattr(YWTrainer, "train", stop)
    model = yw_ext.YOLOWorld("yw-v2.yaml", scale="s", embed_dim=width)  # not the YAML's first scale
    with pytest.raises(_Built):
        model.train(data=run_data["yaml"], mode=mode, epochs=1, project=str(env / "runs"), name=mode, **TRAIN)
    parent = model.trainer
    args = dict(vars(parent.args))
    assert args["model"] == "yw-v2.yaml" and args["yw_scale"] == "s" and args["yw_embed_dim"] == width
    assert args["yw_mode"] == mode

    rebuilt = type(parent)(overrides=args)  # what a worker of args alone does
    assert rebuilt.setup_model() is None
    assert shapes(rebuilt.model) == shapes(parent.model) and rebuilt.model.embed_dim == width
    assert {k: getattr(rebuilt.args, k) for k in RUN_KEYS} == {k: args[k] for k in RUN_KEYS}
    if mode == "rep":  # the dataset vocabulary, encoded by the same encoder and folded
        assert rebuilt.model.folded and list(rebuilt.model.names.values()) == run_data["names"]
        assert args["yw_text_encoder"] == os.environ["YW_CLIP"] and args["yw_text_encoder_id"]
