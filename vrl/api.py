"""Encoders for scripts and notebooks: load one from a run directory and embed videos.

enc = load_encoder("runs/quickstart")
clip_vectors = enc.embed(video_uint8)      # [B, T, H, W, 3] -> [B, D]
tokens = enc.tokens(video_uint8)           # [B, T, H, W, 3] -> [B, N, D]
feats, labels = extract_features(enc, {"source": {"name": "synthetic"}}, "test")
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import numpy as np

from vrl import checkpoint as ckpt_lib
from vrl import config as config_lib
from vrl import state
from vrl.models import layers
from vrl.objectives import base


@dataclasses.dataclass
class Encoder:
    """A frozen encoder with jit-compiled `embed` and `tokens`, batched over all devices.

    Inputs of any length are cut into chunks of `batch_size` (rounded up to a multiple of the
    device count, the last chunk padded), so each function compiles once per clip shape.
    """

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
        x = layers.to_model_input(video, self.module)
        return self.module.apply(variables, x, train=False)

    def tokens(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] (uint8, or [0, 1] float) -> tokens [B, N, D] (float32);
        multi-view [B, V, T, H, W, 3] -> [B, V, N, D]."""
        return self._views(self._tokens, video)

    def embed(self, video: np.ndarray) -> np.ndarray:
        """[B, T, H, W, 3] -> [B, D]; multi-view [B, V, T, H, W, 3] -> [B, V, D]."""
        return self._views(self._embed, video)

    def _views(self, fn, video: np.ndarray) -> np.ndarray:
        video = np.asarray(video)
        if video.ndim == 6:
            b, v = video.shape[:2]
            out = self._batched(fn, video.reshape(b * v, *video.shape[2:]))
            return out.reshape(b, v, *out.shape[1:])
        return self._batched(fn, video)

    def _batched(self, fn, video: np.ndarray) -> np.ndarray:
        if video.ndim != 5 or video.shape[-1] != 3:
            raise ValueError(
                f"expected video [B, T, H, W, 3] or [B, V, T, H, W, 3], got shape {video.shape}"
            )
        devices = jax.device_count()
        chunk = -(-self.batch_size // devices) * devices
        sharding = jax.sharding.NamedSharding(self._mesh, jax.sharding.PartitionSpec("data"))
        if len(video) == 0:
            one = jax.ShapeDtypeStruct((1, *video.shape[1:]), video.dtype)
            spec = jax.eval_shape(fn, self.variables, one)
            return np.zeros((0, *spec.shape[1:]), np.float32)
        outputs = []
        for start in range(0, len(video), chunk):
            part = video[start : start + chunk]
            pad = chunk - len(part)
            if pad:
                part = np.concatenate([part, np.repeat(part[-1:], pad, axis=0)])
            out = fn(self.variables, jax.device_put(part, sharding))
            outputs.append(np.asarray(jax.device_get(out), np.float32)[: chunk - pad])
        return np.concatenate(outputs)


def load_encoder(
    workdir: str,
    step: int | None = None,
    which: str = "encoder",
    batch_size: int = 32,
    *,
    overrides: Mapping | None = None,
) -> Encoder:
    """The encoder saved in `workdir` at `step` (latest by default).

    `which` picks the parameters: "encoder" (the trained online encoder), "target" (V-JEPA's
    EMA copy), "teacher" (SALT), or "random" (the same architecture at its initialisation,
    the baseline every probe should beat). `overrides` is merged onto the saved run config
    (e.g. {"model": {"dtype": ...}}). Loading is strict: parameters whose names or shapes
    differ from what the config builds raise CheckpointError listing every difference.
    """
    meta, step = ckpt_lib.load_meta(workdir, step)
    if overrides:
        meta = {**meta, "config": merge(meta["config"], overrides)}
    objective = base.build(meta["config"])
    if which == "random":
        variables = random_encoder_variables(objective, meta)
    else:
        if which not in objective.encoders():
            raise config_lib.ConfigError(
                f"{workdir}: objective {meta['config']['objective']['name']!r} has no {which!r} "
                f"encoder; allowed: {', '.join((*objective.encoders(), 'random'))}"
            )
        params, extra = restore_variables(workdir, step, objective, meta)
        variables = objective.encoder_variables(params, extra, which)
    module = encoder_module(objective, which)
    return Encoder(module, variables, meta["config"], step, which, batch_size)


def encoder_module(objective: base.Objective, which: str) -> nn.Module:
    """The module that applies `which` parameters: an objective attribute of that name when it
    is a module of its own (SALT's `teacher`, possibly another architecture), else the encoder
    (V-JEPA's EMA `target` shares the encoder's architecture)."""
    module = getattr(objective, which, None) if which not in ("encoder", "random") else None
    return module if isinstance(module, nn.Module) else objective.encoder


def restore_variables(workdir: str, step: int, objective: base.Objective, meta: dict):
    """(params, extra) of a checkpoint as host arrays, strictly checked against `objective`."""
    abstract_params, abstract_extra = abstract_variables(objective, meta)
    restored = ckpt_lib.restore_partial(
        workdir, step, {"params": abstract_params, "extra": abstract_extra}
    )
    return restored["params"], restored["extra"]


def merge(base_cfg: Mapping, overrides: Mapping) -> dict:
    """A copy of `base_cfg` with `overrides` merged in, nested dicts merged key by key."""
    out = dict(base_cfg)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def random_encoder_variables(objective: base.Objective, meta: dict):
    """The encoder alone at a fresh initialisation (seeded by the run's seed).

    Only the encoder is initialised: compiling the whole objective's init (decoders,
    predictors, heads) costs several times more on XLA:CPU and adds nothing to a baseline.
    """
    video = state.spec_batch(meta["init_batch"])["video"]
    if video.ndim == 6:  # multi-view clips [B, V, T, H, W, 3]: one view shapes the encoder
        video = video[:, 0]
    encoder = objective.encoder

    @jax.jit
    def init(rng):
        x = layers.to_model_input(video, encoder)
        return nn.meta.unbox(encoder.init(rng, x, train=False))

    return init(state.init_key(meta["config"].get("seed", 0)))


def abstract_variables(objective, meta: dict):
    """Zero host arrays shaped like the (params, extra) the saved config builds (no init runs)."""
    batch = state.spec_batch(meta["init_batch"])
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
    kind: Literal["pooled", "tokens"] = "pooled",
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Features and labels {label set: [N]} of a whole split, in split order.

    kind "pooled": clip vectors [N, D] ([N, V, D] for a multi-view pp); "tokens": the token
    sequences [N, n_tokens, D] ([N, V, n_tokens, D]). `source_config` is a `config.data` dict
    (at least `source`), merged onto the encoder's training `config.data`; `pp` defaults to its
    `test_pp`.
    """
    from vrl.probe import features  # noqa: PLC0415 - keeps the data stack out of plain imports

    data = {**encoder.config.get("data", {}), **source_config}
    return features.extract(encoder, data, split, pp=pp, batch_size=batch_size, kind=kind)


def load_clips(
    encoder: Encoder,
    source_config: dict,
    split: str,
    indices: Sequence[int],
    *,
    pp: str | None = None,
) -> np.ndarray:
    """uint8 clips [K, T, H, W, 3] (or [K, V, ...]) of examples `indices`, as probes see them."""
    from vrl.probe import features  # noqa: PLC0415

    data = {**encoder.config.get("data", {}), **source_config}
    return features.clips(data, split, indices, pp=pp)


def class_names(
    encoder: Encoder, source_config: dict | None = None, split: str | None = None
) -> dict[str, list[str]]:
    """{label set: class names} of a split (default: the encoder's training data, test split)."""
    from vrl.data import pipeline  # noqa: PLC0415

    data = {**encoder.config.get("data", {}), **(source_config or {})}
    cfg = config_lib.instantiate(pipeline.DataConfig, data, "config.data")
    return dict(pipeline.make_source(cfg, split or cfg.test_split).label_names)
