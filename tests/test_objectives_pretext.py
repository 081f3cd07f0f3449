"""Temporal pretext tasks and the combined objective: losses against plain numpy, labels read
from what the temporal ops record, weight-0 parts, batch statistics threaded through the parts
and a few training steps (the recipe's :runlocal run is in tests/test_train.py)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vrl import config as config_lib
from vrl import setup as setup_lib
from vrl.config import ConfigError
from vrl.data import pipeline, temporal
from vrl.data.types import ClipSpec
from vrl.objectives import base, combined, cvrl, pretext

RECIPE = "configs/pretext_r3d.py"


class TinyEncoder(nn.Module):
    """A conv, batch norm and ReLU: enough to check that batch statistics thread correctly."""

    dtype: Any = jnp.float32
    pixel_norm: str = "imagenet"

    @nn.compact
    def __call__(self, video, *, train, keep_idx=None):
        x = nn.Conv(8, (2, 3, 3), strides=(2, 2, 2), dtype=self.dtype)(video)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def pool(self, tokens):
        return tokens.mean(axis=1)

    @property
    def output_dim(self):
        return 8


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_ce(logits, labels):
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    return -np_log_softmax(logits)[np.arange(len(logits)), np.ravel(labels).astype(int)].mean()


def make_batch(views=2, batch=4, seed=0, speeds=(1.0, 2.0)):
    rng = np.random.default_rng(seed)
    return {
        "video": rng.integers(0, 256, (batch, views, 4, 8, 8, 3), dtype=np.uint8),
        "temporal/start": np.zeros((batch, views), np.int32),
        "temporal/tempo": rng.choice(speeds, (batch, views)).astype(np.float32),
        "temporal/skip": np.ones((batch, views), np.float32),
        "temporal/reversed": rng.random((batch, views)) < 0.5,
    }


def unboxed_init(objective, batch, seed=0):
    return nn.meta.unbox(objective.init(jax.random.key(seed), batch))


# ----------------------------------------------------------------------------- the losses


def test_speed_class_is_the_nearest_speed_on_a_log_scale():
    rates = jnp.array([1.0, 2.0, 4.0, 8.0, 0.5, 2.7, 3.1, 100.0])
    got = pretext.speed_class(rates, (1.0, 2.0, 4.0, 8.0))
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 0, 1, 2, 3])


def test_playback_loss_is_speed_plus_direction_cross_entropy():
    objective = pretext.Playback(encoder=TinyEncoder(), speeds=(1.0, 2.0, 4.0))
    batch = make_batch(speeds=(1.0, 2.0, 4.0))
    batch["temporal/skip"] = np.where(batch["temporal/tempo"] == 4.0, 2.0, 1.0).astype(np.float32)
    batch["temporal/tempo"] = np.where(batch["temporal/tempo"] == 4.0, 2.0, batch["temporal/tempo"])
    params, extra = unboxed_init(objective, batch)
    logits, _ = objective.outputs(params, extra, batch, train=False)
    loss, (metrics, _) = objective.loss(params, extra, batch, jax.random.key(1), train=False)
    rate = batch["temporal/tempo"] * batch["temporal/skip"]
    speed = np.searchsorted([1.0, 2.0, 4.0], rate)
    logits = np.asarray(logits)
    expected = np_ce(logits[..., :3], speed) + np_ce(logits[..., 3:], batch["temporal/reversed"])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    hits = logits[..., :3].argmax(-1) == speed
    np.testing.assert_allclose(float(metrics["speed_accuracy"]), hits.mean())


def numpy_video_contrast(z, temperature):
    batch, views, _ = z.shape
    total = 0.0
    for b in range(batch):
        for i in range(views):
            negatives = [z[c, k] @ z[b, i] for c in range(batch) if c != b for k in range(views)]
            for j in range(views):
                if j != i:
                    logits = np.array([z[b, i] @ z[b, j], *negatives]) / temperature
                    total += -np_log_softmax(logits)[0]
    return total / (batch * views)


def numpy_speed_ranking(z, rate, temperature, margin):
    hinges = []
    for b in range(z.shape[0]):
        for i, j, k in np.ndindex(3, 3, 3):
            if i != j and rate[b, i] == rate[b, j] and rate[b, k] != rate[b, i]:
                pos, neg = z[b, i] @ z[b, j] / temperature, z[b, i] @ z[b, k] / temperature
                hinges.append(max(0.0, margin - (pos - neg)))  # torch MarginRankingLoss, y = 1
    return np.mean(hinges)


def test_rspnet_losses_match_numpy():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 3, 6))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    rate = np.array([[1, 1, 2], [2, 1, 2], [1, 1, 1], [2, 2, 1]], np.float32)
    loss, _ = pretext.video_contrast(jnp.asarray(z, jnp.float32), 0.07)
    np.testing.assert_allclose(float(loss), numpy_video_contrast(z, 0.07), rtol=1e-4)
    loss, _ = pretext.speed_ranking(jnp.asarray(z, jnp.float32), jnp.asarray(rate), 0.07, 2.0)
    np.testing.assert_allclose(float(loss), numpy_speed_ranking(z, rate, 0.07, 2.0), rtol=1e-4)
    none = pretext.speed_ranking(jnp.asarray(z, jnp.float32), jnp.ones((4, 3)), 0.07, 2.0)[0]
    assert float(none) == 0.0  # no clip at another speed: no triplet, no loss


def test_rspnet_objective_adds_weighted_appearance_and_speed_losses():
    objective = pretext.RSPNet(encoder=TinyEncoder(), head_out=4, speed_weight=0.5)
    batch = make_batch(views=3, batch=4, seed=2)
    params, extra = unboxed_init(objective, batch)
    out, _ = objective.outputs(params, extra, batch, train=False)
    out = np.asarray(out, np.float64)
    z_a, z_m = out[..., :4], out[..., 4:]
    z_a /= np.linalg.norm(z_a, axis=-1, keepdims=True)
    z_m /= np.linalg.norm(z_m, axis=-1, keepdims=True)
    rate = batch["temporal/tempo"]
    expected = numpy_video_contrast(z_a, 0.07) + 0.5 * numpy_speed_ranking(z_m, rate, 0.07, 2.0)
    loss, _ = objective.loss(params, extra, batch, jax.random.key(0), train=False)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


# ------------------------------------------------------------------- labels from the pipeline


def test_labels_recorded_by_the_temporal_ops_name_the_played_speed_and_direction():
    ops = [
        temporal.uniform_clip(frames=4, stride=1),
        temporal.tempo(rates=(1.0, 2.0), p=0.5),
        temporal.frame_skip(mode="uniform", skips=(1, 2), p=0.5),
        temporal.reverse(p=0.5),
    ]
    rng = np.random.default_rng(0)
    speeds = (1.0, 2.0, 4.0)
    seen = set()
    for _ in range(40):
        example = {"id": "v", "num_frames": 100}
        for op in ops:
            example = op(example, rng)
        steps = np.diff(example["frame_indices"][0])
        backwards = bool(steps[0] < 0)
        label = pretext.speed_class(pretext.playback_rate(example, "playback"), speeds)
        assert speeds[int(label[0])] == abs(steps[0]) and len(set(steps)) == 1
        assert bool(example["temporal/reversed"][0]) == backwards
        seen.add((int(label[0]), backwards))
    assert len(seen) == 6  # every speed, both directions


def test_the_recorded_labels_reach_the_training_batch():
    s = setup_lib.setup(config_lib.load_file(RECIPE, "runlocal,task=playback"))
    data = s.train_data.iterator(seed=0, process_index=0, process_count=1)
    device, _ = pipeline.split_host_keys(next(iter(data)))
    assert device["video"].shape == (8, 8, 32, 32, 3)
    for key in ("temporal/tempo", "temporal/skip", "temporal/reversed"):
        assert device[key].shape == (8, 1), key
    assert set(np.unique(device["temporal/skip"])) <= {1.0, 2.0, 4.0}


@pytest.mark.parametrize("task", ["cvrl_playback", "playback", "rspnet"])
def test_every_recipe_task_builds_its_objective(task):
    kinds = {"cvrl_playback": combined.Combined, "playback": pretext.Playback}
    for arg in (f"task={task}", f"runlocal,task={task}"):
        c = config_lib.to_dict(config_lib.load_file(RECIPE, arg))
        objective = base.build(c)
        assert type(objective) is kinds.get(task, pretext.RSPNet)


# -------------------------------------------------------------------------- combined parts


def cvrl_config():
    return {"name": "cvrl", "head_hidden": 16, "head_layers": 1, "head_out": 8}


def make_combined(weight, **playback):
    aux = {"playback": {"name": "playback", "weight": weight, "speeds": (1.0, 2.0), **playback}}
    return combined.Combined(encoder=TinyEncoder(), main=cvrl_config(), aux=aux)


def test_weight_zero_gives_the_plain_main_loss_and_a_weight_adds_the_part():
    batch = make_batch()
    plain = cvrl.CVRL(encoder=TinyEncoder(), head_hidden=16, head_layers=1, head_out=8)
    p_params, p_extra = unboxed_init(plain, batch)
    p_loss, (_, p_new) = plain.loss(p_params, p_extra, batch, jax.random.key(1), train=True)
    for weight in (0.0, 0.3):
        objective = make_combined(weight)
        params, extra = unboxed_init(objective, batch)
        assert set(params) == {"encoder", "head", "playback"}
        jax.tree.map(
            np.testing.assert_array_equal, objective._main_state(params, extra)[0], p_params
        )
        loss, (metrics, _) = objective.loss(params, extra, batch, jax.random.key(1), train=True)
        np.testing.assert_allclose(float(metrics["main_loss"]), float(p_loss), rtol=1e-6)
        expected = float(p_loss) + weight * float(metrics["playback/loss"])
        np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    assert float(metrics["playback/loss"]) > 0


def test_encoder_batch_statistics_thread_through_main_then_aux():
    batch = make_batch()
    objective = make_combined(1.0)
    params, extra = unboxed_init(objective, batch)
    main_params, main_extra = objective._main_state(params, extra)
    _, (_, after_main) = objective.main_part.loss(
        main_params, main_extra, batch, jax.random.key(0), True
    )
    part_params = {"encoder": params["encoder"], **params["playback"]}
    part_extra = {"batch_stats": {"head": {}, "encoder": after_main["batch_stats"]["encoder"]}}
    _, (_, after_aux) = objective.aux_parts[0][2].loss(
        part_params, part_extra, batch, jax.random.key(0), True
    )
    _, (_, new_extra) = objective.loss(params, extra, batch, jax.random.key(0), train=True)
    jax.tree.map(
        np.testing.assert_allclose,
        new_extra["batch_stats"]["encoder"],
        after_aux["batch_stats"]["encoder"],
    )
    jax.tree.map(
        np.testing.assert_allclose,
        new_extra["batch_stats"]["head"],
        after_main["batch_stats"]["head"],
    )
    assert new_extra["playback"] == {"batch_stats": {"head": {}}}
    variables = objective.encoder_variables(params, extra)
    assert set(variables) == {"params", "batch_stats"}


def test_combined_cvrl_and_playback_trains_a_few_steps():
    batch = make_batch(batch=8, seed=4)
    objective = make_combined(1.0)
    params, extra = unboxed_init(objective, batch)

    @jax.jit
    def step(params, extra, rng):
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, (metrics, extra)), grads = grad_fn(params, extra, batch, rng, True)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        return params, extra, loss, metrics

    losses = []
    for i in range(3):
        params, extra, loss, metrics = step(params, extra, jax.random.key(i))
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert {"main_loss", "playback/loss", "playback/speed_accuracy"} <= set(metrics)


# ----------------------------------------------------------------------------- bad configs


@pytest.mark.parametrize(
    "aux, message",
    [
        ({"p": {"name": "playback"}}, "config.objective.aux.p.weight: None is not allowed"),
        ({"p": {"name": "playback", "weight": -1}}, "config.objective.aux.p.weight: -1"),
        ({"p": {"name": "nope", "weight": 1}}, "config.objective.aux.p.name: unknown objective"),
        ({"p": {"name": "playback", "weight": 1, "speeds": ()}}, "config.objective.speeds"),
        ({"p": 3}, "config.objective.aux.p: expected an objective's config"),
    ],
)
def test_bad_aux_configs_name_the_key(aux, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        combined.Combined(encoder=TinyEncoder(), main=cvrl_config(), aux=aux)


def test_missing_labels_views_and_clashing_names_are_config_errors():
    batch = make_batch()
    bare = {k: v for k, v in batch.items() if k in ("video", "temporal/start")}
    with pytest.raises(ConfigError, match="add tempo"):
        unboxed_init(pretext.Playback(encoder=TinyEncoder()), bare)
    no_reverse = {k: v for k, v in batch.items() if k != "temporal/reversed"}
    with pytest.raises(ConfigError, match="config.objective.direction"):
        unboxed_init(pretext.Playback(encoder=TinyEncoder()), no_reverse)
    with pytest.raises(ConfigError, match="rspnet.*needs 3 or more views"):
        pretext.RSPNet(encoder=TinyEncoder()).batch_ops(ClipSpec(8, 32, 32, views=2))
    clash = combined.Combined(
        encoder=TinyEncoder(),
        main=cvrl_config(),
        aux={"head": {"name": "playback", "weight": 1.0, "speeds": (1.0, 2.0)}},
    )
    with pytest.raises(ConfigError, match="config.objective.aux.head: the name is taken"):
        unboxed_init(clash, batch)
