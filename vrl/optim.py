"""Optimisers and schedules from `config.optim`, all plain optax.

Schedules are functions of the step, so a resumed run continues them exactly (nothing is
replayed). Weight decay touches kernels only (no biases, norms, embeddings of positions or mask
tokens), as in every recipe we follow.
"""

import dataclasses
from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vrl import config as config_lib
from vrl.durations import RunLength


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "lars", "adamw"] = "adamw"
    # Peak learning rate; multiplied by batch_size / lr_base_batch when lr_base_batch is set
    # (the "lr x batch / 256" rule of the MAE family).
    lr: float = 1e-3
    lr_base_batch: int | None = None
    schedule: Literal["cosine", "constant"] = "cosine"
    # Warmup: at most one of steps, epochs, examples or a fraction of the run; none: 0 steps.
    warmup_steps: int | None = None
    warmup_epochs: float | None = None
    warmup_examples: int | None = None
    warmup_fraction: float | None = None
    warmup_init_lr: float = 0.0
    end_lr: float = 0.0
    # Stretch every schedule over total_steps * schedule_scale (V-JEPA: 1.25, stopped at 80%).
    schedule_scale: float = 1.0
    weight_decay: float = 0.0
    # When set, weight decay follows a cosine from weight_decay to this value (V-JEPA 0.04 -> 0.4).
    weight_decay_end: float | None = None
    momentum: float = 0.9
    nesterov: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    trust_coefficient: float = 0.001
    clip_norm: float | None = None
    # Clip each top-level part of the parameters (V-JEPA: encoder, predictor) to clip_norm on
    # its own, instead of their joint norm; and start clipping only at this step or epoch
    # (V-JEPA: `epoch > warmup`). Defaults: joint norm, from the first step.
    clip_per_module: bool = False
    clip_from_steps: int | None = None
    clip_from_epochs: float | None = None
    # Layer-wise lr decay (fine-tuning): a parameter in layer i of L gets lr * decay^(L + 1 - i).
    layer_decay: float | None = None
    # Micro-batches per step: the batch is split and gradients summed inside one jitted step.
    grad_accum_steps: int = 1

    def __post_init__(self):
        config_lib.check_ranges(
            "config.optim",
            self,
            lr=(">= 0", lambda v: v >= 0),
            grad_accum_steps=(">= 1", lambda v: v >= 1),
            schedule_scale=("> 0", lambda v: v > 0),
        )


def learning_rate(cfg: OptimConfig, length: RunLength):
    """The learning-rate schedule (a function of the optimiser step)."""
    peak = cfg.lr * (length.batch_size / cfg.lr_base_batch if cfg.lr_base_batch else 1.0)
    warmup = length.steps(cfg, "warmup", "config.optim", default=0)
    horizon = max(int(length.total_steps * cfg.schedule_scale), warmup + 1)
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            cfg.warmup_init_lr, peak, warmup, horizon, end_value=cfg.end_lr
        )
    return optax.join_schedules(
        [
            optax.linear_schedule(cfg.warmup_init_lr, peak, max(warmup, 1)),
            optax.constant_schedule(peak),
        ],
        [warmup],
    )


def weight_decay(cfg: OptimConfig, total_steps: int):
    """A constant, or a cosine from weight_decay to weight_decay_end (up or down)."""
    if cfg.weight_decay_end is None:
        return cfg.weight_decay
    start, end = cfg.weight_decay, cfg.weight_decay_end
    horizon = max(int(total_steps * cfg.schedule_scale), 1)

    def schedule(step):
        frac = jnp.clip(step / horizon, 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def kernel_mask(params):
    """True for the leaves called `kernel` (dense and conv weights): what weight decay touches."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _leaf_name(path) == "kernel", params)


def _leaf_name(path) -> str:
    names = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    return str(names[-1]) if names else ""


def make(
    cfg: OptimConfig, length: RunLength, layer_ids: Callable | None = None
) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, learning-rate schedule) for a run of `length`.

    `layer_ids(params) -> (tree of ints, L)` enables layer-wise lr decay.
    """
    lr = learning_rate(cfg, length)
    wd = weight_decay(cfg, length.total_steps)
    parts = []
    clip_from = length.steps(cfg, "clip_from", "config.optim", default=0)
    if cfg.clip_norm is not None and (cfg.clip_per_module or clip_from):
        parts.append(clip_by_norm(cfg.clip_norm, cfg.clip_per_module, clip_from))
    elif cfg.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_norm))
    if cfg.name == "sgd":
        # L2 regularisation as in the CVRL release: decay added to the gradient before momentum.
        parts += [
            optax.add_decayed_weights(wd, kernel_mask),
            optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
        ]
    elif cfg.name == "lars":
        parts.append(
            optax.lars(
                lr,
                weight_decay=wd,
                weight_decay_mask=kernel_mask,
                trust_coefficient=cfg.trust_coefficient,
                trust_ratio_mask=kernel_mask,
                momentum=cfg.momentum,
                nesterov=cfg.nesterov,
            )
        )
    else:
        parts += [
            optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
            optax.add_decayed_weights(wd, kernel_mask),
            optax.scale_by_learning_rate(lr),
        ]
    if cfg.layer_decay is not None:
        if layer_ids is None:
            raise ValueError("config.optim.layer_decay needs an encoder with numbered layers (vit)")
        parts.append(_scale_by_layer(cfg.layer_decay, layer_ids))
    return optax.chain(*parts), lr


def _scale_by_layer(decay: float, layer_ids: Callable) -> optax.GradientTransformation:
    def init(params):
        if layer_ids(params)[1] == 0:  # else every parameter would keep lr x 1: a silent no-op
            raise config_lib.ConfigError(
                "config.optim.layer_decay: the encoder has no numbered layers (block{i}, "
                "res{s}_block{i}, layer{s}_block{i}); allowed: None"
            )
        return optax.EmptyState()

    def update(updates, state, params=None):
        ids, num_layers = layer_ids(updates)
        return jax.tree.map(lambda u, i: u * decay ** (num_layers + 1 - i), updates, ids), state

    return optax.GradientTransformation(init, update)


class ClipState(NamedTuple):
    count: jax.Array  # updates made so far


def clip_by_norm(max_norm: float, per_module: bool, from_step: int):
    """Gradients scaled to at most `max_norm` of global norm (per top-level part of the tree
    with `per_module`), from update `from_step` on; as torch's `clip_grad_norm_`, the scale
    is max_norm / (norm + 1e-6) where that is below 1."""

    def clip(tree, active):
        norm = optax.global_norm(tree)
        scale = jnp.where(active, jnp.minimum(1.0, max_norm / (norm + 1e-6)), 1.0)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), tree)

    def init(params):
        del params
        return ClipState(count=jnp.zeros([], jnp.int32))

    def update(updates, state, params=None):
        del params
        active = state.count >= from_step
        if per_module:
            updates = {name: clip(part, active) for name, part in updates.items()}
        else:
            updates = clip(updates, active)
        return updates, ClipState(count=state.count + 1)

    return optax.GradientTransformation(init, update)
