"""Grain worker processes (`config.data.num_workers`) end with the process that started them.

Grain stops its workers when the trainer exits normally, but a trainer that is SIGKILLed (or
ends through `os._exit`) runs no cleanup, and its workers kept their memory for good. Each
worker therefore watches the trainer: a thread blocks on a pidfd of the trainer (readable once
it has exited; polling its pid where pidfds are missing) and ends the worker then. Watching the
pid, unlike PR_SET_PDEATHSIG, does not depend on which of the trainer's threads started the
worker. Workers also ignore Ctrl-C: a terminal sends SIGINT to the whole process group, and the
trainer alone decides what to save (its workers then end with it).
"""

import functools
import os
import select
import signal
import threading
import time

POLL_S = 0.5


def init_fn(parent_pid: int | None = None):
    """`worker_init_fn` for `mp_prefetch`: makes each worker follow `parent_pid` (this process)."""
    return functools.partial(follow_parent, os.getpid() if parent_pid is None else parent_pid)


def follow_parent(parent_pid: int, worker_index: int = 0, worker_count: int = 1) -> None:
    """Runs in the worker: ignore SIGINT, exit as soon as `parent_pid` has exited."""
    del worker_index, worker_count
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pidfd = os.pidfd_open(parent_pid)
    except ProcessLookupError:  # the parent is already gone
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd_open (old kernel, not Linux)
        pidfd = None
    threading.Thread(
        target=_watch, args=(parent_pid, pidfd), name="vrl-follow-parent", daemon=True
    ).start()


def _watch(parent_pid: int, pidfd: int | None) -> None:
    if pidfd is not None:
        select.select([pidfd], [], [])  # readable once the parent has exited
    else:
        parent = os.getppid()
        while os.getppid() == parent and _alive(parent_pid):
            time.sleep(POLL_S)
    os._exit(1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
