"""NT-Xent against a plain numpy reference, and over a sharded global batch."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vrl.objectives.cvrl import nt_xent


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
