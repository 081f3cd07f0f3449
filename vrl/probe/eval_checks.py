"""`config.evals` checked against the run at start-up, not after days of pretraining.

`probe.main.check_eval_config` checks each eval's keys alone; this checks what it will meet
when it runs at the end of training: the label sets the source has, its pipelines on a real
example (a typo, or a crop larger than the frames), the encoders the objective keeps, and the
probe's counts (a probe with `epochs=0` trains nothing).
"""

import dataclasses

import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline
from vrl.probe import data as probe_data
from vrl.probe import main as probe_main

# Probe fields that count something: 0 would run nothing or divide by zero.
_COUNTS = ("epochs", "batch_size", "eval_batch_size", "max_iters", "k", "segments", "chunk")


def check_evals(evals: dict, data: pipeline.DataConfig, encoders: tuple[str, ...]) -> None:
    """Raises a one-line ConfigError for the first eval that could not run on this run."""
    for name, cfg in evals.items():
        check_eval(cfg, f"config.evals.{name}", data, encoders)


def check_eval(cfg: dict, path: str, data: pipeline.DataConfig, encoders: tuple[str, ...]):
    job = probe_main.check_eval_config(config_lib.drop_unset(cfg), path)
    probe = config_lib.component("probe", job.probe, f"{path}.probe")
    for field in dataclasses.fields(probe):
        value = getattr(probe, field.name)
        if field.name in _COUNTS and isinstance(value, (int, float)) and not value > 0:
            raise config_lib.ConfigError(
                f"{path}.probe.{field.name}: {value!r} is not allowed; allowed: "
                f"{'>= 1' if isinstance(value, int) else '> 0'}"
            )
    available = [n for n, which in probe_main.ENCODERS.items() if which in (*encoders, "random")]
    for encoder in job.encoders:
        if encoder not in available:
            raise config_lib.ConfigError(
                f"{path}.encoders: {encoder!r} is not an encoder of this run's objective; "
                f"allowed: {', '.join(available)}"
            )
    merged = probe_data.job_data(dataclasses.asdict(data), job.data)  # as run_job merges it
    data_cfg = config_lib.instantiate(pipeline.DataConfig, merged, f"{path}.data")
    test_source = pipeline.make_source(data_cfg, data_cfg.test_split)
    label_names = test_source.label_names
    for label_set in job.label_sets or ():
        if label_set not in label_names:
            raise config_lib.ConfigError(
                f"{path}.label_sets: {label_set!r} not in the data; allowed: "
                f"{', '.join(label_names) or '(the data has no labels)'}"
            )
    data_key = f"{path}.data.test_pp" if "test_pp" in job.data else "config.data.test_pp"
    test_key = (
        f"{path}.test_pp"
        if job.test_pp is not None
        else (f"{path}.test_views" if job.test_views is not None else data_key)
    )
    test_pp = probe_main.resolve_test_pp(job, data_cfg)
    check_pp(test_pp, test_key, test_source)
    if getattr(probe, "inputs", "pooled") != "checkpoint":  # fine-tuning derives its train_pp
        train_source = pipeline.make_source(data_cfg, data_cfg.train_split)
        train_key = f"{path}.train_pp" if job.train_pp else data_key
        check_pp(job.train_pp or data_cfg.test_pp, train_key, train_source)


def check_pp(pp: str, key: str, source) -> None:
    """Builds the pipeline `pp` and runs it on one example of `source`."""
    ops = pipeline.make_ops(pp, key)
    if not len(source):
        return
    try:
        pipeline.ExampleMaker(source, ops)(0, np.random.default_rng(0))
    except config_lib.ConfigError:
        raise
    except ValueError as e:  # an op that cannot run on these videos (a crop larger than frames)
        raise config_lib.ConfigError(f"{key}={pp!r}: {' '.join(str(e).split())}") from None
