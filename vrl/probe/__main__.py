"""python -m vrl.probe --config=configs/probe/<kind>.py --config.checkpoint=WORKDIR [--config.x=..]

<kind>: linear, attentive, knn or finetune (see configs/probe/). WORKDIR may be a bucket URL
(gs://BUCKET/PATH): results are written there.
"""

import sys

from absl import app
from ml_collections import config_flags

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import flag_errors, metrics, storage
from vrl.probe import main as probe_main
from vrl.probe import results

_CONFIG = config_flags.DEFINE_config_file("config", None, "Probe config file.", lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    try:
        measured = probe_main.run_job(config_lib.to_dict(_CONFIG.value))
    except (config_lib.ConfigError, ckpt_lib.CheckpointError, storage.StorageError) as e:
        print(f"vrl.probe: {e}", file=sys.stderr)
        sys.exit(2)
    print(results.summary_table(measured))


if __name__ == "__main__":
    app.run(main, flags_parser=flag_errors.flags_parser("vrl.probe"))
