"""Encoders for scripts and notebooks: load one from a run directory and embed videos.

    enc = load_encoder("runs/quickstart")
    clip_vectors = enc.embed(video_uint8)      # [B, T, H, W, 3] -> [B, D]
    feats, labels = extract_features(enc, {"source": {"name": "synthetic"}}, "test")
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vrl import checkpoint as ckpt_lib
from vrl import train
from vrl.models import layers


@dataclasses.dataclass
class Encoder:
    """A frozen encoder with jit-compiled `embed` and `tokens`, batched over all devices."""

    module: nn.Module
    variables: Any
    config: dict
    step: int | None
    which: str
    batch_size: int = 32

    def __post_init__(self):
        self._mesh = jax.make_mesh(
            (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
        )
        replicated = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec())
        self.variables = jax.device_put(self.variables, replicated)
        self._tokens = jax.jit(self._tokens_fn)
        self._embed = jax.jit(lambda v, x: self.module.pool(self._tokens_fn(v, x)))

    def _tokens_fn(self, variables, video):
        return self.module.apply(variables, layers.to_model_input(video, self.module.dtype), train=False)

    def tokens(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] (uint8, or [0, 1] float) -> tokens [B, N, D] (float32)."""
        return self._batched(self._tokens, video)

    def embed(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] -> [B, D]; multi-view [B, V, T, H, W, 3] -> [B, V, D]."""
        video = np.asarray(video)
        if video.ndim == 6:
            b, v = video.shape[:2]
            out = self._batched(self._embed, video.reshape(b * v, *video.shape[2:]))
            return out.reshape(b, v, -1)
        return self._batched(self._embed, video)

    def _batched(self, fn, video: np.ndarray) -> np.ndarray:
        video = np.asarray(video)
        if video.ndim != 5:
            raise ValueError(f"expected video [B, T, H, W, 3], got shape {video.shape}")
        chunk = -(-self.batch_size // jax.device_count()) * jax.device_count()
        sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("data"))
        outputs = []
        for start in range(0, len(video), chunk):
            part = video[start : start + chunk]
            pad = chunk - len(part)
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            out = fn(self.variables, jax.device_put(part, sharding))
            outputs.append(np.asarray(jax.device_get(out), np.float32)[: chunk - pad])
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)


def load_encoder(
    workdir: str, step: int | None = None, which: str = "encoder", batch_size: int = 32
) -> Encoder:
    """The encoder saved in `workdir` at `step` (latest by default).

    `which` picks the parameters: "encoder" (the trained online encoder), "target" (V-JEPA's
    EMA copy), "teacher" (SALT), or "random" (the same architecture at its initialisation,
    the baseline every probe should beat). Loading is strict.
    """
    meta, step = ckpt_lib.load_meta(workdir, step)
    objective = train.build_objective(meta["config"])
    abstract_params, abstract_extra = _abstract(objective, meta)
    if which == "random":
        params, extra = _init(objective, meta, seed=meta["config"].get("seed", 0))
    else:
        if which not in objective.encoders():
            raise ValueError(
                f"{workdir}: objective {meta['config']['objective']['name']!r} has no {which!r} "
                f"encoder; allowed: {', '.join((*objective.encoders(), 'random'))}"
            )
        restored = ckpt_lib.restore_partial(
            workdir, step, {"params": abstract_params, "extra": abstract_extra}
        )
        params, extra = restored["params"], restored["extra"]
    variables = objective.encoder_variables(params, extra, "encoder" if which == "random" else which)
    return Encoder(objective.encoder, variables, meta["config"], step, which, batch_size)


def _init(objective, meta: dict, seed: int):
    batch = train.spec_batch(meta["init_batch"])
    params, extra = jax.jit(lambda r: nn.meta.unbox(objective.init(r, batch)))(jax.random.key(seed))
    return params, extra


def _abstract(objective, meta: dict):
    batch = train.spec_batch(meta["init_batch"])
    shapes = jax.eval_shape(lambda r: nn.meta.unbox(objective.init(r, batch)), jax.random.key(0))
    to_numpy = lambda s: np.zeros(s.shape, s.dtype)  # restored onto the host, then placed
    return jax.tree.map(to_numpy, shapes[0]), jax.tree.map(to_numpy, shapes[1])


def extract_features(
    encoder: Encoder,
    source_config: dict,
    split: str,
    *,
    pp: str | None = None,
    batch_size: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Pooled features [N, D] (or [N, V, D] for multi-view pp) and labels {set: [N]} of a split.

    `source_config` is a `config.data` dict (at least `source`); `pp` defaults to its `test_pp`
    or, when absent, the encoder's training config's `data.test_pp`.
    """
    from vrl.probe import features  # noqa: PLC0415 - keeps the data stack out of plain imports

    data = {**encoder.config.get("data", {}), **source_config}
    return features.extract(encoder, data, split, pp=pp, batch_size=batch_size)

