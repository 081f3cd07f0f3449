"""SIGTERM (preemption) at random times: the step reached is saved, the exit code is 0, well
within config.preemption_grace_s; a save that outlives the grace period exits 75 and the
restart still ends with the parameters of an uninterrupted run; Orbax's multi-process
preemption sync point is honoured.

Checkpoints are due every 5 steps here, so a checkpoint at any other step can only be the
preemption save.
"""

import os
import random
import signal
import threading
import time

import jax
import numpy as np
import pytest
import runs

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators
from vrl import preemption as preemption_lib

EVERY = "--config.ckpt.every_steps=5"
GRACE_S = 60.0


def preempt(workdir: str, when: str, rng: random.Random) -> dict:
    """Launches, sends SIGTERM at a random moment of kind `when`, returns what happened."""
    run = runs.Run(workdir, EVERY)
    before = runs.complete_steps(workdir)
    if when == "startup":
        time.sleep(rng.uniform(0.2, 3.0))
    elif when == "training":  # a random step of those left, then a random fraction of one
        step = rng.randint(max(before, default=0) + 1, max(before, default=0) + 3)
        run.until(lambda: f"step {step}/" in run.output())
        time.sleep(rng.uniform(0.0, 0.1))
    sent = run.signal(signal.SIGTERM)
    code = run.wait()
    elapsed = time.monotonic() - sent
    saved = [int(m) for m in runs.SAVED_AFTER_NOTICE.findall(run.output())]
    return {
        "when": when,
        "code": code,
        "exit_s": elapsed,
        "saved": saved,
        "before": before,
        "after": runs.complete_steps(workdir),
        "log": run.tail(),
    }


@pytest.mark.slow
def test_sigterm_at_random_times_saves_the_step_reached_and_exits_0(tmp_path):
    seed = runs.seed("VRL_TERM_SEED", 0)
    print(f"sigterm seed {seed}")
    rng = random.Random(seed)
    version = runs.code_version()
    workdir = str(tmp_path / "run")
    results = [preempt(workdir, when, rng) for when in ("training", "startup", "training")]
    for r in results:
        context = f"seed {seed}: {r}"
        assert r["code"] == 0, context
        assert r["exit_s"] < GRACE_S, context
        assert not runs.saves_in_flight(workdir), context
        if r["saved"]:  # the notice came inside the loop: the step reached is on disk
            assert r["after"][-1] == r["saved"][0], context
            assert r["saved"][0] > max(r["before"], default=0), context
        else:  # before the first step: nothing new to save, nothing lost
            assert "SIGTERM outside the training loop" in r["log"], context
            assert r["after"] == r["before"], context
    assert all(r["saved"] for r in results if r["when"] == "training"), results
    print([(r["when"], r["saved"], round(r["exit_s"], 2)) for r in results])

    # A save still running config.preemption_grace_s after the notice: exit 75, one line.
    run = runs.Run(workdir, EVERY, "--config.preemption_grace_s=0.001")
    run.until(lambda: "| loss" in run.output())
    run.signal(signal.SIGTERM)
    assert run.wait() == preemption_lib.PREEMPTION_TIMEOUT_EXIT, run.tail()
    lines = [ln for ln in run.output().splitlines() if ln.startswith("preemption: ")]
    assert lines and "config.preemption_grace_s=0.001 s" in lines[0], run.tail()
    assert "a restart resumes from the last complete checkpoint" in lines[0]

    runs.finish(workdir, EVERY)  # and the preempted run is still the same run
    runs.assert_same_run(workdir, version)


@pytest.mark.slow
def test_orbax_preemption_sync_point_saves_that_step(tmp_path, monkeypatch):
    """On Cloud TPU / multi-process runs the notice arrives through `reached_preemption`."""
    config = config_lib.load_file(os.path.join(runs.ROOT, runs.CONFIG), "steps=6")
    config.ckpt.every_steps = 100
    calls = []

    def reached_preemption(self, step):
        calls.append(step)
        return step == 4

    import orbax.checkpoint as ocp  # noqa: PLC0415

    monkeypatch.setattr(ocp.CheckpointManager, "reached_preemption", reached_preemption)
    result = evaluators.train_and_evaluate(config, str(tmp_path))
    assert result == {"preempted_at_step": 4}
    # Asked at every step (Orbax asks again while saving): it is a collective sync point.
    assert sorted(set(calls)) == [1, 2, 3, 4]
    assert ckpt_lib.complete_steps(str(tmp_path)) == [4]
    leaves = runs.params(str(tmp_path), 4)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(leaves))


def test_several_processes_leave_sigterm_to_jax():
    """jax's preemption sync manager owns SIGTERM in multi-process runs; ours stays out."""
    before = signal.getsignal(signal.SIGTERM)
    with preemption_lib.Preemption(1.0, install=False):
        assert signal.getsignal(signal.SIGTERM) is before
    with preemption_lib.Preemption(1.0, install=True) as preemption:
        assert signal.getsignal(signal.SIGTERM) == preemption._handle
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers need the main thread",
)
def test_sigterm_outside_the_loop_raises_preempted_inside_it_only_flags():
    with preemption_lib.Preemption(30.0) as preemption:
        with pytest.raises(preemption_lib.Preempted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs between bytecodes
    with preemption_lib.Preemption(30.0) as preemption:
        preemption.deferred = True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert preemption.requested_at is not None
