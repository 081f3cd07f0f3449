"""One run per workdir: a second trainer on the same workdir refuses at start-up (exit 2) with
one line naming the owner; a lock whose owner is gone is taken over with a warning.

The slow test runs the issue's case with real processes: run A, then run B on the same workdir
with another learning rate while A trains. The quick ones exercise the lock's rules in-process.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import runs

from vrl import workdir_lock


def lock_path(workdir) -> str:
    return os.path.join(str(workdir), workdir_lock.LOCK)


def write_owner(workdir, **changes) -> dict:
    """A lock.json as another run would have written it, with `changes` applied."""
    owner = workdir_lock.WorkdirLock(str(workdir)).record | changes
    os.makedirs(str(workdir), exist_ok=True)
    with open(lock_path(workdir), "w") as f:
        json.dump(owner, f)
    return owner


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- Rules (in-process) -------------------------------------------------------------------------


def test_acquire_release_and_lease_renewal(tmp_path):
    lock = workdir_lock.WorkdirLock(str(tmp_path), renew_s=0.05).acquire()
    first = json.loads(open(lock_path(tmp_path)).read())
    assert first["pid"] == os.getpid() and first["host"] and first["started"]
    time.sleep(0.3)
    assert json.loads(open(lock_path(tmp_path)).read())["renewed"] > first["renewed"]
    lock.release()
    assert not os.path.exists(lock_path(tmp_path))
    assert [n for n in os.listdir(tmp_path) if n.endswith(".tmp")] == []


def test_a_live_owner_is_refused_naming_host_pid_and_start(tmp_path):
    parent = os.getppid()  # a process that runs on this host for the whole test
    owner = write_owner(tmp_path, pid=parent, pid_start=workdir_lock._process_start(parent))
    with pytest.raises(workdir_lock.WorkdirInUse) as e:
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    message = str(e.value)
    assert "\n" not in message
    assert f"host {owner['host']}, pid {parent}, started 20" in message
    assert "lease renewed 0 s ago" in message
    assert json.loads(open(lock_path(tmp_path)).read())["token"] == owner["token"]  # untouched


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"pid": "dead"}, "is not running on"),
        ({"pid": "parent", "pid_start": "1"}, "now belongs to another process"),
        ({"host": "elsewhere", "renewed": time.time() - 3600}, "its lease was last renewed"),
    ],
    ids=["dead-pid-same-host", "reused-pid", "remote-lease-expired"],
)
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, changes, reason, caplog):
    pids = {"dead": dead_pid(), "parent": os.getppid()}
    changes = {k: pids.get(v, v) if k == "pid" else v for k, v in changes.items()}
    write_owner(tmp_path, **changes)
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    with caplog.at_level("WARNING"):
        lock.acquire()
    try:
        assert json.loads(open(lock_path(tmp_path)).read())["token"] == lock.record["token"]
        assert any(
            "Taking over the lock" in r.message and reason in r.message for r in caplog.records
        )
    finally:
        lock.release()


def test_a_remote_owner_with_a_fresh_lease_is_refused(tmp_path):
    write_owner(tmp_path, host="elsewhere", pid=1, renewed=time.time() - 60)
    with pytest.raises(workdir_lock.WorkdirInUse, match="host elsewhere, pid 1, .* renewed 60 s"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()


def test_an_unreadable_lock_is_replaced(tmp_path):
    with open(lock_path(tmp_path), "w") as f:
        f.write('{"host": "vm", "pi')
    lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    lock.release()


def test_a_lock_taken_over_meanwhile_is_reported_by_the_owner(tmp_path, caplog):
    lock = workdir_lock.WorkdirLock(str(tmp_path), renew_s=0.05).acquire()
    other = write_owner(tmp_path, host="elsewhere")
    with caplog.at_level("ERROR"):
        time.sleep(0.3)
    assert lock.lost and "host elsewhere" in lock.lost
    lock.release()  # not ours any more: left in place
    assert json.loads(open(lock_path(tmp_path)).read())["token"] == other["token"]


def test_only_process_0_of_a_multi_process_run_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(workdir_lock.jax, "process_count", lambda: 2)
    monkeypatch.setattr(workdir_lock.jax, "process_index", lambda: 1)
    told = []
    monkeypatch.setattr(
        workdir_lock.multihost_utils, "broadcast_one_to_all", lambda x: told.append(x) or 0
    )
    # Process 0 could not take the lock: process 1 stops too, without touching the workdir.
    with pytest.raises(workdir_lock.WorkdirInUse, match="process 0 could not take"):
        with workdir_lock.hold(str(tmp_path)):
            pass
    assert told and not os.path.exists(lock_path(tmp_path))
    monkeypatch.setattr(workdir_lock.multihost_utils, "broadcast_one_to_all", lambda x: 1)
    with workdir_lock.hold(str(tmp_path)) as lock:
        assert lock is None and not os.path.exists(lock_path(tmp_path))

    monkeypatch.setattr(workdir_lock.jax, "process_index", lambda: 0)
    with workdir_lock.hold(str(tmp_path)) as lock:
        assert lock is not None and os.path.exists(lock_path(tmp_path))
    assert not os.path.exists(lock_path(tmp_path))


# --- Real processes ---------------------------------------------------------------------------


def metrics_rows(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_refuses_and_the_first_is_untouched(tmp_path):
    workdir = str(tmp_path / "w")
    # Every step kept: the listing below reads the saved steps while A runs.
    first = runs.Run(workdir, "--config.ckpt.keep=1000", steps=400)
    first.until(lambda: os.path.exists(lock_path(workdir)))
    second = runs.Run(workdir, "--config.optim.lr=0.01", "--config.ckpt.keep=1000", steps=400)
    assert second.wait() == 2, second.tail()
    line = second.output().strip().splitlines()[-1]
    assert line.startswith(f"workdir in use: {workdir} is used by another run: host ")
    assert f", pid {first.pid}, started 20" in line
    assert first.running(), "run A ended before run B was refused: the test proves nothing"
    assert "Compiled the train step" not in second.output()

    # Readers are not blocked by the lock (the listing reads the steps A has saved so far).
    listing = subprocess.run(
        [sys.executable, "-m", "vrl.checkpoint", workdir],
        cwd=runs.ROOT,
        env=runs.environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    first.until(lambda: len(runs.complete_steps(workdir)) >= 2)
    first.signal(signal.SIGTERM)  # preempted: saves, releases the lock, exits 0
    assert first.wait() == 0, first.tail()
    assert listing.returncode in (0, 1), listing.stderr[-2000:]  # 1: no step saved yet
    assert not os.path.exists(lock_path(workdir))

    steps = [r["step"] for r in metrics_rows(workdir) if "train/loss" in r]
    assert steps == list(range(1, len(steps) + 1))  # one run's rows, once each
    assert runs.complete_steps(workdir)[-1] == steps[-1]


@pytest.mark.slow
def test_the_lock_of_a_killed_run_is_taken_over_and_released_on_errors(tmp_path):
    workdir = str(tmp_path / "w")
    write_owner(workdir, pid=dead_pid())
    run = runs.finish(workdir, steps=1)
    assert "Taking over the lock of" in run.output() and "is not running on" in run.output()
    assert not os.path.exists(lock_path(workdir))
    # A run that stops with an error (here another model on this workdir) releases it too.
    failed = runs.Run(workdir, "--config.model.depth=2", steps=2)
    assert failed.wait() == 2, failed.tail()
    assert not os.path.exists(lock_path(workdir))
