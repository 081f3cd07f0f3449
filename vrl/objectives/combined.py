"""A main objective plus weighted auxiliary objectives that train one shared encoder.

    config.objective = {"name": "combined",
                        "main": {"name": "cvrl", ...},
                        "aux": {"playback": {"name": "playback", "weight": 0.5, ...}}}

The loss is main + sum of weight x aux, as the temporal pretext papers add their tasks to
contrastive training. State: the main objective's own trees (params {"encoder", "head", ...},
extra {"batch_stats": {"encoder", ...}, ...}) plus, under each auxiliary part's name, that
part's params and extra other than the encoder's. Each part runs its own encoder forward
pass on the views it reads: simple, and every part keeps its own contract. The encoder's
batch statistics thread through the parts in order (main, then the auxiliary parts by name),
so a training step updates them once per part, as consecutive forward passes of a model in
train mode do. Probes, checkpoints and initial weights see the main objective.
"""

import dataclasses
from collections.abc import Mapping

import flax.linen as nn
import jax

from vrl import registry
from vrl.config import ConfigError, component
from vrl.objectives import base


def _strip_encoder_stats(extra: base.PyTree) -> base.PyTree:
    """`extra` without the encoder's batch statistics (they live once, with the main part)."""
    if "batch_stats" not in extra:
        return dict(extra)
    stats = {k: v for k, v in extra["batch_stats"].items() if k != "encoder"}
    return {**extra, "batch_stats": stats}


def _with_encoder_stats(extra: base.PyTree, stats: base.PyTree | None) -> base.PyTree:
    """`extra` with the shared encoder's batch statistics put back, where the part keeps any."""
    if "batch_stats" not in extra:
        return extra
    return {**extra, "batch_stats": {**extra["batch_stats"], "encoder": stats or {}}}


def _encoder_stats(extra: base.PyTree) -> base.PyTree | None:
    return extra.get("batch_stats", {}).get("encoder")


@registry.register("objective", "combined")
@dataclasses.dataclass(frozen=True)
class Combined(base.Objective):
    encoder: nn.Module
    # The main objective's config (with its `name`), e.g. {"name": "cvrl", "temperature": 0.1}.
    main: dict = dataclasses.field(default_factory=lambda: {"name": "cvrl"})
    # {part name: an objective's config with its `name` and a `weight` >= 0}.
    aux: dict = dataclasses.field(default_factory=dict)
    main_part: base.Objective = dataclasses.field(init=False, repr=False, compare=False)
    aux_parts: tuple = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        main = component("objective", self.main, "config.objective.main", encoder=self.encoder)
        parts = []
        for name in sorted(self.aux):
            path = f"config.objective.aux.{name}"
            cfg = self.aux[name]
            if not isinstance(cfg, Mapping):
                raise ConfigError(f"{path}: expected an objective's config, got {cfg!r}")
            cfg = dict(cfg)
            weight = cfg.pop("weight", None)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
                raise ConfigError(
                    f"{path}.weight: {weight!r} is not allowed; allowed: a number >= 0"
                )
            part = component("objective", cfg, path, encoder=self.encoder)
            parts.append((name, float(weight), part))
        object.__setattr__(self, "main_part", main)
        object.__setattr__(self, "aux_parts", tuple(parts))

    def _main_state(self, params, extra) -> tuple[base.PyTree, base.PyTree]:
        names = {name for name, _, _ in self.aux_parts}
        return (
            {k: v for k, v in params.items() if k not in names},
            {k: v for k, v in extra.items() if k not in names},
        )

    def batch_ops(self, clip):
        ops = list(self.main_part.batch_ops(clip))
        for _, _, part in self.aux_parts:
            ops += part.batch_ops(clip)
        return ops

    def init(self, rng, batch):
        params, extra = self.main_part.init(rng, batch)
        params, extra = dict(params), dict(extra)
        for i, (name, _, part) in enumerate(self.aux_parts):
            if name in params or name in extra:
                raise ConfigError(
                    f"config.objective.aux.{name}: the name is taken by the main objective's "
                    f"state ({', '.join(sorted({*params, *extra}))}); choose another"
                )
            part_params, part_extra = part.init(jax.random.fold_in(rng, i + 1), batch)
            params[name] = {k: v for k, v in part_params.items() if k != "encoder"}
            extra[name] = _strip_encoder_stats(part_extra)
        return params, extra

    def loss(self, params, extra, batch, rng, train):
        main_params, main_extra = self._main_state(params, extra)
        total, (main_metrics, new_extra) = self.main_part.loss(
            main_params, main_extra, batch, rng, train
        )
        metrics = {**main_metrics, "main_loss": total}
        new_extra = dict(new_extra)
        stats = _encoder_stats(new_extra)
        for i, (name, weight, part) in enumerate(self.aux_parts):
            part_params = {"encoder": params["encoder"], **params[name]}
            part_extra = _with_encoder_stats(extra[name], stats)
            loss, (part_metrics, part_extra) = part.loss(
                part_params, part_extra, batch, jax.random.fold_in(rng, i + 1), train
            )
            stats = _encoder_stats(part_extra) if "batch_stats" in part_extra else stats
            new_extra[name] = _strip_encoder_stats(part_extra)
            total = total + weight * loss
            metrics[f"{name}/loss"] = loss
            metrics.update({f"{name}/{k}": v for k, v in part_metrics.items()})
        if _encoder_stats(new_extra) is not None:
            new_extra = _with_encoder_stats(new_extra, stats)
        return total, (metrics, new_extra)

    def update_extra(self, extra, params, step):
        main_params, main_extra = self._main_state(params, extra)
        out = dict(self.main_part.update_extra(main_extra, main_params, step))
        stats = _encoder_stats(out)
        for name, _, part in self.aux_parts:
            part_params = {"encoder": params["encoder"], **params[name]}
            part_extra = _with_encoder_stats(extra[name], stats)
            out[name] = _strip_encoder_stats(part.update_extra(part_extra, part_params, step))
        return out

    def for_training(self, length):
        out = dataclasses.replace(self)
        object.__setattr__(out, "main_part", self.main_part.for_training(length))
        parts = tuple((n, w, p.for_training(length)) for n, w, p in self.aux_parts)
        object.__setattr__(out, "aux_parts", parts)
        return out

    def initial_weights(self):
        return self.main_part.initial_weights()

    def encoder_variables(self, params, extra, which="encoder"):
        return self.main_part.encoder_variables(*self._main_state(params, extra), which)

    def set_encoder_variables(self, params, extra, which, variables):
        main_params, main_extra = self._main_state(params, extra)
        new_params, new_extra = self.main_part.set_encoder_variables(
            main_params, main_extra, which, variables
        )
        names = [name for name, _, _ in self.aux_parts]
        return (
            {**new_params, **{n: params[n] for n in names}},
            {**new_extra, **{n: extra[n] for n in names}},
        )

    def encoders(self):
        return self.main_part.encoders()
