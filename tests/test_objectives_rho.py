"""rho-MoCo, rho-BYOL, rho-SwAV: losses against plain numpy written as PySlowFast computes them,
the queue's order and pointer, the momentum schedule, the rho-clip sampler, and a train step
of each objective with a tiny ViT on a mesh of 8 devices (the R3D recipes train in
tests/test_train.py)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from scipy import stats

from vrl import optim, registry, sharding
from vrl.config import ConfigError
from vrl.data import temporal
from vrl.data.types import ClipSpec
from vrl.durations import RunLength
from vrl.models.vit import ViT
from vrl.objectives import rho
from vrl.state import init_state, make_train_step


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_moco(q, k, queue, temperature):
    """Query clip i against each other clip's key and the queue, row by row; summed over i."""
    batch, views, _ = q.shape
    total = 0.0
    for i in range(views):
        rows = []
        for j in range(views):
            if j == i:
                continue
            for b in range(batch):
                logits = np.concatenate([[q[b, i] @ k[b, j]], queue @ q[b, i]]) / temperature
                rows.append(-(logits[0] - np.log(np.exp(logits).sum())))
        total += np.mean(rows)
    return total


def numpy_sinkhorn(scores, epsilon, iterations):
    """PySlowFast's `sinkhorn` (one device) on exp(scores / epsilon)."""
    q = np.exp(scores / epsilon).T
    q /= q.sum()
    r, c = np.ones(q.shape[0]) / q.shape[0], np.ones(q.shape[1]) / q.shape[1]
    for _ in range(iterations):
        q *= (r / q.sum(axis=1))[:, None]
        q *= (c / q.sum(axis=0))[None]
    return (q / q.sum(axis=0, keepdims=True)).T


def numpy_swav(scores, temperature, epsilon, iterations):
    """Consecutive pairs, each clip's codes predicted by the other's softmax, as the reference's
    SEQUENTIAL loop over `inputs[k:k + 2]` (swav_crops_for_assign = both clips)."""
    total = 0.0
    for i in range(scores.shape[1] - 1):
        pair = 0.0
        for a, b in ((i, i + 1), (i + 1, i)):
            code = numpy_sinkhorn(scores[:, a], epsilon, iterations)
            logits = scores[:, b] / temperature
            log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            pair += -np.mean(np.sum(code * log_p, axis=1))
        total += pair / 2
    return total


def test_infonce_with_queue_matches_numpy():
    rng = np.random.default_rng(0)
    q, k = unit(rng.normal(size=(4, 3, 8))), unit(rng.normal(size=(4, 3, 8)))
    queue = unit(rng.normal(size=(10, 8)))
    loss, accuracy = rho.infonce_queue(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), 0.2)
    np.testing.assert_allclose(float(loss), numpy_moco(q, k, queue, 0.2), rtol=1e-5)
    # When every clip of a video has the same embedding, every row's positive wins.
    same = jnp.asarray(np.repeat(q[:, :1], 3, axis=1))
    _, found = rho.infonce_queue(same, same, jnp.asarray(queue), 0.2)
    assert float(found) == 1.0 and 0.0 <= float(accuracy) <= 1.0


def test_byol_normalised_mse_matches_numpy_and_reference_gradient():
    rng = np.random.default_rng(1)
    p, k = unit(rng.normal(size=(5, 3, 6))), unit(rng.normal(size=(5, 3, 6)))
    mse = sum(
        np.mean([np.mean(np.sum((p[:, i] - k[:, j]) ** 2, -1)) for j in range(3) if j != i])
        for i in range(3)
    )
    loss = rho.byol_loss(jnp.asarray(p), jnp.asarray(k), 0.5)
    np.testing.assert_allclose(float(loss), mse, rtol=1e-5)  # 2 - 2 cos at temperature 0.5

    # PySlowFast's sim_loss, -mean(p.k) / T averaged over the other clips, summed over queries.
    def reference(p):
        terms = [
            jnp.mean(jnp.stack([-jnp.mean(jnp.sum(p[:, i] * k[:, j], -1)) / 0.3 for j in js]))
            for i, js in enumerate(rho.others(3))
        ]
        return jnp.sum(jnp.stack(terms))

    ours = jax.grad(lambda p: rho.byol_loss(p, jnp.asarray(k), 0.3))(jnp.asarray(p))
    np.testing.assert_allclose(ours, jax.grad(reference)(jnp.asarray(p)), rtol=1e-5, atol=1e-7)


def test_sinkhorn_and_swapped_prediction_match_numpy_over_a_sharded_batch():
    rng = np.random.default_rng(2)
    scores = np.einsum(
        "bvd,kd->bvk", unit(rng.normal(size=(16, 3, 8))), unit(rng.normal(size=(5, 8)))
    )
    codes = rho.sinkhorn(jnp.asarray(scores[:, 0]), 0.05, 3)
    np.testing.assert_allclose(codes, numpy_sinkhorn(scores[:, 0], 0.05, 3), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.asarray(codes).sum(1), 1.0, rtol=1e-5)
    expected = numpy_swav(scores, 0.1, 0.05, 3)
    np.testing.assert_allclose(
        float(rho.swav_loss(jnp.asarray(scores), 0.1, 0.05, 3)), expected, rtol=1e-5
    )
    # Split over 8 devices, the codes still balance prototypes over the global batch.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(jnp.asarray(scores, jnp.float32), NamedSharding(mesh, P("data")))
    loss = jax.jit(lambda s: rho.swav_loss(s, 0.1, 0.05, 3))(sharded)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_enqueue_order_and_pointer():
    keys = jnp.arange(2 * 2 * 1, dtype=jnp.float32).reshape(2, 2, 1) + 1  # [B=2, V=2, D=1]
    queue, ptr = rho.enqueue(jnp.zeros((6, 1)), jnp.asarray(0, jnp.int32), keys)
    # Clip 0's batch first, then clip 1's, from the pointer.
    np.testing.assert_array_equal(queue[:, 0], [1, 3, 2, 4, 0, 0])
    assert int(ptr) == 4
    queue, ptr = rho.enqueue(queue, ptr, keys + 10)  # wraps around the end
    np.testing.assert_array_equal(queue[:, 0], [12, 14, 2, 4, 11, 13])
    assert int(ptr) == 2


def test_momentum_schedule_and_update():
    encoder = ViT(size="Ti", width=16, depth=1, heads=2, patch=(2, 4, 4))
    objective = rho.RhoBYOL(encoder=encoder, ema_start=0.9, ema_steps=10)
    np.testing.assert_allclose(float(objective.momentum(0)), 0.9, rtol=1e-6)
    np.testing.assert_allclose(float(objective.momentum(5)), 0.95, rtol=1e-6)
    np.testing.assert_allclose(float(objective.momentum(10)), 1.0)
    np.testing.assert_allclose(
        float(objective.momentum(2.5)), 1 - 0.1 * (np.cos(np.pi / 4) + 1) / 2, rtol=1e-6
    )
    params = {"encoder": {"w": jnp.full(3, 2.0)}, "head": {"w": jnp.full(3, 4.0)}, "predictor": {}}
    stats = {"target": {"encoder": {"mean": jnp.ones(3)}, "head": {}}}
    extra = {
        "batch_stats": stats,
        "target": {"encoder": {"w": jnp.zeros(3)}, "head": {"w": jnp.zeros(3)}},
    }
    updated = objective.update_extra(extra, params, jnp.asarray(5))
    np.testing.assert_allclose(updated["target"]["encoder"]["w"], 0.05 * 2.0, rtol=1e-5)
    np.testing.assert_allclose(updated["target"]["head"]["w"], 0.05 * 4.0, rtol=1e-5)
    assert updated["batch_stats"] is stats  # the target keeps its own statistics
    length = RunLength(steps_per_epoch=40, batch_size=8, total_steps=123)
    assert rho.RhoMoCo(encoder=encoder).for_training(length).ema_steps == 123
    assert rho.RhoMoCo(encoder=encoder, ema_epochs=2.0).for_training(length).ema_steps == 80


def test_rho_clips_are_independent_uniform_and_ordered():
    op = temporal.rho_clips(num_clips=3, frames=4, stride=2)  # span 7
    rng = np.random.default_rng(3)
    starts = np.stack([op({"num_frames": 50}, rng)["temporal/start"] for _ in range(3000)])
    assert np.all(np.diff(starts, axis=1) >= 0) and starts.min() >= 0 and starts.max() <= 43
    # Sorted i.i.d. uniform starts: their minimum follows the first order statistic's law.
    draws = np.sort(np.random.default_rng(4).integers(0, 44, (20_000, 3)), axis=1)
    assert stats.ks_2samp(starts[:, 0], draws[:, 0]).pvalue > 1e-3
    assert stats.ks_2samp(starts[:, 2], draws[:, 2]).pvalue > 1e-3
    short = op({"num_frames": 5}, rng)["frame_indices"]
    assert short.shape == (3, 4) and short.max() < 5


def test_config_errors():
    encoder = ViT(size="Ti", width=16, depth=1, heads=2, patch=(2, 4, 4))
    with pytest.raises(ConfigError, match="rho_swav.*rho_clips"):
        rho.RhoSwAV(encoder=encoder).batch_ops(ClipSpec(frames=4, height=16, width=16))
    with pytest.raises(ConfigError, match="sinkhorn_epsilon"):
        rho.RhoSwAV(encoder=encoder, sinkhorn_epsilon=0.0)
    with pytest.raises(ConfigError, match="ema_start"):
        rho.RhoMoCo(encoder=encoder, ema_start=1.5)
    objective = rho.RhoMoCo(encoder=encoder, queue_size=4, head_hidden=8, head_out=4)
    batch = {"video": jnp.zeros((2, 3, 4, 16, 16, 3), jnp.uint8)}
    params, extra = nn.meta.unbox(jax.eval_shape(objective.init, jax.random.key(0), batch))
    with pytest.raises(ConfigError, match="queue_size: 4.*batch x rho = 6"):
        jax.eval_shape(
            lambda p, e: objective.loss(p, e, batch, jax.random.key(1), True), params, extra
        )


@pytest.mark.parametrize("name", ["rho_moco", "rho_byol", "rho_swav"])
def test_train_step_with_a_vit_on_eight_devices(name):
    encoder = ViT(size="Ti", width=16, depth=1, heads=2, patch=(2, 8, 8))
    small = {"head_hidden": 16, "head_out": 8}
    extras = {
        "rho_moco": {"queue_size": 64},
        "rho_byol": {"predictor_hidden": 16},
        "rho_swav": {"num_prototypes": 6},
    }
    objective = registry.get("objective", name)(encoder=encoder, **small, **extras[name])
    objective = objective.for_training(RunLength(steps_per_epoch=10, batch_size=16, total_steps=10))
    tx, schedule = optim.make(
        optim.OptimConfig(name="sgd", lr=0.1, schedule="constant"),
        RunLength(steps_per_epoch=10, batch_size=16, total_steps=10),
    )
    rng = np.random.default_rng(5)
    batch = {"video": rng.integers(0, 256, (16, 2, 2, 16, 16, 3), dtype=np.uint8)}
    cfg = sharding.MeshConfig(data=8)
    mesh, rules = sharding.make_mesh(cfg), cfg.axis_rules()
    state, shardings = init_state(objective, tx, {"video": batch["video"][:2]}, mesh, rules, 0)
    step = make_train_step(objective, tx, schedule, 0, 1, False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        batch_shardings = {"video": sharding.batch_sharding(mesh, 6)}
        fn = jax.jit(
            step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None)
        )
        before = jax.device_get(state)
        after, metrics = fn(state, sharding.to_global(batch, mesh))
    assert np.isfinite(float(metrics["train/loss"]))
    moved = jax.tree.map(
        lambda a, b: float(np.abs(a - np.asarray(b)).sum()), before.params, after.params
    )
    assert sum(jax.tree.leaves(moved)) > 0
    if name == "rho_moco":
        queue = after.extra["queue"]
        assert queue.sharding.spec[0] in ("data", ("data", "fsdp"))  # rows over the data axis
        assert len({s.device for s in queue.addressable_shards}) == 8
        assert queue.addressable_shards[0].data.shape == (8, 8)
        assert int(after.extra["queue_ptr"]) == 32  # 16 videos x 2 clips
        # The enqueued rows are the target's unit keys, the rest of the queue is untouched.
        np.testing.assert_allclose(np.linalg.norm(np.asarray(queue[:32]), axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(
            np.asarray(queue[32:]), np.asarray(before.extra["queue"][32:])
        )
    if name in ("rho_moco", "rho_byol"):
        # The target moved towards the updated online network (momentum < 1), not by the step.
        target = jax.tree.leaves(after.extra["target"]["encoder"])
        online = jax.tree.leaves(before.extra["target"]["encoder"])
        assert any(not np.allclose(a, b) for a, b in zip(target, online))


def test_batch_norm_sees_one_clip_at_a_time():
    """As the reference's forward pass per clip: the head's batch norm normalises each clip's
    batch and its running statistics are updated once per clip."""
    encoder = ViT(size="Ti", width=16, depth=1, heads=2, patch=(2, 8, 8))
    objective = rho.RhoSwAV(encoder=encoder, head_hidden=8, head_out=4, num_prototypes=3)
    video = jnp.asarray(np.random.default_rng(6).integers(0, 256, (4, 2, 2, 16, 16, 3)), jnp.uint8)
    params, extra = nn.meta.unbox(objective.init(jax.random.key(0), {"video": video}))
    project = jax.jit(lambda o, v, s: o.project(params, s, v, True), static_argnums=0)
    z, stats = project(objective, video, extra["batch_stats"])
    first, after_first = project(objective, video[:, :1], extra["batch_stats"])
    second, after_both = project(objective, video[:, 1:], after_first)
    np.testing.assert_allclose(z, np.concatenate([first, second], axis=1), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(after_both)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
