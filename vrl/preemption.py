"""SIGTERM (preemption) and Ctrl-C (SIGINT) during `train.train_and_evaluate`.

Both stop the run without losing what it reached. Inside the training loop (`deferred`) the
handler only records the notice: the loop finishes its step, saves it, waits for the write and
stops (SIGTERM: returns; Ctrl-C: raises `Interrupted`). Outside the loop there is nothing new to
save, so the call raises `Preempted` / `Interrupted` as soon as that is safe: never from inside
jax, flax, optax, orbax or grain code (tracing, compilation, restore), whose caches a
`BaseException` raised half way can leave broken for every later jit of the process. A handler
that finds such a frame on the stack records the notice and tries again 20 ms later.

SIGTERM starts a watchdog: still running `grace_s` after the notice, the process ends with
PREEMPTION_TIMEOUT_EXIT (the scheduler would kill it anyway; the code says the restart resumes
from the last complete checkpoint). A second Ctrl-C ends the process at once (exit 130).
With several processes jax's preemption sync manager owns SIGTERM (every process must save the
same step: `mngr.reached_preemption`) and a Ctrl-C could stop them at different steps, so
`install=False` leaves both signals alone.
"""

import _thread
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from absl import logging

# Exit code of a process whose preemption save outlived config.preemption_grace_s (EX_TEMPFAIL:
# retry; the restart resumes from the last complete checkpoint).
PREEMPTION_TIMEOUT_EXIT = 75
# Exit code after Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED_EXIT = 128 + signal.SIGINT

# Code a signal handler must not raise into: the exception would unwind through their caches
# and trace state half way (a later jit then fails with "RecursionError: Recursively calling").
UNSAFE_MODULES = ("jax", "jaxlib", "flax", "optax", "orbax", "chex", "grain", "importlib")
RETRY_S = 0.02


class Preempted(BaseException):
    """SIGTERM outside the training loop (start-up, evals), where nothing new needs saving.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way swallows it.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: the step reached was saved (inside the loop) or there was nothing new to save."""


def inside_library(frame) -> bool:
    """Whether `frame` or a caller of it runs code of one of UNSAFE_MODULES."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.split(".", 1)[0] in UNSAFE_MODULES:
            return True
        frame = frame.f_back
    return False


class Preemption:
    """Context manager around a training call; see the module docstring."""

    def __init__(
        self,
        grace_s: float,
        install: bool = True,
        on_hard_exit: Callable[[], None] | None = None,
    ):
        self.grace_s = grace_s
        self.install = install
        self.on_hard_exit = on_hard_exit  # runs before os._exit (no `finally` runs then)
        self.requested_at: float | None = None
        self.interrupted = False  # the notice (or one of them) was Ctrl-C
        self.deferred = False
        self.saved_step: int | None = None  # set by the loop once the step reached is saved
        self._previous: dict[int, object] = {}
        self._watchdog: threading.Timer | None = None
        self._retry: threading.Timer | None = None
        self._retrying = False
        self._active = False
        self._raised = False  # the handler raised it (a caller may have caught it on purpose)

    def __enter__(self):
        self._active = True
        if self.install:
            for signum in (signal.SIGTERM, signal.SIGINT):
                ignored = signal.getsignal(signum) == signal.SIG_IGN
                if signum == signal.SIGINT and ignored:  # `nohup ... &`: leave it ignored
                    continue
                try:
                    self._previous[signum] = signal.signal(signum, self._handle)
                except ValueError:  # not the main thread (e.g. inside a notebook executor)
                    break
        return self

    def _handle(self, signum, frame):
        retry, self._retrying = self._retrying, False
        if not retry:
            if signum == signal.SIGINT and self.interrupted:
                self._hard_exit(
                    "interrupted: second Ctrl-C; exiting at once without saving (a restart "
                    "resumes from the last complete checkpoint)",
                    INTERRUPTED_EXIT,
                )
            self.notice("Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM")
        if self.deferred:
            return
        if inside_library(frame):  # not now: from the next frame of our own code
            self._schedule_retry(signum)
            return
        self._raised = True
        raise self.outside_loop_error()

    def _schedule_retry(self, signum: int) -> None:
        def again():
            if self._active and not self.deferred:
                self._retrying = True
                _thread.interrupt_main(signum)  # runs `_handle` in the main thread again

        self._retry = threading.Timer(RETRY_S, again)
        self._retry.daemon = True
        self._retry.start()

    def outside_loop_error(self) -> BaseException:
        if self.interrupted:
            return Interrupted("Ctrl-C outside the training loop; nothing new to save")
        return Preempted("SIGTERM outside the training loop; nothing new to save")

    def check(self) -> None:
        """A safe point outside the loop: raises if a notice arrived (again, if the handler's
        exception was swallowed: raised inside a gc callback or `__del__` it goes nowhere)."""
        if self.requested_at is not None and not self.deferred:
            raise self.outside_loop_error()

    def notice(self, what: str) -> None:
        """Records a notice; the first SIGTERM / sync-point notice starts the watchdog."""
        ctrl_c = what.startswith("Ctrl-C")
        if self.requested_at is None:
            self.requested_at = time.monotonic()
            logging.warning("%s received: saving a checkpoint and exiting.", what)
        self.interrupted = self.interrupted or ctrl_c
        if not ctrl_c and self._watchdog is None:
            self._watchdog = threading.Timer(self.grace_s, self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _expire(self) -> None:
        self._hard_exit(
            f"preemption: still running config.preemption_grace_s={self.grace_s:g} s after the "
            f"notice (the checkpoint did not finish); exiting with code {PREEMPTION_TIMEOUT_EXIT}; "
            "a restart resumes from the last complete checkpoint",
            PREEMPTION_TIMEOUT_EXIT,
        )

    def _hard_exit(self, message: str, code: int) -> None:
        logging.error("%s", message)
        print(message, file=sys.stderr, flush=True)
        if self.on_hard_exit is not None:
            self.on_hard_exit()  # os._exit skips every `finally` that would have done this
        os._exit(code)

    def __exit__(self, exc_type, exc, tb):
        self._active = False
        for timer in (self._watchdog, self._retry):
            if timer is not None:
                timer.cancel()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if exc_type is not None or self.requested_at is None:
            return
        if self.saved_step is not None:
            if self.interrupted:
                raise Interrupted(
                    f"saved step {self.saved_step} after Ctrl-C; rerun the same command to "
                    "resume from it"
                )
        elif not self.deferred and not self._raised:
            # The notice came during the last library call and the call then finished: the
            # caller still learns that the process is asked to stop.
            raise self.outside_loop_error()
