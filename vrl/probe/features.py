"""Frozen features of a whole split: one ordered pass through the eval pipeline."""

from collections.abc import Sequence

import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline

KINDS = ("pooled", "tokens")


def extract(
    encoder,
    data: dict,
    split: str,
    *,
    pp: str | None = None,
    batch_size: int | None = None,
    kind: str = "pooled",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features, labels {label set: [N] int32}) in split order.

    kind "pooled": [N, D] or [N, V, D]; "tokens": [N, n, D] or [N, V, n, D] (V: views of a
    multi-view pp).
    """
    if kind not in KINDS:
        raise config_lib.ConfigError(f"feature kind {kind!r} is not allowed; allowed: {KINDS}")
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    batch_size = batch_size or encoder.batch_size
    dataset, total = pipeline.eval_dataset(cfg, split, batch_size=batch_size, pp=pp)
    fn = encoder.embed if kind == "pooled" else encoder.tokens
    feats, labels = [], {}
    for batch in dataset:
        valid = np.asarray(batch["valid"], bool)
        feats.append(fn(np.asarray(batch["video"])[valid]))
        for key, value in batch.items():
            if key.startswith("label/"):
                labels.setdefault(key.removeprefix("label/"), []).append(np.asarray(value)[valid])
    features = np.concatenate(feats)
    if len(features) != total:
        raise RuntimeError(f"extracted {len(features)} features for {total} examples of {split!r}")
    return features, {k: np.concatenate(v).astype(np.int32) for k, v in labels.items()}


def clips(data: dict, split: str, indices: Sequence[int], *, pp: str | None = None) -> np.ndarray:
    """The uint8 clips of examples `indices` of a split, made by the eval pipeline `pp`."""
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    source = pipeline.make_source(cfg, split)
    ops = pipeline.make_ops(pp if pp is not None else cfg.test_pp, "config.data.test_pp")
    maker = pipeline.ExampleMaker(source, ops)
    out = []
    for index in indices:
        if not 0 <= int(index) < len(source):
            raise IndexError(f"example {index} of split {split!r}: the split has {len(source)}")
        out.append(maker(int(index), np.random.default_rng(int(index)))["video"])
    return np.stack(out)
