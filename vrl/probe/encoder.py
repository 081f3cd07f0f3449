"""A frozen encoder that embeds videos in batches over every device of a mesh.

The same object serves a saved checkpoint (`load`, host variables replicated on a mesh of all
devices) and a training run's live parameters (already on the run's mesh, possibly sharded,
used where they are). The forward pass is jitted once per module and clip shape, so repeated
evaluations during training do not recompile.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vrl import sharding, weights
from vrl.models import layers
from vrl.probe import batches


@dataclasses.dataclass
class Encoder:
    """`embed` / `tokens` of host videos, cut into padded chunks of `batch_size` (rounded up to
    a multiple of the mesh's batch-parallel size), so each compiles once per clip shape."""

    module: nn.Module
    variables: Any
    config: dict
    step: int | None
    which: str
    batch_size: int = 32
    mesh: jax.sharding.Mesh | None = None

    def __post_init__(self):
        self.mesh = self.mesh or sharding.make_mesh(sharding.MeshConfig())
        self.variables = _on_mesh(self.variables, self.mesh)

    def tokens(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] (uint8, or [0, 1] float) -> tokens [B, N, D] (float32);
        multi-view [B, V, T, H, W, 3] -> [B, V, N, D]."""
        return self._host(video, "tokens")

    def embed(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] -> [B, D]; multi-view [B, V, T, H, W, 3] -> [B, V, D]."""
        return self._host(video, "pooled")

    def apply(self, video: jax.Array, kind: str) -> jax.Array:
        """Float32 `kind` features of a global batch of videos [B, (V,) T, H, W, 3]."""
        return _forward(self.variables, video, module=self.module, kind=kind)

    def _host(self, video: np.ndarray, kind: str) -> np.ndarray:
        video = np.asarray(video)
        if video.ndim not in (5, 6) or video.shape[-1] != 3:
            raise ValueError(
                f"expected video [B, T, H, W, 3] or [B, V, T, H, W, 3], got shape {video.shape}"
            )
        size = batches.batch_size(self.batch_size, self.mesh)
        if not len(video):
            one = jax.ShapeDtypeStruct((size, *video.shape[1:]), video.dtype)
            spec = jax.eval_shape(lambda v: self.apply(v, kind), one)
            return np.zeros((0, *spec.shape[1:]), np.float32)
        fn = lambda batch: {"features": self.apply(batch["video"], kind)}
        out = batches.run(fn, batches.padded({"video": video}, size), self.mesh, local=False)
        return out["features"]


def load(
    workdir: str,
    step: int | None = None,
    which: str = "encoder",
    batch_size: int = 32,
    overrides: Mapping | None = None,
) -> Encoder:
    """The encoder saved in `workdir` (see `vrl.api.load_encoder`), on a mesh of all devices."""
    loaded = weights.load_encoder(workdir, step, which, overrides)
    return Encoder(
        loaded.module, loaded.variables, loaded.config, loaded.step, loaded.which, batch_size
    )


@functools.partial(jax.jit, static_argnames=("module", "kind"))
def _forward(variables, video, *, module: nn.Module, kind: str):
    """Views of a multi-view batch go through the encoder one after another (`lax.map`), so a
    batch of 32 videos x 30 views takes the memory of 32 clips."""

    def one(clips):
        out = module.apply(variables, layers.to_model_input(clips, module), train=False)
        return (module.pool(out) if kind == "pooled" else out).astype(jnp.float32)

    if video.ndim == 5:
        return one(video)
    return jnp.moveaxis(jax.lax.map(one, jnp.moveaxis(video, 1, 0)), 0, 1)


def _on_mesh(variables, mesh: jax.sharding.Mesh):
    """Arrays already on the mesh's devices (a training run's live state, possibly sharded)
    stay where they are; others (a checkpoint's host arrays) are replicated on it, from the
    host, as every process holds them whole."""
    devices = set(mesh.devices.flat)
    replicated = sharding.replicated(mesh)
    return jax.tree.map(
        lambda x: (
            x
            if isinstance(x, jax.Array) and x.sharding.device_set == devices
            else jax.device_put(x, replicated)
        ),
        variables,
    )
