"""What a resumed run may change: the config saved with the checkpoint against the one given.

A resumed run continues the saved one, so the config it is given is compared with the saved
config before anything is restored:

* another model (the parameters differ) is named in one line, both models, before the list
  of parameter differences;
* hyperparameters (lr, schedule, steps, evals, mesh, ...) may change: the changed keys are
  logged at resume;
* keys that decide which examples a step sees and its random keys (seed, batch size, the
  training data) break exact resumption and are refused unless
  `config.allow_config_change=True`.
"""

import json
from typing import Any

from absl import logging

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib

# Changing these makes the saved data-iterator position and the per-step keys mean other
# examples and other randomness: the resumed run would not continue the saved one.
BREAKS_RESUME = (
    "seed",
    "data.source",
    "data.train_split",
    "data.train_pp",
    "data.batch_size",
    "data.repeated_samples",
)
IGNORED = ("allow_config_change",)  # the switch itself
# Keys that name a model in a message (those set in either config, in this order).
MODEL_KEYS = ("size", "width", "depth", "heads", "patch", "variant")


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{"optim.lr": 0.1, ...}: the leaves of a nested config, as JSON stores them."""
    if isinstance(cfg, dict) and cfg:
        out = {}
        for key, value in cfg.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: cfg} if prefix else {}


def changes(saved: dict, given: dict) -> list[tuple[str, Any, Any]]:
    """(key, saved value, given value) for every key whose value differs; unset == None."""
    old = flatten(json.loads(json.dumps(saved)))
    new = flatten(json.loads(json.dumps(given)))  # tuples become lists, as in the saved JSON
    out = []
    for key in sorted(old.keys() | new.keys()):
        if key.split(".")[0] in IGNORED:
            continue
        a, b = old.get(key), new.get(key)
        if a != b and not (a in (None, {}) and b in (None, {})):
            out.append((key, a, b))
    return out


def _breaks(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in BREAKS_RESUME)


def _show(changed: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"config.{k}: {a!r} -> {b!r}" for k, a, b in changed)


def check_config(saved: dict, given: dict, workdir: str, step: int, allow: bool) -> list:
    """Logs the keys changed since the saved run; refuses those that break exact resumption.

    Raises config.ConfigError (one line) naming the first such key, unless `allow`.
    """
    changed = changes(saved, given)
    breaking = [c for c in changed if _breaks(c[0])]
    if breaking and not allow:
        key, old, new = breaking[0]
        more = f" (and {', '.join(k for k, _, _ in breaking[1:])})" if breaking[1:] else ""
        raise config_lib.ConfigError(
            f"config.{key}: {new!r} given, but the run in {workdir} (step {step}) was trained "
            f"with {old!r}{more}; changing the seed, batch size or training data breaks exact "
            "resumption; allowed: the saved value, another --workdir, or "
            "config.allow_config_change=True"
        )
    if breaking:
        logging.warning(
            "Resuming step %d of %s with changes that break exact resumption "
            "(config.allow_config_change=True): %s",
            step,
            workdir,
            _show(breaking),
        )
    rest = [c for c in changed if not _breaks(c[0])]
    if rest:
        logging.info("Resuming step %d of %s with a changed config: %s", step, workdir, _show(rest))
    return changed


def describe_model(cfg: dict) -> str:
    """ "vit (size=Ti, width=32, depth=1), objective cvrl": how a message names a run's model."""
    cfg = json.loads(json.dumps(cfg))  # as saved: tuples are lists
    model, objective = cfg.get("model", {}), cfg.get("objective", {})
    keys = [k for k in MODEL_KEYS if model.get(k) is not None]
    shown = ", ".join(f"{k}={model[k]}" for k in keys)
    return (
        f"{model.get('name', '?')}{f' ({shown})' if shown else ''}, "
        f"objective {objective.get('name', '?')}"
    )


def check_same_model(
    mngr, step: int, abstract_state, saved: dict, given: dict, workdir: str
) -> None:
    """Raises ConfigError when the checkpoint's parameters are another model's; first naming
    both models and the model keys that differ, then the parameter differences."""
    try:
        ckpt_lib.check_matches(
            ckpt_lib.tree_metadata(mngr, step), abstract_state, f"checkpoint step {step}"
        )
    except ckpt_lib.CheckpointError as e:
        keys = [c for c in changes(saved, given) if c[0].split(".")[0] in ("model", "objective")]
        differ = f" (changed: {_show(keys)})" if keys else ""
        raise config_lib.ConfigError(
            f"{workdir} holds another model: step {step} was saved by "
            f"{describe_model(saved)}, this config builds {describe_model(given)}{differ}; "
            f"use another --workdir, or the config the run was started with; {e}"
        ) from None
