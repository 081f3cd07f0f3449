"""Masked objectives: targets, EMA maths, learning on synthetic data, SALT via real checkpoints."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import api, evaluators
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import setup as setup_lib
from vrl.durations import RunLength
from vrl.models.vit import ViT
from vrl.objectives import jepa, mae

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def test_tubelet_targets_match_numpy():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (2, 4, 8, 8, 3), dtype=np.uint8)
    got = np.asarray(mae.tubelet_targets(jnp.asarray(video), (2, 4, 4), normalize=True))
    x = video.astype(np.float64) / 255.0
    # Token (t, h, w) holds frames 2t..2t+1, rows 4h.., columns 4w.., in (pt, ph, pw, c) order.
    tube = x[1, 2:4, 4:8, 0:4]  # batch 1, token t=1, h=1, w=0 -> index 1*4 + 1*2 + 0 = 6
    pixels = tube.reshape(-1, 3)
    expected = (pixels - pixels.mean(0)) / np.sqrt(pixels.var(0, ddof=1) + 1e-6)
    assert got.shape == (2, 2 * 2 * 2, 2 * 4 * 4 * 3)
    np.testing.assert_allclose(got[1, 6].reshape(-1, 3), expected, rtol=1e-4, atol=1e-5)
    raw = np.asarray(mae.tubelet_targets(jnp.asarray(video), (2, 4, 4), normalize=False))
    np.testing.assert_allclose(raw[1, 6].reshape(-1, 3), pixels, rtol=1e-6)


def test_ema_update_and_momentum_schedule():
    encoder = ViT(size="Ti", width=16, depth=1, heads=2, patch=(2, 4, 4))
    objective = jepa.VJEPA(encoder=encoder, ema_start=0.9, ema_end=1.0, ema_steps=10)
    params = {"encoder": {"w": jnp.full((3,), 2.0)}}
    extra = {"target": {"w": jnp.zeros((3,))}}
    np.testing.assert_allclose(float(objective.momentum(0)), 0.9)
    np.testing.assert_allclose(float(objective.momentum(5)), 0.95)
    np.testing.assert_allclose(float(objective.momentum(50)), 1.0)
    updated = objective.update_extra(extra, params, jnp.asarray(5))
    np.testing.assert_allclose(np.asarray(updated["target"]["w"]), 0.05 * 2.0, rtol=1e-6)
    length = RunLength(steps_per_epoch=40, batch_size=8, total_steps=123)
    assert objective.for_training(length).ema_steps == 10
    assert jepa.VJEPA(encoder=encoder).for_training(length).ema_steps == 123
    # The horizon follows the run's length: a fraction, or epochs of it.
    stretched = jepa.VJEPA(encoder=encoder, ema_fraction=1.25).for_training(length)
    assert stretched.ema_steps == 154 and stretched.ema_fraction is None
    assert jepa.VJEPA(encoder=encoder, ema_epochs=2.0).for_training(length).ema_steps == 80
    with pytest.raises(config_lib.ConfigError, match="ema_steps / config.objective.ema_fraction"):
        jepa.VJEPA(encoder=encoder, ema_steps=5, ema_fraction=1.0).for_training(length)


def learning_config(name: str, steps: int = 30):
    config = config_lib.load_file(os.path.join(CONFIGS, name), "runlocal")
    config.total_steps = steps
    config.log_every_steps = 1
    config.evals = {}
    config.ckpt.every_steps = steps
    return config


def losses(workdir: str) -> list[float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [row["train/loss"] for row in map(json.loads, f) if "train/loss" in row]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config_name",
    ["videomae_vitb_k400.py", "vjepa_vitl_k710.py", "tokenlearner_vitb_k400.py", "cvrl_k600.py"],
)
def test_loss_decreases_over_30_steps(config_name, tmp_path):
    config = learning_config(config_name)
    config.optim.lr = 3e-3
    evaluators.train_and_evaluate(config, str(tmp_path))
    values = losses(str(tmp_path))
    assert len(values) == 30 and all(np.isfinite(values))
    assert np.mean(values[-5:]) < np.mean(values[:5]), values


@pytest.mark.slow
def test_salt_two_stages_through_real_checkpoints(tmp_path):
    """Stage 1 trains a teacher; stage 2 loads it strictly, learns, and never changes it."""
    teacher_dir, student_dir = str(tmp_path / "teacher"), str(tmp_path / "student")
    evaluators.train_and_evaluate(learning_config("salt_stage1_vitl_k710.py", steps=4), teacher_dir)

    stage2 = config_lib.load_file(
        os.path.join(CONFIGS, "salt_stage2_vitl_k710.py"), f"runlocal,teacher={teacher_dir}"
    )
    stage2.total_steps = 30
    stage2.log_every_steps = 1
    stage2.evals = {}
    stage2.ckpt.every_steps = 30
    stage2.optim.lr = 3e-3
    # The student may differ from the teacher: make it wider.
    stage2.model.width = 96
    stage2.model.heads = 3
    evaluators.train_and_evaluate(stage2, student_dir)
    values = losses(student_dir)
    assert np.mean(values[-5:]) < np.mean(values[:5]), values

    teacher = jax.device_get(api.load_encoder(teacher_dir).variables)
    saved_teacher = jax.device_get(api.load_encoder(student_dir, which="teacher").variables)
    assert ckpt_lib.digest(teacher) == ckpt_lib.digest(saved_teacher)
    student = jax.device_get(api.load_encoder(student_dir).variables)
    assert student["params"]["embed"]["projection"]["kernel"].shape[-1] == 96


def test_salt_without_teacher_is_a_config_error():
    config = config_lib.load_file(os.path.join(CONFIGS, "salt_stage2_vitl_k710.py"), "runlocal")
    with pytest.raises(config_lib.ConfigError, match="teacher_checkpoint: required"):
        setup_lib.setup(config)
    config.objective.teacher_checkpoint = "/nonexistent/run"
    with pytest.raises(config_lib.ConfigError, match="teacher_checkpoint: no checkpoint"):
        setup_lib.setup(config)


def test_masked_objective_rejects_cvrl_r3d():
    config = config_lib.to_dict(learning_config("videomae_vitb_k400.py", steps=1))
    config["model"] = {"name": "cvrl_r3d", "depth": 18, "width": 0.125}
    with pytest.raises(config_lib.ConfigError, match="needs an encoder that takes keep_idx"):
        evaluators.train_and_evaluate(config, "/tmp/unused-vrl-run")
