"""A workdir in a bucket (gs://, the Cloud Storage emulator) is the same run as a local one.

The quickstart (`:runlocal`, a checkpoint every step) trains on gs://, is SIGKILLed during a
save, and the same command rerun on two processes finishes bit-identical to an uninterrupted
local run; nothing but caches lands on the local disk. `vrl.checkpoint` lists and verifies the
bucket's steps and `vrl.api` loads its encoder from there. A malformed URL or a missing bucket
as --workdir is one line at start-up.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import gcs
from vrl import api, storage, weights
from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = f"--config={os.path.join(ROOT, 'configs', 'quickstart.py')}:runlocal"
FLAGS = ("--config.evals={}", "--config.ckpt.every_steps=1", "--config.ckpt.keep=5")
STEPS = 3
TIMEOUT_S = 300


class Sandbox:
    """Child processes run in a temporary cwd, HOME and TMPDIR, so that anything they write
    to the local disk shows up there."""

    def __init__(self, tmp_path):
        self.folders = {name: tmp_path / name for name in ("cwd", "home", "tmp", "jax-cache")}
        for folder in self.folders.values():
            folder.mkdir()
        self.env = {
            **os.environ,  # the emulator's address (tests/gcs.py)
            "PYTHONPATH": ROOT,
            "HOME": str(self.folders["home"]),
            "TMPDIR": str(self.folders["tmp"]),
            "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": "2",
            "JAX_COMPILATION_CACHE_DIR": str(self.folders["jax-cache"]),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "PYTHON": sys.executable,
        }

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            args,
            cwd=self.folders["cwd"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def train(self, workdir: str, processes: int = 1) -> subprocess.Popen:
        """1 process x 2 CPU devices, or `processes` x 1 device (launch/local.sh): the same
        data-parallel mesh, so the same parameters bit for bit."""
        args = (CONFIG, f"--workdir={workdir}", *FLAGS)
        if processes == 1:
            return self.start(sys.executable, "-m", "vrl.main", *args)
        launch = os.path.join(ROOT, "launch", "local.sh")
        return self.start(
            "bash", launch, "--cpu_devices=1", "--grace_s=10", str(processes), "--", *args
        )

    def local_files(self) -> list[str]:
        """Files written outside the caches (JAX's, and ~/.cache, ~/.config of libraries)."""
        found = []
        for name in ("cwd", "home", "tmp"):
            for folder, _, files in os.walk(self.folders[name]):
                relative = os.path.relpath(folder, self.folders[name])
                if name == "home" and relative.split(os.sep)[0] in (".cache", ".config"):
                    continue
                found += [os.path.join(name, relative, f) for f in files]
        return found


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{out[-3000:]}{err[-5000:]}"
    return out + err


def step_names(workdir: str) -> set[str]:
    root = storage.path(ckpt_lib.directory(workdir))
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


def rows(workdir: str, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (storage.path(workdir) / name).read_text().splitlines()]


def losses(workdir: str) -> dict[int, float]:
    return {r["step"]: r["train/loss"] for r in rows(workdir) if "train/loss" in r}


def listing(workdir: str, capsys, *flags: str) -> str:
    """`python -m vrl.checkpoint WORKDIR [flags]`: its stdout; fails on a non-zero exit."""
    capsys.readouterr()
    code = ckpt_lib.main(["vrl.checkpoint", workdir, *flags])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    return out.out


@pytest.fixture(scope="module")
def runs(gcs_server, tmp_path_factory):
    """An uninterrupted local run, and the same run on gs:// SIGKILLed during the save of
    step 2, then rerun to the end on two processes; with what the rerun printed."""
    sandbox = Sandbox(tmp_path_factory.mktemp("sandbox"))
    local = str(tmp_path_factory.mktemp("local") / "q")
    reference = sandbox.train(local)
    # The kill must land inside step 2's save. A save can finish before this process (which
    # also serves the emulator) sees its folder; then the kill came late: try again afresh.
    for _ in range(3):
        remote = gcs.fresh_folder("gcs-workdir") + "/runs/q"
        killed = sandbox.train(remote)
        deadline = time.monotonic() + TIMEOUT_S
        while "2" not in step_names(remote):  # Orbax writes step 2 into its final folder
            assert killed.poll() is None, "the run ended before step 2 was saved"
            assert time.monotonic() < deadline, "step 2 was never saved"
            time.sleep(0.02)
        killed.send_signal(signal.SIGKILL)
        killed.communicate(timeout=TIMEOUT_S)
        torn = not ckpt_lib.is_complete(storage.path(ckpt_lib.directory(remote)) / "2")
        if torn:
            break
    finish(reference)
    rerun = finish(sandbox.train(remote, processes=2))
    return {"local": local, "gs": remote, "sandbox": sandbox, "torn": torn, "rerun": rerun}


def test_killed_gs_run_resumes_on_two_processes_bit_identical_to_local(runs, capsys):
    local, remote, rerun = runs["local"], runs["gs"], runs["rerun"]
    assert runs["torn"], "the kill came after step 2's save completed"
    assert "[p0] " in rerun and "[p1] " in rerun and "Resumed from step 1" in rerun
    assert "Checkpoint step 2 is incomplete" in rerun  # moved aside, then saved again
    assert (storage.path(remote) / ckpt_lib.INCOMPLETE).is_dir()
    assert "Taking over the lock of" in rerun  # the killed run never released it
    assert not (storage.path(remote) / "lock.json").exists()
    assert ckpt_lib.complete_steps(remote) == ckpt_lib.complete_steps(local) == [1, 2, 3]
    data = storage.path(ckpt_lib.directory(remote)) / "3" / ckpt_lib.DATA
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= {p.name for p in data.iterdir()}

    # The listing's digests of every step equal the local run's; every step verifies.
    assert listing(remote, capsys).split("\n")[1:] == listing(local, capsys).split("\n")[1:]
    verified = listing(remote, capsys, "--verify").splitlines()
    assert [line.split(":")[0] for line in verified] == ["step 1", "step 2", "step 3"]
    assert all(": ok (" in line for line in verified), verified

    # metrics.jsonl holds each step once (the killed run's rows after step 1 set aside).
    assert [r["step"] for r in rows(remote) if "train/loss" in r] == [1, 2, 3]
    assert losses(remote) == losses(local)
    # The killed run logged step 2, and step 3 too when it got there while step 2 was saving.
    assert [r["step"] for r in rows(remote, "metrics.superseded.jsonl")] in ([2], [2, 3])
    events = list((storage.path(remote) / "tensorboard").iterdir())
    assert len(events) == 2 and all(e.name.startswith("events.out.tfevents") for e in events)
    assert runs["sandbox"].local_files() == []


def test_encoder_from_the_bucket_embeds_like_a_local_copy(runs, tmp_path):
    copy = str(tmp_path / "copy")
    storage.copy(runs["gs"], copy)
    video = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    from_bucket = api.load_encoder(runs["gs"], batch_size=2)
    assert from_bucket.step == STEPS
    np.testing.assert_array_equal(
        from_bucket.embed(video), api.load_encoder(copy, batch_size=2).embed(video)
    )


def test_salt_teacher_checkpoint_in_a_bucket(runs):
    """SALT's stage 2 takes its teacher's architecture from the gs:// run; a URL with one slash
    is a config error naming the key."""
    path = os.path.join(ROOT, "configs", "salt_stage2_vitl_k710.py")
    config = config_lib.load_file(path, f"runlocal,teacher={runs['gs']}").to_dict()
    saved = ckpt_lib.load_meta(runs["gs"])[0]["config"]
    assert weights.build_objective(config).teacher_model == saved["model"]
    config["objective"]["teacher_checkpoint"] = "gs:/vrl-test/teacher"
    with pytest.raises(config_lib.ConfigError, match="teacher_checkpoint 'gs:/vrl-test/teacher'"):
        weights.build_objective(config)


def test_a_bad_gs_workdir_is_one_line_at_start_up(gcs_server, tmp_path):
    sandbox = Sandbox(tmp_path)
    malformed = sandbox.train("gs:/vrl-test/x")
    missing = sandbox.train("gs://vrl-no-such-bucket/x")
    for proc, expected in [
        (malformed, "config error: --workdir 'gs:/vrl-test/x' is not a valid URL: write gs://"),
        (missing, "config error: --workdir gs://vrl-no-such-bucket/x: bucket gs://vrl-no-such"),
    ]:
        out, err = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 2, out + err
        assert err.count("\n") == 1 and err.startswith(expected), err
    assert sandbox.local_files() == []
