"""A training run's `config.evals`, measured on its live parameters while it trains.

big_vision style: each entry is a probe job (the keys of vrl/probe/job.py) run on the run
itself every `every_steps` (or `every_epochs`) and once more after the last step; the loop
writes its metrics as `<name>_<labels>_<encoder>/<metric>` curves over steps. The final
evaluation also leaves what a probe job on the finished run would (probe/<name>.json and its
pictures, checkpoint = the workdir); a rerun of a finished run only re-evaluates. Probes that
train from the checkpoint (fine-tuning) run at the end only.

    python -m vrl.main ... -> train_and_evaluate(config, workdir)
"""

import json
import math
import os
from typing import Any

from absl import logging

from vrl import setup as setup_lib
from vrl import storage, train, weights
from vrl.probe import data as probe_data
from vrl.probe import eval_checks, features
from vrl.probe import results as results_lib
from vrl.probe.encoder import Encoder


def train_and_evaluate(config: Any, workdir: str) -> dict[str, dict]:
    """Checks the config (evals included), trains, returns the final evaluation's results and
    logs their table; see `train.train` for preemption and Ctrl-C."""
    s = setup_lib.setup(config)
    results = train.train(s, workdir, build(s, workdir))
    if results and "preempted_at_step" not in results:
        logging.info("\n%s", results_lib.summary_table(results))
    return results


def build(s: setup_lib.Setup, workdir: str) -> list[train.Evaluator]:
    """The evaluators of `s.run.evals` (each checked against the run first: label sets,
    pipelines on a real example, encoders, counts, periods)."""
    if not s.run.evals:
        return []
    return [ProbeEvals(eval_checks.check_evals(s, workdir), s.objective, workdir)]


class ProbeEvals:
    """Every `config.evals` entry as one evaluator, so the entries due at a step share their
    features (a kNN and a linear probe on the same data extract once): it is called every
    gcd of their periods and runs the entries whose period divides the step."""

    def __init__(self, plans: dict, objective, workdir: str):
        self.plans = plans  # name -> (plan, every_steps)
        self.every_steps = math.gcd(*(every for _, every in plans.values()))
        self.objective = objective
        self.workdir = workdir
        self.random_variables = None  # computed once: they never change
        self.random_features = {}  # neither do the random encoder's features

    def __call__(self, step: int, state, *, mesh, meta: dict, final: bool) -> dict[str, dict]:
        run = LiveRun(self, step, state, mesh, meta)
        results = {}
        for plan, every in self.plans.values():
            if not (final or (every and step % every == 0)):
                continue
            if final:
                out_dir = os.fspath(storage.path(self.workdir) / "probe")
                probe_data.check_results_kept(out_dir, plan.names(), plan.data_cfg.source, False)
                probe_data.log_clips(meta, plan.data, plan.data_cfg.test_split, plan.test_pp)
            for name, encoder_name, label_set, result in plan.measure(run):
                results[name] = result
                if final:
                    plan.write(name, encoder_name, label_set, result, run)
        return results


class LiveRun:
    """The training run at `step` as a probe measures it (see `vrl.probe.plan.Subject`): its
    live, possibly sharded, parameters on the run's mesh."""

    def __init__(self, evals: ProbeEvals, step: int, state, mesh, meta: dict):
        self.workdir = evals.workdir
        self.step = step
        self.config = meta["config"]
        self._evals = evals
        self._state = state
        self._mesh = mesh
        self._meta = meta
        self._features = {}  # shared by the entries evaluated at this step

    def features(self, which, data, split, pp, kind, batch_size):
        key = json.dumps([which, data, split, pp, kind], sort_keys=True, default=str)
        cache = self._evals.random_features if which == "random" else self._features
        if key not in cache:
            encoder = self._encoder(which, batch_size)
            cache[key] = features.extract(encoder, data, split, pp=pp, kind=kind)
        return cache[key]

    def model(self):
        return self._evals.objective, self._state.params, self._state.extra, self._mesh

    def _encoder(self, which: str, batch_size: int) -> Encoder:
        objective = self._evals.objective
        if which == "random":
            if self._evals.random_variables is None:
                random = weights.random_encoder_variables(objective, self._meta)
                self._evals.random_variables = random
            variables = self._evals.random_variables
        else:
            variables = objective.encoder_variables(self._state.params, self._state.extra, which)
        module = weights.encoder_module(objective, which)
        return Encoder(module, variables, self.config, self.step, which, batch_size, self._mesh)
