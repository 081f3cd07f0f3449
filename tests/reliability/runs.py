"""Real training processes for the reliability tests: start, watch the workdir, signal, compare.

Every run is `python -m vrl.main --config=tests/reliability/tiny_run.py:steps=N` in a subprocess,
so kills, SIGTERMs and exits are the real thing. The processes share one persistent JAX
compilation cache (per test session), so only the first one pays for compiling the step.
"""

import atexit
import functools
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import jax
import numpy as np

from vrl import checkpoint as ckpt_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONFIG = os.path.join("tests", "reliability", "tiny_run.py")
STEPS = 12
DEVICES = 2
LAUNCH_TIMEOUT_S = 600

_SESSION = tempfile.mkdtemp(prefix="vrl-reliability-")
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)
SAVED_AFTER_NOTICE = re.compile(r"Saved step (\d+) after the preemption notice")


def environment() -> dict[str, str]:
    cache = os.path.join(_SESSION, "jax-cache")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(DEVICES),
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
        "PYTHONUNBUFFERED": "1",
    }


# Root writes into a read-only directory regardless of its mode; a program started without
# CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH in its bounding set obeys the mode bits like anyone.
WITHOUT_ROOT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


def can_drop_root_override() -> bool:
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*WITHOUT_ROOT_OVERRIDE, "true"], check=False, capture_output=True)
    return probe.returncode == 0


class Run:
    """One `python -m vrl.main` process; stdout and stderr go to `<workdir>.<n>.log`.

    The output passes through a pipe that this process copies to the log, so limits set on
    the child (e.g. its file size) never stop it from reporting.
    """

    def __init__(
        self,
        workdir: str,
        *overrides: str,
        steps: int = STEPS,
        arg: str = "",
        obey_file_modes: bool = False,
    ):
        self.workdir = workdir
        os.makedirs(os.path.dirname(os.path.abspath(workdir)), exist_ok=True)
        number = len(
            [
                n
                for n in os.listdir(os.path.dirname(os.path.abspath(workdir)))
                if n.startswith(os.path.basename(workdir) + ".")
            ]
        )
        self.log_path = f"{os.path.abspath(workdir)}.{number}.log"
        command = [
            sys.executable,
            "-m",
            "vrl.main",
            f"--config={CONFIG}:steps={steps}{',' + arg if arg else ''}",
            f"--workdir={workdir}",
            f"--cpu_devices={DEVICES}",
            *overrides,
        ]
        if obey_file_modes and os.geteuid() == 0:
            command = WITHOUT_ROOT_OVERRIDE + command
        self._start(command)

    @classmethod
    def of_command(cls, command: list[str], log_path: str) -> "Run":
        """Any command watched like a training run (tests of the harness itself)."""
        run = cls.__new__(cls)
        run.workdir, run.log_path = None, log_path
        run._start(command)
        return run

    def _start(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        log = open(self.log_path, "wb")  # noqa: SIM115 - the copier thread closes it
        self._copier = threading.Thread(target=self._copy, args=(log,), daemon=True)
        self._copier.start()
        self.started = time.monotonic()

    def _copy(self, log) -> None:
        with log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> float:
        """Sends `signum` to this process (by its id); returns when, on the monotonic clock."""
        self.proc.send_signal(signum)
        return time.monotonic()

    def wait(self, timeout: float = LAUNCH_TIMEOUT_S) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"run did not end in {timeout} s:\n{self.tail()}") from None
        self._copier.join()
        return code

    def output(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def until(self, condition, timeout: float = LAUNCH_TIMEOUT_S, poll_s: float = 0.002) -> None:
        """Polls `condition()` until true; fails if the process ends first or time runs out.

        An ended process may have printed its last lines after the previous poll: they are
        copied to the log before the condition is given up on, so no event is missed.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            if not self.running():
                self._copier.join()
                if condition():
                    return
                code = self.proc.returncode
                raise AssertionError(f"run ended (code {code}) first:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached in {timeout} s:\n{self.tail()}")
            time.sleep(poll_s)


def seed(variable: str, default: int) -> int:
    """The seed of a randomised test: fixed (`default`) unless the environment variable gives
    one, or says "random" for a fresh one (printed by the test, to rerun a failure)."""
    value = os.environ.get(variable, str(default))
    return random.SystemRandom().randrange(2**32) if value == "random" else int(value)


def finish(workdir: str, *overrides: str, steps: int = STEPS, **kwargs) -> Run:
    """Runs to the end and checks the exit code is 0."""
    run = Run(workdir, *overrides, steps=steps, **kwargs)
    code = run.wait()
    assert code == 0, f"exit code {code}:\n{run.tail()}"
    return run


def complete_steps(workdir: str) -> list[int]:
    return ckpt_lib.complete_steps(workdir)


def saves_in_flight(workdir: str) -> list[str]:
    """Orbax's temporary step directories: a save that has started and not finished."""
    root = ckpt_lib.directory(workdir)
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(n for n in names if ckpt_lib.TMP_MARKER in n)


def params(workdir: str, step: int):
    mngr = ckpt_lib.manager(workdir, read_only=True)
    meta = ckpt_lib.tree_metadata(mngr, step)
    mngr.close()
    abstract = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
    return ckpt_lib.restore_partial(workdir, step, {"params": abstract})["params"]


def digest(workdir: str, step: int) -> str:
    """sha256 of the parameters saved at `step` (what `python -m vrl.checkpoint` prints)."""
    return ckpt_lib.digest(params(workdir, step))[1]


def reference_digest(steps: int = STEPS) -> str:
    """Final parameters of an uninterrupted run of the code as it is now (made once per
    session, again only if a file of the package changes meanwhile)."""
    return _reference_digest(steps, code_version())


@functools.cache
def _reference_digest(steps: int, version: str) -> str:
    workdir = os.path.join(_SESSION, f"reference-{steps}-{version[:12]}")
    finish(workdir, steps=steps)
    return digest(workdir, steps)


def code_version() -> str:
    """sha256 over the package's source files."""
    h = hashlib.sha256()
    package = os.path.join(ROOT, "vrl")
    for folder, _, names in sorted(os.walk(package)):
        for name in sorted(n for n in names if n.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def session_dir(name: str) -> str:
    """A fresh directory that lives as long as the test session."""
    return tempfile.mkdtemp(prefix=f"{name}-", dir=_SESSION)


def assert_same_run(workdir: str, version: str, steps: int = STEPS, context: str = "") -> None:
    """The final parameters in `workdir` equal an uninterrupted run's, bit for bit.

    `version` is code_version() from when the test started: a package edited meanwhile makes
    the comparison meaningless, and says so.
    """
    assert code_version() == version, f"vrl/ changed while the test ran; run it again {context}"
    assert digest(workdir, steps) == reference_digest(steps), context
