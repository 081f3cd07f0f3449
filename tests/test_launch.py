"""Launch scripts: dry runs print the expected commands (golden texts), local.sh runs and stops
its processes as documented, the SLURM task script hands every task its ids, shellcheck is clean.

Regenerate the golden texts after an intended change with `VRL_UPDATE_GOLDEN=1 pytest ...`.
"""

import os
import re
import shutil
import signal
import stat
import subprocess
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
SCRIPTS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/gpu_slurm.sbatch"]
TRAIN_ARGS = [
    "--config=configs/cvrl_k600.py",
    "--workdir=gs://bucket/runs/cvrl",
    "--config.data.train_pp=uniform_clip(frames=16)|flip",
]


def run_script(args, env=None, timeout=30, **kwargs):
    full_env = {**os.environ, "TMPDIR": "/tmp", "PYTHON": "python", **(env or {})}
    return subprocess.run(
        ["bash", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def check_golden(name: str, text: str) -> None:
    text = text.replace(REPO, "<repo>")
    path = os.path.join(GOLDEN, name)
    if os.environ.get("VRL_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read(), f"{name} differs; diff it against tests/golden/{name}"


def executable(path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


# ------------------------------------------------------------------------------------- local.sh


def test_local_dry_run_prints_one_command_per_process():
    out = run_script(
        ["launch/local.sh", "--dry_run", "--port=12345", "--cpu_devices=4", "2", "--", *TRAIN_ARGS]
    )
    assert out.returncode == 0, out.stderr
    check_golden("local_dry_run.txt", out.stdout)


def test_local_picks_a_free_port_shared_by_all_processes():
    out = run_script(["launch/local.sh", "--dry_run", "3", "--", "--workdir=/tmp/x"])
    assert out.returncode == 0, out.stderr
    ports = re.findall(r"--coordinator_address=127\.0\.0\.1:(\d+)", out.stdout)
    assert len(ports) == 3 and len(set(ports)) == 1 and 0 < int(ports[0]) < 65536


@pytest.mark.parametrize(
    "args, message",
    [
        (["--", "--workdir=/x"], "give the number of processes"),
        (["2", "--bogus", "--"], "unknown argument '--bogus'"),
        (["--cpu_devices=four", "2", "--"], "'four' is not a positive integer"),
    ],
)
def test_local_rejects_bad_arguments(args, message):
    out = run_script(["launch/local.sh", *args])
    assert out.returncode == 2 and message in out.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
# Stands in for python: acts on --process_id.
for a in "$@"; do case "$a" in --process_id=*) id="${a#*=}" ;; esac; done
trap 'echo "got TERM"; kill "$!"; exit 0' TERM
echo "process $id platforms=${JAX_PLATFORMS:-unset}"
case "$MODE" in
  codes) exit $((id + 3)) ;;
  hang) [[ "$id" == 0 ]] && exit 5; sleep 30 & wait ;;
  term) echo ready; sleep 30 & wait ;;
esac
"""


def test_local_prefixes_logs_and_exits_with_the_worst_code(tmp_path):
    python = executable(tmp_path / "python", FAKE_PYTHON)
    out = run_script(
        ["launch/local.sh", "--port=1", "--cpu_devices=2", "3", "--", "--x=1"],
        env={"PYTHON": python, "MODE": "codes"},
    )
    assert out.returncode == 5  # codes 3, 4, 5
    for i in range(3):
        assert f"[p{i}] process {i} platforms=cpu" in out.stdout.splitlines()


def test_local_stops_the_others_after_a_failure(tmp_path):
    python = executable(tmp_path / "python", FAKE_PYTHON)
    start = time.monotonic()
    out = run_script(
        ["launch/local.sh", "--port=1", "--grace_s=1", "2", "--"],
        env={"PYTHON": python, "MODE": "hang"},
    )
    assert time.monotonic() - start < 20
    assert out.returncode == 137  # the hanging process was killed; 137 > 5
    assert "exited with code 5" in out.stderr


def test_local_forwards_sigterm_to_every_process(tmp_path):
    python = executable(tmp_path / "python", FAKE_PYTHON)
    env = {**os.environ, "PYTHON": python, "MODE": "term"}
    proc = subprocess.Popen(
        ["bash", "launch/local.sh", "--port=1", "2", "--"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = 0
    for line in proc.stdout:
        ready += line.strip().endswith("ready")
        if ready == 2:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(timeout=20) == 0
    assert "[p0] got TERM" in rest and "[p1] got TERM" in rest


# ------------------------------------------------------------------------------------ tpu_pod.sh


def test_tpu_pod_dry_run_single_slice():
    out = run_script(
        [
            "launch/tpu_pod.sh",
            "--name=vrl-cvrl",
            "--zone=us-east5-a",
            "--accelerator=v5p-32",
            "--dry_run",
            "--",
            *TRAIN_ARGS,
        ]
    )
    assert out.returncode == 0, out.stderr
    check_golden("tpu_pod_dry_run.txt", out.stdout)


def test_tpu_pod_dry_run_queued_multislice():
    out = run_script(
        [
            "launch/tpu_pod.sh",
            "--name=vrl-ms",
            "--zone=us-east5-a",
            "--accelerator=v6e-64",
            "--num_slices=2",
            "--spot",
            "--project=my-proj",
            "--dry_run",
            "--",
            *TRAIN_ARGS,
            "--config.mesh.dcn_data=2",
        ]
    )
    assert out.returncode == 0, out.stderr
    check_golden("tpu_pod_multislice_dry_run.txt", out.stdout)


def test_tpu_pod_existing_and_kept_vm_is_neither_created_nor_deleted():
    out = run_script(
        [
            "launch/tpu_pod.sh",
            "--name=v",
            "--zone=z",
            "--accelerator=v4-8",
            "--existing",
            "--dry_run",
            "--",
            "--workdir=gs://b",
        ]
    )
    assert out.returncode == 0, out.stderr
    assert "create" not in out.stdout and "delete" not in out.stdout
    assert "tpu-vm ssh v --worker=all --zone=z" in out.stdout


def test_tpu_pod_requires_name_zone_accelerator():
    out = run_script(["launch/tpu_pod.sh", "--zone=z", "--accelerator=v4-8", "--", "--x"])
    assert out.returncode == 2 and "--name is required" in out.stderr


# ------------------------------------------------------------------------------- gpu_slurm.sbatch

FAKE_SCONTROL = "#!/usr/bin/env bash\necho gpu-a01\necho gpu-a02\n"
FAKE_SRUN = """#!/usr/bin/env bash
# Runs the step's tasks one after another on this machine, with the ids SLURM would give them.
for a in "$@"; do
  case "$a" in
    --ntasks=*) n="${a#*=}" ;;
    --ntasks-per-node=*) per="${a#*=}" ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
for ((i = 0; i < n; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$((i % per)) "$@" || exit; done
"""
FAKE_TRAINER = """#!/usr/bin/env bash
echo "ids=$JAX_LOCAL_DEVICE_IDS ${*: -3}"
"""


def slurm_env(tmp_path, gpus: int) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    executable(bin_dir / "scontrol", FAKE_SCONTROL)
    executable(bin_dir / "srun", FAKE_SRUN)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-a[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_GPUS_ON_NODE": str(gpus),
        "SLURM_CPUS_ON_NODE": "96",
        "SLURM_SUBMIT_DIR": REPO,
    }


@pytest.mark.parametrize("layout", ["per_gpu", "per_node"])
def test_gpu_slurm_dry_run(tmp_path, layout):
    flags = ["--per_node"] if layout == "per_node" else []
    out = run_script(
        ["launch/gpu_slurm.sbatch", *flags, "--dry_run", "--", *TRAIN_ARGS],
        env=slurm_env(tmp_path, gpus=8),
    )
    assert out.returncode == 0, out.stderr
    check_golden(f"gpu_slurm_{layout}_dry_run.txt", out.stdout)


def test_gpu_slurm_tasks_get_their_process_and_device_ids(tmp_path):
    trainer = executable(tmp_path / "trainer", FAKE_TRAINER)
    env = slurm_env(tmp_path, gpus=2)
    per_gpu = run_script(["launch/gpu_slurm.sbatch", f"--python={trainer}", "--", "--a=1"], env=env)
    assert per_gpu.returncode == 0, per_gpu.stderr
    assert per_gpu.stdout.splitlines() == [
        f"ids={i % 2} --coordinator_address=gpu-a01:24242 --num_processes=4 --process_id={i}"
        for i in range(4)
    ]
    per_node = run_script(
        ["launch/gpu_slurm.sbatch", "--per_node", f"--python={trainer}", "--", "--a=1"], env=env
    )
    assert per_node.stdout.splitlines() == [
        f"ids=0,1 --coordinator_address=gpu-a01:24242 --num_processes=2 --process_id={i}"
        for i in range(2)
    ]


def test_gpu_slurm_outside_a_job_says_how_to_submit():
    env = {k: "" for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES")}
    out = run_script(["launch/gpu_slurm.sbatch", "--", "--x"], env=env)
    assert out.returncode == 2 and "submit with sbatch" in out.stderr


# ----------------------------------------------------------------------------------- shellcheck


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    out = subprocess.run(
        ["shellcheck", "--shell=bash", script], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout
