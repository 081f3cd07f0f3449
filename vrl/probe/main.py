"""Probe jobs, run by `python -m vrl.probe` (see __main__.py) or at the end of training.

A job reads the encoder's config from the checkpoint (no model flags to repeat), extracts
frozen features of the train and test splits once per encoder (pooled vectors, or token
sequences for the attentive probe), and runs the configured probe on every label set; the
fine-tuning probe trains from the checkpoint instead. Results go to
`WORKDIR/probe/<name>_<labelset>_<encoder>.json` with pictures next to it (per-class accuracy,
confusion matrix, PCA of the test features), and to the run's metrics.jsonl / TensorBoard as
`<name>_<labelset>_<encoder>/<metric>`.
"""

import dataclasses
import json
import os
import subprocess
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from vrl import api
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import metrics as metrics_lib
from vrl.data import pipeline
from vrl.probe import data as probe_data
from vrl.probe import plots, views

# Encoder names a probe config may list -> which parameters `api.load_encoder` takes.
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


def check_eval_config(cfg: dict, path: str) -> ProbeJobConfig:
    """Validates a probe config (`config.evals.<name>` or a probe job) before anything runs."""
    job = config_lib.instantiate(ProbeJobConfig, cfg, path)
    config_lib.component("probe", job.probe, f"{path}.probe")
    for name in job.encoders:
        if name not in ENCODERS:
            raise config_lib.ConfigError(
                f"{path}.encoders: unknown encoder {name!r}; allowed: {', '.join(ENCODERS)}"
            )
    return job


def job_config(probe: dict, source: str = ""):
    """A probe config file's ConfigDict: every job key, unset ones as typed placeholders.

    Data defaults to the checkpoint's; `source` names a source whose keys become settable,
    e.g. `:source=video_folder` then `--config.data.source.root=DIR`.
    """
    import ml_collections  # noqa: PLC0415 - only config files need it

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
        c.data.source = probe_data.unset_source(source)  # every key settable, none set
    c.train_pp = placeholder(str)
    c.test_pp = placeholder(str)
    c.test_views = placeholder(tuple)
    c.batch_size = 32
    c.plots = True
    # Names the results (probe/<name>_<labels>_<encoder>.json); set it for a second job on
    # other data so the first one's results are kept.
    c.name = placeholder(str)
    return c


def resolve_test_pp(job: ProbeJobConfig, data_cfg: pipeline.DataConfig) -> str:
    """The job's test pp: explicit, else `test_views` derived from the data's, else the data's."""
    if job.test_pp is not None:
        return job.test_pp
    if job.test_views is not None:
        return views.multiview(data_cfg.test_pp, *job.test_views)
    return data_cfg.test_pp


def run_job(
    cfg: dict, writer: metrics_lib.Writer | None = None, *, refuse_overwrite: bool = True
) -> dict[str, dict]:
    """Runs one probe job; returns {result name: metrics}.

    `refuse_overwrite`: a ConfigError, before any work, where results of the same name made on
    other data exist (else they are replaced with a warning).
    """
    job = check_eval_config(config_lib.drop_unset(cfg), "config")
    if not job.checkpoint:
        raise config_lib.ConfigError("config.checkpoint: required (the training run's --workdir)")
    probe = config_lib.component("probe", job.probe, "config.probe")
    probe_name = job.name or job.probe["name"]
    # What a probe consumes: "pooled" features, "tokens", or the "checkpoint" itself (fine-tuning).
    inputs = getattr(probe, "inputs", "pooled")
    meta, step = ckpt_lib.load_meta(job.checkpoint, job.step)
    data = probe_data.job_data(meta["config"].get("data", {}), job.data)
    data_cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    label_names = pipeline.make_source(data_cfg, data_cfg.test_split).label_names
    label_sets = job.label_sets or tuple(label_names)
    for label_set in label_sets:
        if label_set not in label_names:
            raise config_lib.ConfigError(
                f"config.label_sets: {label_set!r} not in the data; "
                f"allowed: {', '.join(label_names)}"
            )
    test_pp = resolve_test_pp(job, data_cfg)
    out_dir = os.path.join(job.checkpoint, "probe")
    names = [f"{probe_name}_{s}_{e}" for e in job.encoders for s in label_sets]
    probe_data.check_results_kept(out_dir, names, data_cfg.source, refuse_overwrite)
    probe_data.log_clips(meta, data, data_cfg.test_split, test_pp)
    os.makedirs(out_dir, exist_ok=True)
    own_writer = writer is None
    writer = writer or metrics_lib.Writer(job.checkpoint)
    results = {}
    for encoder_name in job.encoders:
        if inputs != "checkpoint":
            t0 = time.perf_counter()
            encoder = api.load_encoder(job.checkpoint, step, ENCODERS[encoder_name], job.batch_size)
            train_x, train_y = api.extract_features(
                encoder, data, data_cfg.train_split, pp=job.train_pp, kind=inputs
            )
            test_x, test_y = api.extract_features(
                encoder, data, data_cfg.test_split, pp=test_pp, kind=inputs
            )
            logging.info(
                "Extracted %s %s features in %.1f s: train %s, test %s.",
                encoder_name,
                inputs,
                time.perf_counter() - t0,
                train_x.shape,
                test_x.shape,
            )
        for label_set in label_sets:
            name = f"{probe_name}_{label_set}_{encoder_name}"
            num_classes = len(label_names[label_set])
            if inputs == "checkpoint":
                metrics, features, labels = probe.run_checkpoint(
                    checkpoint=job.checkpoint,
                    step=step,
                    which=ENCODERS[encoder_name],
                    run_config=meta["config"],
                    data=data,
                    label_set=label_set,
                    num_classes=num_classes,
                    train_pp=job.train_pp,
                    test_pp=test_pp,
                    workdir=os.path.join(out_dir, name),
                    eval_batch_size=job.batch_size,
                )
            else:
                metrics = probe.run(
                    train_x, train_y[label_set], test_x, test_y[label_set], num_classes
                )
                features, labels = pooled(test_x, inputs), test_y[label_set]
            results[name] = metrics
            record = {
                "name": name,
                "top1": metrics["top1"],  # also in metrics; at the top for scripts
                "metrics": metrics,
                "class_names": label_names[label_set],
                "checkpoint": os.path.abspath(job.checkpoint),
                "step": step,
                "encoder": encoder_name,
                "test_pp": test_pp,
                probe_data.SOURCE_KEY: probe_data.comparable(data_cfg.source),
                "config": config_lib.to_dict(dataclasses.asdict(job)),
                "git_commit": git_commit(),
            }
            if jax.process_index() == 0:
                with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                    json.dump(record, f, indent=1)
                if job.plots:
                    plots.write_result_plots(
                        out_dir, name, metrics, label_names[label_set], features, labels
                    )
            writer.write(step, {f"{name}/{k}": v for k, v in metrics.items() if _is_scalar(v)})
            logging.info("%s: top1 %.2f", name, metrics["top1"])
    if own_writer:
        writer.close()
    return results


def pooled(features: np.ndarray, kind: str) -> np.ndarray:
    """Clip vectors for plots: tokens [N, (V,) n, D] are averaged over tokens."""
    return np.asarray(features).mean(axis=-2) if kind == "tokens" else features


def run_evals(evals: dict[str, dict], workdir: str, writer=None) -> dict[str, dict]:
    """Runs `config.evals` (probe configs without a checkpoint) on `workdir`; prints a table."""
    results = {}
    for eval_name, cfg in evals.items():
        job = {"name": eval_name, **cfg, "checkpoint": workdir}
        results.update(run_job(job, writer, refuse_overwrite=False))
    logging.info("\n%s", summary_table(results))
    return results


def summary_table(results: dict[str, dict]) -> str:
    """top-1 / top-5, and Recall@k where a probe reports retrieval (not logged: the caller
    prints or logs it once)."""
    recall_keys = sorted(
        {k for m in results.values() for k in m if k.startswith("recall@")},
        key=lambda k: int(k.split("@")[1]),
    )
    header = ["probe_labels_encoder", "top1", "top5", *recall_keys, "n"]
    rows = [
        [name, f"{m['top1']:.1f}", f"{m['top5']:.1f}"]
        + [f"{m[k]:.1f}" if k in m else "-" for k in recall_keys]
        + [m["num_test"]]
        for name, m in results.items()
    ]
    return metrics_lib.format_table("Probe results", header, rows)


def git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
