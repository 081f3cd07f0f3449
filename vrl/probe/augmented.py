"""Frozen-encoder probes trained on freshly augmented clips (`probe.train_augmented=True`).

The published frozen protocols (CVRL's linear eval, V-JEPA's attentive probe) do not cache
one feature per train video: every epoch draws new clips from the train pipeline (random
window, random resized crop, flip / RandAugment / random erasing) and runs the frozen encoder
on them again. A `Stream` is that: this process's part of each global batch of the job's
`train_pp` (Grain, a new shuffle and new augmentations every epoch), put on the mesh, its
features computed by the encoder's jitted forward pass, never leaving the devices. The encoder
is never differentiated nor updated; only the probe's parameters change (`fit`).

The plan gets a stream where it would get cached train features: `features.extract` with kind
`"augmented/pooled"` or `"augmented/tokens"` returns one instead of arrays. Test features are
the cached multi-view ones, as for every probe.
"""

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from vrl import config as config_lib
from vrl import sharding
from vrl.data import pipeline
from vrl.probe import batches

PREFIX = "augmented/"  # a feature kind with it asks `features.extract` for a Stream


@dataclasses.dataclass(frozen=True)
class Stream:
    """Features of augmented clips of a split, batch after batch, for `epochs` epochs."""

    encoder: Any  # vrl.probe.encoder.Encoder
    cfg: pipeline.DataConfig
    split: str
    pp: str
    kind: str  # "pooled" | "tokens"
    label_set: str | None = None

    def labelled(self, label_set: str) -> "Stream":
        return dataclasses.replace(self, label_set=label_set)

    def __len__(self) -> int:
        return len(pipeline.make_source(self.cfg, self.split))

    def batch_size(self, requested: int) -> int:
        """Videos per global batch: `requested`, at most the split's size, rounded up to a
        multiple of the mesh's batch-parallel size."""
        return batches.batch_size(min(requested, len(self)), self.encoder.mesh)

    def steps_per_epoch(self, requested: int) -> int:
        return max(len(self) // self.batch_size(requested), 1)

    def batches(
        self, epochs: int, batch_size: int, seed: int
    ) -> Iterator[tuple[jax.Array, jax.Array, np.ndarray]]:
        """(features [B, (V,) ...] on the mesh, labels [B], this process's clip ids) of each
        step of `epochs` epochs; the videos are reshuffled and re-augmented every epoch."""
        if self.label_set is None:
            raise ValueError("Stream.batches: choose a label set first (labelled)")
        size = self.batch_size(batch_size)
        cfg = dataclasses.replace(self.cfg, batch_size=size, repeated_samples=1)
        source = pipeline.make_source(cfg, self.split)
        ops = pipeline.make_ops(self.pp, "config.train_pp")
        data = pipeline.train_data(cfg, source, ops)
        iterator = iter(
            data.iterator(
                seed=seed, process_index=jax.process_index(), process_count=jax.process_count()
            )
        )
        key = f"label/{self.label_set}"
        for _ in range(epochs * self.steps_per_epoch(batch_size)):
            device, host = pipeline.split_host_keys(next(iterator))
            arrays = sharding.to_global({"video": device["video"], key: device[key]}, self.mesh)
            yield self.encoder.apply(arrays["video"], self.kind), arrays[key], host["id"]

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.encoder.mesh


def stream(encoder, cfg: pipeline.DataConfig, split: str, pp: str | None, kind: str) -> Stream:
    if pp is None:
        raise config_lib.ConfigError(
            "config.train_pp: probe.train_augmented=True trains on augmented clips; set the train "
            "pipeline (e.g. uniform_clip(...)|random_resized_crop(...)|flip)"
        )
    pipeline.make_ops(pp, "config.train_pp")  # its errors now, not after the test features
    return Stream(encoder, cfg, split, pp, kind.removeprefix(PREFIX))


def fit(
    data: Stream,
    state: Any,
    step: Callable[[Any, jax.Array, jax.Array], Any],
    *,
    epochs: int,
    batch_size: int,
    seed: int,
) -> Any:
    """`state = step(state, features, labels)` for every batch of `epochs` augmented epochs:
    the one train loop of the augmented linear and attentive probes."""
    for features, labels, _ in data.batches(epochs, batch_size, seed):
        state = step(state, features, labels)
    return state
