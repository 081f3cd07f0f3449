"""Config arg strings say what they cannot read; the reliability harness is deterministic.

An arg string value that is not a boolean used to mean false (`:runlocal=on` ran the full
recipe). The randomised kill/SIGTERM tests draw fixed seeds unless asked for random ones, and
`Run.until` never misses a line printed just before the process ended.
"""

import subprocess
import sys

import pytest
import runs


def main_cli(config: str, workdir: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vrl.main", f"--config={config}", f"--workdir={workdir}"],
        cwd=runs.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=runs.environment(),
    )


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("runlocal=maybe", "config arg runlocal='maybe': not a boolean; allowed: true, 1, yes, on"),
        ("runlocal=yes,seed=x", "config arg"),
    ],
)
def test_an_arg_value_that_cannot_be_read_is_one_line_exit_2(tmp_path, arg, expected):
    result = main_cli(f"configs/quickstart.py:{arg}", str(tmp_path / "w"))
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("config error: ") and expected in last, last
    assert not (tmp_path / "w").exists()


def test_seeds_are_fixed_unless_random_is_asked_for(monkeypatch):
    monkeypatch.delenv("VRL_KILL_SEED", raising=False)
    assert runs.seed("VRL_KILL_SEED", 0) == 0
    monkeypatch.setenv("VRL_KILL_SEED", "1234")
    assert runs.seed("VRL_KILL_SEED", 0) == 1234
    monkeypatch.setenv("VRL_KILL_SEED", "random")
    draws = {runs.seed("VRL_KILL_SEED", 0) for _ in range(4)}
    assert len(draws) > 1


def test_until_sees_a_line_printed_just_before_the_process_ended(tmp_path):
    """A process that prints its last line and exits at once: the line still counts."""
    for attempt in range(5):
        command = [sys.executable, "-c", "print('step 3/3', flush=True)"]
        run = runs.Run.of_command(command, str(tmp_path / f"quick.{attempt}.log"))
        run.proc.wait()  # ended before anyone looked
        run.until(lambda r=run: "step 3/3" in r.output(), timeout=30)
        assert run.wait() == 0
