"""Checkpoints written by earlier code still restore and resume (tests/fixtures/README.md)."""

import json
import os
import shutil

import numpy as np
import pytest

from vrl import api, evaluators
from vrl import checkpoint as ckpt_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "vjepa_run_558ca8d")


@pytest.fixture
def old_run(tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(FIXTURE, workdir)
    return workdir


def fixture_video() -> np.ndarray:
    return (np.arange(2 * 16 * 32 * 32 * 3) % 251).astype(np.uint8).reshape(2, 16, 32, 32, 3)


@pytest.mark.parametrize("which", ["encoder", "target"])
def test_an_old_run_gives_the_same_embeddings(old_run, which):
    with open(os.path.join(old_run, "expected_embeddings.json")) as f:
        expected = np.asarray(json.load(f)[which], np.float32)
    encoder = api.load_encoder(old_run, which=which)
    assert encoder.step == 2
    np.testing.assert_allclose(encoder.embed(fixture_video()), expected, rtol=1e-5, atol=1e-5)


def test_an_old_run_resumes(old_run):
    meta, step = ckpt_lib.load_meta(old_run)
    assert step == 2
    config = {**meta["config"], "total_steps": 3}
    evaluators.train_and_evaluate(config, old_run)
    assert ckpt_lib.complete_steps(old_run)[-1] == 3
    with open(os.path.join(old_run, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f if "train/loss" in line]
    assert steps == [3]  # resumed at step 2: only step 3 was trained
