"""python -m vrl.main --config=configs/<name>.py[:arg] --workdir=DIR [--config.key=value ...]

DIR is a local folder or a bucket URL (gs://BUCKET/PATH): checkpoints, metrics and probe results
go there either way.

Starts the JAX multi-controller runtime when the run spans several processes, then hands off
to `evaluators.train_and_evaluate`. Every process runs this same command; each reads its own
slice of every global batch, process 0 writes the metrics and Orbax coordinates the checkpoint
writes.

  explicit    --coordinator_address=HOST:PORT --num_processes=N --process_id=I (launch/local.sh)
  detected    Cloud TPU pods, SLURM (srun), Open MPI, or JAX_COORDINATOR_ADDRESS in the
              environment: `jax.distributed.initialize()` reads the rest from it
              (JAX_LOCAL_DEVICE_IDS picks this process's GPUs; launch/gpu_slurm.sbatch sets it)

Exit codes (a scheduler can tell what to do from them; docs/RELIABILITY.md lists the messages):
  0   finished, or preempted (SIGTERM) with the step reached saved: rerun the same command
  2   config error, before anything ran: fix the config; or the workdir is in use by
      another run (WORKDIR/lock.json names it)
  3   training stopped: non-finite loss/gradient, or too many unreadable videos
  4   checkpoint or I/O error: workdir not writable, a save failed (disk full, permissions)
  75  preempted, but the save outlived config.preemption_grace_s: rerun (resumes from the
      last complete checkpoint)
  130 Ctrl-C (SIGINT): the step reached is saved (a second Ctrl-C exits at once, unsaved):
      rerun the same command to resume
Each non-zero exit prints one line "<kind>: <what happened>" to stderr.
"""

import os
import signal
import sys


def _exit_at_once(signum, frame):
    """Where the trainer does not handle SIGTERM / Ctrl-C there is nothing to save: one line,
    exit 0 / 130 now. Through os._exit: an exception raised here could land in a gc callback
    (jax runs one), which swallows it, and the run would go on."""
    if signum == signal.SIGTERM:
        line, code = "Preempted: SIGTERM outside the training loop; nothing new to save.", 0
    else:
        line, code = "interrupted: Ctrl-C outside the training loop; nothing new to save", 130
    print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    lock = sys.modules.get("vrl.workdir_lock")
    if lock is not None:
        lock.release_all()
    os._exit(code)


if __name__ == "__main__":  # before the slow imports, which a preemption may interrupt
    signal.signal(signal.SIGTERM, _exit_at_once)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # `nohup ... &` ignores it
        signal.signal(signal.SIGINT, _exit_at_once)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from vrl import checkpoint as ckpt_lib  # noqa: E402
from vrl import config as config_lib  # noqa: E402
from vrl import (  # noqa: E402
    evaluators,
    flag_errors,
    metrics,
    preemption,
    sharding,
    storage,
    workdir_lock,
)
from vrl.data.decode import DecodeError  # noqa: E402
from vrl.state import NonFiniteError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory or bucket URL (gs://BUCKET/PATH) for checkpoints, metrics, probes."
)
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "yes", "no"],
    "Call jax.distributed.initialize(): 'auto' does when the environment shows several "
    "processes (coordinator flags, SLURM, Cloud TPU pod, JAX_COORDINATOR_ADDRESS).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", None, "Fake CPU devices per process (testing meshes without accelerators)."
)
_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", 300, "Seconds to wait for every process to join the coordinator."
)


def multi_process_environment(environ=os.environ) -> bool:
    """Whether the environment shows a run of several processes (see the module docstring)."""
    if _COORDINATOR.value or environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    for count in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_NUM_SLICES"):
        if int(environ.get(count, "1") or "1") > 1:
            return True
    hosts = environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize_runtime() -> None:
    if _CPU_DEVICES.value:
        jax.config.update("jax_num_cpu_devices", _CPU_DEVICES.value)
    wanted = _DISTRIBUTED.value == "yes" or (
        _DISTRIBUTED.value == "auto" and multi_process_environment()
    )
    if not wanted:
        return
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu") or _CPU_DEVICES.value:
        # CPU collectives across processes (the in-process default cannot reach other hosts).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
            initialization_timeout=_TIMEOUT.value,
        )
    except ValueError as e:  # nothing told jax where the coordinator is
        raise app.UsageError(
            f"--distributed={_DISTRIBUTED.value}: {e} Pass --coordinator_address, "
            "--num_processes and --process_id, or run under SLURM / Open MPI / a Cloud TPU pod "
            "(or set --distributed=no for a single process)."
        ) from None
    logging.info(
        "Process %d of %d; %d local of %d devices.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    try:
        storage.check(_WORKDIR.value, "--workdir")  # a local folder or gs://BUCKET/PATH
    except storage.StorageError as e:  # before logging starts: only the line on stderr
        flag_errors.fail("config error", e, 2)
    metrics.quiet_library_logs()
    initialize_runtime()
    try:
        evaluators.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except workdir_lock.WorkdirInUse as e:
        _fail("workdir in use", e, 2)
    except (config_lib.ConfigError, sharding.MeshError) as e:
        _fail("config error", e, 2)
    except preemption.Preempted as e:
        logging.warning("Preempted: %s.", e)
        sys.exit(0)
    except preemption.Interrupted as e:  # Ctrl-C: the step reached is saved
        _fail("interrupted", e, preemption.INTERRUPTED_EXIT)
    except (NonFiniteError, DecodeError) as e:
        _fail("training stopped", e, 3)
    except ckpt_lib.CheckpointError as e:
        _fail("checkpoint error", e, 4)
    except OSError as e:  # e.g. the disk filled up while the metrics were written
        _fail("I/O error", e, 4)


def _fail(kind: str, error: BaseException, code: int) -> None:
    """One line on stderr naming what happened (logged too), then exit with `code`."""
    logging.error("%s: %s", kind, error)
    flag_errors.fail(kind, error, code)


if __name__ == "__main__":
    app.run(main, flags_parser=flag_errors.flags_parser())
