"""What a probe measurement leaves: its metrics, the result files, the summary table."""

import json
import os
import subprocess

import jax
import numpy as np

from vrl import metrics as metrics_lib
from vrl import storage
from vrl.probe import plots


class Result(dict):
    """A probe's metrics (this dict: what the result JSON and metrics.jsonl hold), carrying
    the test features and labels its PCA picture shows, which are kept in memory only."""

    def __init__(self, metrics: dict, features: np.ndarray | None, labels: np.ndarray | None):
        super().__init__(metrics)
        self.features = features
        self.labels = labels


def write(
    out_dir: storage.PathLike, record: dict, result: Result, class_names, with_plots: bool
) -> None:
    """`out_dir/<name>.json` and, `with_plots`, its pictures (process 0 only)."""
    if jax.process_index() != 0:
        return
    storage.write_atomic(
        storage.path(out_dir) / f"{record['name']}.json", json.dumps(record, indent=1)
    )
    if with_plots:
        plots.write_result_plots(
            out_dir, record["name"], result, class_names, result.features, result.labels
        )


def scalars(results: dict[str, dict]) -> dict[str, float]:
    """`<result name>/<metric>` of every scalar metric, as metrics.jsonl takes them."""
    return {
        f"{name}/{k}": v
        for name, metrics in results.items()
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def summary_table(results: dict[str, dict]) -> str:
    """top-1 / top-5, and Recall@k where a probe reports retrieval (not logged: the caller
    prints or logs it once)."""
    recall_keys = sorted(
        {k for m in results.values() for k in m if k.startswith("recall@")},
        key=lambda k: int(k.split("@")[1]),
    )
    header = ["probe_labels_encoder", "top1", "top5", *recall_keys, "n"]
    rows = [
        [name, f"{m['top1']:.1f}", f"{m['top5']:.1f}"]
        + [f"{m[k]:.1f}" if k in m else "-" for k in recall_keys]
        + [m["num_test"]]
        for name, m in results.items()
    ]
    return metrics_lib.format_table("Probe results", header, rows)


def git_commit() -> str | None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        out = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
