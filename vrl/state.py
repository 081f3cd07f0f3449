"""The train state and the jitted step that advances it, free of the data stack.

Kept apart from the loop in train.py so benchmarks time exactly the step training runs, on
machines that have jax and flax but no input pipeline libraries.
"""

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from vrl import sharding
from vrl.objectives.base import Objective


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient, or diverged parameters; the last good checkpoint is kept."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    extra: Any
    skipped_steps: jax.Array


def init_state(objective: Objective, tx, init_batch: dict, mesh, rules, seed: int):
    """(state, shardings): the state is created directly in its sharded layout."""
    init, shardings = _state_init(objective, tx, init_batch, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(init_key(seed))
    return state, shardings


def abstract_init_state(objective: Objective, tx, init_batch: dict, mesh, rules):
    """(abstract state, shardings): the shapes `init_state` would make, with nothing
    allocated (ahead-of-time compilation for devices this machine does not have)."""
    init, shardings = _state_init(objective, tx, init_batch, mesh, rules)
    key = init_key(0)  # on this machine's device, outside a mesh of devices it may not have
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(init, key)
    return abstract_state(shardings, nn.meta.unbox(boxed)), shardings


def _state_init(objective: Objective, tx, init_batch: dict, mesh, rules):
    """(init(rng) -> TrainState, the state's shardings under the logical axis rules)."""

    def init(rng):
        params, extra = objective.init(rng, init_batch)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            extra=extra,
            skipped_steps=jnp.zeros((), jnp.int32),
        )

    key = init_key(0)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        abstract = jax.eval_shape(init, key)
        return init, sharding.logical_shardings(abstract, mesh, rules)


def compile_step(step_fn, state, state_shardings, device_batch: dict):
    """`step_fn` compiled for this state and global batch layout, the state donated.

    Call under `jax.set_mesh(mesh)` and the logical axis rules, as the step runs there.
    """
    batch_shardings = jax.tree.map(lambda x: x.sharding, device_batch)
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )
    return jitted.lower(state, device_batch).compile()


def init_key(seed: int) -> jax.Array:
    """The key parameters are initialised from.

    An "rbg" key: parameter init draws once per tensor, and XLA compiles threefry's bit
    generation for every one of them; on CPU that made R3D-18's init compile 4x slower
    (67 s vs 16 s measured side by side). Training randomness (dropout, mixing) stays on the
    default threefry keys, which are partitionable and identical under any sharding.
    """
    return jax.random.key(seed, impl="rbg")


def abstract_state(state_shardings, state) -> Any:
    return jax.tree.map(
        lambda s, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state_shardings, state
    )


def make_train_step(
    objective: Objective, tx, lr_schedule, seed: int, accum: int, skip_nonfinite: bool
):
    base_key = jax.random.key(seed)

    def grads_of(params, extra, batch, rng):
        def loss_fn(p):
            return objective.loss(p, extra, batch, rng, train=True)

        (loss, (metrics, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, metrics, extra, grads

    def accumulated(params, extra, batch, rng):
        micro = jax.tree.map(lambda x: x.reshape(accum, x.shape[0] // accum, *x.shape[1:]), batch)

        def body(carry, xs):
            extra, grads_sum = carry
            mb, i = xs
            loss, metrics, extra, grads = grads_of(params, extra, mb, jax.random.fold_in(rng, i))
            return (extra, jax.tree.map(jnp.add, grads_sum, grads)), (loss, metrics)

        zeros = jax.tree.map(jnp.zeros_like, params)
        (extra, grads), (losses, metrics) = jax.lax.scan(
            body, (extra, zeros), (micro, jnp.arange(accum))
        )
        grads = jax.tree.map(lambda g: g / accum, grads)
        return losses.mean(), jax.tree.map(jnp.mean, metrics), extra, grads

    def train_step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_key, state.step)
        compute = accumulated if accum > 1 else grads_of
        loss, metrics, extra, grads = compute(state.params, state.extra, batch, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra = objective.update_extra(extra, params, state.step)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new = TrainState(state.step + 1, params, opt_state, extra, state.skipped_steps)
        if skip_nonfinite:
            keep_old = lambda new_x, old_x: jnp.where(finite, new_x, old_x)
            new = new.replace(
                params=jax.tree.map(keep_old, new.params, state.params),
                opt_state=jax.tree.map(keep_old, new.opt_state, state.opt_state),
                extra=jax.tree.map(keep_old, new.extra, state.extra),
                skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
            )
        metrics = {f"train/{k}": v for k, v in metrics.items()}
        metrics.update(
            {
                "train/loss": loss,
                "train/grad_norm": grad_norm,
                "train/lr": lr_schedule(state.step),
                "train/finite": finite,
                "train/skipped_steps": new.skipped_steps,
                # The trainer stops when it passes config.max_param_norm (diverged but finite).
                "train/param_norm": optax.global_norm(new.params),
            }
        )
        return new, metrics

    return train_step


def batch_spec(batch: dict) -> dict[str, list]:
    """{key: [shape, dtype]} of a batch, JSON-friendly (stored with checkpoints)."""
    return {k: [list(np.shape(v)), str(np.asarray(v).dtype)] for k, v in batch.items()}


def spec_batch(spec: dict[str, list]) -> dict[str, np.ndarray]:
    """Zeros shaped like a stored `batch_spec`."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}


def check_step(values: dict, step: int, on_nonfinite: str, max_param_norm: float | None) -> None:
    """Acts on a step's fetched metrics: a non-finite loss or gradient stops the run (or, with
    on_nonfinite='skip', was skipped by the step and is logged), and so do parameters whose
    norm passes `max_param_norm` (diverged, still finite)."""
    if not values["train/finite"]:
        bad = [k for k in ("train/loss", "train/grad_norm") if not np.isfinite(values[k])]
        message = (
            f"non-finite training at step {step} ({', '.join(bad)}): "
            f"loss={float(values['train/loss'])}, grad_norm={float(values['train/grad_norm'])}"
        )
        if on_nonfinite == "stop":
            raise NonFiniteError(
                message + "; the last good checkpoint is kept "
                "(set config.on_nonfinite='skip' to skip such steps)"
            )
        logging.warning("%s; update skipped.", message)
    norm = values.get("train/param_norm")
    if max_param_norm and norm is not None and not float(norm) <= max_param_norm:
        raise NonFiniteError(
            f"parameters diverged at step {step} (train/param_norm): param_norm={float(norm):.4g} "
            f"> config.max_param_norm={max_param_norm:g}; the last good checkpoint is kept "
            "(lower the learning rate; raise config.max_param_norm, or set it to 0 to switch "
            "the check off)"
        )
