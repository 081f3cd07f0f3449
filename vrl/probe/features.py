"""Frozen features of a whole split: one ordered pass through the eval pipeline."""

import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline


def extract(
    encoder, data: dict, split: str, *, pp: str | None = None, batch_size: int | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features [N, D] or [N, V, D], labels {label set: [N] int32}) in split order."""
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    batch_size = batch_size or encoder.batch_size
    dataset, total = pipeline.eval_dataset(cfg, split, batch_size=batch_size, pp=pp)
    feats, labels = [], {}
    for batch in dataset:
        valid = np.asarray(batch["valid"], bool)
        feats.append(encoder.embed(batch["video"])[valid])
        for key, value in batch.items():
            if key.startswith("label/"):
                labels.setdefault(key.removeprefix("label/"), []).append(np.asarray(value)[valid])
    features = np.concatenate(feats)
    if len(features) != total:
        raise RuntimeError(f"extracted {len(features)} features for {total} examples of {split!r}")
    return features, {k: np.concatenate(v).astype(np.int32) for k, v in labels.items()}
