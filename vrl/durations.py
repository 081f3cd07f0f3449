"""Durations in steps, epochs, examples or a fraction of the run, resolved in one place.

A config states a duration in the unit its paper uses: `total_epochs=800`, `warmup_epochs=40`,
`warmup_steps=12_000`, `ema_fraction=1.25` (V-JEPA's momentum horizon, 1.25 runs long). Every
consumer (the loop's length, the optimiser schedules, the EMA schedule, checkpoint and eval
intervals, fine-tuning) asks `RunLength.steps` for the family `<name>_{steps,epochs,examples,
fraction}` of its config, so a duration never silently stays on another run's length.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from vrl.config import ConfigError

UNITS = ("steps", "epochs", "examples", "fraction")


@dataclasses.dataclass(frozen=True)
class RunLength:
    """What converts units into steps: an epoch's steps, the global batch, the run's length."""

    steps_per_epoch: int
    batch_size: int
    total_steps: int | None = None  # None while the run's own length is being resolved

    @classmethod
    def of(cls, num_examples: int, batch_size: int) -> "RunLength":
        """The length of an epoch over `num_examples` at `batch_size` (at least one step)."""
        return cls(steps_per_epoch=max(num_examples // batch_size, 1), batch_size=batch_size)

    def with_total(self, total_steps: int) -> "RunLength":
        return dataclasses.replace(self, total_steps=total_steps)

    def steps(self, cfg: Any, name: str, path: str, default: int | None = None) -> int | None:
        """Steps of the duration `name` of `cfg` (a dataclass or a mapping), from whichever of
        `name_steps`, `name_epochs`, `name_examples`, `name_fraction` it sets (at most one);
        `default` where it sets none."""
        given = {}
        for unit in UNITS:
            value = _get(cfg, f"{name}_{unit}")
            if value is not None:
                given[unit] = value
        if len(given) > 1:
            keys = " / ".join(f"{path}.{name}_{u}" for u in given)
            raise ConfigError(f"{keys}: set one of them, not {len(given)}")
        if not given:
            return default
        ((unit, value),) = given.items()
        if value < 0:
            raise ConfigError(f"{path}.{name}_{unit}: {value!r} is not allowed; allowed: >= 0")
        if unit == "steps":
            return int(value)
        if unit == "epochs":
            return int(round(value * self.steps_per_epoch))
        if unit == "examples":
            return int(round(value / self.batch_size))
        if self.total_steps is None:
            raise ConfigError(f"{path}.{name}_fraction: the run's own length cannot be a fraction")
        return int(round(value * self.total_steps))


def _get(cfg: Any, key: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key)
    return getattr(cfg, key, None)
