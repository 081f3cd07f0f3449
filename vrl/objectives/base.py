"""The contract between the trainer and every objective.

The trainer knows nothing about any particular objective: it asks the objective for
its variables, its loss and its post-step update, and hands it batches. An objective is a
dataclass built from `config.objective` with the encoder module passed in, so its fields are
its config schema (see `vrl.config`).

Variables are split in two trees:
  params  what the optimiser updates, e.g. {"encoder": ..., "head": ...}
  extra   everything else that is state: batch-norm statistics {"batch_stats": ...},
          an EMA target {"target": ...}, a frozen teacher {"teacher": ...}
"""

import abc
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import config as config_lib
from vrl import registry
from vrl.data.types import ClipSpec, Op
from vrl.durations import RunLength

PyTree = Any
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class InitialWeights:
    """Weights an objective starts from: encoder `which` of the run in `workdir` at `step`."""

    workdir: str
    step: int | None = None
    which: str = "encoder"
    key: str = "config.objective"  # the config key that names `workdir`, for error messages
    # Top-level parameter names of the saved encoder left out on purpose (e.g. "norm" when
    # fine-tuning without the pretrained final norm, as VideoMAE does); each must exist.
    drop: tuple[str, ...] = ()


class Objective(abc.ABC):
    """Base class; subclasses are dataclasses with an `encoder: nn.Module` field."""

    encoder: nn.Module

    def batch_ops(self, clip: ClipSpec) -> list[Op]:
        """Extra pipeline ops (mask generation) appended after augmentation; called at start-up
        with the clips the train ops make. By default none, for one clip per video: objectives
        that take several views (or make masks) override it and check the views themselves."""
        check_views(self, clip, 1)
        return []

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: dict) -> tuple[PyTree, PyTree]:
        """(params, extra) for a batch of the training shape; called under jax.eval_shape."""

    @abc.abstractmethod
    def loss(
        self, params: PyTree, extra: PyTree, batch: dict, rng: jax.Array, train: bool
    ) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
        """(scalar loss, (metrics, new extra)); `extra` may change (batch statistics)."""

    def update_extra(self, extra: PyTree, params: PyTree, step: jax.Array) -> PyTree:
        """After each optimiser step (EMA target update); identity by default."""
        return extra

    def for_training(self, length: RunLength) -> "Objective":
        """This objective with schedules sized to the run (V-JEPA's EMA horizon); default: self."""
        return self

    def initial_weights(self) -> dict[str, "InitialWeights"]:
        """{encoder name: where its weights come from} for state that comes from outside the run,
        placed after a fresh init (never on resume): a pretrained encoder to fine-tune, a frozen
        teacher. `vrl.weights` loads them strictly; by default none."""
        return {}

    def external_models(self) -> dict[str, "InitialWeights"]:
        """{field: the run} for model configs this objective takes from another run's checkpoint
        when its config does not give them (SALT's teacher); see `with_models`."""
        return {}

    def with_models(self, models: dict[str, dict]) -> "Objective":
        """This objective with the model configs `external_models` asked for filled in."""
        return dataclasses.replace(self, **models)

    def set_encoder_variables(
        self, params: PyTree, extra: PyTree, which: str, variables: PyTree
    ) -> tuple[PyTree, PyTree]:
        """(params, extra) with the variables of encoder `which` replaced (the inverse of
        `encoder_variables`); the online encoder's batch statistics travel with it."""
        if which != "encoder":
            raise ValueError(f"objective has no {which!r} encoder; allowed: encoder")
        params = {**params, "encoder": variables["params"]}
        if "batch_stats" in variables:
            stats = {**extra.get("batch_stats", {}), "encoder": variables["batch_stats"]}
            extra = {**extra, "batch_stats": stats}
        return params, extra

    def layer_ids(self, params: PyTree) -> tuple[PyTree, int]:
        """(tree of layer numbers, L) for layer-wise lr decay: 0 for the encoder's embedding or
        stem, 1..L for its blocks in network order (ViT blocks, R3D stages' blocks), L + 1 for
        everything after (norms, heads); see `layer_ids`."""
        return layer_ids(params)

    def encoder_variables(self, params: PyTree, extra: PyTree, which: str = "encoder") -> PyTree:
        """Variables for `self.encoder.apply`: the online encoder, or e.g. "target"/"teacher"."""
        if which != "encoder":
            raise ValueError(f"objective has no {which!r} encoder; allowed: encoder")
        stats = extra.get("batch_stats", {}).get("encoder") if extra else None
        return variables(params["encoder"], stats)

    def encoders(self) -> tuple[str, ...]:
        """Names accepted by `encoder_variables` (what a probe may measure)."""
        return ("encoder",)


def with_ema_horizon(objective: "Objective", length: RunLength) -> "Objective":
    """`objective` with its `ema_steps|_epochs|_fraction` resolved to `ema_steps` (default:
    the whole run), for the EMA targets' `for_training`."""
    horizon = length.steps(objective, "ema", "config.objective", default=length.total_steps)
    return dataclasses.replace(objective, ema_steps=horizon, ema_epochs=None, ema_fraction=None)


def ema(target: PyTree, online: PyTree, momentum: jax.Array) -> PyTree:
    """The moving average `momentum * target + (1 - momentum) * online`, leaf by leaf."""
    return jax.tree.map(lambda t, p: momentum * t + (1.0 - momentum) * p, target, online)


def variables(params: PyTree, batch_stats: PyTree | None) -> dict:
    """Variables for a module's `apply`: its params, and its batch statistics where it has any."""
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def check_views(objective: Objective, clip: ClipSpec, views: int) -> None:
    """Refuses train ops that make another number of views per video than `objective` takes
    (else the compiled step fails on a shape)."""
    if clip.views == views:
        return
    name = next(
        (n for n in registry.names("objective") if type(objective) is registry.get("objective", n)),
        type(objective).__name__,
    )
    hint = "uniform_clip(...)" if views == 1 else f"an op making {views} views"
    takes = "one clip" if views == 1 else f"{views} views"
    raise config_lib.ConfigError(
        f"config.objective ({name}) takes {takes} per video, the train ops make "
        f"{clip.views} views; start config.data.train_pp with {hint}"
    )


def layer_ids(params: PyTree) -> tuple[PyTree, int]:
    """Layer numbers from parameter names: the encoder's stem (`embed`, `stem*`) -> 0, its blocks
    in network order -> 1..L (ViT `block{i}`, or a scanned run `blocks{a}_{b}` with one number per
    stacked layer, shaped to broadcast over the leaf; CVRL R3D `res{s}_block{i}` and torchvision
    `layer{s}_block{i}`, ordered by stage then block), everything else (norms, heads) -> L + 1."""
    stem = re.compile(r"'encoder'.*'(embed|stem[^']*)'")
    block = re.compile(r"'encoder'.*'(?:(?:res|layer)(\d+)_)?block(\d+)'")
    scanned = re.compile(r"'encoder'.*'blocks(\d+)_(\d+)'")

    def block_keys(path) -> list[tuple[int, int]]:
        name = jax.tree_util.keystr(path)
        if m := scanned.search(name):
            return [(0, i) for i in range(int(m.group(1)), int(m.group(2)))]
        m = block.search(name)
        return [(int(m.group(1) or 0), int(m.group(2)))] if m else []

    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    keys = {k for p, _ in flat for k in block_keys(p)}
    order = {key: i + 1 for i, key in enumerate(sorted(keys))}

    def number(path, leaf):
        if scanned.search(jax.tree_util.keystr(path)):
            ids = np.array([order[k] for k in block_keys(path)], np.int32)
            return ids.reshape(-1, *[1] * (len(leaf.shape) - 1))
        if here := block_keys(path):
            return order[here[0]]
        return 0 if stem.search(jax.tree_util.keystr(path)) else len(order) + 1

    return jax.tree_util.tree_map_with_path(number, params), len(order)


def build(config: Mapping, dtype=jnp.float32) -> Objective:
    """The objective (with its encoder) that a run config (a plain dict) describes."""
    encoder = config_lib.component("model", config.get("model"), "config.model", dtype=dtype)
    return config_lib.component(
        "objective", config.get("objective"), "config.objective", encoder=encoder
    )
