"""A run config checked and typed, before any array exists.

`setup(config)` turns every section into its dataclass (each checks its own ranges in
`__post_init__`), builds the objective with its encoder and the training source and ops, and
raises `config.ConfigError` with one line naming the key at the first mistake. Config files
import `TrainConfig` from here to list the top-level keys, without importing the trainer.
"""

import dataclasses
from typing import Any, Literal

import jax.numpy as jnp

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import durations, optim, sharding, weights
from vrl.data import pipeline
from vrl.objectives import base

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The top level of a run config; sections stay dicts here and are typed in `Setup`."""

    seed: int = 0
    # The run's length: set exactly one (see vrl/durations.py).
    total_steps: int | None = None
    total_epochs: float | None = None
    total_examples: int | None = None
    log_every_steps: int = 50
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # What to do with a non-finite loss or gradient: stop, or skip the update and count it.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Seconds a SIGTERM (preemption) may take to save and exit.
    preemption_grace_s: float = 60.0
    # Stop (like a non-finite loss) once the parameters' global norm passes this: a diverged
    # run whose numbers are still finite. Far above any healthy model's; None or 0: no check.
    max_param_norm: float | None = 1e6
    # Resume even if the seed, batch size or training data differ from the saved run's.
    allow_config_change: bool = False
    data: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)
    objective: dict = dataclasses.field(default_factory=dict)
    optim: dict = dataclasses.field(default_factory=dict)
    mesh: dict = dataclasses.field(default_factory=dict)
    ckpt: dict = dataclasses.field(default_factory=dict)
    evals: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        lengths = [u for u in durations.UNITS[:3] if getattr(self, f"total_{u}") is not None]
        if len(lengths) != 1:
            raise config_lib.ConfigError(
                "config.total_steps / config.total_epochs / config.total_examples: "
                f"set exactly one (got {len(lengths)})"
            )
        config_lib.check_ranges(
            "config",
            self,
            total_steps=(">= 1", lambda v: v is None or v >= 1),
            total_epochs=("> 0", lambda v: v is None or v > 0),
            total_examples=(">= 1", lambda v: v is None or v >= 1),
            log_every_steps=(">= 1", lambda v: v >= 1),
            preemption_grace_s=("> 0", lambda v: v > 0),
            max_param_norm=("> 0, or 0 / None for no check", lambda v: v is None or v >= 0),
        )


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything typed and checked from a config, before any array exists."""

    run: TrainConfig
    data: pipeline.DataConfig
    optim: optim.OptimConfig
    mesh: sharding.MeshConfig
    ckpt: ckpt_lib.CheckpointConfig
    objective: base.Objective
    train_data: pipeline.TrainData  # the source and ops, built once; the clip shape they make
    length: durations.RunLength  # the run's length, every other duration is resolved against
    config: dict


def setup(config: Any) -> Setup:
    """Checks every key of the config; raises config.ConfigError with a one-line message."""
    config = config_lib.to_dict(config)
    run = config_lib.instantiate(TrainConfig, config, "config")
    data = config_lib.instantiate(pipeline.DataConfig, run.data, "config.data")
    opt = config_lib.instantiate(optim.OptimConfig, run.optim, "config.optim")
    ckpt = config_lib.instantiate(ckpt_lib.CheckpointConfig, run.ckpt, "config.ckpt")
    mesh = config_lib.instantiate(sharding.MeshConfig, run.mesh, "config.mesh")
    objective = weights.build_objective(config, DTYPES[run.compute_dtype])
    train_data = pipeline.train_data(
        data,
        pipeline.make_source(data, data.train_split),
        pipeline.make_ops(data.train_pp, "config.data.train_pp"),
    )
    check_encoder(objective.encoder, train_data.clip)
    length = durations.RunLength.of(train_data.num_examples, data.batch_size)
    return Setup(
        run=run,
        data=data,
        optim=opt,
        mesh=mesh,
        ckpt=ckpt,
        objective=objective,
        train_data=train_data,
        length=length.with_total(length.steps(run, "total", "config")),
        config=config,
    )


def check_encoder(encoder, clip: base.ClipSpec) -> None:
    """The encoder's own limits on the clip (ViT: patch, heads, TokenLearner), at start-up."""
    check = getattr(encoder, "check_clip", None)
    if check is not None:
        check(clip.frames, clip.height, clip.width)
