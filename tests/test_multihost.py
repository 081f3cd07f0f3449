"""Multi-process training on localhost (launch/local.sh, CPU devices, gloo collectives).

A 2-process x 4-device run with a hybrid (DCN) data axis follows the loss trajectory of the same
config on 1 process x 8 devices; its checkpoints resume on 1 process, and a 1-process checkpoint
resumes on 2 processes x 2 devices with another mesh (8 devices -> 4).
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import evaluators

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CONFIG = os.path.join(REPO, "configs", "videomae_vitb_k400.py")
STEPS = 3
OVERRIDES = {"total_steps": STEPS, "ckpt.every_steps": 1, "ckpt.keep": 5}


def in_process(workdir: str) -> None:
    """The run on this pytest process: 1 process x 8 CPU devices."""
    config = config_lib.load_file(CONFIG, "runlocal")
    for key, value in OVERRIDES.items():
        section, _, name = key.rpartition(".")
        (config[section] if section else config)[name] = value
    config.evals = {}
    evaluators.train_and_evaluate(config, workdir)


def launch(workdir: str, processes: int, devices: int, *flags: str) -> subprocess.CompletedProcess:
    """The same config through launch/local.sh: `processes` x `devices` CPU devices."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    env["PYTHON"] = sys.executable
    args = [
        f"--config={CONFIG}:runlocal",
        f"--workdir={workdir}",
        "--config.evals={}",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        *flags,
    ]
    out = subprocess.run(
        [
            "bash",
            "launch/local.sh",
            f"--cpu_devices={devices}",
            "--grace_s=10",
            str(processes),
            "--",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    return out


def losses(workdir: str) -> dict[int, float]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows if "train/loss" in r]
    assert len(steps) == len(set(steps)), f"metrics written more than once: {steps}"
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def params_at(workdir: str, step: int):
    meta = ckpt_lib.tree_metadata(ckpt_lib.manager(workdir, read_only=True), step)
    abstract = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta["params"])
    return ckpt_lib.restore_partial(workdir, step, {"params": abstract})["params"]


def assert_same_params(a, b) -> None:
    # Layouts differ in reduction order only: agreement to rounding, not bit for bit.
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=5e-5)


def resume_copy(source: str, target: str, keep_through: int) -> str:
    """A copy of `source` as if the run had stopped after step `keep_through`."""
    shutil.copytree(source, target)
    for step in ckpt_lib.manager(target, read_only=True).all_steps():
        if step > keep_through:
            shutil.rmtree(os.path.join(ckpt_lib.directory(target), str(step)))
    metrics = os.path.join(target, "metrics.jsonl")
    with open(metrics) as f:
        rows = [line for line in f if json.loads(line)["step"] <= keep_through]
    with open(metrics, "w") as f:
        f.writelines(rows)
    return target


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("one_process"))
    in_process(workdir)
    return workdir


@pytest.mark.slow
def test_two_processes_follow_one_process_and_resume_on_one(one_process_run, tmp_path):
    two = str(tmp_path / "two_processes")
    out = launch(two, 2, 4, "--config.mesh.dcn_data=2")
    lines = out.stdout.splitlines()
    for i in range(2):
        assert any(line.startswith(f"[p{i}] ") and f"Process {i} of 2" in line for line in lines)
    assert any("dcn_data=2 over 8 cpu devices in 2 process(es), 4 local" in line for line in lines)

    reference = losses(one_process_run)
    assert sorted(reference) == list(range(1, STEPS + 1))
    two_losses = losses(two)  # written by process 0 only, once per step
    assert sorted(two_losses) == sorted(reference)
    np.testing.assert_allclose(
        [two_losses[s] for s in reference], list(reference.values()), rtol=1e-5
    )
    assert ckpt_lib.manager(two, read_only=True).all_steps() == list(range(1, STEPS + 1))
    data_dir = os.path.join(ckpt_lib.directory(two), str(STEPS), ckpt_lib.DATA)
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(os.listdir(data_dir))
    assert_same_params(params_at(two, STEPS), params_at(one_process_run, STEPS))

    # The 2-process checkpoint of step 2 continues on 1 process x 8 devices.
    resumed = resume_copy(two, str(tmp_path / "resumed_on_one"), STEPS - 1)
    in_process(resumed)
    assert ckpt_lib.manager(resumed, read_only=True).all_steps()[-1] == STEPS
    assert_same_params(params_at(resumed, STEPS), params_at(one_process_run, STEPS))


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_processes_with_fewer_devices(
    one_process_run, tmp_path
):
    """Saved on 1 process x 8 devices (data parallel); resumed on 2 x 2 devices with FSDP."""
    resumed = resume_copy(one_process_run, str(tmp_path / "resumed_on_two"), STEPS - 1)
    out = launch(resumed, 2, 2, "--config.mesh.fsdp=4", "--config.mesh.rules=fsdp")
    assert "Data iterator of step 2 restored from 1 saved process(es) on 2." in out.stdout
    assert "Resumed from step 2" in out.stdout
    assert_same_params(params_at(resumed, STEPS), params_at(one_process_run, STEPS))
    assert losses(resumed)[STEPS] == pytest.approx(losses(one_process_run)[STEPS], rel=1e-5)


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, False),
        ({"SLURM_NTASKS": "1"}, False),
        ({"SLURM_NTASKS": "16"}, True),
        ({"OMPI_COMM_WORLD_SIZE": "4"}, True),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ({"TPU_WORKER_HOSTNAMES": "t1"}, False),
        ({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}, True),
        ({"MEGASCALE_NUM_SLICES": "2"}, True),
    ],
)
def test_multi_process_environments_are_detected(environ, expected):
    from vrl import main as vrl_main  # noqa: PLC0415 - defines the trainer's absl flags

    assert vrl_main.multi_process_environment(environ) is expected


def test_distributed_without_a_coordinator_says_what_to_pass(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_WORKER"))
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vrl.main",
            f"--config={CONFIG}:runlocal",
            f"--workdir={tmp_path}",
            "--distributed=yes",
            "--cpu_devices=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert "Pass --coordinator_address, --num_processes and --process_id" in out.stderr
