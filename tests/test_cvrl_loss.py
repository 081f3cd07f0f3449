"""NT-Xent against a plain numpy reference, over a sharded global batch, and against the
released CVRL loss and the optimiser step its trainer makes."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vrl import config as config_lib
from vrl import optim
from vrl.durations import RunLength
from vrl.objectives.cvrl import nt_xent

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs")


def numpy_nt_xent(z1, z2, temperature):
    """SimCLR's loss written out clip by clip."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    n = len(z)
    losses = []
    for i in range(n):
        partner = (i + n // 2) % n
        sims = np.array([z[i] @ z[j] / temperature for j in range(n)])
        others = [j for j in range(n) if j != i]
        log_denominator = np.log(np.sum(np.exp(sims[others])))
        losses.append(-(sims[partner] - log_denominator))
    return np.mean(losses)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_nt_xent_matches_numpy():
    rng = np.random.default_rng(0)
    z1, z2 = unit(rng.normal(size=(6, 5))), unit(rng.normal(size=(6, 5)))
    for temperature in (0.1, 0.5):
        loss, _ = nt_xent(jnp.asarray(z1), jnp.asarray(z2), temperature)
        np.testing.assert_allclose(float(loss), numpy_nt_xent(z1, z2, temperature), rtol=1e-5)


def test_nt_xent_accuracy_and_minimum():
    rng = np.random.default_rng(1)
    z = unit(rng.normal(size=(8, 16)))
    loss_same, acc_same = nt_xent(jnp.asarray(z), jnp.asarray(z), 0.1)
    loss_rand, _ = nt_xent(jnp.asarray(z), jnp.asarray(unit(rng.normal(size=(8, 16)))), 0.1)
    assert float(acc_same) == 1.0
    assert float(loss_same) < float(loss_rand)


def test_sharded_loss_equals_unsharded():
    """The loss over a batch split across 8 devices uses negatives from every device."""
    rng = np.random.default_rng(2)
    z1, z2 = unit(rng.normal(size=(16, 8))), unit(rng.normal(size=(16, 8)))
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    shard = NamedSharding(mesh, PartitionSpec("data"))
    a, b = jax.device_put(z1, shard), jax.device_put(z2, shard)
    sharded, _ = jax.jit(nt_xent, static_argnums=2)(a, b, 0.1)
    single, _ = nt_xent(jnp.asarray(z1), jnp.asarray(z2), 0.1)
    np.testing.assert_allclose(float(sharded), float(single), rtol=1e-6)
    np.testing.assert_allclose(float(sharded), numpy_nt_xent(z1, z2, 0.1), rtol=1e-5)
    # A per-device loss (negatives from the local shard only) would differ:
    local = np.mean([numpy_nt_xent(z1[i : i + 2], z2[i : i + 2], 0.1) for i in range(0, 16, 2)])
    assert abs(local - float(sharded)) > 1e-3


# --- The released CVRL loss and the step it makes (TF Model Garden official/projects/video_ssl) --


def tf_reference_losses(h1, h2, temperature, replicas=1):
    """losses.py `contrastive_loss` (normalize_hidden=True, no L2 term) on each of `replicas`
    TPU replicas holding B / replicas videos: every replica L2-normalises its rows, gathers all
    replicas' rows as negatives (tpu_cross_replica_concat) and returns loss_a + loss_b, each a
    mean over its local rows. One loss per replica."""
    h1, h2 = unit(np.asarray(h1, np.float64)), unit(np.asarray(h2, np.float64))
    local = len(h1) // replicas

    def cross_entropy(query, same, other, labels_idx):
        logits_ab = query @ other.T / temperature
        logits_aa = query @ same.T / temperature
        logits_aa[np.arange(local), labels_idx] -= 1e9  # the large_num mask on self-similarity
        logits = np.concatenate([logits_ab, logits_aa], axis=1)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -np.mean(log_probs[np.arange(local), labels_idx])

    losses = []
    for replica in range(replicas):
        labels_idx = np.arange(local) + replica * local
        rows = slice(replica * local, (replica + 1) * local)
        loss_a = cross_entropy(h1[rows], h1, h2, labels_idx)
        loss_b = cross_entropy(h2[rows], h2, h1, labels_idx)
        losses.append(loss_a + loss_b)
    return losses


def tf_reference_gradient(h1, h2, temperature, replicas=1, eps=1e-6):
    """What the TF trainer applies (tasks/pretrain.py): the gradient of every replica's loss,
    *not* divided by num_replicas, summed over replicas by Keras' apply_gradients. Central
    differences in float64 w.r.t. the unnormalised projections [h1; h2]."""
    h = np.concatenate([h1, h2]).astype(np.float64)
    grad = np.zeros_like(h)
    for idx in np.ndindex(*h.shape):
        step = np.zeros_like(h)
        step[idx] = eps
        up = sum(tf_reference_losses(*np.split(h + step, 2), temperature, replicas))
        down = sum(tf_reference_losses(*np.split(h - step, 2), temperature, replicas))
        grad[idx] = (up - down) / (2 * eps)
    return grad


def vrl_gradient(h1, h2, temperature, reduction):
    """Gradient of vrl's loss w.r.t. [h1; h2], normalised as `CVRL.loss` does."""

    def loss(h):
        z = h / jnp.linalg.norm(h, axis=-1, keepdims=True)
        z1, z2 = jnp.split(z, 2)
        return nt_xent(z1, z2, temperature, reduction)[0]

    return np.asarray(jax.grad(loss)(jnp.asarray(np.concatenate([h1, h2]), jnp.float32)))


def recipe():
    return config_lib.load_file(os.path.join(CONFIGS, "cvrl_k600.py"))


def test_sum_reduction_is_the_released_loss_and_mean_is_half_of_it():
    rng = np.random.default_rng(3)
    h1, h2 = rng.normal(size=(8, 6)), rng.normal(size=(8, 6))
    z1, z2 = jnp.asarray(unit(h1)), jnp.asarray(unit(h2))
    (reference,) = tf_reference_losses(h1, h2, 0.1)
    total, _ = nt_xent(z1, z2, 0.1, "sum")
    mean, _ = nt_xent(z1, z2, 0.1, "mean")
    np.testing.assert_allclose(float(total), reference, rtol=1e-5)
    np.testing.assert_allclose(float(mean), reference / 2, rtol=1e-5)
    # On 4 replicas each TF replica's loss (negatives from all replicas) averages to the same.
    np.testing.assert_allclose(np.mean(tf_reference_losses(h1, h2, 0.1, 4)), reference, rtol=1e-9)


def test_recipe_uses_the_released_reduction_and_optimiser():
    config = recipe()
    assert config.objective.loss_reduction == "sum" and config.objective.temperature == 0.1
    # cvrl_pretrain_k600_200ep.yaml over video_classification.add_trainer: SGD momentum 0.9
    # without Nesterov, cosine from 0.32 with linear warmup, L2 1e-6, batch 1024.
    assert (config.optim.name, config.optim.lr, config.optim.momentum) == ("sgd", 0.32, 0.9)
    assert config.optim.nesterov is False and config.optim.weight_decay == 1e-6
    assert config.data.batch_size == 1024


def test_recipe_gradient_equals_the_reference_gradient():
    """With the recipe's reduction vrl's gradient is the one the TF trainer applies on one
    replica; on R replicas TF applies R times it (no division by num_replicas), which is why
    an R-core TF run corresponds to lr 0.32 * R here."""
    config = recipe()
    rng = np.random.default_rng(4)
    h1, h2 = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    temperature = config.objective.temperature
    ours = vrl_gradient(h1, h2, temperature, config.objective.loss_reduction)
    np.testing.assert_allclose(ours, tf_reference_gradient(h1, h2, temperature), atol=1e-4)
    np.testing.assert_allclose(
        2 * ours, tf_reference_gradient(h1, h2, temperature, replicas=2), atol=2e-4
    )
    # The SimCLR-style mean would take half the reference step at the same lr.
    np.testing.assert_allclose(2 * vrl_gradient(h1, h2, temperature, "mean"), ours, rtol=1e-5)


def test_recipe_first_sgd_step_equals_the_keras_step():
    """One step of the recipe's optimiser on a linear projection h = x @ W: vrl adds L2 decay to
    the gradient (optax), TF adds wd * tf.nn.l2_loss(W) to the loss; Keras SGD's first step with
    momentum is -lr * gradient. Constant lr here so that step 0 is not inside the warmup."""
    config = recipe()
    cfg = config_lib.instantiate(optim.OptimConfig, config.optim.to_dict(), "config.optim")
    cfg = dataclasses.replace(cfg, schedule="constant", warmup_epochs=None)
    tx, _ = optim.make(cfg, RunLength(steps_per_epoch=10, batch_size=4, total_steps=10))
    rng = np.random.default_rng(5)
    x1, x2 = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    w = rng.normal(size=(5, 3))
    temperature, reduction = config.objective.temperature, config.objective.loss_reduction

    def loss(params):
        z = jnp.concatenate([x1, x2]).astype(jnp.float32) @ params["kernel"]
        z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
        return nt_xent(*jnp.split(z, 2), temperature, reduction)[0]

    params = {"kernel": jnp.asarray(w, jnp.float32)}
    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params)

    def reference_loss(kernel):
        h1, h2 = x1 @ kernel.reshape(w.shape), x2 @ kernel.reshape(w.shape)
        l2 = cfg.weight_decay * 0.5 * np.sum(kernel**2)  # wd * tf.nn.l2_loss(kernel)
        return tf_reference_losses(h1, h2, temperature)[0] + l2

    eps, flat = 1e-6, w.reshape(-1)
    grad = np.array(
        [
            (reference_loss(flat + eps * e) - reference_loss(flat - eps * e)) / (2 * eps)
            for e in np.eye(flat.size)
        ]
    ).reshape(w.shape)
    np.testing.assert_allclose(np.asarray(updates["kernel"]), -cfg.lr * grad, atol=1e-5)
