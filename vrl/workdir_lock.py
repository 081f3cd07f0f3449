"""One training run per workdir: WORKDIR/lock.json names the run that owns it.

Two trainers on one workdir overwrite each other's checkpoints and interleave metrics.jsonl,
and both exit 0. So a run takes the workdir's lock at start-up (process 0 only, for the whole
run), renews a lease in it from a daemon thread, and removes it on the way out (errors and
preemption included); a second run finds the lock and refuses with one line naming the owner.

A lock whose owner is gone is taken over with a warning: on the same host (and process
namespace) when the owner's process no longer runs; elsewhere (shared or remote storage) when
its lease was not renewed for `STALE_S` seconds. Readers (probes, `python -m vrl.checkpoint`,
`vrl.api`) never look at the lock.
"""

import atexit
import contextlib
import datetime
import json
import os
import socket
import threading
import time
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from vrl import storage

LOCK = "lock.json"
RENEW_S = 30.0  # how often the owner renews its lease
STALE_S = 300.0  # a lease not renewed for this long, on another host, belongs to a dead run
SETTLE_S = 0.5  # after taking over a stale lock: wait, then check that no one else did too


class WorkdirInUse(RuntimeError):
    """Another run owns the workdir (its lock is live)."""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(owner: dict, now: float | None = None) -> str:
    """ "host h, pid 123, started 2026-12-07 14:30:01 UTC (lease renewed 3 s ago)"."""
    now = time.time() if now is None else now
    renewed = now - float(owner.get("renewed", owner.get("started", now)))
    return (
        f"host {owner.get('host', '?')}, pid {owner.get('pid', '?')}, "
        f"started {_when(float(owner.get('started', 0)))} (lease renewed {renewed:.0f} s ago)"
    )


class WorkdirLock:
    """WORKDIR/lock.json, held by this process: `acquire()`, then `release()`."""

    def __init__(self, workdir: str, renew_s: float = RENEW_S, stale_s: float = STALE_S):
        self.workdir = workdir
        self.path = storage.path(workdir, "--workdir") / LOCK
        self.local = not storage.is_remote(workdir)
        self.renew_s = renew_s
        self.stale_s = stale_s
        now = time.time()
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_namespace": _pid_namespace(),
            "pid_start": _process_start(os.getpid()),
            "started": now,
            "renewed": now,
            "token": uuid.uuid4().hex,
        }
        self.lost: str | None = None  # why this run no longer owns the lock, if it does not
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- Reading ----------------------------------------------------------------------------

    def read(self) -> dict | None:
        """The lock's record; None when there is none; {} when it cannot be parsed."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
        except ValueError:
            return {}
        return owner if isinstance(owner, dict) else {}

    def stale_reason(self, owner: dict, now: float | None = None) -> str | None:
        """Why `owner` is gone (so its lock may be taken over), or None while it may still run."""
        now = time.time() if now is None else now
        if not owner or "pid" not in owner:
            return f"{self.path} cannot be read as a lock"
        same_host = (
            owner.get("host") == self.record["host"]
            and owner.get("pid_namespace", "") == (self.record["pid_namespace"])
        )
        if same_host:
            pid = int(owner["pid"])
            if pid == os.getpid():
                return f"its process id {pid} is this process's (it did not release the lock)"
            if not _running(pid):
                return f"process {pid} is not running on {owner['host']}"
            start = owner.get("pid_start")
            if start is not None and start != _process_start(pid):
                return f"process id {pid} now belongs to another process on {owner['host']}"
            return None
        age = now - float(owner.get("renewed", owner.get("started", 0)))
        if age > self.stale_s:
            return f"its lease was last renewed {age:.0f} s ago (stale after {self.stale_s:g} s)"
        return None

    # --- Writing ----------------------------------------------------------------------------

    def _write(self, exclusive: bool) -> bool:
        """Publishes this run's record whole; False if `exclusive` and a lock appeared first."""
        text = json.dumps(self.record, indent=1)
        if not self.local:  # object stores replace an object atomically, never exclusively
            self.path.write_text(text)
            return True
        tmp = self.path.with_name(f".{LOCK}.{self.record['token']}.tmp")
        tmp.write_text(text)
        try:
            if exclusive:
                os.link(tmp, self.path)  # atomic, and fails if the lock exists
            else:
                os.replace(tmp, self.path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def acquire(self) -> "WorkdirLock":
        """Takes the lock, or raises WorkdirInUse naming the run that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            owner = self.read()
            if owner is None:
                if not self._write(exclusive=True):
                    continue  # another run created it just now: look at it
                if self.local:
                    break
                time.sleep(SETTLE_S)
            else:
                reason = self.stale_reason(owner)
                if reason is None:
                    raise self._in_use(owner)
                logging.warning(
                    "Taking over the lock of %s from a run that is gone (%s): %s.",
                    self.workdir,
                    describe(owner) if owner else "unreadable",
                    reason,
                )
                self._write(exclusive=False)
                time.sleep(SETTLE_S)
            current = self.read()
            if current and current.get("token") == self.record["token"]:
                break
            if current:
                raise self._in_use(current)
        else:
            raise WorkdirInUse(f"could not take {self.path}: it keeps changing")
        _HELD.add(self)
        self._thread = threading.Thread(target=self._renew, name="workdir-lease", daemon=True)
        self._thread.start()
        logging.info("Holding %s (%s).", self.path, describe(self.record))
        return self

    def _in_use(self, owner: dict) -> WorkdirInUse:
        return WorkdirInUse(
            f"{self.workdir} is used by another run: {describe(owner)}; wait for it to end or "
            f"pass another --workdir (delete {self.path} only if that run is gone)"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                current = self.read()
                if not current or current.get("token") != self.record["token"]:
                    self.lost = describe(current) if current else "no lock"
                    logging.error(
                        "%s no longer names this run (now: %s): another run may be writing to %s.",
                        self.path,
                        self.lost,
                        self.workdir,
                    )
                    return
                self.record["renewed"] = time.time()
                self._write(exclusive=False)
            except OSError as e:  # storage hiccup: try again at the next renewal
                logging.warning("Could not renew the lease in %s: %s", self.path, e)

    def release(self) -> None:
        """Stops renewing and removes the lock if it is still this run's; never raises."""
        _HELD.discard(self)
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            current = self.read()
            if current and current.get("token") == self.record["token"]:
                self.path.unlink(missing_ok=True)
        except OSError as e:
            logging.warning("Could not remove %s: %s", self.path, e)


_HELD: set[WorkdirLock] = set()


def release_all() -> None:
    """Releases every lock this process holds (before `os._exit`, which skips `finally`)."""
    for lock in list(_HELD):
        lock.release()


atexit.register(release_all)


@contextlib.contextmanager
def hold(workdir: str):
    """The run's lock on `workdir` for the duration of the block: taken by process 0 only.

    Every process raises WorkdirInUse when process 0 could not take it, so that a multi-host
    run stops as a whole.
    """
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except WorkdirInUse as e:
            error = e
    if jax.process_count() > 1:
        taken = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
        if not taken and error is None:
            error = WorkdirInUse(
                f"{workdir} is used by another run (process 0 could not take its {LOCK}; "
                "its log names the owner)"
            )
    if error is not None:
        raise error
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
