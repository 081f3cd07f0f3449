"""The one evaluation loop: a function over padded batches sharded on the mesh, on every process.

Feature extraction, the attentive probe's test scores and a classifier's test predictions all
run through `run`: each global batch is split over the mesh's batch axes (data x fsdp), the
outputs are gathered to every process, and the rows that only pad the last batch are dropped
by the batch's `valid` mask. So every process returns the whole split, in order, whatever the
process count, and every process takes part in every collective.
"""

import math
from collections.abc import Callable, Iterable, Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils

from vrl import sharding

_VALID = "batches/valid"  # beside fn's outputs, whatever they are named


def batch_size(requested: int, mesh: jax.sharding.Mesh) -> int:
    """`requested` rounded up to a multiple of the mesh's batch-parallel size."""
    parallel = math.prod(mesh.shape[axis] for axis in sharding.BATCH_AXES)
    return -(-max(requested, 1) // parallel) * parallel


def padded(arrays: dict[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Global batches of `size` rows of `arrays` (the same on every process), the last one
    padded by repeating its last row; `valid` marks the real rows."""
    total = len(next(iter(arrays.values())))
    for start in range(0, total, size):
        rows = np.minimum(np.arange(start, start + size), total - 1)
        yield {
            **{k: v[rows] for k, v in arrays.items()},
            "valid": np.arange(start, start + size) < total,
        }


def run(
    fn: Callable[[dict[str, jax.Array]], dict[str, jax.Array]],
    batches: Iterable[dict[str, np.ndarray]],
    mesh: jax.sharding.Mesh,
    *,
    local: bool,
    total: int | None = None,
) -> dict[str, np.ndarray]:
    """The outputs of `fn` (a dict of batch-major arrays) over `batches`, concatenated, the
    rows whose `valid` is false dropped; the same on every process.

    `local`: each batch holds this process's share of a global batch (a split read per process,
    see `features.read_split`); else the whole global batch, identical on every process.
    `total`: the number of real rows expected (a RuntimeError if another number came).
    """
    place = sharding.to_global if local else _replicated_input
    parts = []
    for batch in batches:
        arrays = place(batch, mesh)
        outputs = {**fn(arrays), _VALID: arrays["valid"]}
        parts.append(
            jax.tree.map(np.asarray, multihost_utils.process_allgather(outputs, tiled=True))
        )
    if not parts:
        raise ValueError("no batches to evaluate")
    columns = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    valid = columns.pop(_VALID).astype(bool)
    if total is not None and valid.sum() != total:
        raise RuntimeError(f"evaluated {valid.sum()} examples, expected {total}")
    return {k: v[valid] for k, v in columns.items()}


def _replicated_input(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """A global batch every process holds whole -> arrays sharded over the batch axes."""
    return {
        k: jax.make_array_from_callback(
            v.shape, sharding.batch_sharding(mesh, v.ndim), lambda index, v=v: v[index]
        )
        for k, v in batch.items()
    }
