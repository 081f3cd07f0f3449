"""A probe job resolved against the run it measures, and the measurement itself.

The same `Plan` runs a probe job on a saved checkpoint (`python -m vrl.probe`) and a
`config.evals` entry on a training run's live parameters (`vrl.evaluators`): only the
`Subject`, what gives it features and the model, differs. Frozen features are
extracted once per encoder and split and shared by every label set; a probe with
`train_augmented=True` gets a stream of features of freshly augmented train clips instead of the
train features (see augmented.py), and the cached test features.
"""

import dataclasses
import time
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from absl import logging

from vrl import config as config_lib
from vrl import storage
from vrl.data import pipeline
from vrl.probe import augmented
from vrl.probe import data as probe_data
from vrl.probe import job as job_lib
from vrl.probe import results as results_lib


class Subject(Protocol):
    """What a plan measures: a saved checkpoint or a training run at its current step."""

    workdir: str  # a folder or bucket URL: fine-tuning starts from it, result files go under it
    step: int
    config: dict  # the run config

    def features(
        self, which: str, data: dict, split: str, pp: str | None, kind: str, batch_size: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`features.extract` of encoder `which` (see vrl/probe/job.py ENCODERS)."""

    def model(self) -> tuple[Any, Any, Any, Any]:
        """(objective, params, extra, mesh) of the whole model, for probes of its own head."""


@dataclasses.dataclass(frozen=True)
class Plan:
    job: job_lib.ProbeJobConfig
    path: str  # the config key of the job, for messages: "config" or "config.evals.<name>"
    probe: Any
    data: dict  # the run's config.data with the job's overrides
    data_cfg: pipeline.DataConfig
    label_names: dict[str, list[str]]
    label_sets: tuple[str, ...]
    test_pp: str

    @property
    def inputs(self) -> str:
        """What the probe consumes: "pooled" features, "tokens", the "model" (its own head),
        or the "checkpoint" itself (fine-tuning)."""
        return getattr(self.probe, "inputs", "pooled")

    @property
    def train_augmented(self) -> bool:
        """The probe trains on features of freshly augmented train clips, computed per step."""
        return bool(getattr(self.probe, "train_augmented", False))

    def result_name(self, label_set: str, encoder_name: str) -> str:
        return f"{self.job.name or self.job.probe['name']}_{label_set}_{encoder_name}"

    def names(self) -> list[str]:
        return [self.result_name(s, e) for e in self.job.encoders for s in self.label_sets]

    def measure(self, subject: Subject) -> Iterator[tuple[str, str, str, results_lib.Result]]:
        """(result name, encoder, label set, result) of each result, as soon as it is measured."""
        for encoder_name in self.job.encoders:
            for label_set, result in self._results(subject, encoder_name):
                name = self.result_name(label_set, encoder_name)
                logging.info("%s at step %d: top1 %.2f", name, subject.step, result["top1"])
                yield name, encoder_name, label_set, result

    def write(self, name: str, encoder_name: str, label_set: str, result, subject) -> None:
        """`<workdir>/probe/<name>.json` (the metrics and what they were measured on) and,
        with `plots`, its pictures."""
        record = {
            "name": name,
            "top1": result["top1"],  # also in metrics; at the top for scripts
            "metrics": dict(result),
            "class_names": self.label_names[label_set],
            "checkpoint": str(storage.path(subject.workdir)),
            "step": subject.step,
            "encoder": encoder_name,
            "test_pp": self.test_pp,
            probe_data.SOURCE_KEY: probe_data.comparable(self.data_cfg.source),
            "config": config_lib.to_dict(dataclasses.asdict(self.job)),
            "git_commit": results_lib.git_commit(),
        }
        out_dir = storage.path(subject.workdir) / "probe"
        results_lib.write(out_dir, record, result, self.label_names[label_set], self.job.plots)

    def _results(self, subject: Subject, encoder_name: str):
        """(label set, result) of one encoder, for each label set."""
        which = job_lib.ENCODERS[encoder_name]
        num_classes = {s: len(self.label_names[s]) for s in self.label_sets}
        if self.inputs == "checkpoint":
            for label_set in self.label_sets:
                name = self.result_name(label_set, encoder_name)
                yield (
                    label_set,
                    self.probe.run_checkpoint(
                        checkpoint=subject.workdir,
                        step=subject.step,
                        which=which,
                        run_config=subject.config,
                        data=self.data,
                        label_set=label_set,
                        num_classes=num_classes[label_set],
                        train_pp=self.job.train_pp,
                        test_pp=self.test_pp,
                        workdir=str(storage.path(subject.workdir) / "probe" / name),
                        eval_batch_size=self.job.batch_size,
                    ),
                )
        elif self.inputs == "model":
            objective, params, extra, mesh = subject.model()
            self.probe.check(objective, self.job, self.label_names, self.path)
            for label_set in self.label_sets:
                yield label_set, self.probe.evaluate(
                    objective, params, extra, mesh, self.data_cfg, self.test_pp,
                    self.job.batch_size, label_set, num_classes[label_set],
                )  # fmt: skip
        else:
            train_x, train_y, test_x, test_y = self._features(subject, which, encoder_name)
            for label_set in self.label_sets:
                test = (test_x, test_y[label_set], num_classes[label_set])
                if self.train_augmented:  # train_x: a stream of features of augmented clips
                    metrics = self.probe.run_augmented(train_x.labelled(label_set), *test)
                else:
                    metrics = self.probe.run(train_x, train_y[label_set], *test)
                test = pooled(test_x, self.inputs)
                yield label_set, results_lib.Result(metrics, test, test_y[label_set])

    def _features(self, subject: Subject, which: str, encoder_name: str):
        t0 = time.perf_counter()
        common = dict(data=self.data, batch_size=self.job.batch_size)
        train_kind = augmented.PREFIX + self.inputs if self.train_augmented else self.inputs
        train_x, train_y = subject.features(
            which, split=self.data_cfg.train_split, pp=self.job.train_pp, kind=train_kind, **common
        )
        test_x, test_y = subject.features(
            which, split=self.data_cfg.test_split, pp=self.test_pp, kind=self.inputs, **common
        )
        logging.info(
            "%s %s features at step %d in %.1f s: train %s, test %s.",
            encoder_name,
            self.inputs,
            subject.step,
            time.perf_counter() - t0,
            f"augmented {self.job.train_pp}" if self.train_augmented else train_x.shape,
            test_x.shape,
        )
        return train_x, train_y, test_x, test_y


def make(job: job_lib.ProbeJobConfig, run_data: dict, path: str) -> Plan:
    """`job` on a run whose `config.data` is `run_data`; its label sets checked in the data."""
    data = probe_data.job_data(run_data, job.data)
    data_cfg = config_lib.instantiate(pipeline.DataConfig, data, f"{path}.data")
    label_names = dict(pipeline.make_source(data_cfg, data_cfg.test_split).label_names)
    for label_set in job.label_sets or ():
        if label_set not in label_names:
            raise config_lib.ConfigError(
                f"{path}.label_sets: {label_set!r} not in the data; allowed: "
                f"{', '.join(label_names) or '(the data has no labels)'}"
            )
    return Plan(
        job=job,
        path=path,
        probe=config_lib.component("probe", job.probe, f"{path}.probe"),
        data=data,
        data_cfg=data_cfg,
        label_names=label_names,
        label_sets=job.label_sets or tuple(label_names),
        test_pp=job_lib.resolve_test_pp(job, data_cfg),
    )


def pooled(features: np.ndarray, kind: str) -> np.ndarray:
    """Clip vectors for plots: tokens [N, (V,) n, D] are averaged over tokens."""
    return np.asarray(features).mean(axis=-2) if kind == "tokens" else features
