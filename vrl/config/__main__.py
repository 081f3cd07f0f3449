"""python -m vrl.config --config=configs/<name>.py[:arg] [--config.key=value ...] [--json]

Prints a config as it will run: every key of every section, with the defaults of the
dataclasses and registered components it names filled in, so a reader sees the values a
recipe never states (`optim.b2`, `model.conv_impl`, the evals' probe settings). The config is
checked as the trainer checks it (a mistake is one line `config error: ...`, exit 2), but no
data is read and no array is built, so a paper recipe resolves on a laptop. A probe job config
(configs/probe/*.py) resolves to its job keys. `--json` prints JSON instead of the listing.
"""

import dataclasses
import inspect
import json
from collections.abc import Mapping
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import flag_errors, optim, registry, sharding
from vrl import setup as setup_lib
from vrl.data import pipeline
from vrl.objectives import base
from vrl.probe import job as job_lib

# The typed sections of a run config (as in `setup.setup`); model and objective are components.
SECTIONS = {
    "data": pipeline.DataConfig,
    "optim": optim.OptimConfig,
    "mesh": sharding.MeshConfig,
    "ckpt": ckpt_lib.CheckpointConfig,
}


def resolve(config: Any) -> dict:
    """Every key of a run (or probe job) config, defaults filled in; raises ConfigError."""
    config = config_lib.to_dict(config)
    if "probe" in config and "model" not in config:
        return _probe_job(config, "config")
    run = config_lib.instantiate(setup_lib.TrainConfig, config, "config")
    out = {k: v for k, v in _fields(run).items() if not isinstance(v, dict)}
    for key, target in SECTIONS.items():
        out[key] = _fields(config_lib.instantiate(target, getattr(run, key), f"config.{key}"))
    out["data"]["source"] = _component("source", out["data"]["source"], "config.data.source")
    for key in ("train_pp", "test_pp"):
        pipeline.make_ops(out["data"][key], f"config.data.{key}")
    base.build(config, setup_lib.DTYPES[run.compute_dtype])  # checks model and objective
    out["model"] = _component("model", run.model, "config.model")
    out["objective"] = _component("objective", run.objective, "config.objective")
    out["evals"] = {k: _probe_job(v, f"config.evals.{k}") for k, v in run.evals.items()}
    return out


def _probe_job(cfg: Mapping, path: str) -> dict:
    job = job_lib.check(config_lib.drop_unset(cfg), path)
    return {**_fields(job), "probe": _component("probe", job.probe, f"{path}.probe")}


def _fields(obj: Any) -> dict:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


# Arguments the code passes a component itself (see `objectives.base.build`, `pipeline`).
_PASSED = {"model": ("dtype",), "objective": ("encoder",), "source": ("split",), "probe": ()}


def _component(kind: str, cfg: Mapping, path: str) -> dict:
    """`cfg` with every key its registered component takes, checked but not built (a source
    would open its data)."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name not in registry.names(kind):
        allowed = ", ".join(registry.names(kind))
        raise config_lib.ConfigError(f"{path}.name: unknown {kind} {name!r}; allowed: {allowed}")
    target = registry.get(kind, name)
    params = {k: v for k, v in config_lib.parameters(target).items() if k not in _PASSED[kind]}
    for key in cfg:
        if key not in params:
            raise config_lib.ConfigError(
                f"{path}.{key}: unknown key; allowed: {', '.join(sorted(params))}"
            )
    out = {"name": name}
    for key, (annotation, default) in params.items():
        if key in cfg:
            out[key] = config_lib.check_type(cfg[key], annotation, f"{path}.{key}")
        elif default is inspect.Parameter.empty:
            raise config_lib.ConfigError(f"{path}.{key}: required key is missing")
        else:
            out[key] = default
    return out


def listing(tree: Mapping, indent: str = "") -> str:
    """`key: value` lines, sections indented under their key; a component's `name` first."""
    lines = []
    for key in sorted(tree, key=lambda k: (not (k == "name" and isinstance(tree[k], str)), k)):
        value = tree[key]
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{key}:")
            lines.append(listing(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {'{}' if isinstance(value, Mapping) else repr(value)}")
    return "\n".join(lines)


def to_json(tree: Mapping) -> str:
    return json.dumps(tree, indent=2, sort_keys=True, default=repr)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        resolved = resolve(flags.FLAGS.config)
    except config_lib.ConfigError as e:
        flag_errors.fail("config error", e, 2)
    print(to_json(resolved) if flags.FLAGS.json else listing(resolved))


if __name__ == "__main__":
    # Defined here, not on import: tests import `resolve` next to vrl.main's --config.
    config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
    flags.DEFINE_bool("json", False, "Print JSON instead of the indented listing.")
    app.run(main, flags_parser=flag_errors.flags_parser())
