"""What config files build runs from: sections listing every key, tiny `:runlocal` shapes.

Here, next to the configs (as in big_vision), so that `vrl` itself only checks and builds
configs: loading a config imports the dataclasses it lists, never the trainer.
"""

import inspect
from collections.abc import Callable
from typing import Any, get_args, get_origin

import ml_collections

from vrl import checkpoint, optim, registry, setup, sharding
from vrl.config import ConfigError, parameters
from vrl.data import pipeline

# Shared by the `:runlocal` variants of the configs: tiny shapes that run on a CPU in a minute.
TINY_VIT = {"size": "Ti", "width": 64, "depth": 2, "heads": 2, "patch": (2, 8, 8)}

# Arguments the code passes a component itself: never config keys.
_FIXED = ("dtype", "encoder", "split")


def section(target: Callable, exclude: tuple[str, ...] = (), **values: Any):
    """A ConfigDict of every key `target` accepts, at its default unless given in `values`.

    ml_collections only overrides keys that exist, so configs built from sections accept any
    key on the command line (`--config.optim.grad_accum_steps=4`). Keys whose default is None
    become typed placeholders.
    """
    out = ml_collections.ConfigDict()
    for key, (annotation, default) in parameters(target).items():
        if key in exclude:
            continue
        if key in values:
            out[key] = values.pop(key)
        elif default is inspect.Parameter.empty or default is None:
            base = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
            origin = get_origin(base[0]) or base[0]
            out[key] = ml_collections.config_dict.placeholder(
                origin if isinstance(origin, type) else str
            )
        else:
            out[key] = default
    if values:
        raise ConfigError(
            f"unknown keys {sorted(values)} for {getattr(target, '__name__', target)}"
        )
    return out


def defaults(kind: str, name: str, **values: Any):
    """`section` of a registered component, with its registry `name`: every key overridable.

    E.g. `c.model = defaults("model", "vit", size="B")` accepts `--config.model.remat=True`, and
    a probe config built with `:source=video_folder` accepts `--config.data.source.root=...`.
    """
    out = section(registry.get(kind, name), exclude=_FIXED, **values)
    out.name = name
    return out


def run_config(**values: Any):
    """A run config with every top-level key and every section listed (see `section`)."""
    c = section(setup.TrainConfig, **values)
    c.mesh = section(sharding.MeshConfig)
    c.ckpt = section(checkpoint.CheckpointConfig)
    c.optim = section(optim.OptimConfig)
    c.data = section(pipeline.DataConfig)
    return c


def data_section(source: dict, **values: Any):
    """`config.data` with every key, the source's keys included."""
    source = dict(source)
    return section(
        pipeline.DataConfig, source=defaults("source", source.pop("name"), **source), **values
    )


def runlocal_data(train_pp: str, test_pp: str):
    """`config.data` for a :runlocal variant: 32 synthetic videos, batches of 8."""
    return data_section(
        {"name": "synthetic", "num_videos": 32}, batch_size=8, train_pp=train_pp, test_pp=test_pp
    )


def unset_source(name: str):
    """A ConfigDict of every key of source `name` (so each is settable), all unset but `name`."""
    full = defaults("source", name)
    out = ml_collections.ConfigDict()
    for key in full:
        if key == "name":
            out.name = name
        else:
            kind = full.get_ref(key).get_type()
            out[key] = ml_collections.config_dict.placeholder(kind)
    return out


def job_config(probe: dict, source: str = ""):
    """A probe config file's ConfigDict: every job key, unset ones as typed placeholders.

    Data defaults to the checkpoint's; `source` names a source whose keys become settable,
    e.g. `:source=video_folder` then `--config.data.source.root=DIR`.
    """
    placeholder = ml_collections.config_dict.placeholder
    c = ml_collections.ConfigDict()
    c.checkpoint = ""
    c.step = placeholder(int)
    c.probe = dict(probe)
    c.encoders = ("pretrained", "random")
    c.label_sets = placeholder(tuple)
    c.data = ml_collections.ConfigDict()
    c.data.train_split = placeholder(str)
    c.data.test_split = placeholder(str)
    if source:
        c.data.source = unset_source(source)  # every key settable, none set
    c.train_pp = placeholder(str)
    c.test_pp = placeholder(str)
    c.test_views = placeholder(tuple)
    c.batch_size = 32
    c.plots = True
    # Names the results (probe/<name>_<labels>_<encoder>.json); set it for a second job on
    # other data so the first one's results are kept.
    c.name = placeholder(str)
    return c


def mixture_source(*parts: dict, weights: tuple[float, ...] | None = None) -> dict:
    """A `mixture` source config (vrl/data/mixture.py) of `parts`, each with every key of its
    source listed (as `defaults` does), for `data_section`. `weights` None: proportional to
    the parts' sizes (every video equally likely), as V-JEPA's VideoMix2M."""
    full = []
    for part in parts:
        part = dict(part)
        full.append(defaults("source", part.pop("name"), **part).to_dict())
    out = {"name": "mixture", "sources": tuple(full)}
    if weights is not None:  # unset, `section` keeps it a typed placeholder (overridable)
        out["weights"] = tuple(weights)
    return out


def runlocal_mixture_data(train_pp: str, test_pp: str):
    """`config.data` for a :runlocal variant of a mixture recipe: two synthetic sources (24 and
    8 videos, other seeds and render sizes) mixed in proportion to size, batches of 8."""
    source = mixture_source(
        {"name": "synthetic", "num_videos": 24},
        {"name": "synthetic", "num_videos": 8, "seed": 1, "size": 80},
    )
    return data_section(source, batch_size=8, train_pp=train_pp, test_pp=test_pp)


def rho_clips_config(
    args,
    data_dir: str,
    objective: str,
    optim: dict,
    objective_values: dict,
    runlocal_objective: dict,
):
    """A run config for the rho-clip objectives of Feichtenhofer et al. 2021 (rho_moco,
    rho_byol, rho_swav) as PySlowFast's configs/contrastive_ssl/*.yaml train them on
    Kinetics-400: Slow-only R50 (vrl's `cvrl_r3d` depth 50), rho clips of 8 frames at stride 8
    drawn uniformly, MoCo v2 augmentation (crop area [0.2, 0.766], aspect [0.75, 1.333] of the
    raw frame to 224, flip, colour jitter 0.6 / 0.6 / 0.6 / 0.15 with p 0.8, grayscale p 0.2,
    blur sigma [0.1, 2] with p 0.5), batch 64, 200 epochs, 35 warmup epochs from lr 0.001,
    cosine to 0, momentum 0.9. `args` has `runlocal` and `rho`; `data_dir` holds the prepared
    `kinetics400`; `optim` sets the rest of `config.optim`."""
    spatial = (
        "random_resized_crop(size={size}, area=(0.2, 0.766), aspect=(0.75, 1.3333))|flip(p=0.5)"
        "|color_jitter(p=0.8, brightness=0.6, contrast=0.6, saturation=0.6, hue=0.15)"
        "|grayscale(p=0.2)|gaussian_blur(p=0.5, sigma=(0.1, 2.0))"
    )
    c = run_config(total_epochs=200.0, log_every_steps=100, compute_dtype="bfloat16")
    c.data = data_section(
        {
            "name": "tfds",
            "dataset": "kinetics400",
            "data_dir": data_dir,
        },
        test_split="validation",
        batch_size=64,
        train_pp=f"rho_clips(num_clips={args.rho}, frames=8, stride=8)|" + spatial.format(size=224),
        test_pp="center_clip(frames=8, stride=8)|resize_short(size=256)|center_crop(size=256)",
        num_workers=16,
    )
    c.model = defaults("model", "cvrl_r3d")
    c.objective = defaults("objective", objective, **objective_values)
    c.optim.update(warmup_epochs=35.0, warmup_init_lr=0.001, momentum=0.9, **optim)
    c.ckpt.every_steps = 2000
    if args.runlocal:
        c.total_epochs = None
        c.total_steps = 3
        c.log_every_steps = 1
        c.compute_dtype = "float32"
        c.data = runlocal_data(
            f"rho_clips(num_clips={args.rho}, frames=8, stride=2)|" + spatial.format(size=32),
            "center_clip(frames=8, stride=2)|resize_short(size=32)|center_crop(size=32)",
        )
        c.model.update(depth=18, width=0.125)
        c.objective.update(runlocal_objective)
        c.optim.update(warmup_epochs=None, warmup_steps=1, warmup_init_lr=0.0)
    return c
