"""configs/vjepa_vitl_k710.py and the SALT configs against the released V-JEPA code.

The reference is facebookresearch/jepa: `configs/pretrain/vitl16.yaml` as run by
`app/vjepa/train.py` (`make_transforms`, `init_video_model`, `momentum_scheduler`).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import config as config_lib
from vrl import optim as optim_lib
from vrl.data.pipeline import parse_pp
from vrl.data.types import ClipSpec
from vrl.durations import RunLength
from vrl.objectives import base

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def recipe(name: str, arg: str = ""):
    return config_lib.load_file(os.path.join(CONFIGS, name), arg)


def objective_of(config) -> base.Objective:
    return base.build(config.to_dict())


def test_pretraining_crops_and_flips_like_the_release():
    """`make_transforms(random_horizontal_flip=True, ...)`: crop, then flip the whole clip."""
    ops = parse_pp(recipe("vjepa_vitl_k710.py").data.train_pp)
    assert ops[1:] == [
        ("random_resized_crop", {"size": 224, "area": (0.3, 1.0), "aspect": (0.75, 1.35)}),
        ("flip", {"p": 0.5}),
    ]


@pytest.mark.parametrize("size,heads", [("B", 12), ("L", 16), ("H", 16)])
def test_predictor_is_the_releases(size, heads):
    """`init_video_model`: uniform_power positions in encoder and predictor (the tables are
    checked against jepa's `get_3d_sincos_pos_embed` in test_convert_vjepa.py), predictor heads
    = the encoder's, attention over context + target tokens, one mask token per mask type."""
    objective = objective_of(recipe("vjepa_vitl_k710.py", f"size={size}"))
    assert objective.encoder.posemb == "sincos_uniform"
    predictor = objective.predictor(objective.encoder.output_dim)
    assert (predictor.width, predictor.depth, predictor.heads) == (384, 12, heads)
    assert predictor.posemb == "sincos_uniform" and predictor.num_mask_types == 2
    assert objective.predictor_targets == "targets_only"


def test_mask_tokens_start_at_zero():
    """`zero_init_mask_tokens: true`."""
    objective = objective_of(recipe("vjepa_vitl_k710.py", "runlocal"))
    predictor = objective.predictor(objective.encoder.output_dim)
    grid, keep, targets = (2, 4, 4), 8, 6
    context = jnp.zeros((1, keep, objective.encoder.output_dim))
    keep_idx = jnp.arange(keep)[None]
    target_idx = jnp.arange(keep, keep + targets)[None]
    params = predictor.init(
        jax.random.key(0), context, keep_idx, grid, mask_type=0, train=False, target_idx=target_idx
    )["params"]
    tokens = np.asarray(jax.tree.leaves(params["mask_tokens"])[0])
    assert tokens.shape == (2, predictor.width) and not tokens.any()


def test_gradient_clipping_is_the_releases():
    """`clip_grad: 10.0`, encoder and predictor norms clipped separately, once `epoch >
    warmup` (40 warmup epochs of 300 iterations: from iteration 12,300)."""
    optim = recipe("vjepa_vitl_k710.py").optim
    assert (optim.clip_norm, optim.clip_per_module, optim.clip_from_steps) == (10.0, True, 12_300)
    tx = optim_lib.clip_by_norm(10.0, per_module=True, from_step=2)
    grads = {"encoder": {"w": jnp.full(4, 10.0)}, "predictor": {"w": jnp.full(4, 1.0)}}
    state = tx.init(grads)
    for step in range(3):
        out, state = tx.update(grads, state)
        encoder_norm = float(jnp.linalg.norm(out["encoder"]["w"]))
        predictor_norm = float(jnp.linalg.norm(out["predictor"]["w"]))
        assert predictor_norm == pytest.approx(2.0)  # under 10: untouched
        assert encoder_norm == pytest.approx(20.0 if step < 2 else 10.0, rel=1e-5)
    joint = optim_lib.clip_by_norm(10.0, per_module=False, from_step=0)
    out, _ = joint.update(grads, joint.init(grads))
    norm = jnp.sqrt(sum(jnp.sum(g["w"] ** 2) for g in out.values()))
    assert float(norm) == pytest.approx(10.0, rel=1e-5)


def reference_momentum(ema, ipe, num_epochs, ipe_scale):
    """app/vjepa/train.py's `momentum_scheduler`, one value per optimiser step."""
    return [
        ema[0] + i * (ema[1] - ema[0]) / (ipe * num_epochs * ipe_scale)
        for i in range(int(ipe * num_epochs * ipe_scale) + 1)
    ]


@pytest.mark.parametrize("ipe,epochs", [(300, 300), (50, 40)])
def test_ema_momentum_follows_the_release(ipe, epochs):
    """vitl16.yaml: ema [0.998, 1.0], ipe_scale 1.25; the release runs ipe * epochs steps."""
    config = recipe("vjepa_vitl_k710.py")
    total = ipe * epochs
    length = RunLength(steps_per_epoch=ipe, batch_size=config.data.batch_size, total_steps=total)
    objective = objective_of(config).for_training(length)
    expected = reference_momentum((0.998, 1.0), ipe, epochs, ipe_scale=1.25)
    for step in (0, 1, ipe * 40, total // 2, total - 1):
        np.testing.assert_allclose(float(objective.momentum(step)), expected[step], atol=1e-7)
    # param_k <- m * param_k + (1 - m) * param_q, with m of the step just taken.
    step = total // 2
    extra = {"target": {"w": jnp.zeros(3)}}
    updated = objective.update_extra(extra, {"encoder": {"w": jnp.ones(3)}}, jnp.asarray(step))
    np.testing.assert_allclose(np.asarray(updated["target"]["w"]), 1 - expected[step], rtol=1e-4)


@pytest.mark.parametrize(
    "arg,clip", [("runlocal", ClipSpec(8, 64, 64)), ("size=L", ClipSpec(16, 224, 224))]
)
def test_salt_stages_draw_the_same_masks(arg, clip):
    """Stage 1's `vjepa_masks` op and stage 2's objective get one set of mask settings
    (blocks, scales, aspect, keep_quantile): the same rng gives the same masks."""
    stage1 = objective_of(recipe("salt_stage1_vitl_k710.py", arg))
    stage2 = objective_of(recipe("salt_stage2_vitl_k710.py", f"{arg},teacher=/teacher"))
    drawn = []
    for objective in (stage1, stage2):
        ((_, op),) = objective.batch_ops(clip)
        drawn.append(op({}, np.random.default_rng(0)))
    assert drawn[0].keys() == drawn[1].keys() and "keep_idx/1" in drawn[0]
    for key in drawn[0]:
        np.testing.assert_array_equal(drawn[0][key], drawn[1][key], err_msg=key)
