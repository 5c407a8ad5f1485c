"""Interrupted training: a run SIGKILLed after its first epoch resumes with ``resume=True`` in the mode it started in.

The training runs in a subprocess that, once epoch 1's checkpoint is written, tells the test and waits; the test then
kills it with SIGKILL (the state a killed job leaves), checks that the interrupted ``last.pt`` loads, and resumes it
in this process with ``YOLOWorld(last).train(resume=True)`` (no ``mode=``: it is read from the checkpoint). Prompt
modes write prompt files, not resumable checkpoints, and refuse ``resume`` (and multi-GPU) with a clear message.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import yw_ext
from yw_ext.engine.modes import resume_mode
from tests.test_train import SYNONYMS, coco_names, grounding_json, link_subset, synonym_json, write_yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN = dict(imgsz=64, batch=2, workers=0, plots=False, device="cpu", verbose=False, exist_ok=True, warmup_epochs=0)
CHILD = """
import json, sys, time
from pathlib import Path
import yw_ext

cfg = json.loads(sys.argv[1])


def hold(trainer):  # epoch 1's checkpoint is on disk: tell the test, then wait for its SIGKILL
    if trainer.epoch == 0:
        Path(cfg["marker"]).write_text(str(trainer.last))
        time.sleep(600)


model = yw_ext.YOLOWorld("yw-v2-n.yaml", embed_dim=512)
model.add_callback("on_model_save", hold)
model.train(**cfg["train"])
"""


@pytest.fixture
def run_data(coco128, tmp_path) -> dict:
    """Two COCO128 images with a synonym ``text_json``, and a grounding JSON over two other images."""
    names = coco_names(coco128)
    root = tmp_path / "subset"
    link_subset(coco128, root, n=2)
    texts = synonym_json(names, tmp_path / "class_texts.json")
    grounding = {"img_path": str(coco128 / "images" / "train2017"),
                 "json_file": str(grounding_json(coco128, tmp_path / "grounding.json", start=4, n=2))}
    yaml = write_yaml(tmp_path / "subset_texts.yaml", names, root, text_json="class_texts.json")
    return {"names": list(names.values()), "texts": texts, "yaml": str(yaml), "grounding": grounding}


def kill_after_first_epoch(train: dict, tmp: Path) -> Path:
    """Train ``train`` (2 epochs) in a subprocess, SIGKILL it once epoch 1 is saved; returns the ``last.pt`` path."""
    marker, script = tmp / "epoch1.txt", tmp / "child.py"
    script.write_text(CHILD)
    log = open(tmp / "child.log", "w")
    proc = subprocess.Popen([sys.executable, str(script), json.dumps({"marker": str(marker), "train": train})],
                            cwd=ROOT, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600  # a hang guard, not a speed check
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        log_tail = (tmp / "child.log").read_text()[-3000:]
        assert marker.exists(), f"training never finished epoch 1 (rc {proc.poll()}):\n{log_tail}"
        time.sleep(0.2)  # the marker's text is written
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    return Path(marker.read_text())


def epochs_in_csv(save_dir: Path) -> list[int]:
    """The epoch column of a run's results.csv."""
    with open(save_dir / "results.csv", newline="") as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f, skipinitialspace=True)]


@pytest.mark.slow
def test_finetune_killed_after_epoch_one_resumes(env, run_data):
    train = dict(data=run_data["yaml"], grounding_data=[run_data["grounding"]], epochs=2,
                 project=str(env / "runs"), name="ft", **TRAIN)
    last = kill_after_first_epoch(train, env)

    interrupted = yw_ext.YOLOWorld(str(last))  # the killed run's last.pt loads, with the dataset vocabulary
    assert interrupted.ckpt["epoch"] == 0 and interrupted.ckpt["train_args"]["yw_mode"] == "finetune"
    assert interrupted.vocabulary == run_data["names"] and interrupted.model.class_prompts == run_data["texts"]
    before = interrupted.model.txt_feats.detach().float().clone()

    model = yw_ext.YOLOWorld(str(last))
    model.train(resume=True)
    trainer = model.trainer
    assert type(trainer).__name__ == "YWTrainer" and trainer.start_epoch == 1 and trainer.epochs == 2
    assert epochs_in_csv(Path(trainer.save_dir)) == [1, 2]  # the planned 2 epochs, the first not repeated
    assert len(trainer.train_loader.dataset) == 2 + 2  # detection images + grounding images, as the run started
    assert any(t.startswith("the ") for t in trainer.text_embeddings)  # grounding phrases still in the mix
    assert model.vocabulary == run_data["names"] and model.model.class_prompts == run_data["texts"]
    assert model.model.prompts_per_class == max(len(v) for v in SYNONYMS.values())
    assert torch.allclose(model.model.txt_feats.detach().float(), before, atol=1e-3)  # same encoder, same embeddings
    assert yw_ext.YOLOWorld(str(trainer.last)).vocabulary == run_data["names"]


@pytest.mark.slow
def test_rep_killed_after_epoch_one_resumes_in_rep_mode(env, run_data):
    train = dict(data=run_data["yaml"], mode="rep", epochs=2, project=str(env / "runs"), name="rep", **TRAIN)
    last = kill_after_first_epoch(train, env)

    interrupted = yw_ext.YOLOWorld(str(last))
    assert interrupted.model.folded and interrupted.vocabulary == run_data["names"]
    assert interrupted.ckpt["train_args"]["yw_mode"] == "rep"
    assert resume_mode(True, interrupted.ckpt) == resume_mode(str(last)) == "rep"  # what train(resume=...) reads
    with pytest.raises(ValueError, match="was trained with mode='rep'; resume it with mode='rep'"):
        yw_ext.YOLOWorld(str(last)).train(resume=True, mode="finetune")

    model = yw_ext.YOLOWorld(str(last))
    model.train(resume=True)  # no mode=: the checkpoint's
    trainer = model.trainer
    assert type(trainer).__name__ == "YWRepTrainer" and trainer.start_epoch == 1 and trainer.epochs == 2
    assert epochs_in_csv(Path(trainer.save_dir)) == [1, 2]
    assert model.model.folded and model.vocabulary == run_data["names"]
    assert model.model.model[-1].nc == interrupted.model.model[-1].nc == 80 * 3  # K classes x G = 3 prompts, folded


@pytest.mark.parametrize("mode", ["prompt", "image_prompt"])
def test_prompt_modes_refuse_resume_and_multi_gpu(env, run_data, mode):
    kw = dict(data=run_data["yaml"], mode=mode, epochs=1, project=str(env / "runs"), name=mode, **TRAIN)
    model = yw_ext.YOLOWorld("yw-v2-n.yaml")
    with pytest.raises(ValueError, match=f"resume is not supported with mode='{mode}'; start a new run"):
        model.train(**{**kw, "resume": True})
    with pytest.raises(ValueError, match=rf"mode='{mode}' trains on one device; multi-GPU \(DDP\) is not supported "
                                         r"\(device='0,1'\)"):
        model.train(**{**kw, "device": "0,1"})
    assert not list((env / "runs").rglob("*.npz"))  # refused before anything trained
