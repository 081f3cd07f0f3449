"""Probe jobs, run by `python -m vrl.probe` (see __main__.py) or at the end of training.

A job reads the encoder's config from the checkpoint (no model flags to repeat), extracts
frozen features of the train and test splits once per encoder, and runs the configured probe
on every label set. Results go to `WORKDIR/probe/<name>_<labelset>_<encoder>.json` and to the
run's metrics.jsonl / TensorBoard as `<name>_<labelset>_<encoder>/<metric>`.
"""

import dataclasses
import json
import os
import subprocess
import time
from typing import Any

import jax
from absl import logging

from vrl import api
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import metrics as metrics_lib
from vrl.data import pipeline

# Encoder names a probe config may list -> which parameters `api.load_encoder` takes.
ENCODERS = {"pretrained": "encoder", "target": "target", "teacher": "teacher", "random": "random"}


@dataclasses.dataclass(frozen=True)
class ProbeJobConfig:
    checkpoint: str = ""
    step: int | None = None
    probe: dict = dataclasses.field(default_factory=lambda: {"name": "linear"})
    encoders: tuple[str, ...] = ("pretrained",)
    label_sets: tuple[str, ...] | None = None
    # Overrides merged onto the checkpoint's config.data: source, splits, pipelines.
    data: dict = dataclasses.field(default_factory=dict)
    # Pipelines for the train / test features (default: the data config's test_pp for both).
    train_pp: str | None = None
    test_pp: str | None = None
    batch_size: int = 32
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


def run_job(cfg: dict, writer: metrics_lib.Writer | None = None) -> dict[str, dict]:
    """Runs one probe job; returns {result name: metrics}."""
    job = check_eval_config(config_lib.drop_unset(cfg), "config")
    if not job.checkpoint:
        raise config_lib.ConfigError("config.checkpoint: required (the training run's --workdir)")
    probe = config_lib.component("probe", job.probe, "config.probe")
    probe_name = job.name or job.probe["name"]
    meta, step = ckpt_lib.load_meta(job.checkpoint, job.step)
    data = {**meta["config"].get("data", {}), **job.data}
    data_cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    label_names = pipeline.make_source(data_cfg, data_cfg.test_split).label_names
    label_sets = job.label_sets or tuple(label_names)
    for label_set in label_sets:
        if label_set not in label_names:
            raise config_lib.ConfigError(
                f"config.label_sets: {label_set!r} not in the data; allowed: {', '.join(label_names)}"
            )
    out_dir = os.path.join(job.checkpoint, "probe")
    os.makedirs(out_dir, exist_ok=True)
    own_writer = writer is None
    writer = writer or metrics_lib.Writer(job.checkpoint)
    results = {}
    for encoder_name in job.encoders:
        t0 = time.perf_counter()
        encoder = api.load_encoder(job.checkpoint, step, ENCODERS[encoder_name], job.batch_size)
        train_x, train_y = api.extract_features(encoder, data, data_cfg.train_split, pp=job.train_pp)
        test_x, test_y = api.extract_features(encoder, data, data_cfg.test_split, pp=job.test_pp)
        logging.info("Extracted %s features in %.1f s.", encoder_name, time.perf_counter() - t0)
        for label_set in label_sets:
            name = f"{probe_name}_{label_set}_{encoder_name}"
            metrics = probe.run(
                train_x, train_y[label_set], test_x, test_y[label_set], len(label_names[label_set])
            )
            results[name] = metrics
            record = {
                "name": name,
                "metrics": metrics,
                "class_names": label_names[label_set],
                "checkpoint": os.path.abspath(job.checkpoint),
                "step": step,
                "encoder": encoder_name,
                "config": config_lib.to_dict(dataclasses.asdict(job)),
                "git_commit": git_commit(),
            }
            if jax.process_index() == 0:
                with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                    json.dump(record, f, indent=1)
            writer.write(step, {f"{name}/{k}": v for k, v in metrics.items() if _is_scalar(v)})
            logging.info("%s: top1 %.2f", name, metrics["top1"])
    if own_writer:
        writer.close()
    return results


def run_evals(evals: dict[str, dict], workdir: str, writer=None) -> dict[str, dict]:
    """Runs `config.evals` (probe configs without a checkpoint) on `workdir`; prints a table."""
    results = {}
    for eval_name, cfg in evals.items():
        results.update(run_job({"name": eval_name, **cfg, "checkpoint": workdir}, writer))
    summary_table(results)
    return results


def summary_table(results: dict[str, dict]) -> str:
    rows = [[name, f"{m['top1']:.1f}", f"{m['top5']:.1f}", m["num_test"]] for name, m in results.items()]
    return metrics_lib.log_table("Probe results", ["probe_labels_encoder", "top1", "top5", "n"], rows)


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
    return isinstance(value, (int, float))
