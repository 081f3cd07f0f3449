"""python -m vrl.probe --config=configs/probe/<kind>.py --config.checkpoint=WORKDIR [--config.x=..]

<kind>: linear, attentive, knn or finetune (see configs/probe/).
"""

import sys

from absl import app
from ml_collections import config_flags

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import flag_errors, metrics
from vrl.probe import main as probe_main
from vrl.probe import results

_CONFIG = config_flags.DEFINE_config_file("config", None, "Probe config file.", lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    metrics.quiet_library_logs()
    try:
        measured = probe_main.run_job(config_lib.to_dict(_CONFIG.value))
    except (config_lib.ConfigError, ckpt_lib.CheckpointError) as e:
        print(f"vrl.probe: {e}", file=sys.stderr)
        sys.exit(2)
    print(results.summary_table(measured))


def _parse_flags(argv: list[str]) -> list[str]:
    """A mistake in --config or an override: one line `vrl.probe: ...` and exit 2."""
    try:
        return flag_errors.parse(argv)
    except config_lib.ConfigError as e:
        print(f"vrl.probe: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(2)
    except Exception:  # noqa: BLE001 - absl reports its own flags' errors (exit 1)
        return app.parse_flags_with_usage(argv)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
