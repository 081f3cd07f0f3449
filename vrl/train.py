"""The one training loop, for every objective.

Read top to bottom: mesh -> data -> optimiser -> the state to start from -> compiled step ->
loop (metrics one step late, async checkpoints, evaluators every N steps) -> final evaluators.
It knows no particular objective (only the `vrl.objectives.base.Objective` contract) and no
particular evaluator (only the `Evaluator` protocol below); the config was checked by
`vrl.setup` before this runs.
"""

import time
from collections.abc import Sequence
from typing import Protocol

import flax.linen as nn
import jax
import numpy as np
from absl import logging

from vrl import checkpoint as ckpt_lib
from vrl import metrics as metrics_lib
from vrl import optim, sharding, workdir_lock
from vrl.checkpointer import Checkpointer
from vrl.data import pipeline
from vrl.data.stats import DataStats
from vrl.preemption import Preemption
from vrl.setup import Setup
from vrl.state import TrainState, batch_spec, check_step, compile_step, make_train_step

DATA_WAIT_WARNING = 0.2  # fraction of the loop spent waiting for data that is worth a warning


class Evaluator(Protocol):
    """Measures the current parameters during training (see `vrl.evaluators`)."""

    every_steps: int  # 0: only after the last step

    def __call__(
        self, step: int, state: TrainState, *, mesh, meta: dict, final: bool
    ) -> dict[str, dict]:
        """{result name: metrics}; the loop writes each scalar as `<result name>/<metric>`."""


def train(s: Setup, workdir: str, evaluators: Sequence[Evaluator] = ()) -> dict[str, dict]:
    """Trains (resuming from `workdir` if it holds checkpoints), then runs the evaluators once
    more on the final parameters; returns their results.

    A SIGTERM saves the step reached and returns {"preempted_at_step": step}, or raises
    Preempted where there is nothing new to save; Ctrl-C does the same and raises Interrupted
    (see vrl/preemption.py). Neither is ever raised from inside jax (tracing, compilation).
    """
    ckpt_lib.check_writable(workdir)
    with (
        workdir_lock.hold(workdir),
        Preemption(
            s.run.preemption_grace_s,
            install=jax.process_count() == 1,
            on_hard_exit=workdir_lock.release_all,  # os._exit skips the lock's `finally`
        ) as preemption,
    ):
        return _train(s, workdir, evaluators, preemption)


def _train(s: Setup, workdir: str, evaluators, preemption: Preemption) -> dict:
    started = time.perf_counter()
    mesh = sharding.make_mesh(s.mesh)
    rules = s.mesh.axis_rules()
    local_batch = sharding.batch_size_per_process(s.data.batch_size, mesh, s.optim.grad_accum_steps)
    logging.info("%s; %d clips per process per step.", sharding.describe(mesh, s.mesh), local_batch)
    total_steps = s.length.total_steps
    objective = s.objective.for_training(s.length)

    # --- Data, optimiser and the state to start from -----------------------------------------
    data_iter = iter(
        s.train_data.iterator(
            seed=s.run.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            extra_ops=objective.batch_ops(s.train_data.clip),
        )
    )
    tx, lr_schedule = optim.make(s.optim, s.length, objective.layer_ids)
    ckpt = Checkpointer(workdir, s.ckpt, s.length.steps(s.ckpt, "every", "config.ckpt"))
    ckpt.check_resume(s.config, s.run.allow_config_change)
    ckpt.restore_data(data_iter)
    batch = next(data_iter)
    device_batch, _ = pipeline.split_host_keys(batch)
    init_batch = {k: np.asarray(v[:2]) for k, v in device_batch.items()}
    state, state_shardings = ckpt.start_state(
        objective, tx, init_batch, mesh, rules, s.run.seed, s.config
    )
    metrics_lib.log_parameters(state)
    meta = {"config": s.config, "init_batch": batch_spec(init_batch)}

    # --- Compiled step (not needed by a rerun of a finished run: it only evaluates) ------------
    start = int(jax.device_get(state.step))
    skip_nonfinite = s.run.on_nonfinite == "skip"
    step_fn = make_train_step(
        objective, tx, lr_schedule, s.run.seed, s.optim.grad_accum_steps, skip_nonfinite
    )
    t0 = time.perf_counter()
    compiled = None
    if start < total_steps:
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
            global_batch = sharding.to_global(device_batch, mesh)
            compiled = compile_step(step_fn, state, state_shardings, global_batch)
        logging.info("Compiled the train step in %.1f s.", time.perf_counter() - t0)
        metrics_lib.log_memory(compiled)

    # --- Loop ---------------------------------------------------------------------------------
    writer = metrics_lib.Writer(workdir, resume_step=start)  # rows past `start` set aside
    flops = metrics_lib.compiled_flops(compiled) if compiled is not None else None
    progress = metrics_lib.Progress(total_steps, start, s.data.batch_size, flops)
    log = metrics_lib.StepLog(writer, progress, s.run.log_every_steps)
    data_stats = DataStats(s.data.max_skip_fraction, s.data.repeated_samples)
    # Where the wall time goes: setup (data, first batch, state), compile, the loop's steps and
    # its waits for data, checkpoints and evaluators (time/steps is set when the loop ends).
    timers = {"time/setup": t0 - started, "time/compile": time.perf_counter() - t0}
    timers.update({"time/data_wait": 0.0, "time/ckpt": 0.0, "time/eval": 0.0})
    loop_started = time.perf_counter()

    def finish(pending) -> None:  # a step's metrics, fetched one step late: the device never waits
        step, values = pending[0], jax.device_get(pending[1])
        check_step(values, step, s.run.on_nonfinite, s.run.max_param_norm)
        log.write(step, values, data_stats.metrics(), timers)

    def evaluate(step: int, final: bool) -> dict:
        t = time.perf_counter()
        results = {}
        for evaluator in evaluators:
            if final or (evaluator.every_steps and step % evaluator.every_steps == 0):
                results.update(evaluator(step, state, mesh=mesh, meta=meta, final=final))
        if results:
            timers["time/eval"] += time.perf_counter() - t
            scalars = {f"{name}/{k}": v for name, m in results.items() for k, v in m.items()}
            writer.write(step, {k: v for k, v in scalars.items() if _is_scalar(v)})
        return results

    pending = None
    preemption.check()  # a notice during start-up: nothing new to save
    preemption.deferred = True  # from here on SIGTERM waits for the step, then saves it
    try:
        for step in range(start + 1, total_steps + 1):
            if step > start + 1:
                t = time.perf_counter()
                batch = next(data_iter)
                timers["time/data_wait"] += time.perf_counter() - t
            device_batch, host = pipeline.split_host_keys(batch)
            data_stats.update(host)
            state, step_metrics = compiled(state, sharding.to_global(device_batch, mesh))
            if pending is not None:
                finish(pending)
            pending = (step, step_metrics)
            if ckpt.reached_preemption(step):
                preemption.notice("Preemption notice (sync point)")
            preempted = preemption.requested_at is not None
            if ckpt.should_save(step, total_steps) or preempted:
                finish(pending)  # checked before it is saved: a non-finite state is never saved
                pending = None
                t = time.perf_counter()
                ckpt.save(step, state, data_iter, meta)
                timers["time/ckpt"] += time.perf_counter() - t
            if preempted:
                return _exit_preempted(ckpt, writer, step, preemption)
            if step < total_steps:
                evaluate(step, final=False)
        if pending is not None:
            finish(pending)
        t = time.perf_counter()
        ckpt.wait()
        timers["time/ckpt"] += time.perf_counter() - t
        waits = timers["time/data_wait"] + timers["time/ckpt"] + timers["time/eval"]
        timers["time/steps"] = time.perf_counter() - loop_started - waits
    except BaseException:
        ckpt.settle()
        raise
    preemption.deferred = False
    if preemption.requested_at is not None:  # SIGTERM while the last save was written
        return _exit_preempted(ckpt, writer, total_steps, preemption)
    waiting = _report_data_wait(timers, s.data.num_workers)
    writer.write(total_steps, {**timers, "data/wait_fraction": waiting})
    results = evaluate(total_steps, final=True)
    writer.close()
    ckpt.close()
    return results


def _exit_preempted(ckpt: Checkpointer, writer, step: int, preemption: Preemption) -> dict:
    """Waits for the save of `step` (the preemption watchdog bounds the wait) and stops."""
    ckpt.wait()
    logging.warning("Saved step %d after the preemption notice; exiting.", step)
    preemption.saved_step = step  # after Ctrl-C, leaving the context raises Interrupted
    writer.close()
    ckpt.close()
    return {"preempted_at_step": step}


def _report_data_wait(timers: dict, num_workers: int) -> float:
    """The fraction of the loop spent waiting for batches; logged, with a warning over 20%."""
    loop = timers["time/steps"] + timers["time/data_wait"] + timers["time/ckpt"]
    loop += timers["time/eval"]
    fraction = timers["time/data_wait"] / loop if loop > 0 else 0.0
    logging.info("Waited for data %.0f%% of the loop (%.1f s).", 100 * fraction, loop)
    if fraction > DATA_WAIT_WARNING:
        logging.warning(
            "The step waited for data %.0f%% of the loop: the input pipeline is the bottleneck "
            "(config.data.num_workers=%d; more workers, or a prepared dataset, feed it faster).",
            100 * fraction,
            num_workers,
        )
    return fraction


def _is_scalar(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
