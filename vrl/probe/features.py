"""Frozen features of a whole split: one ordered pass through the eval pipeline."""

from collections.abc import Iterator, Sequence

import jax
import numpy as np

from vrl import config as config_lib
from vrl.data import pipeline
from vrl.probe import augmented, batches
from vrl.probe.encoder import Encoder

KINDS = ("pooled", "tokens")


def extract(
    encoder: Encoder,
    data: dict,
    split: str,
    *,
    pp: str | None = None,
    batch_size: int | None = None,
    kind: str = "pooled",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(features, labels {label set: [N] int32}) in split order, on every process.

    kind "pooled": [N, D] or [N, V, D]; "tokens": [N, n, D] or [N, V, n, D] (V: views of a
    multi-view pp). "augmented/pooled", "augmented/tokens": an `augmented.Stream` of them
    on freshly augmented clips of `pp`, computed as a probe trains, and no labels.
    """
    if kind.removeprefix(augmented.PREFIX) not in KINDS:
        raise config_lib.ConfigError(f"feature kind {kind!r} is not allowed; allowed: {KINDS}")
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    if kind.startswith(augmented.PREFIX):
        return augmented.stream(encoder, cfg, split, pp, kind), {}
    size = batches.batch_size(batch_size or encoder.batch_size, encoder.mesh)
    split_batches, total = read_split(cfg, split, pp, size)

    def fn(batch):
        labels = {k: v for k, v in batch.items() if k.startswith("label/")}
        return {"features": encoder.apply(batch["video"], kind), **labels}

    out = batches.run(fn, split_batches, encoder.mesh, local=True, total=total)
    features = out.pop("features")
    return features, {k.removeprefix("label/"): v.astype(np.int32) for k, v in out.items()}


def read_split(
    cfg: pipeline.DataConfig, split: str, pp: str | None, size: int
) -> tuple[Iterator[dict[str, np.ndarray]], int]:
    """(this process's share of each padded global batch of `size` videos, number of videos):
    the arrays the devices need (video, labels, `valid`) for `batches.run(local=True)`."""
    dataset, total = pipeline.eval_dataset(
        cfg,
        split,
        batch_size=size,
        pp=pp,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    keep = lambda key: key in ("video", "valid") or key.startswith("label/")
    return ({k: v for k, v in batch.items() if keep(k)} for batch in dataset), total


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
