"""The data a probe job reads, and keeping one job's results from overwriting another's.

A job may probe other data than the run trained on (`config.data.source`). Keys it does not
set keep the run's values: a run trained at `short_side=128` is probed at 128 on another root
too, not at the source's default. Probe configs built with `:source=<name>` therefore list every
source key as an unset placeholder (`unset_source`) rather than at its default, so "set" and
"left alone" can be told apart (a key cannot be set back to None this way: name the value).
"""

import json

from absl import logging

from vrl import config as config_lib
from vrl import storage
from vrl.data import sources
from vrl.probe import features

# Result files record the source they were made on under this key.
SOURCE_KEY = "source"


def job_data(run_data: dict, overrides: dict) -> dict:
    """The run's `config.data` with a job's overrides; a source of the run's source name (or
    without a name) is merged key by key onto the run's, another source replaces it."""
    data = {**run_data, **overrides}
    run_source = dict(run_data.get("source") or {})
    source = overrides.get("source")
    if source is not None and source.get("name", run_source.get("name")) == run_source.get("name"):
        data["source"] = {**run_source, **source}
    return data


def comparable(source: dict) -> dict:
    """`source` as a result file gives it back (tuples become lists)."""
    return json.loads(json.dumps(source, sort_keys=True))


def check_results_kept(
    out_dir: storage.PathLike, names: list[str], source: dict, refuse: bool
) -> None:
    """Raises ConfigError (`refuse`; else logs a warning) where `out_dir/<name>.json` holds
    results made on another source.

    Results are named <probe name>_<label set>_<encoder>: a second job on other data whose
    label set has the same name (e.g. "label") would replace the first job's files and
    metric keys. A training run's own evals (`refuse=False`) replace them with a warning.
    """
    now = comparable(source)
    for name in names:
        path = storage.path(out_dir) / f"{name}.json"
        if not path.exists():
            continue
        before = json.loads(path.read_text()).get(SOURCE_KEY)
        if before is not None and before != now:
            changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
            message = (
                f"{path} holds results on other data (config.data.source "
                f"{', '.join(changed)} differ)"
            )
            if not refuse:
                logging.warning("Replacing %s.", message)
                continue
            raise config_lib.ConfigError(
                f"config.name: {message}; set --config.name=<another name> to keep both, "
                "or delete that file"
            )


def clip_shape(run_meta: dict) -> tuple[int, ...] | None:
    """The shape of one example's video the encoder was trained on ([(V,) T, H, W, C])."""
    spec = (run_meta.get("init_batch") or {}).get("video")
    return tuple(spec[0][1:]) if spec else None


def log_clips(run_meta: dict, data: dict, split: str, pp: str) -> None:
    """Logs the clip shape the probe feeds the encoder next to the one it was trained on, and
    the source it reads: an encoder accepts other sizes without a word."""
    try:
        shape = tuple(features.clips(data, split, [0], pp=pp).shape[1:])
    except sources.DecodeError as e:
        shape = f"unknown (first video unreadable: {e})"
    logging.info(
        "Probe clips %s (split %r, config.data.source %s); the encoder was trained on clips %s.",
        shape,
        split,
        data.get("source"),
        clip_shape(run_meta),
    )
