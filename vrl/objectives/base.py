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
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vrl import registry

PyTree = Any
Metrics = dict[str, jax.Array]
# A numpy op the pipeline applies to each example: (example, rng) -> example.
Op = Callable[[dict, Any], dict]


@dataclasses.dataclass(frozen=True)
class ClipSpec:
    """Shape of one view of a clip as the model sees it; lets objectives size their masks."""

    frames: int
    height: int
    width: int
    views: int = 1


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

    def for_training(self, total_steps: int) -> "Objective":
        """This objective with schedules sized to the run (V-JEPA's EMA momentum); default: self."""
        return self

    def post_init(self, params: PyTree, extra: PyTree) -> tuple[PyTree, PyTree]:
        """Fills in state that comes from outside the run after a fresh init (never on resume):
        a frozen teacher, or pretrained encoder weights to fine-tune. Values must keep their
        shapes; the trainer lays them out as the init did."""
        return params, extra

    def layer_ids(self, params: PyTree) -> tuple[PyTree, int]:
        """(tree of layer numbers, L) for layer-wise lr decay: 0 for the encoder's embedding,
        i + 1 for its block i, L + 1 for everything after (norms, heads)."""
        return layer_ids(params)

    def encoder_variables(self, params: PyTree, extra: PyTree, which: str = "encoder") -> PyTree:
        """Variables for `self.encoder.apply`: the online encoder, or e.g. "target"/"teacher"."""
        if which != "encoder":
            raise ValueError(f"objective has no {which!r} encoder; allowed: encoder")
        variables = {"params": params["encoder"]}
        stats = extra.get("batch_stats", {}).get("encoder") if extra else None
        if stats:
            variables["batch_stats"] = stats
        return variables

    def encoders(self) -> tuple[str, ...]:
        """Names accepted by `encoder_variables` (what a probe may measure)."""
        return ("encoder",)


def check_views(objective: Objective, clip: ClipSpec, views: int) -> None:
    """Refuses train ops that make another number of views per video than `objective` takes
    (else the compiled step fails on a shape)."""
    if clip.views == views:
        return
    from vrl import config as config_lib  # noqa: PLC0415 - config imports the registry

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
    """Layer numbers from parameter names: `encoder/embed*` -> 0, `encoder/block{i}` -> i + 1."""
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = [int(m.group(1)) for p in paths if (m := re.search(r"'encoder'.*'block(\d+)'", p))]
    num_layers = max(blocks) + 1 if blocks else 0

    def number(path, _):
        name = jax.tree_util.keystr(path)
        if (m := re.search(r"'encoder'.*'block(\d+)'", name)) is not None:
            return int(m.group(1)) + 1
        if re.search(r"'encoder'.*'embed'", name):
            return 0
        return num_layers + 1

    return jax.tree_util.tree_map_with_path(number, params), num_layers


def build(config: Mapping, dtype=jnp.float32) -> Objective:
    """The objective (with its encoder) that a run config (a plain dict) describes."""
    from vrl import config as config_lib  # noqa: PLC0415 - config imports the registry

    encoder = config_lib.component("model", config.get("model"), "config.model", dtype=dtype)
    return config_lib.component(
        "objective", config.get("objective"), "config.objective", encoder=encoder
    )
