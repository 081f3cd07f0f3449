"""`config.evals` checked against the run at start-up, not after days of pretraining.

`job.check` checks each eval's keys alone; this checks what it will meet when it runs during
and after training: the label sets the source has, its pipelines on a real example (a typo, or
a crop larger than the frames), the encoders the objective keeps, the probe's counts (a probe
with `epochs=0` trains nothing) and how often it runs.
"""

import dataclasses

import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline
from vrl.probe import job as job_lib
from vrl.probe import plan as plan_lib
from vrl.setup import Setup

# Probe fields that count something: 0 would run nothing or divide by zero.
_COUNTS = ("epochs", "batch_size", "eval_batch_size", "max_iters", "k", "segments", "chunk")


def check_evals(s: Setup, workdir: str) -> dict[str, tuple[plan_lib.Plan, int]]:
    """{eval name: (its plan on `workdir`, every how many steps it runs; 0: at the end only)};
    a one-line ConfigError for the first eval that could not run on this run."""
    return {
        name: check_eval({"name": name, **cfg, "checkpoint": workdir}, f"config.evals.{name}", s)
        for name, cfg in s.run.evals.items()
    }


def check_eval(cfg: dict, path: str, s: Setup) -> tuple[plan_lib.Plan, int]:
    job = job_lib.check(config_lib.drop_unset(cfg), path)
    probe = config_lib.component("probe", job.probe, f"{path}.probe")
    for field in dataclasses.fields(probe):
        value = getattr(probe, field.name)
        if field.name in _COUNTS and isinstance(value, (int, float)) and not value > 0:
            raise config_lib.ConfigError(
                f"{path}.probe.{field.name}: {value!r} is not allowed; allowed: "
                f"{'>= 1' if isinstance(value, int) else '> 0'}"
            )
    encoders = (*s.objective.encoders(), "random")
    available = [n for n, which in job_lib.ENCODERS.items() if which in encoders]
    for encoder in job.encoders:
        if encoder not in available:
            raise config_lib.ConfigError(
                f"{path}.encoders: {encoder!r} is not an encoder of this run's objective; "
                f"allowed: {', '.join(available)}"
            )
    plan = plan_lib.make(job, s.config.get("data", {}), path)
    every = s.length.steps(job, "every", path, default=0)
    if every and plan.inputs == "checkpoint":
        raise config_lib.ConfigError(
            f"{path}.every_steps / every_epochs: probe {job.probe['name']!r} trains from the "
            "final checkpoint, so it runs at the end only; allowed: 0 or unset"
        )
    if plan.inputs == "model":
        probe.check(s.objective, job, plan.label_names, path)
    check_pipelines(plan, path)
    return plan, every


def check_pipelines(plan: plan_lib.Plan, path: str) -> None:
    """Runs the plan's test pipeline (and train pipeline, for frozen features) on an example."""
    job, data_cfg = plan.job, plan.data_cfg
    data_key = f"{path}.data.test_pp" if "test_pp" in job.data else "config.data.test_pp"
    test_key = (
        f"{path}.test_pp"
        if job.test_pp is not None
        else (f"{path}.test_views" if job.test_views is not None else data_key)
    )
    check_pp(plan.test_pp, test_key, pipeline.make_source(data_cfg, data_cfg.test_split))
    if plan.inputs in ("pooled", "tokens"):  # fine-tuning derives its train_pp
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
