"""A non-finite loss or gradient stops the run with the step and the metric, keeping the last
good checkpoint; with config.on_nonfinite='skip' the step is skipped and counted.

The fault is real config: a learning rate of 1e30. Warm-up gives step 1 a learning rate of 0,
step 2 blows the parameters up to ~1e29, and step 3's loss is NaN.
"""

import json
import os
import re

import jax
import numpy as np
import pytest
import runs

HUGE_LR = "--config.optim.lr=1e30"
# The parameter-norm guard would stop step 2 first (test_config_faults.py tests it): off here.
NO_NORM_BOUND = "--config.max_param_norm=0"
FAULT_STEP = 3


def finite(tree) -> bool:
    return all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(tree))


@pytest.mark.slow
def test_nonfinite_loss_stops_with_step_and_metric_and_keeps_good_checkpoints(tmp_path):
    workdir = str(tmp_path / "run")
    run = runs.Run(workdir, HUGE_LR, NO_NORM_BOUND, steps=6)
    assert run.wait() == 3, run.tail()
    lines = [ln for ln in run.output().splitlines() if ln.startswith("training stopped: ")]
    assert len(lines) == 1, run.tail()
    match = re.match(
        r"training stopped: non-finite training at step (\d+) \((train/loss)[^)]*\): loss=nan, "
        r"grad_norm=\S+; the last good checkpoint is kept \(set config.on_nonfinite='skip'",
        lines[0],
    )
    assert match, lines[0]
    assert int(match.group(1)) == FAULT_STEP
    # Every step before the fault was saved completely (the save in flight was waited for)
    # and holds finite parameters; nothing at or after the fault step was saved.
    assert runs.complete_steps(workdir) == list(range(1, FAULT_STEP))
    assert not runs.saves_in_flight(workdir)
    assert all(finite(runs.params(workdir, s)) for s in runs.complete_steps(workdir))


@pytest.mark.slow
def test_skip_mode_skips_and_counts_nonfinite_steps(tmp_path):
    workdir = str(tmp_path / "run")
    run = runs.finish(workdir, HUGE_LR, NO_NORM_BOUND, "--config.on_nonfinite=skip", steps=6)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"train/skipped_steps"' in line]
    skipped = {r["step"]: r["train/skipped_steps"] for r in rows}
    # The parameters are finite but huge after step 2, so every later step is skipped.
    assert skipped == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3, 6: 4}
    assert f"non-finite training at step {FAULT_STEP} (train/loss" in run.output()
    assert "update skipped" in run.output()
    # A skipped step leaves the state as it was: the kept steps 4-6 hold step 2's parameters.
    assert runs.complete_steps(workdir) == [4, 5, 6]
    assert finite(runs.params(workdir, 6))
    assert runs.digest(workdir, 4) == runs.digest(workdir, 5) == runs.digest(workdir, 6)
