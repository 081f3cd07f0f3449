"""Ctrl-C, SIGKILL and signals during tracing: what a stopped trainer leaves behind.

* Ctrl-C (SIGINT) saves the step reached and exits 130 with one line; a second exits at once.
* A SIGKILLed trainer leaves no Grain worker process (`config.data.num_workers`) behind.
* A SIGTERM that arrives while jax traces the step of an in-process `train_and_evaluate` is
  raised (as Preempted) only outside jax's code, and later jits of the process still work.
"""

import os
import signal
import sys
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import runs

from vrl import config as config_lib
from vrl import evaluators, train
from vrl import preemption as preemption_lib

EVERY = "--config.ckpt.every_steps=5"  # so a checkpoint at another step is the Ctrl-C save
main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers need the main thread",
)


def _lines(run: runs.Run, prefix: str) -> list[str]:
    return [ln for ln in run.output().splitlines() if ln.startswith(prefix)]


@pytest.mark.slow
def test_ctrl_c_saves_the_step_reached_and_exits_130_a_second_exits_at_once(tmp_path):
    workdir = str(tmp_path / "run")
    run = runs.Run(workdir, EVERY)
    run.until(lambda: "step 2/" in run.output())
    run.signal(signal.SIGINT)
    code = run.wait()
    saved = [int(m) for m in runs.SAVED_AFTER_NOTICE.findall(run.output())]
    assert code == preemption_lib.INTERRUPTED_EXIT == 130, run.tail()
    assert "Traceback" not in run.output(), run.tail()
    lines = _lines(run, "interrupted: ")
    assert len(lines) == 1, run.tail()
    assert saved and runs.complete_steps(workdir)[-1] == saved[0] >= 2, run.tail()
    assert lines[0] == (
        f"interrupted: saved step {saved[0]} after Ctrl-C; rerun the same command to resume from it"
    )
    assert not runs.saves_in_flight(workdir)

    # A second Ctrl-C while the first is being handled: out at once, nothing more saved.
    # (The first one's step and save take a second or more here; if the run still finished
    # first, the second signal found nothing to stop and the check is repeated.)
    for _ in range(3):
        before = runs.complete_steps(workdir)
        run = runs.Run(workdir, EVERY)
        run.until(lambda: "| loss" in run.output())  # noqa: B023 - polled before the next Run
        run.signal(signal.SIGINT)
        run.until(lambda: "Ctrl-C (SIGINT) received" in run.output())  # noqa: B023
        if not run.running():
            run.wait()
            continue
        sent = run.signal(signal.SIGINT)
        code = run.wait()
        exit_s = time.monotonic() - sent
        if not _lines(run, "interrupted: second Ctrl-C"):
            continue  # the run had already saved and was leaving
        assert code == 130, run.tail()
        assert exit_s < 5, exit_s
        assert "Traceback" not in run.output(), run.tail()
        assert len(_lines(run, "interrupted: ")) == 1, run.tail()
        assert max(runs.complete_steps(workdir)) >= max(before)
        break
    else:
        pytest.fail("each run ended before its second Ctrl-C arrived")
    runs.finish(workdir, EVERY)  # the rerun resumes and finishes


@pytest.mark.slow
def test_ctrl_c_at_start_up_is_one_line_and_exit_130(tmp_path):
    run = runs.Run(str(tmp_path / "run"))
    time.sleep(2.0)  # imports, flags, or the trainer's start-up
    run.signal(signal.SIGINT)
    assert run.wait() == 130, run.tail()
    assert "Traceback" not in run.output(), run.tail()
    lines = _lines(run, "interrupted: ")
    assert lines == ["interrupted: Ctrl-C outside the training loop; nothing new to save"], lines


def _process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) for every process, from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        table[int(name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has exited; no one may be left to reap it)."""
    table = _process_table()
    return {p for p in pids if p in table and table[p][1] != "Z"}


@pytest.mark.slow
def test_sigkilled_trainer_leaves_no_data_workers(tmp_path):
    run = runs.Run(str(tmp_path / "run"), "--config.data.num_workers=2", EVERY)
    run.until(lambda: "step 2/" in run.output())  # the workers are producing batches
    children = _descendants(run.pid)
    workers = {p for p in children if b"grain" in _cmdline(p) or b"multiprocessing" in _cmdline(p)}
    assert len(workers) >= 2, {p: _cmdline(p) for p in children}
    run.signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = {p: _cmdline(p) for p in _alive(children)}
    assert not left, f"still running 10 s after the trainer was killed: {left}"


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ")
    except OSError:
        return b""


@pytest.mark.slow
@main_thread_only
def test_sigterm_while_tracing_is_raised_outside_jax_and_later_jits_work(tmp_path, monkeypatch):
    config = config_lib.load_file(os.path.join(runs.ROOT, runs.CONFIG), "steps=2")
    make_train_step = train.make_train_step
    traced = []

    def make_step_that_signals(*args, **kwargs):
        step = make_train_step(*args, **kwargs)

        def step_fn(state, batch):  # runs while jax traces the step
            traced.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs here, inside the trace
            return step(state, batch)

        return step_fn

    monkeypatch.setattr(train, "make_train_step", make_step_that_signals)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(
        preemption_lib.Preempted, match="SIGTERM outside the training loop"
    ) as caught:
        evaluators.train_and_evaluate(config, str(tmp_path / "a"))
    assert traced
    raised_in = traceback.extract_tb(caught.value.__traceback__)[-1]
    assert raised_in.filename == preemption_lib.__file__, raised_in
    modules = {sys.modules.get(f.f_globals.get("__name__")) for f, _ in _frames(caught)}
    assert not any(m and m.__name__.split(".")[0] in ("jax", "flax") for m in modules)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers

    # Later jits in this process: a new function, the same one again, and a whole run.
    np.testing.assert_allclose(jax.jit(lambda x: x * 2 + 1)(jnp.ones(3)), 3.0)
    np.testing.assert_allclose(jax.jit(jnp.add)(jnp.ones(3), 1.0), 2.0)
    monkeypatch.setattr(train, "make_train_step", make_train_step)
    evaluators.train_and_evaluate(config, str(tmp_path / "b"))
    assert runs.complete_steps(str(tmp_path / "b")) == [1, 2]


def _idle(seconds: float) -> None:
    """Python code running (a signal handler runs between its bytecodes) for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)


def _frames(caught):
    return traceback.walk_tb(caught.value.__traceback__)


@main_thread_only
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_in_library_code_is_retried_until_it_can_be_raised(signum):
    """The handler never raises with a jax frame on the stack; it tries again 20 ms later."""
    error = preemption_lib.Interrupted if signum == signal.SIGINT else preemption_lib.Preempted
    assert preemption_lib.inside_library(sys._getframe()) is False
    seen = []

    def leaf(x):  # jax.tree.map calls it: a frame of jax's code is below it on the stack
        seen.append(preemption_lib.inside_library(sys._getframe()))
        os.kill(os.getpid(), signum)
        _idle(0.3)  # the handler runs (and defers) in here, several times
        return x

    with pytest.raises(error, match="outside the training loop") as caught:
        with preemption_lib.Preemption(30.0):
            jax.tree.map(leaf, [1])
            _idle(1.0)
    assert seen == [True]
    names = [f.f_globals.get("__name__", "") for f, _ in _frames(caught)]
    assert not any(n.startswith("jax") for n in names), names
    assert names[-1] == "vrl.preemption" and names[-2] == __name__, names  # raised in _idle
