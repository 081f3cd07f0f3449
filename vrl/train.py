"""The one training loop, for every objective.

Read top to bottom: config -> mesh -> data -> objective -> sharded state -> jitted step ->
loop (metrics one step late, async checkpoints) -> evals. Nothing here knows which objective
it trains: it only calls the `vrl.objectives.base.Objective` contract.
"""

import dataclasses
import json
import time
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import metrics as metrics_lib
from vrl import optim, resume, sharding, workdir_lock
from vrl import preemption as preemption_lib
from vrl.data import pipeline
from vrl.objectives import base
from vrl.objectives.base import ClipSpec, Objective
from vrl.state import (
    TrainState,
    abstract_state,
    batch_spec,
    compile_step,
    init_state,
    make_train_step,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


# SIGTERM / Ctrl-C handling lives in vrl/preemption.py; these names are the trainer's API.
PREEMPTION_TIMEOUT_EXIT = preemption_lib.PREEMPTION_TIMEOUT_EXIT
INTERRUPTED_EXIT = preemption_lib.INTERRUPTED_EXIT
Preempted = preemption_lib.Preempted
Interrupted = preemption_lib.Interrupted
_Preemption = preemption_lib.Preemption


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient; the last good checkpoint is kept."""


# ----------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The top level of a run config; sections stay dicts here and are typed in `Setup`."""

    seed: int = 0
    total_steps: int | None = None
    total_epochs: float | None = None
    log_every_steps: int = 50
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # What to do with a non-finite loss or gradient: stop, or skip the update and count it.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Seconds a SIGTERM (preemption) may take to save and exit.
    preemption_grace_s: float = 60.0
    # Stop (like a non-finite loss) once the parameters' global norm passes this: a diverged
    # run whose numbers are still finite. Far above any healthy model's; None or 0: no check.
    max_param_norm: float | None = 1e6
    # Resume even if the seed, batch size or training data differ from the saved run's.
    allow_config_change: bool = False
    data: dict = dataclasses.field(default_factory=dict)
    model: dict = dataclasses.field(default_factory=dict)
    objective: dict = dataclasses.field(default_factory=dict)
    optim: dict = dataclasses.field(default_factory=dict)
    mesh: dict = dataclasses.field(default_factory=dict)
    ckpt: dict = dataclasses.field(default_factory=dict)
    evals: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything typed and checked from a config, before any array exists."""

    run: TrainConfig
    data: pipeline.DataConfig
    optim: optim.OptimConfig
    mesh: sharding.MeshConfig
    ckpt: ckpt_lib.CheckpointConfig
    objective: Objective
    train_source: Any
    train_ops: list
    config: dict


def setup(config: Any) -> Setup:
    """Checks every key of the config; raises config.ConfigError with a one-line message."""
    config = config_lib.to_dict(config)
    run = config_lib.instantiate(TrainConfig, config, "config")
    if (run.total_steps is None) == (run.total_epochs is None):
        raise config_lib.ConfigError("config.total_steps / config.total_epochs: set exactly one")
    from vrl.probe import main as probe_main  # noqa: PLC0415 - probes import the trainer's helpers

    for name, probe_cfg in run.evals.items():
        probe_main.check_eval_config(probe_cfg, f"config.evals.{name}")
    data = config_lib.instantiate(pipeline.DataConfig, run.data, "config.data")
    opt = config_lib.instantiate(optim.OptimConfig, run.optim, "config.optim")
    ckpt = config_lib.instantiate(ckpt_lib.CheckpointConfig, run.ckpt, "config.ckpt")
    check_ranges(run, data, opt, ckpt)
    s = Setup(
        run=run,
        data=data,
        optim=opt,
        mesh=config_lib.instantiate(sharding.MeshConfig, run.mesh, "config.mesh"),
        ckpt=ckpt,
        objective=base.build(config, DTYPES[run.compute_dtype]),
        train_source=pipeline.make_source(data, data.train_split),
        train_ops=pipeline.make_ops(data.train_pp, "config.data.train_pp"),
        config=config,
    )
    # What the evals will need (label sets, pipelines, encoders), before days of training.
    from vrl.probe import eval_checks  # noqa: PLC0415 - as probe_main above

    eval_checks.check_evals(run.evals, data, s.objective.encoders())
    return s


def check_ranges(run: TrainConfig, data, opt, ckpt) -> None:
    """Bounds that types cannot express; a value outside them is a one-line ConfigError."""
    rules = (
        ("config.total_steps", run.total_steps, ">= 1", lambda v: v is None or v >= 1),
        ("config.total_epochs", run.total_epochs, "> 0", lambda v: v is None or v > 0),
        ("config.log_every_steps", run.log_every_steps, ">= 1", lambda v: v >= 1),
        ("config.preemption_grace_s", run.preemption_grace_s, "> 0", lambda v: v > 0),
        (
            "config.max_param_norm",
            run.max_param_norm,
            "> 0, or 0 / None for no check",
            lambda v: v is None or v >= 0,
        ),
        ("config.data.batch_size", data.batch_size, ">= 1", lambda v: v >= 1),
        ("config.data.repeated_samples", data.repeated_samples, ">= 1", lambda v: v >= 1),
        ("config.data.num_workers", data.num_workers, ">= 0", lambda v: v >= 0),
        ("config.data.prefetch", data.prefetch, ">= 0", lambda v: v >= 0),
        (
            "config.data.max_skip_fraction",
            data.max_skip_fraction,
            "in [0, 1]",
            lambda v: 0 <= v <= 1,
        ),
        ("config.optim.lr", opt.lr, ">= 0", lambda v: v >= 0),
        ("config.optim.warmup_steps", opt.warmup_steps, ">= 0", lambda v: v >= 0),
        ("config.optim.grad_accum_steps", opt.grad_accum_steps, ">= 1", lambda v: v >= 1),
        ("config.ckpt.every_steps", ckpt.every_steps, ">= 1", lambda v: v >= 1),
        ("config.ckpt.keep", ckpt.keep, ">= 1", lambda v: v >= 1),
    )
    for key, value, allowed, ok in rules:
        if not ok(value):
            raise config_lib.ConfigError(f"{key}: {value!r} is not allowed; allowed: {allowed}")


def check_clip_length(source, example: dict, frames: int, samples: int = 8) -> None:
    """Refuses clips longer than every video checked (a few spread over the source).

    Short videos are looped or clamped by design, but a clip longer than all of them means
    every clip repeats frames: almost surely frames x stride set for another dataset.
    """
    ones = np.ones(1)
    step = (
        np.asarray(example.get("temporal/stride", ones), np.float64)
        * np.asarray(example.get("temporal/tempo", ones), np.float64)
        * np.asarray(example.get("temporal/skip", ones), np.float64)
    )
    span = int(np.floor((frames - 1) * float(np.max(step)))) + 1
    indices = np.unique(np.linspace(0, len(source) - 1, min(samples, len(source))).astype(int))
    records = [source[int(i)] for i in indices]
    lengths = [int(r["num_frames"]) for r in records if "error" not in r]  # readable ones
    if lengths and span > max(lengths):
        raise config_lib.ConfigError(
            f"config.data.train_pp: a clip spans {span} frames ({frames} frames, "
            f"{float(np.max(step)):g} apart), longer than every video checked in "
            f"config.data.source (at most {max(lengths)} frames in {len(lengths)} videos); "
            "use fewer frames or a smaller stride"
        )


# ----------------------------------------------------------------------------------------------
# Loop
# ----------------------------------------------------------------------------------------------


def train_and_evaluate(config: Any, workdir: str, step_hook=None) -> dict:
    """Trains (resuming from `workdir` if it holds checkpoints), then runs `config.evals`.

    `step_hook(step, state) -> metrics or None` runs after every step; the metrics it returns
    are written at that step (the fine-tuning probe evaluates every N steps this way).
    A SIGTERM saves the step reached and returns {"preempted_at_step": step}, or raises
    Preempted where there is nothing new to save; Ctrl-C does the same and raises Interrupted
    (see vrl/preemption.py). Neither is ever raised from inside jax (tracing, compilation).
    """
    s = setup(config)
    ckpt_lib.check_writable(workdir)
    with (
        workdir_lock.hold(workdir),
        _Preemption(
            s.run.preemption_grace_s,
            install=jax.process_count() == 1,
            on_hard_exit=workdir_lock.release_all,  # os._exit skips the lock's `finally`
        ) as preemption,
    ):
        return _train_and_evaluate(s, workdir, step_hook, preemption)


def _train_and_evaluate(s: Setup, workdir: str, step_hook, preemption: _Preemption) -> dict:
    started = time.perf_counter()
    mesh = sharding.make_mesh(s.mesh)
    rules = s.mesh.axis_rules()
    local_batch = sharding.batch_size_per_process(s.data.batch_size, mesh, s.optim.grad_accum_steps)
    logging.info("%s; %d clips per process per step.", sharding.describe(mesh, s.mesh), local_batch)

    # --- Data -------------------------------------------------------------------------------
    steps_per_epoch = max(len(s.train_source) // s.data.batch_size, 1)
    total_steps = s.run.total_steps or int(round(s.run.total_epochs * steps_per_epoch))
    objective = s.objective.for_training(total_steps)
    maker = pipeline.ExampleMaker(s.train_source, s.train_ops)
    clip = clip_spec(maker)
    check_encoder(objective.encoder, clip)
    check_clip_length(s.train_source, maker(0, np.random.default_rng(0)), clip.frames)
    extra_ops = objective.batch_ops(clip)
    data_iter = iter(
        pipeline.train_dataset(
            s.data,
            seed=s.run.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
            extra_ops=extra_ops,
        )
    )

    # --- State ------------------------------------------------------------------------------
    tx, lr_schedule = optim.make(
        s.optim,
        total_steps=total_steps,
        batch_size=s.data.batch_size,
        steps_per_epoch=steps_per_epoch,
        layer_ids=objective.layer_ids,
    )
    if jax.process_index() == 0:
        ckpt_lib.clear_incomplete(workdir)
        ckpt_lib.set_aside_damaged(workdir)  # resume from the newest step that verifies
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("vrl: incomplete checkpoints cleared")
    mngr = ckpt_lib.manager(workdir, s.ckpt)
    latest = mngr.latest_step()
    if latest is not None:
        saved_config = ckpt_lib.load_meta(workdir, latest)[0]["config"]
        resume.check_config(saved_config, s.config, workdir, latest, s.run.allow_config_change)
        restore_data_any_layout(mngr, latest, data_iter, workdir)
    first_batch = next(data_iter)
    device_batch, _ = pipeline.split_host_keys(first_batch)
    init_batch = {k: np.asarray(v[:2]) for k, v in device_batch.items()}
    state, state_shardings = init_state(objective, tx, init_batch, mesh, rules, s.run.seed)
    if latest is not None:
        abstract = abstract_state(state_shardings, state)
        resume.check_same_model(mngr, latest, abstract, saved_config, s.config, workdir)
        state = ckpt_lib.restore_state(mngr, latest, abstract)
        logging.info("Resumed from step %d in %s.", latest, workdir)
    else:
        params, extra = objective.post_init(state.params, state.extra)
        state = state.replace(
            params=jax.device_put(params, state_shardings.params),
            extra=jax.device_put(extra, state_shardings.extra),
        )
    log_parameters(state)
    meta = {"config": s.config, "init_batch": batch_spec(init_batch)}

    # --- Step -------------------------------------------------------------------------------
    step_fn = make_train_step(
        objective,
        tx,
        lr_schedule,
        s.run.seed,
        s.optim.grad_accum_steps,
        s.run.on_nonfinite == "skip",
    )
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        t0 = time.perf_counter()
        compiled = compile_step(
            step_fn, state, state_shardings, sharding.to_global(device_batch, mesh)
        )
        logging.info("Compiled the train step in %.1f s.", time.perf_counter() - t0)
        log_memory(compiled)

        # --- Loop ---------------------------------------------------------------------------
        start = int(jax.device_get(state.step))
        writer = metrics_lib.Writer(workdir, resume_step=start)  # rows past `start` set aside
        progress = metrics_lib.Progress(
            total_steps, start, s.data.batch_size, metrics_lib.compiled_flops(compiled)
        )
        pending = None
        data_stats = DataStats(s.data.max_skip_fraction, s.data.repeated_samples)
        # Where the wall time goes: setup (data, first batch, state), compile, the loop's steps
        # and its waits for data and checkpoints (time/steps is set when the loop ends).
        timers = {
            "time/setup": t0 - started,
            "time/data_wait": 0.0,
            "time/ckpt": 0.0,
            "time/compile": time.perf_counter() - t0,
        }
        loop_started = time.perf_counter()
        batch = first_batch
        preemption.check()  # a notice during start-up: nothing new to save
        preemption.deferred = True  # from here on SIGTERM waits for the step, then saves it
        try:
            for step in range(start, total_steps):
                if step > start:
                    t = time.perf_counter()
                    batch = next(data_iter)
                    timers["time/data_wait"] += time.perf_counter() - t
                device_batch, host = pipeline.split_host_keys(batch)
                data_stats.update(host)
                state, step_metrics = compiled(state, sharding.to_global(device_batch, mesh))
                if pending is not None:
                    _finish_step(pending, s, progress, writer, timers, data_stats)
                pending = (step + 1, step_metrics)
                hooked = step_hook(step + 1, state) if step_hook is not None else None
                if hooked:
                    writer.write(step + 1, hooked)
                # Every process calls this every step: it is the multi-process sync point.
                if mngr.reached_preemption(step + 1):
                    preemption.notice("Preemption notice (sync point)")
                preempted = preemption.requested_at is not None
                if (step + 1) % s.ckpt.every_steps == 0 or step + 1 == total_steps or preempted:
                    # Check this step before saving it, so a non-finite state is never saved.
                    _finish_step(pending, s, progress, writer, timers, data_stats)
                    pending = None
                    t = time.perf_counter()
                    ckpt_lib.save(mngr, step + 1, state, data_iter, meta, force=True)
                    timers["time/ckpt"] += time.perf_counter() - t
                if preempted:
                    return _exit_preempted(mngr, writer, workdir, step + 1, preemption)
            if pending is not None:
                _finish_step(pending, s, progress, writer, timers, data_stats)
            t = time.perf_counter()
            ckpt_lib.wait(mngr, workdir)
            timers["time/ckpt"] += time.perf_counter() - t
            waits = timers["time/data_wait"] + timers["time/ckpt"]
            timers["time/steps"] = time.perf_counter() - loop_started - waits
        except BaseException:
            _settle(mngr)
            raise
        preemption.deferred = False
        if preemption.requested_at is not None:  # SIGTERM while the last save was written
            return _exit_preempted(mngr, writer, workdir, total_steps, preemption)
    writer.write(total_steps, timers)

    # --- Evals ------------------------------------------------------------------------------
    results = {}
    if s.run.evals:
        from vrl.probe import main as probe_main  # noqa: PLC0415

        t = time.perf_counter()
        results = probe_main.run_evals(s.run.evals, workdir, writer=writer)
        writer.write(total_steps, {"time/eval": time.perf_counter() - t})
    writer.close()
    mngr.close()
    return results


def _exit_preempted(mngr, writer, workdir: str, step: int, preemption: _Preemption) -> dict:
    """Waits for the save of `step` (the preemption watchdog bounds the wait) and stops."""
    ckpt_lib.wait(mngr, workdir)
    logging.warning("Saved step %d after the preemption notice; exiting.", step)
    preemption.saved_step = step  # after Ctrl-C, leaving the context raises Interrupted
    writer.close()
    mngr.close()
    return {"preempted_at_step": step}


def _settle(mngr) -> None:
    """On the way out with an error: lets the save in flight (the last good step) complete."""
    try:
        mngr.wait_until_finished()
        mngr.close()
    except Exception as e:  # noqa: BLE001 - the original error is the one to report
        logging.warning("The checkpoint writer stopped with an error too: %s", e)


def _finish_step(pending, s: Setup, progress, writer, timers, data_stats) -> None:
    """Fetches a step's metrics (one step late, so the device never waits) and acts on them."""
    step, step_metrics = pending
    values = jax.device_get(step_metrics)
    if not values["train/finite"]:
        bad = [k for k in ("train/loss", "train/grad_norm") if not np.isfinite(values[k])]
        message = (
            f"non-finite training at step {step} ({', '.join(bad)}): "
            f"loss={float(values['train/loss'])}, grad_norm={float(values['train/grad_norm'])}"
        )
        if s.run.on_nonfinite == "stop":
            raise NonFiniteError(
                message + "; the last good checkpoint is kept "
                "(set config.on_nonfinite='skip' to skip such steps)"
            )
        logging.warning("%s; update skipped.", message)
    norm, bound = values.get("train/param_norm"), s.run.max_param_norm
    if bound and norm is not None and not float(norm) <= bound:
        raise NonFiniteError(
            f"parameters diverged at step {step} (train/param_norm): param_norm={float(norm):.4g} "
            f"> config.max_param_norm={bound:g}; the last good checkpoint is kept (lower the "
            "learning rate; raise config.max_param_norm, or set it to 0 to switch the check off)"
        )
    if step % s.run.log_every_steps == 0 or step == progress.total_steps:
        values = {k: v for k, v in values.items() if k != "train/finite"}
        values.update(progress.report(step))
        values.update(data_stats.metrics())
        values.update(timers)
        writer.write(step, values)
        logging.info("%s", progress.line(step, values))


class DataStats:
    """Counts unreadable videos and stops the run when they exceed the allowed fraction."""

    def __init__(self, max_fraction: float, repeats: int = 1):
        self.max_fraction = max_fraction
        self.repeats = repeats  # clips per decoded video (repeated sampling)
        self.seen = 0
        self.skipped = 0
        self.bad: dict[str, None] = {}

    def update(self, host: dict) -> None:
        skipped = host.get("data/skipped")
        if skipped is None:
            return
        self.seen += int(np.size(skipped)) // self.repeats + int(np.sum(skipped))
        self.skipped += int(np.sum(skipped))
        for ids in np.ravel(host.get("data/bad_ids", [])):
            for vid in filter(None, str(ids).split(";")):
                self.bad.setdefault(vid)
        if self.seen >= 100 and self.skipped > self.max_fraction * self.seen:
            listed = ", ".join(list(self.bad)[:20])
            raise pipeline.sources.DecodeError(
                f"{self.skipped} of {self.seen} videos were unreadable, more than "
                f"config.data.max_skip_fraction={self.max_fraction}; bad files: {listed}"
            )

    def metrics(self) -> dict[str, float]:
        return {"data/skipped": self.skipped, "data/seen": self.seen}


def check_encoder(encoder, clip: ClipSpec) -> None:
    """The encoder's own limits on the clip (ViT: patch, heads, TokenLearner), at start-up."""
    check = getattr(encoder, "check_clip", None)
    if check is not None:
        check(clip.frames, clip.height, clip.width)


def clip_spec(maker: pipeline.ExampleMaker) -> ClipSpec:
    """Shape of the clips the train ops make, from one real example."""
    example = maker(0, np.random.default_rng(0))
    video = example["video"]
    views = video.shape[0] if video.ndim == 5 else 1
    return ClipSpec(
        frames=video.shape[-4], height=video.shape[-3], width=video.shape[-2], views=views
    )


def restore_data_any_layout(mngr, step: int, data_iter, workdir: str) -> None:
    """Restores the data iterator, also from a checkpoint saved with another process count.

    Each process's iterator counts global batches (every process takes its slice of each one),
    so the saved per-process states are identical and any of them continues the run; they are
    checked to be identical before one is used.
    """
    saved = epath.Path(ckpt_lib.directory(workdir)) / str(step) / ckpt_lib.DATA
    own = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not saved.is_dir() or (saved / own).exists():
        ckpt_lib.restore_data(mngr, step, data_iter)
        return
    states = {
        path.name: json.loads(path.read_text())
        for path in sorted(saved.glob("process_*-of-*.json"))
    }
    if not states or any(v != next(iter(states.values())) for v in states.values()):
        raise ckpt_lib.CheckpointError(
            f"cannot resume the data iterator of {saved} on {jax.process_count()} process(es): "
            f"the saved per-process states {sorted(states)} differ or are missing"
        )
    data_iter.set_state(next(iter(states.values())))
    logging.info(
        "Data iterator of step %d restored from %d saved process(es) on %d.",
        step,
        len(states),
        jax.process_count(),
    )


def log_parameters(state: TrainState) -> None:
    def per_device_bytes(tree):
        total = 0
        for x in jax.tree.leaves(tree):
            shard = x.sharding.shard_shape(x.shape)
            total += int(np.prod(shard)) * x.dtype.itemsize
        return total

    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    logging.info(
        "Parameters: %s; per device: params %.1f MB, optimizer %.1f MB, extra %.1f MB.",
        f"{count:,}",
        per_device_bytes(state.params) / 1e6,
        per_device_bytes(state.opt_state) / 1e6,
        per_device_bytes(state.extra) / 1e6,
    )


def log_memory(compiled) -> None:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend reports it
        mem = None
    if mem is not None:
        logging.info(
            "Compiled step memory per device: arguments %.1f MB, outputs %.1f MB, temp %.1f MB.",
            mem.argument_size_in_bytes / 1e6,
            mem.output_size_in_bytes / 1e6,
            mem.temp_size_in_bytes / 1e6,
        )
