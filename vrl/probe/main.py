"""Probe jobs, run by `python -m vrl.probe` (see __main__.py): one probe on a saved checkpoint.

A job reads the encoder's config from the checkpoint (no model flags to repeat), extracts
frozen features of the train and test splits once per encoder (pooled vectors, or token
sequences for the attentive probe), and runs the configured probe on every label set; the
fine-tuning probe trains from the checkpoint instead. Results go to
`WORKDIR/probe/<name>_<labelset>_<encoder>.json` with pictures next to it (per-class accuracy,
confusion matrix, PCA of the test features), and to the run's metrics.jsonl / TensorBoard as
`<name>_<labelset>_<encoder>/<metric>`. WORKDIR is a local folder or a bucket URL (gs://...):
a job on a pod reads and writes the bucket, as the run did. A training run's `config.evals` are
the same jobs run by `vrl.evaluators` on its live parameters.
"""

import jax

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import metrics as metrics_lib
from vrl import sharding, storage, weights
from vrl.probe import data as probe_data
from vrl.probe import encoder as encoder_lib
from vrl.probe import features
from vrl.probe import job as job_lib
from vrl.probe import plan as plan_lib
from vrl.probe import results as results_lib


def run_job(cfg: dict) -> dict[str, dict]:
    """Runs one probe job; returns {result name: metrics}.

    Results of the same name made on other data are a ConfigError, before any work.
    """
    job = job_lib.check(config_lib.drop_unset(cfg), "config")
    if not job.checkpoint:
        raise config_lib.ConfigError("config.checkpoint: required (the training run's --workdir)")
    workdir = str(storage.check(job.checkpoint, "--config.checkpoint"))
    if job.every_steps or job.every_epochs:
        raise config_lib.ConfigError(
            "config.every_steps / every_epochs: only for config.evals of a training run; "
            "a probe job measures one checkpoint"
        )
    meta, step = ckpt_lib.load_meta(workdir, job.step)
    plan = plan_lib.make(job, meta["config"].get("data", {}), "config")
    out_dir = storage.path(workdir) / "probe"
    probe_data.check_results_kept(out_dir, plan.names(), plan.data_cfg.source, refuse=True)
    probe_data.log_clips(meta, plan.data, plan.data_cfg.test_split, plan.test_pp)
    subject = SavedRun(workdir, step, meta)
    writer = metrics_lib.Writer(workdir)
    results = {}
    for name, encoder_name, label_set, result in plan.measure(subject):
        results[name] = result
        plan.write(name, encoder_name, label_set, result, subject)
        writer.write(step, results_lib.scalars({name: result}))
    writer.close()
    return results


class SavedRun:
    """A checkpoint as a probe measures it (see `plan.Subject`)."""

    def __init__(self, workdir: str, step: int, meta: dict):
        self.workdir = workdir
        self.step = step
        self.config = meta["config"]
        self.meta = meta
        self._encoder = None  # the last one loaded: the plan asks for both splits in turn

    def features(self, which, data, split, pp, kind, batch_size):
        if self._encoder is None or self._encoder.which != which:
            self._encoder = None  # its variables leave the devices before the next arrive
            self._encoder = encoder_lib.load(self.workdir, self.step, which, batch_size)
        return features.extract(self._encoder, data, split, pp=pp, kind=kind)

    def model(self):
        objective = weights.build_objective(self.config)
        params, extra = weights.restore_variables(self.workdir, self.step, objective, self.meta)
        mesh = sharding.make_mesh(sharding.MeshConfig())
        params, extra = jax.device_put((params, extra), sharding.replicated(mesh))
        return objective, params, extra, mesh
