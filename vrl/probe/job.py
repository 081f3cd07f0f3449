"""The keys of a probe job (`python -m vrl.probe`) and of a `config.evals` entry: one schema.

A training run's evals are probe jobs on the run itself: they add how often they run
(`every_steps` or `every_epochs`) and take the run's workdir as their checkpoint.
"""

import dataclasses

from vrl import config as config_lib
from vrl.data import pipeline
from vrl.probe import views

# Encoder names a probe config may list -> which parameters of the run they take.
ENCODERS = {"pretrained": "encoder", "target": "target", "teacher": "teacher", "random": "random"}


@dataclasses.dataclass(frozen=True)
class ProbeJobConfig:
    checkpoint: str = ""
    step: int | None = None
    probe: dict = dataclasses.field(default_factory=lambda: {"name": "linear"})
    encoders: tuple[str, ...] = ("pretrained",)
    label_sets: tuple[str, ...] | None = None
    # Overrides merged onto the checkpoint's config.data: source, splits, pipelines. Source
    # keys left unset keep the run's values (see vrl/probe/data.py).
    data: dict = dataclasses.field(default_factory=dict)
    # Pipelines of the train / test splits (default: the data config's test_pp for both; the
    # fine-tuning probe derives an augmented train_pp from it).
    train_pp: str | None = None
    test_pp: str | None = None
    # (clips, crops): multi-view testing derived from the data's test_pp when test_pp is unset,
    # e.g. (5, 3) = 5 evenly spaced clips x 3 crops, scores averaged over the 15 views.
    test_views: tuple[int, int] | None = None
    batch_size: int = 32
    plots: bool = True
    name: str | None = None
    # config.evals only: run every N steps (or epochs) of training too; unset or 0: at the end.
    every_steps: int | None = None
    every_epochs: float | None = None


def check(cfg: dict, path: str) -> ProbeJobConfig:
    """Validates a probe config's keys (`config.evals.<name>` or a probe job) before anything
    runs; what they meet in the data is checked by `eval_checks` and `plan`."""
    job = config_lib.instantiate(ProbeJobConfig, cfg, path)
    config_lib.component("probe", job.probe, f"{path}.probe")
    for name in job.encoders:
        if name not in ENCODERS:
            raise config_lib.ConfigError(
                f"{path}.encoders: unknown encoder {name!r}; allowed: {', '.join(ENCODERS)}"
            )
    return job


def resolve_test_pp(job: ProbeJobConfig, data_cfg: pipeline.DataConfig) -> str:
    """The job's test pp: explicit, else `test_views` derived from the data's, else the data's."""
    if job.test_pp is not None:
        return job.test_pp
    if job.test_views is not None:
        return views.multiview(data_cfg.test_pp, *job.test_views)
    return data_cfg.test_pp
