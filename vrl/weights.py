"""Weights from checkpoints: an encoder of a saved run, and the state a run starts from.

The checkpoint side of the layering: objectives declare the weights they take from outside the
run (`Objective.initial_weights`: a pretrained encoder to fine-tune, SALT's frozen teacher) and
the architectures those need (`Objective.external_models`); this module reads them, strictly
(every name and shape checked), so nothing reads a checkpoint while a config is being built.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import state
from vrl.models import layers, vit
from vrl.objectives import base


@dataclasses.dataclass(frozen=True)
class LoadedEncoder:
    """An encoder of a saved run: the module, its variables (host arrays) and the run config."""

    module: nn.Module
    variables: Any
    config: dict
    step: int | None
    which: str


def build_objective(config: Mapping, dtype=jnp.float32) -> base.Objective:
    """The objective a run config describes, with the architectures it takes from other runs'
    checkpoints (SALT's teacher) filled in from the configs saved with them."""
    objective = base.build(config, dtype)
    models = {}
    for field, source in objective.external_models().items():
        try:
            meta, _ = ckpt_lib.load_meta(source.workdir, source.step)
        except ckpt_lib.CheckpointError as e:
            raise config_lib.ConfigError(f"{source.key}: {e}") from None
        models[field] = meta["config"]["model"]
    return objective.with_models(models) if models else objective


def load_encoder(
    workdir: str, step: int | None = None, which: str = "encoder", overrides: Mapping | None = None
) -> LoadedEncoder:
    """The encoder saved in `workdir` at `step` (latest by default); see `vrl.api.load_encoder`."""
    meta, step = ckpt_lib.load_meta(workdir, step)
    if overrides:
        meta = {**meta, "config": merge(meta["config"], overrides)}
    objective = build_objective(meta["config"])
    if which == "random":
        variables = random_encoder_variables(objective, meta)
    else:
        if which not in objective.encoders():
            raise config_lib.ConfigError(
                f"{workdir}: objective {meta['config']['objective']['name']!r} has no {which!r} "
                f"encoder; allowed: {', '.join((*objective.encoders(), 'random'))}"
            )
        params, extra = restore_variables(workdir, step, objective, meta)
        variables = objective.encoder_variables(params, extra, which)
    return LoadedEncoder(encoder_module(objective, which), variables, meta["config"], step, which)


def encoder_module(objective: base.Objective, which: str) -> nn.Module:
    """The module that applies `which` parameters: an objective attribute of that name when it
    is a module of its own (SALT's `teacher`, possibly another architecture), else the encoder
    (V-JEPA's EMA `target` shares the encoder's architecture)."""
    module = getattr(objective, which, None) if which not in ("encoder", "random") else None
    return module if isinstance(module, nn.Module) else objective.encoder


def restore_variables(workdir: str, step: int, objective: base.Objective, meta: dict):
    """(params, extra) of a checkpoint as host arrays, strictly checked against `objective`."""
    abstract_params, abstract_extra = abstract_variables(objective, meta)
    # A checkpoint saved with the other `scan_layers` layout is converted (vit.match_layout).
    restored = ckpt_lib.restore_partial(
        workdir,
        step,
        {"params": abstract_params, "extra": abstract_extra},
        convert=vit.match_layout,
    )
    return restored["params"], restored["extra"]


def merge(base_cfg: Mapping, overrides: Mapping) -> dict:
    """A copy of `base_cfg` with `overrides` merged in, nested dicts merged key by key."""
    out = dict(base_cfg)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def random_encoder_variables(objective: base.Objective, meta: dict):
    """The encoder alone at a fresh initialisation (seeded by the run's seed).

    Only the encoder is initialised: compiling the whole objective's init (decoders,
    predictors, heads) costs several times more on XLA:CPU and adds nothing to a baseline.
    """
    video = state.spec_batch(meta["init_batch"])["video"]
    if video.ndim == 6:  # multi-view clips [B, V, T, H, W, 3]: one view shapes the encoder
        video = video[:, 0]
    encoder = objective.encoder

    @jax.jit
    def init(rng):
        x = layers.to_model_input(video, encoder)
        return nn.meta.unbox(encoder.init(rng, x, train=False))

    return init(state.init_key(meta["config"].get("seed", 0)))


def abstract_variables(objective, meta: dict):
    """Zero host arrays shaped like the (params, extra) the saved config builds (no init runs)."""
    batch = state.spec_batch(meta["init_batch"])
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(objective.init(r, batch)), jax.random.key(0))
    to_numpy = lambda s: np.zeros(s.shape, s.dtype)  # restored onto the host, then placed
    return jax.tree.map(to_numpy, shapes[0]), jax.tree.map(to_numpy, shapes[1])


def initial_variables(objective: base.Objective, params, extra):
    """(params, extra) of a fresh run with the weights `objective` takes from other runs
    (`Objective.initial_weights`) placed in, each strictly checked against what init made."""
    for which, source in objective.initial_weights().items():
        loaded = jax.device_get(load_encoder(source.workdir, source.step, source.which).variables)
        loaded = _without(loaded, source)
        current = objective.encoder_variables(params, extra, which)
        loaded = vit.match_layout(loaded, current)  # scanned <-> unrolled blocks
        ckpt_lib.check_matches(loaded, current, f"{which} from {source.workdir}")
        params, extra = objective.set_encoder_variables(params, extra, which, loaded)
    return params, extra


def _without(variables: dict, source: base.InitialWeights) -> dict:
    """`variables` without the parameter subtrees `source.drop` names (strict: each exists)."""
    if not source.drop:
        return variables
    params = dict(variables["params"])
    for name in source.drop:
        if name not in params:
            raise ckpt_lib.CheckpointError(
                f"{source.key}: cannot drop {name!r} from the encoder in {source.workdir}: it has "
                f"no such parameters (top-level names: {', '.join(sorted(params))})"
            )
        del params[name]
    return {**variables, "params": params}
