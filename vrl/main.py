"""python -m vrl.main --config=configs/<name>.py[:arg] --workdir=DIR [--config.key=value ...]

Starts the JAX multi-controller runtime when the run spans several processes (explicit
flags, SLURM, Cloud TPU pods), then hands off to `train.train_and_evaluate`.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from vrl import config as config_lib
from vrl import metrics, sharding, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and probes.")
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


def multi_process_environment() -> bool:
    if _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
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
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    logging.info("Process %d of %d.", jax.process_index(), jax.process_count())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    metrics.quiet_library_logs()
    initialize_runtime()
    try:
        train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (config_lib.ConfigError, sharding.MeshError) as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
