"""A tiny pretrained checkpoint for the probe, API and notebook tests (made once per session).

Other test files import `tiny_checkpoint()`; the run is a two-step VideoMAE pretraining of a
one-block ViT on 16 synthetic videos of 4 frames at 16x16 pixels (8 tokens per clip).
"""

import atexit
import functools
import json
import os
import shutil
import tempfile

import numpy as np

from vrl import evaluators

TEST_PP = "center_clip(frames=4, stride=2)|resize_short(size=16)|center_crop(size=16)"


def tiny_run_config(total_steps: int = 2) -> dict:
    return {
        "seed": 0,
        "total_steps": total_steps,
        "log_every_steps": 1,
        "data": {
            "source": {"name": "synthetic", "frames": 16, "size": 32, "num_videos": 16},
            "batch_size": 8,
            "train_pp": "uniform_clip(frames=4, stride=2)|random_resized_crop(size=16)",
            "test_pp": TEST_PP,
            "num_workers": 0,
        },
        "model": {
            "name": "vit",
            "size": "Ti",
            "width": 32,
            "depth": 1,
            "heads": 2,
            "patch": (2, 8, 8),
        },
        "objective": {
            "name": "videomae",
            "mask_ratio": 0.5,
            "decoder_width": 16,
            "decoder_depth": 1,
            "decoder_heads": 2,
        },
        "optim": {"name": "adamw", "lr": 1e-2},
        "ckpt": {"every_steps": total_steps, "keep": 1},
        # Run at the end of training, as config.evals of any run are.
        "evals": {
            "end_knn": {
                "probe": {"name": "knn", "k": 3},
                "encoders": ("pretrained",),
                "label_sets": ("appearance",),
                "plots": False,
            }
        },
    }


@functools.cache
def tiny_checkpoint() -> str:
    """A run directory holding step 2 of the tiny pretraining; shared by the whole session."""
    root = tempfile.mkdtemp(prefix="vrl_probe_ckpt_")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    workdir = os.path.join(root, "run")
    evaluators.train_and_evaluate(tiny_run_config(), workdir)
    return workdir


def fresh_copy(tmp_path) -> str:
    """A private copy of the tiny checkpoint, for tests that write probe results into it."""
    target = os.path.join(str(tmp_path), "run")
    shutil.copytree(tiny_checkpoint(), target)
    return target


def test_config_evals_run_at_the_end_of_training():
    workdir = tiny_checkpoint()
    with open(os.path.join(workdir, "probe", "end_knn_appearance_pretrained.json")) as f:
        record = json.load(f)
    assert record["step"] == 2 and record["config"]["name"] == "end_knn"
    assert 0.0 <= record["metrics"]["top1"] <= 100.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if "end_knn_appearance_pretrained/top1" in line]
    assert [row["step"] for row in rows] == [2]


def test_tiny_checkpoint_trained_away_from_its_initialisation():
    from vrl import api

    workdir = tiny_checkpoint()
    video = np.random.default_rng(0).integers(0, 256, (3, 4, 16, 16, 3), np.uint8)
    pretrained = api.load_encoder(workdir).embed(video)
    random = api.load_encoder(workdir, which="random").embed(video)
    assert pretrained.shape == random.shape == (3, 32)
    assert np.abs(pretrained - random).max() > 1e-3
